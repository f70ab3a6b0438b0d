"""``srun`` as a launcher: SLURM's variables read like torchrun's, host lists expanded without
``scontrol``, and the launch lines ``plan`` prints for SLURM."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lm_eval_ext.errors import UserError
from lm_eval_ext.plan.hostlist import HostListError, expand_hostlist, first_host, tasks_on_node
from lm_eval_ext.plan.launch_env import export_torch_names, is_srun_task, read_launch_env, slurm_port


@pytest.mark.parametrize(("text", "hosts"), [
    ("node01", ["node01"]),
    ("node[01-04]", ["node01", "node02", "node03", "node04"]),
    ("gpu[08-10,7],login-a", ["gpu08", "gpu09", "gpu10", "gpu7", "login-a"]),
    ("r[1-2]n[1-2]", ["r1n1", "r1n2", "r2n1", "r2n2"]),
    ("a-[1-2]-x,b", ["a-1-x", "a-2-x", "b"]),
    ("127.0.0.1", ["127.0.0.1"]),
    (" node[9-10] ", ["node9", "node10"]),
])
def test_host_lists_expand_as_scontrol_does(text, hosts):
    assert expand_hostlist(text) == hosts
    assert first_host(text) == hosts[0]


@pytest.mark.parametrize(("text", "why"), [
    ("node[01-04", "'[' without ']'"),
    ("node01-04]", "']' without '['"),
    ("node[[1]]", "nested '['"),
    ("node[a-b]", "not a number or a range"),
    ("node[4-1]", "runs backwards"),
    ("a,,b", "empty entry"),
    ("", "empty"),
])
def test_malformed_host_lists_say_why(text, why):
    with pytest.raises(HostListError, match=why.replace("[", r"\[")):
        expand_hostlist(text)


def test_tasks_per_node_with_repeats():
    assert [tasks_on_node("2(x3),1", node) for node in range(5)] == [2, 2, 2, 1, None]
    assert tasks_on_node("4", 0) == 4 and tasks_on_node("garbage", 0) is None


def _srun(rank: int, local_rank: int, **extra: str) -> dict:
    env = {"SLURM_PROCID": str(rank), "SLURM_LOCALID": str(local_rank), "SLURM_NTASKS": "8",
           "SLURM_NNODES": "2", "SLURM_NODELIST": "node[01-02]", "SLURM_JOB_ID": "123456",
           "SLURM_TASKS_PER_NODE": "4(x2)", "SLURM_NODEID": str(rank // 4)}
    env.update(extra)
    return env


def test_an_srun_task_reads_like_a_torchrun_rank():
    launch = read_launch_env(_srun(5, 1))
    assert (launch.rank, launch.local_rank, launch.world_size, launch.local_world_size) == (5, 1, 8, 4)
    assert (launch.num_nodes, launch.node_rank, launch.launcher) == (2, 1, "slurm")
    assert (launch.master_addr, launch.master_port) == ("node01", slurm_port(123456)) == ("node01", "18456")


def test_the_step_s_own_counts_and_master_port_win():
    env = _srun(1, 1, SLURM_STEP_NUM_TASKS="2", SLURM_STEP_NODELIST="gpu[7-8]", SLURM_GTIDS="0,1",
                MASTER_PORT="29555")
    launch = read_launch_env(env)
    assert (launch.world_size, launch.local_world_size) == (2, 2)
    assert (launch.master_addr, launch.master_port) == ("gpu7", "29555")


def test_a_torch_launcher_inside_an_srun_step_keeps_its_own_ranks():
    env = _srun(0, 0, RANK="3", LOCAL_RANK="3", WORLD_SIZE="4", TORCHELASTIC_RUN_ID="x", MASTER_ADDR="h",
                MASTER_PORT="1")
    assert not is_srun_task(env)
    launch = read_launch_env(env)
    assert (launch.rank, launch.world_size, launch.launcher) == (3, 4, "torchrun")


def test_the_batch_script_itself_is_one_process():
    """``python -m lm_eval`` typed in an sbatch script with --ntasks 4: SLURM_NTASKS=4, one process."""
    env = {"SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NTASKS": "4", "SLURM_GTIDS": "0",
           "SLURM_TASKS_PER_NODE": "4", "SLURM_NODELIST": "node01", "SLURM_JOB_ID": "7"}
    launch = read_launch_env(env)
    assert (launch.rank, launch.world_size, launch.launcher) == (0, 1, "slurm")
    assert export_torch_names(dict(env)) == {}


def test_one_task_needs_no_rendezvous():
    launch = read_launch_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "1", "SLURM_JOB_ID": "7"})
    assert not launch.is_distributed and launch.master_port is None


@pytest.mark.parametrize(("env", "message"), [
    (_srun(9, 1), "SLURM_PROCID=9 is outside SLURM_NTASKS=8 (task ids are 0..7); start the tasks with `srun`, "
                  "or unset hand-set SLURM_* variables"),
    (_srun(1, 1, SLURM_NODELIST="node[01-"), "SLURM_NODELIST='node[01-' is not a SLURM host list ('[' without ']'); "
                                             "SLURM writes e.g. node[01-04]; set MASTER_ADDR to the first node's "
                                             "host name"),
    (_srun(1, 1, SLURM_NTASKS="two"), "environment variable SLURM_NTASKS='two' must be an integer; unset it, or let "
                                      "the launcher (srun, torchrun, accelerate launch) set it"),
])
def test_impossible_slurm_variables_are_one_line(env, message):
    with pytest.raises(UserError) as failure:
        read_launch_env(env)
    assert str(failure.value) == message


def test_export_writes_torch_names_once_and_keeps_what_is_set():
    env = _srun(6, 2, MASTER_ADDR="head")
    exported = export_torch_names(env)
    assert exported == {"RANK": "6", "LOCAL_RANK": "2", "WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4",
                        "MASTER_PORT": "18456"}
    assert env["MASTER_ADDR"] == "head"
    assert export_torch_names(env) == {}  # torch's names now exist: not an srun-only task any more
    launch = read_launch_env(env)
    assert (launch.rank, launch.local_rank, launch.world_size, launch.launcher) == (6, 2, 8, "slurm")
    assert export_torch_names({}) == {}


def test_a_missing_rendezvous_under_srun_names_the_batch_script_fix():
    from lm_eval_ext.plan.preflight import check_rendezvous

    launch = read_launch_env({"SLURM_PROCID": "1", "SLURM_NTASKS": "2"})
    (finding,) = check_rendezvous(launch)
    assert finding.message == ("srun started 2 tasks, but MASTER_ADDR and MASTER_PORT are neither set nor derivable "
                               "(no SLURM_NODELIST / SLURM_JOB_ID), so task 1 cannot find task 0; export "
                               "MASTER_ADDR=<first node> and MASTER_PORT=<free port> in the batch script before srun")


EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples" / "slurm").glob("*.sbatch"))
CONFIGS = Path(__file__).resolve().parents[1] / "fixtures" / "configs"


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_each_sbatch_example_runs_the_line_plan_prints(example, capsys, monkeypatch):
    """The example names the plan command that made it; that plan's "launch (slurm)" line, with
    the fixture config of the example's default model standing for ``$MODEL``, is its srun line."""
    import shlex
    import subprocess

    text = example.read_text()
    assert subprocess.run(["bash", "-n", str(example)]).returncode == 0
    (plan_command,) = [line.split("#", 1)[1].strip() for line in text.splitlines()
                       if line.lstrip("#").strip().startswith("lm-eval-ext plan ")]
    argv = shlex.split(plan_command)[2:]
    (default_model,) = [line.split(":-", 1)[1].rstrip("}") for line in text.splitlines()
                        if line.startswith("MODEL=${MODEL:-")]
    model = CONFIGS / Path(default_model).name  # the fixture config of the model the example names
    argv = [arg.replace("$MODEL", str(model)) for arg in argv]
    for name in [n for n in os.environ if n.startswith("SLURM_")]:
        monkeypatch.delenv(name)
    out = _plan_output(argv, capsys)
    (srun,) = [line.split("launch (slurm)", 1)[1].strip() for line in out.splitlines() if "launch (slurm)" in line]
    expected = srun.replace(str(model), "$MODEL").removesuffix(" --tasks ...")
    (script_line,) = [line for line in text.splitlines() if line.startswith("srun ")]
    assert script_line.startswith(expected + " --tasks "), (script_line, expected)


def _plan_output(argv: list[str], capsys) -> str:
    from argparse import ArgumentParser

    from lm_eval_ext.commands import plan as command

    parser = ArgumentParser()
    command.add_arguments(parser)
    assert command.main(parser.parse_args(argv)) == 0
    return capsys.readouterr().out
