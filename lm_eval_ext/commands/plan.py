"""``lm-eval-ext plan``: which layout, why, with which sizes; reads the config only, never weights.

Examples::

    lm-eval-ext plan --model_args pretrained=Qwen/Qwen2.5-14B --gpus 24GiB,24GiB
    lm-eval-ext plan --model_args pretrained=./llama-70b,dtype=bfloat16 --gpus 8x80GiB --nodes 2 \\
        --backend vllm --json
    lm-eval-ext plan --model_args pretrained=HuggingFaceTB/SmolLM2-135M --tasks mmlu,gsm8k --limit 100 \\
        --time-limit 2h

With ``--tasks`` the plan also carries the bill: every task's requests, tokens, time and memory on
the planned layout (:mod:`lm_eval_ext.bill.estimate`; that needs the tokenizer, still no weights
unless ``--measure``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from typing import Any

from lm_eval_ext.errors import UserError, did_you_mean
from lm_eval_ext.plan.launch_env import read_launch_env
from lm_eval_ext.plan.types import BACKENDS, Plan, PlanRequest
from lm_eval_ext.units import format_bytes, parse_bytes

#: model_args keys the planner reads; other keys that hf_ext or vllm_ext accept pass unread
PLAN_KEYS = ("pretrained", "dtype", "revision", "subfolder", "trust_remote_code", "strategy",
             "max_model_len", "tensor_parallel_size", "data_parallel_size", "pipeline_parallel_size",
             "gpu_memory_utilization", "max_memory_per_gpu", "max_cpu_memory")
PASSED_KEYS = ("batch_size", "max_batch_size", "max_length", "device", "tokenizer", "backend",
               "truncation", "logits_cache", "use_fast_tokenizer", "add_bos_token", "prefix_token_id",
               "softmax_dtype", "parallelize", "offload_folder", "peft", "delta", "gguf_file",
               "think_end_token", "enable_thinking", "attn_implementation", "seed", "swap_space",
               "enforce_eager", "max_num_seqs", "quantization", "lora_local_path", "distributed_executor_backend",
               "enable_prefix_caching", "score_with_prefix_cache", "cache", "cache_dir", "share_contexts",
               "max_batch_tokens", "prompt_lookup_num_tokens", "block_size")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model_args", required=True,
                        help="pretrained=PATH_OR_ID[,dtype=auto|bfloat16|...][,strategy=...] (as for lm_eval)")
    parser.add_argument("--gpus", default=None,
                        help="describe GPUs per node instead of detecting them: 4x80GiB or 24GiB,24GiB; "
                             "'none' plans for CPU only")
    parser.add_argument("--nodes", type=int, default=1, help="number of alike nodes (default 1)")
    parser.add_argument("--backend", choices=BACKENDS, default="hf",
                        help="hf (default), vllm, or auto to recommend one")
    parser.add_argument("--num_processes", type=int, default=None,
                        help="processes you will launch (all nodes); default: the planner proposes")
    parser.add_argument("--cpu_ram", default=None, help="host RAM per node for a described machine, e.g. 512GiB")
    parser.add_argument("--activation_tokens", type=int, default=4096,
                        help="tokens in flight per forward pass, sizes the headroom (default 4096)")
    parser.add_argument("--json", action="store_true", help="print the plan as one JSON object")
    parser.add_argument("--tasks", default=None,
                        help="lm-eval tasks, comma-separated: also estimate their requests, tokens, time and memory")
    parser.add_argument("--limit", default=None, help="documents per task (as lm_eval --limit; <1: a fraction)")
    parser.add_argument("--num_fewshot", type=int, default=None, help="few-shot examples (as lm_eval --num_fewshot)")
    parser.add_argument("--fewshot_seed", type=int, default=None,
                        help="few-shot sampler seed (as the fourth value of lm_eval --seed; default lm-eval's 1234)")
    parser.add_argument("--include_path", action="append", default=None,
                        help="a folder of task YAMLs (repeat the flag for several)")
    parser.add_argument("--measure", action="store_true",
                        help="with --tasks: load the model once and time a few real batches (about 30 s)")
    parser.add_argument("--time-limit", "--time_limit", dest="time_limit", default=None,
                        help="with --tasks: does the run fit, e.g. 2h, 90m, 02:00:00 (a bare number is seconds)")


def parse_model_args(text: str) -> dict[str, str]:
    args: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--model_args entry {part!r} is not key=value; write e.g. pretrained=gpt2,dtype=bfloat16")
        key = key.strip()
        if key not in PLAN_KEYS and key not in PASSED_KEYS:
            raise UserError(f"unknown --model_args key '{key}'{did_you_mean(key, PLAN_KEYS + PASSED_KEYS)}; "
                            f"the planner reads: {', '.join(PLAN_KEYS)}")
        args[key] = value.strip()
    if "pretrained" not in args:
        raise UserError("--model_args needs pretrained=PATH_OR_HUB_ID")
    return args


def _int(args: dict[str, str], key: str) -> int | None:
    if key not in args or args[key].lower() in ("", "none", "auto"):
        return None
    try:
        return int(args[key])
    except ValueError:
        raise UserError(f"{key}={args[key]!r} must be an integer") from None


def build_request(args: argparse.Namespace, model_args: dict[str, str]) -> PlanRequest:
    util = model_args.get("gpu_memory_utilization")
    try:
        utilization = float(util) if util not in (None, "", "auto") else None
    except ValueError:
        raise UserError(f"gpu_memory_utilization={util!r} must be a number such as 0.9") from None
    cap = model_args.get("max_memory_per_gpu")
    ram_cap = model_args.get("max_cpu_memory")
    return PlanRequest(
        backend=args.backend, strategy=model_args.get("strategy", "auto"), num_processes=args.num_processes,
        activation_tokens=args.activation_tokens, max_model_len=_int(model_args, "max_model_len"),
        gpu_memory_utilization=utilization,
        tensor_parallel_size=_int(model_args, "tensor_parallel_size"),
        data_parallel_size=_int(model_args, "data_parallel_size"),
        pipeline_parallel_size=_int(model_args, "pipeline_parallel_size"),
        max_memory_per_gpu_bytes=parse_bytes(cap, what="max_memory_per_gpu") if cap else None,
        max_cpu_memory_bytes=parse_bytes(ram_cap, what="max_cpu_memory") if ram_cap else None,
        vllm_available=importlib.util.find_spec("vllm") is not None,
    )


def _hardware(args: argparse.Namespace):
    from lm_eval_ext.plan.detect import detect_hardware
    from lm_eval_ext.plan.hardware import describe_hardware

    ram = parse_bytes(args.cpu_ram, what="--cpu_ram") if args.cpu_ram else None
    if args.nodes < 1:  # checked here too: without --gpus the detected machine is used
        raise UserError(f"--nodes {args.nodes} must be at least 1 (the number of alike machines)")
    if args.gpus is not None:
        spec = "" if args.gpus.strip().lower() in ("none", "0", "cpu") else args.gpus
        return describe_hardware(spec, num_nodes=args.nodes, cpu_ram_bytes=ram)
    detected = detect_hardware()
    if args.nodes != 1 or ram:
        from dataclasses import replace

        detected = replace(detected, num_nodes=args.nodes, cpu_ram_bytes=ram or detected.cpu_ram_bytes)
    return detected


def main(args: argparse.Namespace) -> int:
    from lm_eval_ext.plan.model_facts import load_model_facts
    from lm_eval_ext.plan.planner import plan

    model_args = parse_model_args(args.model_args)
    bill_request = build_bill_request(args)
    trust = model_args.get("trust_remote_code", "false").lower() in ("true", "1", "yes")
    facts = load_model_facts(model_args["pretrained"], model_args.get("dtype", "auto"),
                             revision=model_args.get("revision"), subfolder=model_args.get("subfolder", ""),
                             trust_remote_code=trust)
    hardware = _hardware(args)
    request = build_request(args, model_args)
    result = plan(facts, hardware, request)
    bill = None
    if bill_request is not None:
        from lm_eval_ext.bill.estimate import make_bill

        bill = make_bill(bill_request, model_args=model_args, facts=facts, hardware=hardware, plan=result)
    if args.json:
        payload = {**result.to_json(), "model": facts.to_json(), "hardware": hardware.describe(),
                   "launch": launch_hint(result, model_args["pretrained"], hardware.num_nodes),
                   "launch_slurm": slurm_launch_hint(result, model_args["pretrained"], hardware),
                   "launcher": describe_launch(read_launch_env())}
        if result.backend == "hf":
            payload["build"] = hf_build_descriptions(result, hardware, model_args)
        elif result.backend == "vllm":  # what vllm_ext builds from the same plan (lm_eval_ext.vllm.build)
            from lm_eval_ext.vllm.build import vllm_build_json

            payload["build"] = vllm_build_json(facts, hardware, model_args, request)
        if bill is not None:
            payload["estimate"] = bill
        _write(json.dumps(payload, indent=2) + "\n")
    else:
        _write(render(result, facts.name, hardware, model_args["pretrained"]))
        if bill is not None:
            from lm_eval_ext.bill.render import render_bill

            _write(render_bill(bill))
    return 0


def build_bill_request(args: argparse.Namespace):
    """The bill's request from ``--tasks`` and its companions, checked before anything loads (None
    without ``--tasks``)."""
    from lm_eval_ext.units import parse_duration

    time_limit_s = parse_duration(args.time_limit) if args.time_limit is not None else None
    if not args.tasks:
        given = [flag for flag, value in (("--measure", args.measure), ("--time-limit", args.time_limit),
                                           ("--limit", args.limit), ("--num_fewshot", args.num_fewshot),
                                           ("--fewshot_seed", args.fewshot_seed is not None)) if value]
        if given:
            raise UserError(f"{given[0]} estimates a workload: add --tasks TASK[,TASK...]")
        return None
    from lm_eval_ext.bill.estimate import BillRequest

    tasks = tuple(t.strip() for t in args.tasks.split(",") if t.strip())
    return BillRequest(tasks=tasks, limit=_limit(args.limit), num_fewshot=args.num_fewshot,
                       fewshot_seed=args.fewshot_seed, include_paths=tuple(args.include_path or ()),
                       measure=args.measure, time_limit_s=time_limit_s, activation_tokens=args.activation_tokens)


def _limit(text: str | None) -> int | float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"--limit {text!r} must be a number of documents (or a fraction below 1)") from None
    if value <= 0:
        raise UserError(f"--limit {text} must be positive")
    return value if value < 1 else int(value)


def hf_build_descriptions(plan: Plan, hardware, model_args: dict[str, str]) -> list[dict[str, Any]]:
    """What each process of the planned launch would build (``hf_ext``'s own build description,
    :mod:`lm_eval_ext.plan.build`), rank by rank; dtype as planned."""
    import dataclasses

    from lm_eval_ext.hf.config import HfExtConfig
    from lm_eval_ext.plan.build import hf_builds
    from lm_eval_ext.plan.hf_settings import resolve_device

    known = {f.name for f in dataclasses.fields(HfExtConfig)}
    config = HfExtConfig.from_model_args({k: v for k, v in model_args.items() if k in known})
    device = resolve_device(config.device, hardware)
    kwargs = config.hflm_kwargs(device=device, dtype=plan.dtype)
    return [b.to_json() for b in hf_builds(plan, hardware, hflm_kwargs=kwargs, offload_folder=config.offload_folder)]


def launch_hint(plan: Plan, pretrained: str, num_nodes: int) -> str:
    model = model_args_hint(plan, pretrained)
    if plan.backend == "vllm" or plan.num_processes <= 1:
        return f"lm_eval {model}"
    if plan.device == "cpu":  # `accelerate launch --cpu` silently starts one process; torchrun does not
        return f"ACCELERATE_USE_CPU=true torchrun --standalone --nproc-per-node {plan.num_processes} -m lm_eval {model}"
    machines = f" --num_machines {num_nodes}" if num_nodes > 1 else ""
    return f"accelerate launch --num_processes {plan.num_processes}{machines} -m lm_eval {model}"


def model_args_hint(plan: Plan, pretrained: str) -> str:
    """``--model ... --model_args ...`` of the planned run (every launch line shares it)."""
    if plan.backend == "vllm":
        sizes = (f"tensor_parallel_size={plan.tensor_parallel_size},data_parallel_size={plan.data_parallel_size}"
                 f",pipeline_parallel_size={plan.pipeline_parallel_size}")
        length = f",max_model_len={plan.max_model_len}" if plan.max_model_len else ""
        return f"--model vllm_ext --model_args pretrained={pretrained},{sizes}{length} --tasks ..."
    return f"--model hf_ext --model_args pretrained={pretrained},strategy={plan.strategy.value} --tasks ..."


def slurm_launch_hint(plan: Plan, pretrained: str, hardware) -> str:
    """The ``srun`` line of the planned run, inside an ``sbatch`` allocation (examples/slurm/).

    One task per process of the plan, ``--gpus-per-node`` (not ``--gpus-per-task``, which binds each
    task to its own GPUs while hf_ext takes the GPUs of its local rank, as under torchrun); vllm_ext
    runs one task per node, which starts that node's replicas. ``--kill-on-bad-exit`` ends the other
    tasks when one fails, instead of leaving them waiting in a collective."""
    num_nodes = max(1, hardware.num_nodes)
    if plan.backend == "vllm":
        tasks_per_node, gpus_per_node = 1, hardware.num_gpus_per_node
    else:
        tasks_per_node = max(1, plan.num_processes // num_nodes)
        gpus_per_node = tasks_per_node * max(1, plan.gpus_per_replica) if plan.device == "cuda" else 0
    gpus = f" --gpus-per-node {gpus_per_node}" if gpus_per_node else ""
    return (f"srun --nodes {num_nodes} --ntasks-per-node {tasks_per_node}{gpus} --kill-on-bad-exit=1 "
            f"lm_eval {model_args_hint(plan, pretrained)}")


def describe_launch(launch) -> str:
    """This process's launch as detected (``plan`` run inside an srun step, a torchrun, ...)."""
    if launch.launcher == "python" and not launch.is_distributed:
        return "none (one process)"
    where = f", rendezvous {launch.master_addr}:{launch.master_port}" if launch.is_distributed else ""
    return (f"{launch.launcher}: rank {launch.rank} of {launch.world_size} (local {launch.local_rank} of "
            f"{launch.local_world_size}, {launch.num_nodes} node(s)){where}")


