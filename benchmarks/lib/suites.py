"""The named suites: which scenarios run, on which model, how large and how often.

Sizes are chosen so that ``cpu-quick`` finishes in under 10 minutes on the project's 2-core CPU
and ``gpu`` inside one 10-minute device call; ``cpu-full`` runs every scenario. A suite's
``options`` are defaults of run.py's scenario options (``"real-tasks.stock_sizes": "1,8"``), which
the command line overrides.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ALL_SCENARIOS = ("hf-suite", "data-parallel", "cache", "demo-cache", "gsm8k", "generation", "generate-batch", "vllm",
                 "planner", "compare-hf",
                 "compare-vllm", "real-tasks", "forward-ceiling", "engine-ceiling", "plan-latency",
                 "vllm-block-bound", "vllm-prefix-cache-cost", "vllm-mc", "vllm-profile", "estimate")
#: for suites with a time bound (cpu-quick: 10 minutes, gpu: one device call): compare-hf runs
#: stock at several batch sizes per task, three times each; compare-vllm restarts stock's Ray
#: engines per request type (minutes per repetition); the ceiling, plan-latency and vLLM cost
#: scenarios are figures for the docs, not stock-vs-ext verdicts
BOUNDED_SCENARIOS = ("hf-suite", "data-parallel", "cache", "demo-cache", "gsm8k", "vllm", "planner", "real-tasks")


@dataclass(frozen=True)
class Suite:
    name: str
    model: str
    """Folder name under ``.models`` (built by scripts/build_models.py when missing)."""
    device: str
    dtype: str
    batch_size: int
    repetitions: int
    """Measured repetitions per side (after one warm-up run each)."""
    warmup_limit: int
    """Documents per task in the warm-up run."""
    limits: dict[str, int | None] = field(default_factory=dict)
    """Documents per task for each scenario (``None``: every document; ``0``: the part is left out)."""
    scenarios: tuple[str, ...] = ALL_SCENARIOS
    stock_data_parallel: bool = False
    """Also run stock ``hf`` under 2 processes (on CPU each process evaluates everything)."""
    alternate_launches: bool = True
    """data-parallel: one launch per repetition, DP 1 and DP 2 alternating (else one launch per layout)."""
    options: dict[str, object] = field(default_factory=dict)
    """Defaults of run.py's scenario options, as ``"SCENARIO.option": value``."""
    worker_timeout_s: float = 600

    def limit(self, scenario: str) -> int | None:
        return self.limits.get(scenario)


