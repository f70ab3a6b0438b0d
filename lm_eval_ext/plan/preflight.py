"""PURE: launch checks that turn deep tracebacks into one clear message each.

``check(hardware, plan)`` reads the launcher's variables from ``hardware.launch`` (a
:class:`~lm_eval_ext.plan.launch.Launch`, read at the edge) and returns :class:`Finding` s;
errors stop the run before weights load, warnings are logged. The caller (the ``hf_ext`` edge)
raises :func:`raise_errors` and sets ``OMP_NUM_THREADS`` from :func:`omp_num_threads_default`.
"""

from __future__ import annotations

from dataclasses import dataclass

from lm_eval_ext.errors import UserError
from lm_eval_ext.plan.hardware import Hardware
from lm_eval_ext.plan.launch import Launch
from lm_eval_ext.plan.types import Plan, Strategy
from lm_eval_ext.units import format_bytes as fmt


@dataclass(frozen=True)
class Finding:
    level: str  # "error" or "warning"
    code: str
    message: str


def check(hardware: Hardware, plan: Plan | None = None) -> list[Finding]:
    launch = hardware.launch
    findings = check_variables(launch)
    if any(f.level == "error" for f in findings):
        return findings  # the rest would only repeat the same broken numbers
    findings += check_devices(launch, hardware, plan)
    if plan is not None:
        findings += check_memory(hardware, plan)
    return findings


def check_variables(launch: Launch) -> list[Finding]:
    given = launch.given
    out = []
    if launch.world_size > 1 and "local_rank" not in given:
        out.append(Finding("error", "local_rank_missing",
                           f"WORLD_SIZE={launch.world_size} is set but LOCAL_RANK is not, so no process knows "
                           "its GPU; start with `accelerate launch` or `torchrun` (they set both), or unset "
                           "WORLD_SIZE to run one process"))
    if {"rank", "world_size"} <= given and not 0 <= launch.rank < launch.world_size:
        out.append(Finding("error", "rank_out_of_range",
                           f"RANK={launch.rank} is outside WORLD_SIZE={launch.world_size} (ranks are 0.."
                           f"{launch.world_size - 1}); unset hand-set RANK/WORLD_SIZE and let the launcher set them"))
    if {"local_rank", "world_size"} <= given and "local_world_size" not in given \
            and not 0 <= launch.local_rank < launch.world_size:
        out.append(Finding("error", "local_rank_beyond_world",
                           f"LOCAL_RANK={launch.local_rank} cannot exist with WORLD_SIZE={launch.world_size} (a node "
                           f"runs at most WORLD_SIZE processes, so LOCAL_RANK is 0..{launch.world_size - 1}); unset "
                           "hand-set LOCAL_RANK/RANK/WORLD_SIZE and start with `accelerate launch` or `torchrun`"))
    if {"local_rank", "local_world_size"} <= given and not 0 <= launch.local_rank < launch.local_world_size:
        out.append(Finding("error", "local_rank_out_of_range",
                           f"LOCAL_RANK={launch.local_rank} is outside LOCAL_WORLD_SIZE={launch.local_world_size}; "
                           "unset hand-set LOCAL_RANK/LOCAL_WORLD_SIZE and let the launcher set them"))
    out += _check_omp(launch)
    return out


def _check_omp(launch: Launch) -> list[Finding]:
    value = launch.omp_num_threads
    if value is None or value.strip() == "" or (value.strip().isdigit() and int(value) > 0):
        return []
    return [Finding("error", "omp_num_threads_invalid",
                    f"OMP_NUM_THREADS={value!r} must be a positive integer (threads per process); set e.g. "
                    "OMP_NUM_THREADS=4, or unset it to let lm-eval-ext use cores / local processes")]


def check_rendezvous(launch: Launch) -> list[Finding]:
    """A real multi-process launch needs rank 0's address: without it accelerate fails deep inside
    with a traceback about ``MASTER_ADDR``. Launchers (accelerate, torchrun) always set both."""
    if not launch.is_distributed:
        return []
    missing = [name for name, value in (("MASTER_ADDR", launch.master_addr), ("MASTER_PORT", launch.master_port))
               if not value]
    if not missing:
        return []
    if launch.launcher == "slurm":  # SLURM_NODELIST and SLURM_JOB_ID give both under a real srun
        return [Finding("error", "rendezvous_address_missing",
                        f"srun started {launch.world_size} tasks, but {' and '.join(missing)} "
                        f"{'is' if len(missing) == 1 else 'are'} neither set nor derivable (no SLURM_NODELIST / "
                        f"SLURM_JOB_ID), so task {launch.rank} cannot find task 0; export MASTER_ADDR=<first node> "
                        "and MASTER_PORT=<free port> in the batch script before srun")]
    return [Finding("error", "rendezvous_address_missing",
                    f"WORLD_SIZE={launch.world_size} starts {launch.world_size} processes, but {' and '.join(missing)} "
                    f"{'is' if len(missing) == 1 else 'are'} not set, so rank {launch.rank} cannot "
                    f"{'find rank 0' if launch.rank else 'tell the others where to meet'}; "
                    "start with `accelerate launch` or `torchrun` (they set it), set MASTER_ADDR/MASTER_PORT "
                    "to rank 0's host and a free port, or unset WORLD_SIZE to run one process")]


def _gpus_per_process(plan: Plan | None) -> int:
    if plan is None or plan.backend != "hf" or plan.device != "cuda":
        return 1
    return max(1, plan.gpus_per_replica)