def render(plan: Plan, name: str, hardware, pretrained: str) -> str:
    num_nodes = hardware.num_nodes
    rows: list[tuple[str, Any]] = [
        ("model", name), ("hardware", hardware.describe()),
        ("weights", f"{format_bytes(plan.weights_bytes)} ({plan.dtype})"),
        ("replicas", f"{plan.num_replicas} x {plan.gpus_per_replica} GPU(s)" if plan.device == "cuda"
         else f"{plan.num_replicas} on CPU"),
        ("processes", plan.num_processes),
        ("headroom/GPU" if plan.device == "cuda" else "headroom/replica", format_bytes(plan.headroom_bytes)),
    ]
    if plan.backend == "vllm":
        rows += [("tensor x data x pipeline", f"{plan.tensor_parallel_size} x {plan.data_parallel_size} x "
                                              f"{plan.pipeline_parallel_size}"),
                 ("max_model_len", plan.max_model_len), ("gpu_memory_utilization", plan.gpu_memory_utilization)]
    if plan.max_memory_per_gpu_bytes:
        rows.append(("max_memory/GPU", ", ".join(format_bytes(b) for b in plan.max_memory_per_gpu_bytes)))
    if plan.max_cpu_memory_bytes:
        rows.append(("max_cpu_memory", format_bytes(plan.max_cpu_memory_bytes)))
    rows.append(("launch", launch_hint(plan, pretrained, num_nodes)))
    rows.append(("launch (slurm)", slurm_launch_hint(plan, pretrained, hardware)))
    detected = read_launch_env()
    if detected.launcher != "python" or detected.is_distributed:
        rows.append(("launcher (detected)", describe_launch(detected)))
    lines = [f"plan: {plan.backend} {plan.strategy.value}"] + [f"  {k:<24} {v}" for k, v in rows]
    lines += ["why:"] + [f"  - {r}" for r in plan.reasons]
    if plan.warnings:
        lines += ["warnings:"] + [f"  - {w}" for w in plan.warnings]
    return "\n".join(lines) + "\n"


def _write(text: str) -> None:
    sys.stdout.write(text)  # the command's output itself, not a diagnostic
