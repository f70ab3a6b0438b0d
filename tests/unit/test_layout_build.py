"""The build description's pure parts (plan.build) and `lm-eval-ext plan --json`'s "build" key."""

from __future__ import annotations

import json
from argparse import ArgumentParser
from dataclasses import replace

from tests.unit.planner_fixtures import CONFIGS, facts

from lm_eval_ext.plan.hf_settings import resolve_device, resolve_dtype, unpinned_device
from lm_eval_ext.plan.hardware import Gpu, describe_hardware
from lm_eval_ext.plan.launch import Launch, launch_places


def test_lm_eval_cli_default_device_is_not_a_pin():
    one = Launch()
    four = Launch.resolve(world_size=4, local_world_size=4, local_rank=2)
    assert unpinned_device("cuda:0", one) == "cuda"  # lm-eval's EvaluatorConfig default
    assert unpinned_device("cuda:1", one) == "cuda:1"  # a real pin in one process stays
    assert unpinned_device("cuda:1", four) == "cuda"  # under a launch each rank takes its own GPUs
    assert unpinned_device("cpu", four) == "cpu"


def test_device_and_dtype_follow_the_machine_data():
    gpus, cpu = describe_hardware("2x24GiB"), describe_hardware("")
    assert resolve_device("auto", gpus) == "cuda" and resolve_device("auto", cpu) == "cpu"
    assert resolve_device("cuda:0", cpu) == "cpu"
    assert resolve_dtype("auto", "cuda", gpus) == "bfloat16" and resolve_dtype("auto", "cpu", gpus) == "float32"
    old = replace(gpus, gpus=(Gpu("V100", 1, 1, supports_bf16=False),))
    assert resolve_dtype("auto", "cuda", old) == "auto" and resolve_dtype("float16", "cuda", old) == "float16"


def test_launch_places_of_two_nodes():
    places = launch_places(16, 2)
    assert [(p.rank, p.local_rank, p.node_rank) for p in places[7:10]] == [(7, 7, 0), (8, 0, 1), (9, 1, 1)]
    assert {p.num_nodes for p in places} == {2}


def _plan_json(capsys, *argv):
    from lm_eval_ext.commands import plan as command

    parser = ArgumentParser()
    command.add_arguments(parser)
    command.main(parser.parse_args([*argv, "--json"]))
    return json.loads(capsys.readouterr().out)


def test_plan_json_prints_the_seed_case_build(capsys):
    facts("qwen2.5-14b")
    payload = _plan_json(capsys, "--model_args", f"pretrained={CONFIGS / 'qwen2.5-14b'}", "--gpus", "24GiB,24GiB")
    (build,) = payload["build"]
    assert build["strategy"] == payload["strategy"] == "model_split"
    assert build["from_pretrained"]["device_map"] == "auto"
    assert build["from_pretrained"]["max_memory"] == {"0": payload["max_memory_per_gpu_bytes"][0],
                                                      "1": payload["max_memory_per_gpu_bytes"][1]}
    assert build["hflm"]["parallelize"] is True and build["gpus"]["local_ordinals"] == [0, 1]


def test_plan_json_prints_one_build_per_process_of_two_nodes(capsys):
    facts("llama-2-7b", "bfloat16")
    payload = _plan_json(capsys, "--model_args", f"pretrained={CONFIGS / 'llama-2-7b'},dtype=bfloat16",
                         "--gpus", "4x24GiB", "--nodes", "2")
    builds = payload["build"]
    assert [b["process"]["rank"] for b in builds] == list(range(8))
    assert [b["from_pretrained"]["device_map"][""] for b in builds] == [f"cuda:{i % 4}" for i in range(8)]
    assert {b["process_group"]["backend"] for b in builds} == {"nccl"}
