"""EDGE: the one forward-ceiling measurement, in two forms (child side: these run in a fresh process
started by :mod:`benchmarks.lib.launch`; torch is imported inside the functions).

- :func:`forward_rates`: the decoder alone (``model.get_decoder()``, no LM head) on random ids at
  given shapes, ~``seconds`` per shape after a warm-up. ``ROWSxTOKENS+PREFIX`` times rows that
  continue a ``PREFIX``-token prefix computed once (transformers' own cache, the prefix's keys and
  values shared by every row); those rows are timed with transformers' ``sdpa`` (which copies each
  grouped K/V head per query head) and with ``lm_eval_ext.hf.compute.grouped_attention`` (the same
  attention reading the grouped heads in place). Only the rows' own tokens count.
- :func:`engine_replay`: ``hf_ext``'s scoring engine on a real task, its batches captured
  (:func:`capture_scored_batches`) and replayed batch by batch on three interleaved sides (the 2-core
  VM's speed moves 10-25 % within minutes, so the sides must alternate closely): **engine** (the
  engine's batch entry point as the run called it: decoder over the packed, padded rows, then LM
  head and log-softmax at the scored positions); **ceiling** (the decoder alone over the batch's
  computed tokens laid out as equal unpadded causal rows, after the family's cached prefix with
  grouped K/V read in place); **ceiling + head** (that, plus the LM head and log-softmax at the
  batch's distinct scored positions: what any scorer must compute for these tokens).

Computed and padded tokens count each family's prefix once (as the cost report does).
"""

from __future__ import annotations

import contextlib
import functools
import statistics
import time
from collections.abc import Iterator
from pathlib import Path


def parse_shape(shape: str) -> tuple[int, int, int]:
    """``ROWSxTOKENS`` or ``ROWSxTOKENS+PREFIX`` -> (rows, tokens, prefix tokens)."""
    body, _, prefix = shape.partition("+")
    rows, tokens = (int(n) for n in body.split("x"))
    return rows, tokens, int(prefix or 0)


