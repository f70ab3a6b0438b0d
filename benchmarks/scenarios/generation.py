"""Generation at the hardware's pace: the ``generation`` scenario.

lm-eval's own ``gsm8k`` (5-shot, examples drawn per document), ``gsm8k_cot`` (8 fixed shots) and
``gsm8k_cot_self_consistency`` (64 samples per question, ``max_gen_toks`` 64) over
``../shared/data``; stock ``hf`` at each of its batch sizes against ``hf_ext`` given only
``pretrained=``/``dtype=`` (and ``cache=off``, so a repetition never reads an earlier one's
answers); repetitions interleaved in one worker. The row is stock's best median against hf_ext,
with per-sample agreement (greedy: identical strings).

Figures beside the rows:
- ``bound``: for a task whose prompts are each their own (``gsm8k``) hf_ext cannot do better than
  prefilling its prompts at the forward ceiling (the decoder alone at 1 x 1,000 tokens, measured
  in the same run): bound = stock's best / (prefill tokens / ceiling rate); the row's share of it.
- ``decode``: decode tokens/s of the continuous loop at 1 and 32 live rows on ~1,000-token GSM8K
  contexts (:mod:`benchmarks.lib.decode_rate`): what batching the decode buys by itself.
- ``samples``: the self-consistency samples of hf_ext at a second token budget (8 live rows) and
  under two ranks against its defaults' samples: any sample that differs is listed.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.lib import compare, gsm8k
from benchmarks.lib.compare import EXT, Comparison, Group
from benchmarks.lib.rows import pick
from benchmarks.lib.scenarios import Context, Skip, result, scenario
from benchmarks.lib.stats import summarize

TASKS = {"gsm8k": gsm8k.TASK_NAME, "cot": gsm8k.COT, "sc": gsm8k.SELF_CONSISTENCY}
#: stock's batch sizes per task: greedy generation on this CPU is fastest at 1 (TOOLCHAIN.md: GSM8K
#: 47.7 s at 1, 191 s at 8), sampled repeats of one prompt pad nothing, so larger batches pay there
STOCK_SIZES = {"gsm8k": (1, 4), "cot": (1, 4), "sc": (1, 8, 16)}
DEFAULT_LIMITS = {"gsm8k": 32, "cot": 32, "sc": 2}
#: hf_ext at a small token budget for the sample-equality check: self-consistency rows hold one
#: prompt token and 64 new ones (65 columns), so 520 tokens is a pool of 8 rows
SMALL_POOL = "hf_ext 8 rows"
SMALL_POOL_TOKENS = 520
CEILING_SHAPE = "1x1000"


def configurations(key: str, sizes: tuple[int, ...], small_pool: bool = True) -> dict[str, dict]:
    """Configuration name -> backend and model_args extras, for one task (PURE)."""
    configs = {f"hf batch_size={n}": {"backend": "hf", "batch_size": n} for n in sizes}
    configs[EXT] = {"backend": "hf_ext", "cache": "off"}
    if key == "sc" and small_pool:
        configs[SMALL_POOL] = {"backend": "hf_ext", "cache": "off", "max_batch_tokens": SMALL_POOL_TOKENS}
    return configs


def bound_note(row: dict, steps: list[dict], ceiling_tokens_per_s: float | None) -> str:
    """``gsm8k: bound 1.95x (prefill 31,012 tokens at 590 tokens/s = 52.6 s); hf_ext at 91% of it``."""
    ext = pick(steps, EXT, f"{row['key']}/")
    counters = ext[0].get("extension", {}).get("by_task", {}).get(TASKS[row["key"]], {}) if ext else {}
    prefill, stock = counters.get("prefill_tokens"), row.get("baseline", {}).get("median_s")
    if not (prefill and stock and ceiling_tokens_per_s and row["candidate"].get("median_s")):
        return f"{row['key']}: bound not computed (prefill {prefill}, ceiling {ceiling_tokens_per_s})"
    floor_s = prefill / ceiling_tokens_per_s
    bound = stock / floor_s
    speedup = stock / row["candidate"]["median_s"]
    return (f"{row['key']}: bound {bound:.2f}x (stock's best {stock:.1f} s / prefill {prefill:,.0f} tokens at the "
            f"ceiling's {ceiling_tokens_per_s:,.0f} tokens/s = {floor_s:.1f} s); hf_ext {speedup:.2f}x = "
            f"{100 * speedup / bound:.0f}% of it")


def loop_note(key: str, steps: list[dict]) -> str:
    ext = pick(steps, EXT, f"{key}/")
    counters = ext[0].get("extension", {}).get("by_task", {}).get(TASKS[key], {}) if ext else {}
    if not counters.get("decode_steps"):
        return f"{key}: no continuous-loop counters"
    return (f"{key}: hf_ext prefilled {counters['prefill_tokens']:,.0f} tokens (stock: every prompt whole), decoded "
            f"{counters['decode_tokens']:,.0f} in {counters['decode_steps']:.0f} steps, "
            f"{counters['live_row_steps'] / counters['decode_steps']:.1f} live rows on average")


def sample_differences(steps: list[dict], key: str, other: str, other_steps: list[dict] | None = None,
                       other_label: str | None = None) -> list[str]:
    """Samples of ``other`` (in ``other_steps``, default the same run) that differ from hf_ext's
    defaults, per document and repeat."""
    want, got = pick(steps, EXT, f"{key}/"), pick(other_steps if other_steps is not None else steps, other, f"{key}/")
    other = other_label or other
    if not want or not got or "samples" not in want[0] or "samples" not in got[0]:
        return [f"{other}: no samples recorded"]
    task = TASKS[key]
    mine, theirs = want[0]["samples"].get(task, {}), got[0]["samples"].get(task, {})
    diffs = []
    for doc, resps in mine.items():
        draws, other_draws = resps[0], theirs.get(doc, [None])[0]
        for i, (a, b) in enumerate(zip(draws, other_draws or [None] * len(draws))):
            if a != b:
                diffs.append(f"{other}: document {doc} sample {i} differs: {a[:80]!r} vs {str(b)[:80]!r}")
    count = sum(len(r[0]) for r in mine.values())
    return diffs or [f"{other}: all {count} samples equal hf_ext's defaults ({len(mine)} documents)"]


def two_ranks(ctx: Context, comparison: Comparison, steps: list[dict]) -> list[str]:
    """hf_ext's self-consistency samples under two ranks (gloo on CPU) against one process's."""
    if ctx.num_cores < 2 and not ctx.use_gpu:
        return ["two ranks: skipped (one core)"]
    group = next(g for g in comparison.groups if g.key == "sc")
    dp2 = Comparison("generation-dp2", {EXT: comparison.impls[EXT]}, [Group("sc", group.tasks, group.limit, (EXT,))],
                     comparison.include_path, stock=(), candidate=EXT, num_processes=2, warmup_tasks=group.tasks)
    merged = compare.run(ctx, dp2)
    return sample_differences(steps, "sc", EXT, merged.get("steps", []), "hf_ext under two ranks")


@scenario("generation", "generation: stock hf's best batch_size vs hf_ext defaults on lm-eval's gsm8k, gsm8k_cot, "
          "gsm8k_cot_self_consistency", options=("tasks", "limit", "repeats", "decode_rows", "sizes_gsm8k", "sizes_cot", "sizes_sc",
                   "sample_checks"))
def generation(ctx: Context) -> dict:
    data = ctx.data_dir / "gsm8k" if ctx.data_dir else None
    if data is None or not (data / "test.jsonl").exists():
        raise Skip("GSM8K data not found (../shared/data/gsm8k; BENCH_DATA_DIR overrides)")
    keys = [k for k in str(ctx.option("tasks", ",".join(TASKS))).split(",") if k]
    repeats = ctx.option("repeats")
    include = [str(gsm8k.write_generation_tasks(data, ctx.work_dir / "generation-yaml",
                                                int(repeats) if repeats else None))]
    checks = [c for c in str(ctx.option("sample_checks", "budget,ranks")).split(",") if c]
    configs: dict[str, dict] = {}
    groups = []
    for key in keys:
        mine = configurations(key, ctx.sizes(f"sizes_{key}", STOCK_SIZES[key]), small_pool="budget" in checks)
        configs.update(mine)
        groups.append(Group(key, (TASKS[key],), ctx.limit("generation", key, DEFAULT_LIMITS[key]), tuple(mine)))
    comparison = Comparison("generation", compare.hf_impls(ctx, configs), groups, ctx.include_path(*map(Path, include)),
                            stock=tuple(n for n in configs if n.startswith("hf ")), candidate=EXT,
                            warmup_tasks=(TASKS[keys[0]],))
    merged = compare.run(ctx, comparison)
    steps = merged.get("steps", [])
    # sampled rows are not compared with stock's samples: stock draws a padded batch from torch's global
    # generator (another batch size, another sample); hf_ext's are checked against themselves below
    rows = compare.best_rows(comparison, merged, lambda g: f"generation {g.key} ({TASKS[g.key]}, {g.limit} docs)",
                             compared=lambda g: g.key != "sc")
    notes = [compare.medians_note(r) for r in rows] + [loop_note(r["key"], steps) for r in rows]
    figures = {}
    if "gsm8k" in keys:
        from benchmarks.scenarios.ceiling import decoder_rate

        ceiling = decoder_rate(ctx, "generation-ceiling", CEILING_SHAPE)
        notes += [bound_note(r, steps, ceiling) for r in rows if r["key"] == "gsm8k"]
    if "sc" in keys and "budget" in checks:
        notes += sample_differences(steps, "sc", SMALL_POOL)
    if "sc" in keys and "ranks" in checks:
        notes += two_ranks(ctx, comparison, steps)
    decode_rows = [int(n) for n in str(ctx.option("decode_rows", "1,32")).split(",") if n]
    if decode_rows:
        rates = ctx.run_function("generation-decode", "benchmarks.lib.decode_rate:measure",
                                 {"model_path": str(ctx.model_path), "data_dir": str(ctx.data_dir),
                                  "rows": decode_rows})
        medians = {n: summarize(v).median for n, v in rates["rows"].items()}
        line = ", ".join(f"{n} rows {m:,.1f} tokens/s" for n, m in medians.items())
        if len(medians) > 1:
            low, high = medians[str(min(decode_rows))], medians[str(max(decode_rows))]
            line += f" ({high / low:.1f}x from {min(decode_rows)} to {max(decode_rows)} rows)"
        notes.append(f"decode throughput of the continuous loop ({rates['context_tokens']}-token contexts): {line}")
        figures["decode"] = line
    return result(rows, {"generation": merged}, {"tasks": keys, "include": include}, notes, figures=figures)


@scenario("generate-batch", "transformers' generate_batch (continuous batching, paged attention) vs hf_ext's loop, "
          "same GSM8K requests, greedy, fixed length", options=("limit",))
def generate_batch(ctx: Context) -> dict:
    if ctx.data_dir is None or not (ctx.data_dir / "gsm8k" / "test.jsonl").exists():
        raise Skip("GSM8K data not found (../shared/data/gsm8k; BENCH_DATA_DIR overrides)")
    out = ctx.run_function("generate-batch", "benchmarks.lib.decode_rate:versus_generate_batch",
                           {"model_path": str(ctx.model_path), "data_dir": str(ctx.data_dir),
                            "num_prompts": ctx.limit("generate-batch", "", 16)})
    medians = {name: summarize(v).median for name, v in out["times_s"].items()}
    line = (f"{out['num_prompts']} GSM8K questions x {out['new_tokens']} new tokens: generate_batch "
            f"{medians['generate_batch']:.2f} s (first call {out['generate_batch_first_call_s']:.2f} s), hf_ext's loop "
            f"{medians['hf_ext loop']:.2f} s; same tokens: {out['same_tokens']}")
    return {"runs": {"generate-batch": out}, "config": {}, "notes": [line], "figures": {"table": line}}
