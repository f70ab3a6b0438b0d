"""Hand-set multi-process launches: the rendezvous says what it waits for and gives up in bounded time."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

from tests.helpers import free_port

from lm_eval_ext.errors import UserError
from lm_eval_ext.plan.launch import Launch

torch = pytest.importorskip("torch")


def test_a_rank_whose_rank_zero_never_comes_fails_in_bounded_time_naming_what_it_waited_for(caplog):
    from lm_eval_ext.rendezvous import join_process_group

    port = free_port()
    launch = Launch.resolve(rank=1, local_rank=1, world_size=2, master_addr="127.0.0.1", master_port=str(port))
    caplog.set_level(logging.INFO, logger="lm_eval_ext.rendezvous")
    with pytest.raises(UserError) as failure:
        join_process_group(launch, {"LM_EVAL_EXT_RENDEZVOUS_TIMEOUT_S": "1"})
    message = str(failure.value)
    assert message.startswith(f"rank 1 waited 1 s at 127.0.0.1:{port} for rank 0 of WORLD_SIZE=2, in vain (")
    assert message.endswith("start every rank with the same MASTER_ADDR/MASTER_PORT (or use `accelerate launch`"
                            "/`torchrun`), or raise LM_EVAL_EXT_RENDEZVOUS_TIMEOUT_S")
    assert "\n" not in message
    assert f"rank 1: waiting up to 1 s at 127.0.0.1:{port} for rank 0 of WORLD_SIZE=2" in caplog.text
    assert not torch.distributed.is_initialized()


def test_a_bad_timeout_value_is_one_line():
    from lm_eval_ext.rendezvous import rendezvous_timeout_s

    with pytest.raises(UserError, match=r"^LM_EVAL_EXT_RENDEZVOUS_TIMEOUT_S='soon' must be a positive number"):
        rendezvous_timeout_s({"LM_EVAL_EXT_RENDEZVOUS_TIMEOUT_S": "soon"})
    assert rendezvous_timeout_s({}) == 300.0


_RANK = """
import sys, torch, torch.distributed as dist
from lm_eval_ext.rendezvous import join_process_group
from lm_eval_ext.plan.launch import Launch
rank, port = int(sys.argv[1]), sys.argv[2]
assert join_process_group(Launch.resolve(rank=rank, local_rank=rank, world_size=2, master_addr="127.0.0.1",
                                    master_port=port), {"LM_EVAL_EXT_RENDEZVOUS_TIMEOUT_S": "60"})
value = torch.tensor([rank + 1.0])
dist.all_reduce(value)
print("sum", value.item())
dist.destroy_process_group()
"""


def test_two_hand_started_ranks_meet_and_keep_working():
    port = str(free_port())
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    ranks = [subprocess.Popen([sys.executable, "-c", _RANK, str(r), port], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    outputs = [p.communicate(timeout=120) for p in ranks]
    for process, (out, err) in zip(ranks, outputs):
        assert process.returncode == 0, err[-2000:]
        assert "sum 3.0" in out
