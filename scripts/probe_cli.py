"""Probe the real CLI the way a new user meets it: generation arguments, task selection, devices,
launchers and signals. Each case runs ``lm-eval-ext run`` (or ``lm_eval``) with the tiny model and a
shipped task in a scratch folder, and records the exit status, the last line printed and what kind of
ending it was (a one-line error, a run, a traceback, a hang). Prints a markdown table.

    python scripts/probe_cli.py                    # every case (a few minutes on 2 cores)
    python scripts/probe_cli.py --only G1,T1,S1    # some
    python scripts/probe_cli.py --json probe.json  # also the outcomes as JSON

``tests/reliability/test_probe_cases.py`` runs a subset and checks their lines.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MODEL = REPO / ".models" / "tiny-llama"
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
SLOW = "max_batch_tokens=off,share_contexts=false"  # one request per batch: long enough to signal mid-run


@dataclass(frozen=True)
class Case:
    id: str
    what: str
    """what the user typed or did, in words"""
    argv: tuple[str, ...]
    env: dict = field(default_factory=dict)
    signals: tuple = ()
    """((signal, delay_s), ...) sent once ``signal_when`` holds"""
    signal_when: str = ""
    """``entries:N`` (N results stored) or ``text:MARK`` (MARK printed)"""
    timeout_s: float = 300


def run_cmd(*extra: str, tasks: str = "ext_copy_gen", model_args: str = "", limit: str | None = "2") -> tuple[str, ...]:
    args = f"pretrained={MODEL}" + (f",{model_args}" if model_args else "")
    limit_args = ("--limit", limit) if limit is not None else ()
    return (str(BIN / "lm-eval-ext"), "run", "--model", "hf_ext", "--model_args", args, "--tasks", tasks,
            *limit_args, "--output_path", "out", *extra)


def lm_eval_cmd(*extra: str, model_args: str = "") -> tuple[str, ...]:
    args = f"pretrained={MODEL}" + (f",{model_args}" if model_args else "")
    return (sys.executable, "-m", "lm_eval", "--model", "hf_ext", "--model_args", args, "--tasks", "ext_suite",
            "--include_path", str(REPO / "tasks"), "--limit", "12", "--output_path", "out", *extra)


def _srun(rank: int, tasks: int, **extra: str) -> dict:
    return {"SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank), "SLURM_NTASKS": str(tasks),
            "SLURM_NODELIST": "127.0.0.1", "SLURM_JOB_ID": "777", "LM_EVAL_EXT_RENDEZVOUS_TIMEOUT_S": "5", **extra}


def _gen(case_id: str, gen_kwargs: str, what: str = "") -> Case:
    return Case(case_id, what or f"--gen_kwargs {gen_kwargs}", run_cmd("--gen_kwargs", gen_kwargs))


def _device(case_id: str, device: str, what: str = "") -> Case:
    return Case(case_id, what or f"--device {device}", run_cmd("--device", device))


CASES = [
    # generation arguments
    _gen("G1", "max_gen_toks=abc"),
    _gen("G2", "max_gen_toks=-5"),
    _gen("G3", "max_gen_toks=0"),
    _gen("G4", "max_gen_toks=100000", "--gen_kwargs max_gen_toks=100000 (more than the model's length)"),
    _gen("G5", "temperature=abc"),
    _gen("G6", "temperature=-1,do_sample=true"),
    _gen("G7", "do_sample=maybe"),
    _gen("G8", "top_p=1.5,do_sample=true"),
    _gen("G9", "foo=1", "--gen_kwargs foo=1 (no such generation argument)"),
    _gen("G10", "max_gen_toks", "--gen_kwargs max_gen_toks (no value)"),
    _gen("G11", "num_beams=2"),
    _gen("G12", "do_sample=true,temperature=0.7", "--gen_kwargs do_sample=true,temperature=0.7 (sampled, no seed)"),
    _gen("G13", "until=zzz,max_gen_toks=4"),
    # task selection
    Case("T1", "--limit 0", run_cmd(limit="0")),
    Case("T2", "--limit -1", run_cmd(limit="-1")),
    Case("T3", "--limit abc", run_cmd(limit="abc")),
    Case("T4", "--limit 0.5 (a fraction of the documents)", run_cmd(limit="0.5")),
    Case("T5", "--tasks '' (empty)", run_cmd(tasks="")),
    Case("T6", "no --tasks at all", (str(BIN / "lm-eval-ext"), "run", "--model", "hf_ext", "--model_args",
                                      f"pretrained={MODEL}", "--output_path", "out")),
    Case("T7", "--tasks ext_copy_gen,ext_copy_gen (twice)", run_cmd(tasks="ext_copy_gen,ext_copy_gen")),
    Case("T8", "--tasks 'ext_copy_gen, ext_arith_mc' (a space after the comma)",
         run_cmd(tasks="ext_copy_gen, ext_arith_mc")),
    Case("T9", "--tasks ./missing.yaml", run_cmd(tasks="./missing.yaml")),
    Case("T10", "--num_fewshot -1", run_cmd("--num_fewshot", "-1")),
    Case("T11", "--num_fewshot 1000", run_cmd("--num_fewshot", "1000", tasks="ext_arith_mc")),
    Case("T12", "--include_path /no/such/dir", run_cmd("--include_path", "/no/such/dir")),
    Case("T13", "--samples '{\"ext_copy_gen\": [9999]}' (no such document)",
         run_cmd("--samples", '{"ext_copy_gen": [9999]}', limit=None)),
    Case("T14", "lm_eval (not lm-eval-ext run) --model hf_ext --limit 0",
         (sys.executable, "-m", "lm_eval", "--model", "hf_ext", "--model_args", f"pretrained={MODEL}", "--tasks",
          "ext_copy_gen", "--include_path", str(REPO / "tasks"), "--limit", "0", "--output_path", "out")),
    # devices
    _device("D1", "mps", "--device mps on a machine without MPS"),
    _device("D2", "cuda", "--device cuda without a GPU"),
    _device("D3", "cuda:1", "--device cuda:1 without a GPU"),
    _device("D4", "xpu"),
    _device("D5", "gpu"),
    _device("D6", "cpu:0"),
    _device("D7", "", "--device ''"),
    Case("D8", "--model_args dtype=float16x", run_cmd(model_args="dtype=float16x")),
    # launchers
    Case("L1", "srun task 0 of 2 whose task 1 never starts", run_cmd(), env=_srun(0, 2)),
    Case("L2", "SLURM_PROCID=3 with SLURM_NTASKS=2 (hand-set)", run_cmd(), env=_srun(3, 2)),
    Case("L3", "SLURM_NODELIST='node[01-' (malformed)", run_cmd(), env=_srun(1, 2, SLURM_NODELIST="node[01-")),
    Case("L4", "SLURM_NTASKS=two", run_cmd(), env=_srun(0, 2, SLURM_NTASKS="two")),
    Case("L5", "lm_eval in an sbatch script with --ntasks 4, no srun", run_cmd(),
         env={"SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NTASKS": "4", "SLURM_GTIDS": "0",
              "SLURM_TASKS_PER_NODE": "4", "SLURM_NODELIST": "node01", "SLURM_JOB_ID": "9"}),
    Case("L6", "WORLD_SIZE=2 RANK=0 LOCAL_RANK=0 set by hand, no MASTER_ADDR", run_cmd(),
         env={"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}),
    Case("L7", "LM_EVAL_EXT_CACHE_LAYOUT=sharded (typo)", run_cmd(), env={"LM_EVAL_EXT_CACHE_LAYOUT": "sharded"}),
    Case("L8", "LM_EVAL_EXT_RENDEZVOUS_TIMEOUT_S=soon under srun", run_cmd(),
         env=_srun(0, 2, LM_EVAL_EXT_RENDEZVOUS_TIMEOUT_S="soon")),
    Case("L9", "accelerate launch --cpu --num_processes 2 (stock accelerate starts one process)",
         (str(BIN / "accelerate"), "launch", "--cpu", "--num_processes", "2", "-m", "lm_eval", "--model", "hf_ext",
          "--model_args", f"pretrained={MODEL}", "--tasks", "ext_copy_gen", "--include_path", str(REPO / "tasks"),
          "--limit", "2", "--output_path", "out")),
    # signals
    Case("S1", "SIGTERM mid-run (lm-eval-ext run)", run_cmd(tasks="ext_suite", model_args=SLOW, limit="12"),
         signals=((signal.SIGTERM, 0),), signal_when="entries:3"),
    Case("S2", "SIGTERM mid-run (lm_eval)", lm_eval_cmd(model_args=SLOW), signals=((signal.SIGTERM, 0),),
         signal_when="entries:3"),
    Case("S3", "SIGTERM twice, 1 ms apart", run_cmd(tasks="ext_suite", model_args=SLOW, limit="12"),
         signals=((signal.SIGTERM, 0), (signal.SIGTERM, 0.001)), signal_when="entries:3"),
    Case("S4", "SIGTERM while the model is built", run_cmd(), signals=((signal.SIGTERM, 0),),
         signal_when="text:plan: hf"),
    Case("S5", "SIGTERM with cache=off", run_cmd(tasks="ext_suite", model_args=SLOW + ",cache=off", limit="12"),
         signals=((signal.SIGTERM, 3.0),), signal_when="text:hf_ext loglikelihood"),
    Case("S6", "Ctrl-C (SIGINT) mid-run", run_cmd(tasks="ext_suite", model_args=SLOW, limit="12"),
         signals=((signal.SIGINT, 0),), signal_when="entries:3"),
    Case("S7", "SIGHUP mid-run (the terminal closed)", run_cmd(tasks="ext_suite", model_args=SLOW, limit="12"),
         signals=((signal.SIGHUP, 0),), signal_when="entries:3"),
    Case("S8", "SIGUSR1 mid-run (sbatch --signal=USR1@60)", run_cmd(tasks="ext_suite", model_args=SLOW, limit="12"),
         signals=((signal.SIGUSR1, 0),), signal_when="entries:3"),
    Case("S9", "SIGTERM during the srun rendezvous (task 1 never starts)", run_cmd(),
         env=_srun(0, 2, LM_EVAL_EXT_RENDEZVOUS_TIMEOUT_S="60"), signals=((signal.SIGTERM, 0),),
         signal_when="text:waiting up to"),
    Case("S10", "SIGTERM mid-run in the shards layout", run_cmd(tasks="ext_suite", model_args=SLOW, limit="12"),
         env={"LM_EVAL_EXT_CACHE_LAYOUT": "shards"}, signals=((signal.SIGTERM, 0),), signal_when="entries:3"),
]


@dataclass
class Outcome:
    case: Case
    code: int | None
    last_line: str
    ending: str


def _lines(text: str) -> list[str]:
    return [line.rstrip() for line in re.split(r"[\r\n]", text) if line.strip()]


def _ending(code: int | None, text: str) -> str:
    if code is None:
        return "hang"
    if "Traceback (most recent call last)" in text:
        return "traceback"
    if code == 0:
        return "ran"
    errors = [line for line in _lines(text) if re.match(r"^[\w.-]+( run)?: error: ", line)]
    return "one line" if len(errors) == 1 else ("no line" if not errors else f"{len(errors)} lines")


def _ready(case: Case, folder: Path, log: Path) -> bool:
    kind, _, value = case.signal_when.partition(":")
    if kind == "text":
        return value in log.read_text(errors="replace")
    from lm_eval_ext.cache.layout import count_entries

    try:
        return count_entries(folder / "cache") >= int(value)
    except Exception:  # noqa: BLE001  (being created by the process under test)
        return False


def _restore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # a background shell ignores it, and children inherit that


def run_case(case: Case, scratch: Path) -> Outcome:
    folder = scratch / case.id
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "output.log"
    env = {**os.environ, **OFFLINE, "LM_EVAL_EXT_CACHE_DIR": str(folder / "cache"), **case.env}
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        if name not in case.env:
            env.pop(name, None)
    with log.open("w") as handle:
        process = subprocess.Popen(case.argv, cwd=folder, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                   start_new_session=True, preexec_fn=_restore_sigint)
    deadline = time.monotonic() + case.timeout_s
    sent = not case.signals
    while process.poll() is None and time.monotonic() < deadline:
        if not sent and _ready(case, folder, log):
            for sig, delay_s in case.signals:
                time.sleep(delay_s)
                process.send_signal(sig)
            sent = True
        time.sleep(0.01)
    code = process.poll()
    if code is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    text = log.read_text(errors="replace")
    lines = _lines(text)
    return Outcome(case, code, lines[-1] if lines else "", _ending(code, text))


def table(outcomes: list[Outcome]) -> str:
    rows = ["| case | what the user did | exit | ending | last line printed |", "|---|---|---|---|---|"]
    for o in outcomes:
        code = "hang (killed)" if o.code is None else str(o.code)
        last, what = (text.replace("|", "\\|") for text in (o.last_line, o.case.what))
        rows.append(f"| {o.case.id} | {what} | {code} | {o.ending} | `{last}` |")
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="", help="comma-separated case ids")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--scratch", type=Path, default=None, help="keep each case's folder here")
    args = parser.parse_args()
    wanted = {c.strip() for c in args.only.split(",") if c.strip()}
    cases = [c for c in CASES if not wanted or c.id in wanted]
    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="lm_eval_ext_probe_"))
    outcomes = []
    for case in cases:
        outcomes.append(run_case(case, scratch))
        sys.stderr.write(f"{case.id}: {outcomes[-1].code} {outcomes[-1].ending}\n")
    sys.stdout.write(table(outcomes) + "\n")
    if args.json:
        args.json.write_text(json.dumps([{"id": o.case.id, "what": o.case.what, "exit": o.code, "ending": o.ending,
                                          "last_line": o.last_line} for o in outcomes], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
