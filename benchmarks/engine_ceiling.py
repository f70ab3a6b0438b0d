"""How close ``hf_ext``'s scoring runs to the decoder's ceiling, on lm-eval's own real tasks.

Runs ``hf_ext`` with only ``pretrained=`` and ``dtype=float32`` (``cache=off``) over a task
(lm-eval's definitions over ``../shared/data``, :mod:`benchmarks.lib.real_tasks`), records the
batches its engine scored, then times them again batch by batch, two sides interleaved (the 2-core
VM's speed moves 10-25 % within minutes, so the sides must alternate closely):

- **engine**: ``ScoringEngine.score_batch`` as the run called it (the decoder over the packed,
  padded rows with their masks, then the LM head and log-softmax at the scored positions);
- **ceiling**: the decoder alone, no LM head, over the batch's computed tokens laid out as equal
  unpadded causal rows (same row count); a batch after a family's few-shot prefix runs after
  that prefix's cached KV with grouped K/V read in place, as ``forward_ceiling.py``'s
  ``ROWSxTOKENS+PREFIX`` shapes. The prefix itself is computed once per family on both sides.
- **ceiling + head**: the same, then the LM head and log-softmax at as many positions as the
  batch has distinct scored positions: what any scorer must compute for these tokens (a
  continuation's log-probability needs the whole vocabulary's normaliser at each position that
  predicts one of its tokens).

Computed and padded tokens count each family's prefix once (as the cost report does). Prints, per task,
computed tokens/s of the engine and of both ceilings (fastest round of each), and the engine's share
of each ceiling (median of the per-round ratios).

    python benchmarks/engine_ceiling.py --tasks arc_easy_local,mmlu,lambada_openai_local --limit 200
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.lib import real_tasks


def record_batches(model: str, tasks: list[str], limit: int, task_dir: Path):
    """Run lm-eval with ``hf_ext``'s defaults; returns (the LM, the batches its engine scored)."""
    import lm_eval
    from lm_eval.api.registry import get_model
    from lm_eval.tasks import TaskManager

    lm = get_model("hf_ext").create_from_arg_string(f"pretrained={model},dtype=float32,cache=off")
    engine = lm.engine
    scored = []
    original = engine.score_batch

    def recording(batch):
        scored.append(batch)
        return original(batch)

    engine.score_batch = recording
    try:
        lm_eval.simple_evaluate(model=lm, tasks=tasks, limit=limit, task_manager=TaskManager(include_path=str(task_dir)))
    finally:
        engine.score_batch = original
    return lm, scored


def ceiling_forward(engine, batch, computes_prefix: bool):
    """The decoder over ``batch``'s computed tokens as equal causal rows (after its prefix;
    ``computes_prefix``: the family's first batch, which also runs the prefix as one causal row)."""
    import torch

    from lm_eval_ext.hf.compute.grouped_attention import grouped_query_attention

    parts, rows = engine.parts, len(batch.rows)
    width = max(1, round(batch.computed_tokens / rows))
    ids = torch.randint(100, 1000, (rows, width))
    if not batch.prefix:
        return lambda: parts.decoder(input_ids=ids, use_cache=False)
    prefix = len(batch.prefix)
    positions = torch.arange(prefix, prefix + width).expand(rows, -1)
    mask = torch.ones(width, prefix + width, dtype=torch.bool).tril_(prefix).expand(rows, 1, -1, -1)
    prefix_ids = torch.tensor([list(batch.prefix)])

    def forward():
        if computes_prefix:
            parts.decoder(input_ids=prefix_ids, use_cache=False)
        cache = engine.prefixes.cache_for(parts, batch.prefix, engine.host.device)
        with grouped_query_attention(parts.model):
            parts.decoder(input_ids=ids, position_ids=positions, attention_mask=mask, past_key_values=cache,
                          use_cache=True)

    return forward


def head_forward(engine, batch):
    """The LM head and log-softmax at ``batch``'s number of distinct scored positions."""
    import torch

    from lm_eval_ext.hf.compute.scoring import HEAD_CHUNK_TOKENS, target_positions

    hidden = torch.randn(len(target_positions(batch)[0]), engine.parts.head.weight.shape[1])

    def forward():  # in the engine's chunks: a rolling window's [8192, vocab] would be 1.6 GB at once
        for start in range(0, hidden.shape[0], HEAD_CHUNK_TOKENS):
            torch.log_softmax(engine.parts.head(hidden[start : start + HEAD_CHUNK_TOKENS]), dim=-1)

    return forward


