"""``lm-eval-ext cache stats|verify|clear|export|compact``: inspect and maintain the request cache.

With shard files (the layout for network filesystems, docs/cache.md) ``stats``, ``verify`` and
``export`` read a merged copy on local disk, ``clear`` folds the shards first, and ``compact`` folds
them into ``requests.sqlite``.

``verify`` first checks the file (SQLite integrity, every value's shape, every key recomputed from
its stored arguments), then, given ``--model-args``, recomputes a random sample of that model's
entries with the model and reports each mismatch.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import sys
from pathlib import Path

from lm_eval_ext.cache.fold import DEFAULT_STALE_AFTER_S, fold, merged_view
from lm_eval_ext.cache.shards import shard_paths
from lm_eval_ext.cache.store import DB_FILE, RequestStore, default_cache_dir
from lm_eval_ext.errors import UserError
from lm_eval_ext.cache.keys import CachedValueError, decode_value, request_key


def emit(text: str = "") -> None:
    """The command's output (stdout); diagnostics go to logging."""
    sys.stdout.write(text + "\n")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="cache directory (default: $LM_EVAL_EXT_CACHE_DIR or ~/.cache/lm_eval_ext)")
    actions = parser.add_subparsers(dest="action", required=True, metavar="{stats,verify,clear,export,compact}")
    actions.add_parser("stats", help="entries per model and request type, size, hit counts")
    verify = actions.add_parser("verify", help="integrity check; recompute a random sample with the model")
    verify.add_argument("--model-args", default=None,
                        help="model_args of the model to recompute with, e.g. pretrained=PATH")
    verify.add_argument("--backend", choices=("hf_ext", "vllm_ext"), default="hf_ext",
                        help="the lm-eval-ext model that filled the cache (default hf_ext)")
    verify.add_argument("--sample", type=int, default=20, help="entries to recompute (default 20)")
    verify.add_argument("--seed", type=int, default=0)
    clear = actions.add_parser("clear", help="delete entries: --all, --model, --older-than")
    clear.add_argument("--all", action="store_true", help="delete every entry")
    clear.add_argument("--model", default=None, help="model label (pretrained) or fingerprint prefix")
    clear.add_argument("--older-than", default=None, metavar="DATE", help="ISO date, e.g. 2026-11-01")
    export = actions.add_parser("export", help="write entries as JSON lines")
    export.add_argument("--model", default=None, help="model label (pretrained) or fingerprint prefix")
    export.add_argument("--output", "-o", type=Path, default=None, help="file (default: stdout)")
    compact = actions.add_parser("compact", help="fold shard files (the layout for network filesystems) into "
                                                 "requests.sqlite and delete those whose writers are done")
    compact.add_argument("--stale-hours", type=float, default=DEFAULT_STALE_AFTER_S / 3600,
                         help="a shard unchanged this long counts as done, its writer gone (default 24)")


ACTIONS = ("stats", "verify", "clear", "export")


def main(args: argparse.Namespace) -> int:
    cache_dir = Path(args.cache_dir or default_cache_dir()).expanduser()
    if args.action == "export" and args.output is not None:
        check_output_path(args.output)
    if args.action == "compact":
        return _compact(cache_dir, args)
    if shard_paths(cache_dir):  # the shards layout (or shards left from it): read through a merged copy
        return _with_shards(cache_dir, args)
    # only clear writes: stats, verify and export open read-only and so work on read-only storage
    store = RequestStore.open(cache_dir, create=False, readonly=args.action != "clear")
    try:
        return dict(zip(ACTIONS, (_stats, _verify, _clear, _export)))[args.action](store, args)
    finally:
        store.close()


def _with_shards(cache_dir: Path, args) -> int:
    with merged_view(cache_dir) as (view, report):
        view.path = cache_dir / DB_FILE  # what the output names: the cache, not the temporary copy
        if args.action == "clear":
            _clear_checked(args)
            fingerprints = _matching_fingerprints(view, args.model) if args.model else None
        elif args.action == "verify":
            for where in report.unreadable:
                emit(f"NOTE shard line {where} did not check out (cut by a kill, or still being written); "
                     "its request is computed again when needed")
            return _verify(view, args)
        else:
            return {"stats": _stats, "export": _export}[args.action](view, args)
    before_s = _parse_date(args.older_than).timestamp() if args.older_than else None
    folded = fold(cache_dir, delete=lambda store: store.delete(fingerprints=fingerprints, before_s=before_s))
    emit(f"deleted {folded.num_deleted} entries from {cache_dir / DB_FILE} (shards folded into it first)")
    return 0


def _compact(cache_dir: Path, args) -> int:
    if args.stale_hours <= 0:
        raise UserError(f"--stale-hours {args.stale_hours} must be positive, e.g. --stale-hours 24")
    report = fold(cache_dir, stale_after_s=args.stale_hours * 3600)
    emit(f"folded {report.num_entries} new entries into {cache_dir / DB_FILE}; deleted "
         f"{len(report.deleted_shards)} finished shard(s); kept {len(report.kept_shards)} shard(s) whose writers may "
         "still append (read from where the fold stopped)")
    if report.unreadable:
        emit(f"{len(report.unreadable)} shard line(s) did not check out (cut by a kill); their requests are "
             "computed again when needed")
    return 0


