import pytest

from lm_eval_ext.errors import UserError
from lm_eval_ext.plan.detect import detect_hardware
from lm_eval_ext.plan.launch_env import detect_launcher, read_launch_env
from lm_eval_ext.plan.hardware import Gpu, Hardware, describe_hardware, parse_gpu_spec
from lm_eval_ext.units import GiB


@pytest.mark.parametrize("spec, sizes", [
    ("4x80GiB", (80 * GiB,) * 4),
    ("24GiB,24GiB", (24 * GiB, 24 * GiB)),
    ("2x24GiB, 80GiB", (24 * GiB, 24 * GiB, 80 * GiB)),
    ("8X141GB", (141 * 10**9,) * 8),
    ("1*16G", (16 * 10**9,)),
])
def test_parse_gpu_spec(spec, sizes):
    assert parse_gpu_spec(spec) == sizes


@pytest.mark.parametrize("spec, message", [
    ("4x", "unknown unit 'x'"),
    ("24GiB,,24GiB", "has an empty entry"),
    ("0x80GiB", "a GPU count must be at least 1"),
    ("4x80 furlongs", "unknown unit 'furlongs'"),
    ("0GiB", "every GPU needs a memory size above zero"),
])
def test_bad_gpu_specs(spec, message):
    with pytest.raises(UserError) as info:
        parse_gpu_spec(spec)
    assert message in str(info.value)


def test_describe_hardware_nodes_and_processes():
    hardware = describe_hardware("4x80GiB", num_nodes=2, num_processes=4)
    assert (hardware.num_gpus_per_node, hardware.num_gpus, hardware.num_nodes) == (4, 8, 2)
    assert (hardware.launch.world_size, hardware.launch.local_world_size) == (4, 2)
    assert hardware.gpus[0].free_bytes == hardware.gpus[0].total_bytes
    assert hardware.describe() == "2 nodes x 4 x GPU (80.0 GiB)"


def test_describe_cpu_only_and_mixed():
    assert describe_hardware("").gpus == ()
    assert "CPU only" in describe_hardware("", cpu_ram_bytes=16 * GiB).describe()
    assert describe_hardware("24GiB,80GiB").describe() == "GPU (24.0 GiB), GPU (80.0 GiB)"


@pytest.mark.parametrize("kwargs, message", [
    ({"num_nodes": 0}, "--nodes 0 must be at least 1"),
    ({"num_nodes": 2, "num_processes": 3}, "--num_processes 3 must be a positive multiple of --nodes 2"),
])
def test_describe_refusals(kwargs, message):
    with pytest.raises(UserError, match=message):
        describe_hardware("2x24GiB", **kwargs)


def test_read_launch_env():
    env = {"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2",
           "CUDA_VISIBLE_DEVICES": "0,1", "TORCHELASTIC_RUN_ID": "x"}
    launch = read_launch_env(env)
    assert (launch.rank, launch.local_rank, launch.world_size, launch.local_world_size) == (3, 1, 4, 2)
    assert launch.cuda_visible_devices == "0,1" and launch.launcher == "torchrun"
    assert read_launch_env({}).world_size == 1


def test_bad_env_integer():
    with pytest.raises(UserError, match="environment variable WORLD_SIZE='two' must be an integer"):
        read_launch_env({"WORLD_SIZE": "two"})


@pytest.mark.parametrize("env, launcher", [
    ({"ACCELERATE_MIXED_PRECISION": "no", "TORCHELASTIC_RUN_ID": "1"}, "accelerate"),
    ({"TORCHELASTIC_RUN_ID": "1"}, "torchrun"),
    ({"SLURM_PROCID": "0"}, "slurm"),
    ({}, "python"),
])
def test_detect_launcher(env, launcher):
    assert detect_launcher(env) == launcher


def test_detect_hardware_on_this_machine():
    """Real detection: whatever torch sees, with memory numbers that make sense."""
    import torch

    hardware = detect_hardware({"WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2", "LOCAL_RANK": "0"})
    assert isinstance(hardware, Hardware) and not hardware.described
    assert len(hardware.gpus) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    assert hardware.num_nodes == 2 and hardware.cpu_ram_bytes > GiB and hardware.num_cpu_cores >= 1
    assert all(0 < g.free_bytes <= g.total_bytes for g in hardware.gpus)


def test_gpu_describe_shows_free_when_busy():
    assert Gpu("H100", 80 * GiB, 60 * GiB).describe() == "H100 (80.0 GiB, 60.0 GiB free)"


def test_detect_gpus_reads_nvml_usage_and_falls_back_to_mem_get_info(monkeypatch):
    """Fake CUDA runtime: device 0 answers through NVML, device 1 only through mem_get_info."""
    import types

    import torch

    from lm_eval_ext.plan.detect import detect_gpus

    def used(index):
        if index == 1:
            raise ModuleNotFoundError("nvidia-ml-py")
        return 30 * GiB

    cuda = torch.cuda
    monkeypatch.setattr(cuda, "is_available", lambda: True)
    monkeypatch.setattr(cuda, "device_count", lambda: 2)
    monkeypatch.setattr(cuda, "get_device_properties", lambda i: types.SimpleNamespace(total_memory=80 * GiB))
    monkeypatch.setattr(cuda, "device_memory_used", used)
    monkeypatch.setattr(cuda, "mem_get_info", lambda i: (70 * GiB, 80 * GiB))
    monkeypatch.setattr(cuda, "get_device_capability", lambda i: (9, 0) if i == 0 else (7, 5))
    monkeypatch.setattr(cuda, "get_device_name", lambda i: f"GPU{i}")
    assert detect_gpus() == (Gpu("GPU0", 80 * GiB, 50 * GiB, True), Gpu("GPU1", 80 * GiB, 70 * GiB, False))


def test_cpu_ram_is_what_is_available(tmp_path):
    from lm_eval_ext.plan.detect import _cpu_ram_bytes

    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24000000 kB\nMemFree:         1000000 kB\nMemAvailable:   20000000 kB\n")
    assert _cpu_ram_bytes(str(meminfo)) == 20000000 * 1024
    assert _cpu_ram_bytes(str(tmp_path / "missing")) > 0  # falls back to the machine's total