def time_rounds(engine, batches, rounds: int) -> list[tuple[float, float, float]]:
    """(engine, ceiling, head) seconds per round, each batch timed on every side in turn. A
    family's prefix is computed once per round on each side: the engine's store holds one prefix,
    and a round starts from the other family's."""
    import torch

    firsts = {}
    for index, batch in enumerate(batches):
        firsts.setdefault(batch.prefix, index)
    sides = [(functools.partial(engine.score_batch, batch), ceiling_forward(engine, batch, firsts[batch.prefix] == index),
              head_forward(engine, batch)) for index, batch in enumerate(batches)]
    out = []
    with torch.no_grad():
        for calls in sides:  # warm-up: every shape once
            for call in calls:
                call()
        for _ in range(rounds):
            engine.prefixes.clear()
            seconds = [0.0, 0.0, 0.0]
            for calls in sides:
                for side, call in enumerate(calls):
                    start = time.perf_counter()
                    call()
                    seconds[side] += time.perf_counter() - start
            out.append(tuple(seconds))
    engine.prefixes.clear()
    return out


def summarise(task: str, batches, rounds: list[tuple[float, float, float]]) -> str:
    from lm_eval_ext.hf.compute.scoring import target_positions

    prefixes = {b.prefix for b in batches if b.prefix}
    computed = sum(b.computed_tokens for b in batches) + sum(len(p) for p in prefixes)
    padded = sum(b.padded_tokens for b in batches) + sum(len(p) for p in prefixes)
    found = [target_positions(b) for b in batches]
    scored = sum(len(slots) for _, _, slots in found)
    positions = sum(len(rows_idx) for rows_idx, _, _ in found)
    engine_s, ceiling_s, head_s = (min(r[side] for r in rounds) for side in range(3))
    decoder_share = statistics.median(c / e for e, c, _ in rounds)
    head_share = statistics.median((c + h) / e for e, c, h in rounds)
    return (f"{task:<16} {len(batches):>7} {computed:>8} {padded:>7} {len(prefixes):>8} {scored:>6} {positions:>9} "
            f"{computed / engine_s:>7.0f} {computed / ceiling_s:>8.0f} {computed / (ceiling_s + head_s):>8.0f} "
            f"{decoder_share:>8.1%} {head_share:>8.1%}")


HEADER = (f"{'task':<16} {'batches':>7} {'computed':>8} {'padded':>7} {'prefixes':>8} {'scored':>6} {'positions':>9} "
          f"{'engine':>7} {'decoder':>8} {'+ head':>8} {'share':>8} {'share':>8}\n"
          f"{'':<16} {'':>7} {'tokens':>8} {'tokens':>7} {'':>8} {'tokens':>6} {'':>9} "
          f"{'t/s':>7} {'t/s':>8} {'t/s':>8} {'decoder':>8} {'+ head':>8}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / ".models" / "smollm2-135m"))
    parser.add_argument("--tasks", default=f"{real_tasks.ARC},mmlu,{real_tasks.LAMBADA}",
                        help="comma-separated; 'mmlu' is --mmlu-subjects subjects of MMLU 5-shot")
    parser.add_argument("--limit", type=int, default=200, help="documents per task (per MMLU subject)")
    parser.add_argument("--mmlu-subjects", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data", type=Path, default=None, help="default: the first ../shared/data found")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    data = args.data or real_tasks.find_multiple_choice_data(ROOT)
    if data is None or not real_tasks.available(data):
        print("engine_ceiling: no ../shared/data with ARC-Easy and MMLU found; pass --data DIR", file=sys.stderr)
        return 2
    subjects = real_tasks.MMLU_SUBJECTS[: args.mmlu_subjects]
    lines = [HEADER]
    with tempfile.TemporaryDirectory() as tmp:
        task_dir = real_tasks.write_tasks(data, Path(tmp) / "tasks", subjects)
        for task in args.tasks.split(","):
            names = [real_tasks.mmlu_task(s) for s in subjects] if task == "mmlu" else [task]
            lm, batches = record_batches(args.model, names, args.limit, task_dir)
            lines.append(summarise(task, batches, time_rounds(lm.engine, batches, args.rounds)))
            print(lines[-1], flush=True)
            del lm
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