def check_output_path(output: Path) -> None:
    """``-o`` must name a file whose folder exists; refused before the cache is opened."""
    if output.is_dir():
        raise UserError(f"cache export -o {output}: that is a directory; name a file, e.g. -o {output / 'cache.jsonl'}")
    parent = output.parent
    if not parent.is_dir():
        what = "is not a directory" if parent.exists() else "does not exist"
        raise UserError(f"cache export -o {output}: the folder {parent} {what}; create it (mkdir -p {parent}) "
                        "or choose another path")


def _open_output(output: Path):
    try:
        return output.open("w")
    except OSError as exc:
        raise UserError(f"cache export -o {output}: cannot write it ({exc.strerror}); choose another path") from None


def _stats(store: RequestStore, args) -> int:
    rows = store.query(
        "SELECT COALESCE(m.label, '?'), e.fingerprint, e.request_type, COUNT(*), SUM(e.hits),"
        " SUM(LENGTH(e.args_json) + LENGTH(e.value_json)), SUM(e.compute_s)"
        " FROM entries e LEFT JOIN models m ON m.fingerprint = e.fingerprint"
        " GROUP BY e.fingerprint, e.request_type ORDER BY 1, 3"
    )
    shards = shard_paths(store.path.parent)
    size_bytes = sum(p.stat().st_size for p in [*store.path.parent.glob(DB_FILE + "*"), *shards])
    in_shards = f", {len(shards)} shard file(s)" if shards else ""
    emit(f"cache: {store.path} ({size_bytes / 2**20:.1f} MiB on disk{in_shards})")
    emit(f"{'model':40} {'fingerprint':16} {'request type':22} {'entries':>8} {'hits':>8} {'MiB':>7} {'compute s':>10}")
    for label, fp, rtype, count, hits, payload_bytes, compute_s in rows:
        emit(f"{label[-40:]:40} {fp[:16]:16} {rtype:22} {count:8d} {hits:8d} "
             f"{payload_bytes / 2**20:7.2f} {compute_s:10.1f}")
    total = sum(row[3] for row in rows)
    emit(f"{total} entries, {sum(row[4] for row in rows)} hits served")
    return 0


def _matching_fingerprints(store: RequestStore, model: str) -> list[str]:
    rows = store.query("SELECT fingerprint, label FROM models")
    found = [fp for fp, label in rows if label == model or fp.startswith(model)]
    if not found:
        known = ", ".join(sorted({label for _, label in rows})) or "none"
        raise UserError(f"--model {model!r} matches no model in the cache; known models: {known}")
    return found


def _clear_checked(args) -> None:
    if not (args.all or args.model or args.older_than):
        raise UserError("cache clear needs --all, --model NAME or --older-than DATE")


def _clear(store: RequestStore, args) -> int:
    _clear_checked(args)
    fingerprints = _matching_fingerprints(store, args.model) if args.model else None
    before_s = _parse_date(args.older_than).timestamp() if args.older_than else None
    deleted = store.delete(fingerprints=fingerprints, before_s=before_s)
    emit(f"deleted {deleted} entries from {store.path}")
    return 0


def _parse_date(text: str) -> dt.datetime:
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        raise UserError(f"--older-than {text!r} is not a date; use ISO form, e.g. 2026-11-01 or 2026-11-01T12:00") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)


def _export(store: RequestStore, args) -> int:
    fingerprint = None
    if args.model:
        matches = _matching_fingerprints(store, args.model)
        if len(matches) > 1:
            raise UserError(f"--model {args.model!r} matches {len(matches)} models; give a fingerprint prefix")
        fingerprint = matches[0]
    labels = dict(store.query("SELECT fingerprint, label FROM models"))
    handle = _open_output(args.output) if args.output else sys.stdout
    count = 0
    try:
        for key, fp, rtype, args_json, value_json, compute_s, created_s, hits in store.iter_entries(fingerprint):
            handle.write(json.dumps({
                "key": key, "model": labels.get(fp), "fingerprint": fp, "request_type": rtype,
                "args": json.loads(args_json), "value": json.loads(value_json),
                "compute_s": compute_s, "created": dt.datetime.fromtimestamp(created_s, dt.timezone.utc).isoformat(),
                "hits": hits,
            }) + "\n")
            count += 1
    finally:
        if args.output:
            handle.close()
    if args.output:
        emit(f"exported {count} entries to {args.output}")
    return 0


def check_entries(store: RequestStore) -> list[str]:
    """Problems found without a model: SQLite integrity, value shapes, keys vs stored arguments."""
    problems = store.integrity_errors()
    for key, fp, rtype, args_json, value_json, *_ in store.iter_entries():
        try:
            decode_value(rtype, value_json)
            if request_key(fp, rtype, json.loads(args_json)) != key:
                problems.append(f"entry {key[:16]}: key does not match its stored arguments")
        except (CachedValueError, ValueError) as exc:
            problems.append(f"entry {key[:16]}: {exc}")
    return problems


def _verify(store: RequestStore, args) -> int:
    problems = check_entries(store)
    for problem in problems:
        emit(f"PROBLEM {problem}")
    emit(f"integrity: {'ok' if not problems else f'{len(problems)} problems'}")
    mismatches = 0
    if args.model_args:
        from lm_eval_ext.commands.cache_verify import recompute_sample

        mismatches = recompute_sample(store, args.model_args, args.sample, random.Random(args.seed), emit,
                                      backend=args.backend)
    elif args.sample:
        emit("recompute: skipped (give --model-args pretrained=... to recompute a sample with the model)")
    return 1 if problems or mismatches else 0
