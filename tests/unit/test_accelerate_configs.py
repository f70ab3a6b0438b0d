"""Every shipped accelerate config loads through accelerate's own loader, with the shape it claims."""

from __future__ import annotations

from pathlib import Path

import pytest

CONFIG_DIR = Path(__file__).resolve().parents[2] / "accelerate_configs"
CONFIGS = sorted(CONFIG_DIR.glob("*.yaml"))


def test_there_are_configs_to_load():
    assert len(CONFIGS) >= 7


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_loads_through_accelerate(path):
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file

    config = load_config_from_file(str(path))
    assert isinstance(config, ClusterConfig)
    assert config.num_processes >= 1 and config.num_machines >= 1
    assert config.num_processes % config.num_machines == 0, "each machine must get the same share"
    if config.num_processes > 1:
        assert config.distributed_type.value == "MULTI_GPU"  # the type that really starts N processes
    if config.num_machines > 1:
        assert config.main_process_ip and config.main_process_port and config.machine_rank == 0