def check_devices(launch: Launch, hardware: Hardware, plan: Plan | None) -> list[Finding]:
    num_visible = hardware.num_gpus_per_node
    if num_visible == 0 or (plan is not None and plan.device != "cuda"):
        return []
    per_process = _gpus_per_process(plan)
    local_procs = launch.local_world_size
    visible = f" (CUDA_VISIBLE_DEVICES={launch.cuda_visible_devices})" if launch.cuda_visible_devices is not None else ""
    out = []
    # the rank without a device is the one that crashes; name it rather than the count
    if "local_rank" in launch.given and (launch.local_rank + 1) * per_process > num_visible:
        out.append(Finding("error", "local_rank_not_visible",
                           f"LOCAL_RANK={launch.local_rank} has no GPU of its own: only {num_visible} device(s) "
                           f"are visible{visible}, which gives 'invalid device ordinal'. " + _hidden_gpus_fix(launch)))
    elif local_procs * per_process > num_visible:
        out.append(Finding("error", "too_many_processes",
                           f"{local_procs} processes per node x {per_process} GPU(s) each need "
                           f"{local_procs * per_process} GPUs, but {num_visible} are visible{visible}; launch "
                           f"at most {max(1, num_visible // per_process)} process(es) per node"))
    if launch.world_size == 1 and num_visible > per_process and plan is not None \
            and plan.strategy in (Strategy.SINGLE, Strategy.DATA_PARALLEL) and plan.backend == "hf":
        wanted = num_visible // per_process
        out.append(Finding("warning", "one_process_many_gpus",
                           f"{num_visible} GPUs are visible but one process runs, so {num_visible - per_process} "
                           f"stay idle; launch `accelerate launch --num_processes {wanted} -m lm_eval --model "
                           f"hf_ext ...` for {wanted} replicas"))
    return out


def _hidden_gpus_fix(launch: Launch) -> str:
    if launch.launcher == "slurm":  # --gpus-per-task binds each task to its own GPU(s) only
        return ("srun bound each task to its own GPUs; request --gpus-per-node (or add --gpu-bind=none) so "
                "every task sees the node's GPUs and takes those of its SLURM_LOCALID")
    return "A hand-set CUDA_VISIBLE_DEVICES hides the others; unset it, or list one device per process"


def _weights_per_gpu(plan: Plan) -> tuple[int, ...]:
    if plan.max_memory_per_gpu_bytes:
        return plan.max_memory_per_gpu_bytes
    return (plan.needs_bytes_per_gpu - plan.headroom_bytes,) * max(1, plan.gpus_per_replica)


def _check_ram(hardware: Hardware, plan: Plan) -> list[Finding]:
    need = hardware.launch.local_world_size * (plan.weights_bytes + plan.headroom_bytes)
    if plan.strategy != Strategy.CPU_OFFLOAD and need > hardware.cpu_ram_bytes:
        return [Finding("error", "not_enough_ram",
                        f"the plan needs {fmt(need)} of RAM ({hardware.launch.local_world_size} replica(s)) "
                        f"but the machine has {fmt(hardware.cpu_ram_bytes)}; use fewer processes or a smaller dtype")]
    return []


def check_memory(hardware: Hardware, plan: Plan) -> list[Finding]:
    """Weights that do not fit the free memory fail for sure (error); a missing activation
    headroom only risks an out-of-memory error later (warning), e.g. under a user's max_memory."""
    if plan.device == "cpu":
        return _check_ram(hardware, plan)
    if plan.backend != "hf":
        return []  # vLLM checks its own budget against free memory at start-up
    out = []
    first = hardware.launch.local_rank * max(1, plan.gpus_per_replica)
    for offset, weights in enumerate(_weights_per_gpu(plan)):
        index = first + offset
        if index >= len(hardware.gpus):
            break
        gpu = hardware.gpus[index]
        held = f"another process holds {fmt(gpu.total_bytes - gpu.free_bytes)} (see nvidia-smi)"
        if gpu.free_bytes < weights:
            out.append(Finding("error", "not_enough_free_memory",
                               f"GPU {index} ({gpu.name}) has {fmt(gpu.free_bytes)} free but the plan puts "
                               f"{fmt(weights)} of weights there; {held}: free it, or plan again"))
        elif gpu.free_bytes < weights + plan.headroom_bytes:
            out.append(Finding("warning", "little_headroom",
                               f"GPU {index} ({gpu.name}) keeps {fmt(gpu.free_bytes - weights)} beside the weights, "
                               f"less than the planned {fmt(plan.headroom_bytes)} for activations; long batches "
                               "may run out of memory (lower max_memory_per_gpu or the batch size)"))
    return out


def raise_errors(findings: list[Finding]) -> None:
    errors = [f.message for f in findings if f.level == "error"]
    if errors:
        raise UserError("preflight: " + "; ".join(errors))


def omp_num_threads_default(num_cpu_cores: int, num_local_processes: int) -> int:
    """Cores per local process: unset OpenMP uses every core in every process, and N processes
    then fight over the same cores (oversubscription slows CPU runs several times)."""
    return max(1, num_cpu_cores // max(1, num_local_processes))


def omp_num_threads_to_set(hardware: Hardware) -> int | None:
    """The value to export, or ``None`` when the user (or launcher) already set OMP_NUM_THREADS."""
    if hardware.launch.omp_num_threads not in (None, ""):
        return None
    return omp_num_threads_default(hardware.num_cpu_cores, hardware.launch.local_world_size)