def id_range(vocab_size: int) -> tuple[int, int]:
    """Token ids for random rows: ordinary ids (100-999) where the vocabulary has them."""
    high = min(1000, vocab_size)
    return min(100, high // 2), high


def _tokens_per_s(forward, tokens: int, seconds: float) -> float:
    """Calls ``forward`` for ``seconds`` after one warm-up call."""
    import torch

    with torch.no_grad():
        forward()
        start_s, calls = time.perf_counter(), 0
        while time.perf_counter() - start_s < seconds:
            forward()
            calls += 1
    return tokens * calls / (time.perf_counter() - start_s)


def _rows_after(decoder, prefix, ids):
    """One forward of ``ids``' rows after ``prefix``: its KV computed once, then each call gets a
    fresh cache holding it broadcast to the rows (what ``DynamicCache`` holds for a batch that
    shares a prompt); positions continue after the prefix."""
    import torch
    from transformers import DynamicCache

    once = DynamicCache()
    with torch.no_grad():
        decoder(input_ids=prefix, past_key_values=once, use_cache=True)
    layers = [(layer.keys, layer.values) for layer in once.layers]
    rows, tokens = ids.shape
    positions = torch.arange(prefix.shape[1], prefix.shape[1] + tokens).expand(rows, -1)

    def forward():
        cache = DynamicCache()
        for index, (keys, values) in enumerate(layers):
            cache.update(keys.expand(rows, -1, -1, -1), values.expand(rows, -1, -1, -1), index)
        decoder(input_ids=ids, past_key_values=cache, position_ids=positions, use_cache=True)

    return forward


def forward_rates(model: str, shapes: list[str], seconds: float, threads: int | None = None) -> dict:
    """Decoder tokens/s per shape (child target)."""
    import torch
    from transformers import AutoModelForCausalLM

    from lm_eval_ext.hf.compute.grouped_attention import grouped_query_attention

    if threads:
        torch.set_num_threads(threads)
    lm = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
    decoder = lm.get_decoder()
    generator = torch.Generator().manual_seed(0)
    low, high = id_range(lm.config.vocab_size)
    out = []
    for shape in shapes:
        rows, tokens, prefix_tokens = parse_shape(shape)
        ids = torch.randint(low, high, (rows, tokens), generator=generator)
        prefix = torch.randint(low, high, (1, prefix_tokens), generator=generator)
        if not prefix_tokens:
            rate = _tokens_per_s(functools.partial(decoder, input_ids=ids, use_cache=False), ids.numel(), seconds)
            out.append({"shape": shape, "tokens_per_s": rate})
            continue
        forward = _rows_after(decoder, prefix, ids)
        sdpa = _tokens_per_s(forward, ids.numel(), seconds)
        with grouped_query_attention(lm):
            grouped = _tokens_per_s(forward, ids.numel(), seconds)
        out.append({"shape": shape, "sdpa_tokens_per_s": sdpa, "grouped_tokens_per_s": grouped})
    return {"torch_threads": torch.get_num_threads(), "shapes": out}


def rates_table(rates: dict) -> str:
    lines = [f"torch threads {rates['torch_threads']}"]
    for entry in rates["shapes"]:
        rows, tokens, prefix = parse_shape(entry["shape"])
        label = f"{rows:>3} rows x {tokens:>4} tokens"
        if not prefix:
            lines.append(f"{label}: {entry['tokens_per_s']:>5.0f} tokens/s")
            continue
        lines.append(f"{label} after a {prefix}-token prefix, transformers sdpa: "
                     f"{entry['sdpa_tokens_per_s']:>5.0f} tokens/s")
        lines.append(f"{label} after a {prefix}-token prefix, grouped K/V in place: "
                     f"{entry['grouped_tokens_per_s']:>5.0f} tokens/s")
    return "\n".join(lines)


# ---- the engine's own batches, replayed --------------------------------------------------------
#: The hf scoring engine's batch entry point (``lm_eval_ext.hf.compute.engine.ScoringEngine``): one
#: batch in, its scores out. The one line to change if the engine renames it.
BATCH_ENTRY = "score_batch"


@contextlib.contextmanager
def capture_scored_batches(engine) -> Iterator[list]:
    """Record every batch ``engine`` scores while the block runs; the engine's own entry point is
    restored afterwards, also when the run fails."""
    scored: list = []
    own = vars(engine).get(BATCH_ENTRY)  # set on the instance (not the class's method): put it back
    original = getattr(engine, BATCH_ENTRY)

    def recording(batch):
        scored.append(batch)
        return original(batch)

    setattr(engine, BATCH_ENTRY, recording)
    try:
        yield scored
    finally:
        if own is None:
            delattr(engine, BATCH_ENTRY)
        else:
            setattr(engine, BATCH_ENTRY, own)


def record_batches(model: str, tasks: list[str], limit: int | None, task_dir: Path):
    """Run lm-eval with ``hf_ext``'s defaults; returns (the LM, the batches its engine scored)."""
    import lm_eval
    from lm_eval.api.registry import get_model
    from lm_eval.tasks import TaskManager

    import lm_eval_ext.registry

    lm_eval_ext.registry.register_models()
    lm = get_model("hf_ext").create_from_arg_string(f"pretrained={model},dtype=float32,cache=off")
    with capture_scored_batches(lm.engine) as scored:
        lm_eval.simple_evaluate(model=lm, tasks=tasks, limit=limit,
                                task_manager=TaskManager(include_path=str(task_dir)))
    return lm, scored


def ceiling_forward(engine, batch, computes_prefix: bool):
    """The decoder over ``batch``'s computed tokens as equal causal rows (after its prefix;
    ``computes_prefix``: the family's first batch, which also runs the prefix as one causal row)."""
    import torch

    from lm_eval_ext.hf.compute.grouped_attention import grouped_query_attention

    parts, rows = engine.parts, len(batch.rows)
    width = max(1, round(batch.computed_tokens / rows))
    ids = torch.randint(*id_range(parts.head.weight.shape[0]), (rows, width))
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
    sides = [(functools.partial(getattr(engine, BATCH_ENTRY), batch),
              ceiling_forward(engine, batch, firsts[batch.prefix] == index),
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
    """One line of :data:`HEADER`: what the engine computed, each side's tokens/s (fastest round),
    and the engine's share of each ceiling (median of the per-round ratios)."""
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


def engine_replay(model: str, task_dir: str, tasks: dict[str, list[str]], limits: dict[str, int | None],
                  rounds: int, threads: int | None = None) -> dict:
    """Child target: per entry of ``tasks`` (label -> lm-eval task names) one ``hf_ext`` run on
    ``limits[label]`` documents, its batches replayed; returns the summary lines."""
    import logging

    import torch

    if threads:
        torch.set_num_threads(threads)
    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    lines = {}
    for label, names in tasks.items():
        lm, batches = record_batches(model, names, limits.get(label), Path(task_dir))
        lines[label] = summarise(label, batches, time_rounds(lm.engine, batches, rounds))
        del lm
    return {"header": HEADER, "lines": lines}
