"""``lm-eval-ext``: plan | run | cache. Each subcommand lives in ``lm_eval_ext.commands.<name>``
and exposes ``add_arguments(parser)`` and ``main(args) -> int``; modules are imported only when
their subcommand runs, so ``lm-eval-ext --help`` stays fast."""

from __future__ import annotations

import argparse
import importlib
import sys

from lm_eval_ext.errors import RunInterrupted, UserError

#: subcommand -> one-line help. Add a line here when a ``commands`` module lands.
COMMANDS: dict[str, str] = {
    "run": "register hf_ext/vllm_ext, add tasks/ to the include path, then run lm-eval's CLI",
    "plan": "dry run: the parallel layout for a model on real or described GPUs, and why (no weights loaded)",
    "cache": "request cache: stats, verify (integrity + recompute a sample), clear, export",
}


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lm-eval-ext", description=__doc__.split(".")[0])
    subparsers = parser.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}")
    for name, help_text in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, add_help=name != "run")
        if name == selected:
            importlib.import_module(f"lm_eval_ext.commands.{name}").add_arguments(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    selected = argv[0] if argv and argv[0] in COMMANDS else None
    if selected == "run":  # everything after "run" belongs to lm-eval's own parser
        from lm_eval_ext.commands import run

        return _guarded(run.main, argv[1:])
    parser = build_parser(selected)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    module = importlib.import_module(f"lm_eval_ext.commands.{args.command}")
    return _guarded(module.main, args)


def _guarded(entry, args) -> int:
    try:
        return int(entry(args) or 0)
    except RunInterrupted as exc:  # its line is printed where it was raised
        return exc.code
    except UserError as exc:
        sys.stderr.write(f"lm-eval-ext {sys.argv[1] if len(sys.argv) > 1 else ''}: error: {exc}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
