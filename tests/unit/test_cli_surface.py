"""The CLI surface is frozen: subcommands, their flags (with choices and defaults) and each help line.

A change to what users type shows up here as a diff against ``cli_surface.json``; update the file on
purpose (``python tests/unit/test_cli_surface.py --write``) and say why in the commit.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

SNAPSHOT = Path(__file__).with_name("cli_surface.json")


def _describe(parser: argparse.ArgumentParser) -> dict:
    options, subcommands = {}, {}
    for action in parser._actions:  # argparse keeps no public list of its actions
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                subcommands[name] = _describe(sub)
            continue
        key = ",".join(action.option_strings) or action.dest
        options[key] = {"help": action.help, "choices": sorted(map(str, action.choices)) if action.choices else None,
                        "default": None if action.default is argparse.SUPPRESS else repr(action.default),
                        "nargs": repr(action.nargs)}
    return {"options": options, "subcommands": subcommands}


def surface() -> dict:
    from lm_eval_ext import cli

    out = {"commands": dict(cli.COMMANDS), "top": _describe(cli.build_parser())}
    for name in cli.COMMANDS:
        if name == "run":  # everything after "run" is lm-eval's own CLI
            continue
        out[name] = _describe(cli.build_parser(name))["subcommands"][name]
    return out


def test_the_cli_surface_is_unchanged():
    assert surface() == json.loads(SNAPSHOT.read_text())


def test_each_subcommand_help_prints_without_error(capsys):
    import pytest

    from lm_eval_ext import cli

    for name in cli.COMMANDS:
        argv = [name, "--help"] if name != "run" else ["--help"]
        with pytest.raises(SystemExit) as done:
            cli.main(argv)
        assert done.value.code == 0, name
    assert "plan" in capsys.readouterr().out


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    importlib.import_module("lm_eval_ext.cli")
    SNAPSHOT.write_text(json.dumps(surface(), indent=1, sort_keys=True) + "\n")