SUITES: dict[str, Suite] = {
    "cpu-quick": Suite(
        # under 10 minutes (the earlier cpu-quick ran 34 min, 26 of them in real-tasks): demo-cache is
        # left out (cache measures hf_ext cold vs warm already); real-tasks runs in one worker, leaves
        # GSM8K to the gsm8k scenario and WikiText-2 to cpu-full (one document took ~15 s a run on each
        # side; hf-suite has a rolling row), runs one MMLU subject on 8 documents with stock at 1 and 8
        # (1 is its best), ARC-Easy and LAMBADA with stock at 8 and 16 (the best or within 1 % of it of
        # 1/8/16/32 at 24 and 60 documents), and no one-row-per-batch layout
        name="cpu-quick", model="smollm2-135m", device="cpu", dtype="float32", batch_size=8,
        repetitions=3, warmup_limit=1,
        limits={"hf-suite": 3, "data-parallel": 4, "cache": 2, "gsm8k": 1, "vllm": 3, "planner": 4,
                "generation-cot": 3, "generation-sc": 1,
                "real-tasks-arc": 24, "real-tasks-mmlu": 8, "real-tasks-lambada": 24, "real-tasks-wikitext": 0,
                "real-tasks-gsm8k": 0},
        scenarios=("hf-suite", "data-parallel", "cache", "gsm8k", "generation", "vllm", "planner", "real-tasks"),
        alternate_launches=False,
        options={"real-tasks.mmlu_subjects": 1, "real-tasks.stock_sizes": "8,16", "real-tasks.mmlu_sizes": "1,8",
                 "real-tasks.one_row": False,
                 # generation, short (it took 567 s with gsm8k_cot on 3 documents and 16 samples checked
                 # at a second budget and under two ranks): one question's 8 samples against stock at 8,
                 # no sample checks, no decode-rate figure (cpu-full has them all)
                 "generation.tasks": "sc", "generation.repeats": 8, "generation.decode_rows": "",
                 "generation.sizes_sc": "8", "generation.sample_checks": ""},
        worker_timeout_s=900,
    ),
    "cpu-full": Suite(
        name="cpu-full", model="smollm2-135m", device="cpu", dtype="float32", batch_size=8,
        repetitions=3, warmup_limit=2,
        # the shipped tasks whole in hf-suite, real-length GSM8K generations, stock vLLM's engine
        # starts; 4989 s before real-tasks and the figure scenarios were added
        limits={"hf-suite": None, "data-parallel": 30, "cache": 20, "gsm8k": 8, "vllm": 20, "planner": 30,
                "compare-hf": 12, "compare-hf-gsm8k": 8, "compare-hf-long": 4, "compare-vllm": 10,
                "real-tasks-arc": 100, "real-tasks-mmlu": 30, "real-tasks-lambada": 100, "real-tasks-wikitext": 8,
                "real-tasks-gsm8k": 8, "engine-ceiling-arc": 100, "engine-ceiling-mmlu": 50,
                "engine-ceiling-lambada": 100, "engine-ceiling-wikitext": 2, "vllm-block-bound-arc": 100,
                "vllm-block-bound-mmlu": 20, "vllm-prefix-cache-cost": 20,
                "generation-gsm8k": 32, "generation-cot": 32, "generation-sc": 2,
                # vllm-mc: the issue-24 sizes (stock MMLU 5-shot takes ~5 min a run on the 2-core CPU)
                "vllm-mc-arc0": 100, "vllm-mc-arc5": 40, "vllm-mc-mmlu5": 20, "vllm-mc-mmlu0": 25,
                "vllm-profile-arc5": 20, "vllm-profile-mmlu0": 10},
        stock_data_parallel=True,
        options={"real-tasks.generation_sizes": "1,8,16,32"},
        # generation's worker runs stock GSM8K at two batch sizes, 32 documents, three times
        worker_timeout_s=5400,
    ),
    "gpu": Suite(
        name="gpu", model="smollm2-135m", device="cuda", dtype="float32", batch_size=32,
        repetitions=3, warmup_limit=4,
        limits={"hf-suite": None, "data-parallel": None, "cache": None, "gsm8k": 64, "vllm": None, "planner": None,
                "compare-vllm": None},
        scenarios=tuple(s for s in BOUNDED_SCENARIOS if s != "real-tasks"), worker_timeout_s=300,
    ),
    # for developing the instrument: the tiny random model, a few documents
    "dev": Suite(
        name="dev", model="tiny-llama", device="cpu", dtype="float32", batch_size=8,
        repetitions=3, warmup_limit=1,
        limits={"hf-suite": 4, "data-parallel": 4, "cache": 4, "demo-cache": 4, "gsm8k": 2, "vllm": 4, "planner": 4,
                "compare-hf": 4, "compare-hf-gsm8k": 2, "compare-hf-long": 1, "compare-vllm": 3,
                "real-tasks-arc": 4, "real-tasks-mmlu": 2, "real-tasks-lambada": 4, "real-tasks-wikitext": 1,
                "real-tasks-gsm8k": 1, "engine-ceiling-arc": 4, "engine-ceiling-mmlu": 2,
                "engine-ceiling-lambada": 4, "engine-ceiling-wikitext": 1, "vllm-block-bound-arc": 4, "vllm-block-bound-mmlu": 2,
                "vllm-prefix-cache-cost": 4, "generation-gsm8k": 1, "generation-cot": 2, "generation-sc": 1,
                "vllm-mc-arc0": 2, "vllm-mc-arc5": 2, "vllm-mc-mmlu5": 2,
                "vllm-mc-mmlu0": 2, "vllm-profile-arc5": 2, "vllm-profile-mmlu0": 2},
        options={"real-tasks.mmlu_subjects": 1, "engine-ceiling.mmlu_subjects": 1, "engine-ceiling.rounds": 1,
                 "generation.repeats": 8, "generation.decode_rows": "1,4", "generation.sizes_gsm8k": "1",
                 "generation.sizes_cot": "1", "generation.sizes_sc": "4",
                 "forward-ceiling.shapes": "2x16,2x16+8", "forward-ceiling.seconds": 0.2},
        worker_timeout_s=300,
    ),
}
