"""Child process for test_vllm_replica_lifecycle: start 2 replicas, report their pids, then keep
them busy until the test interrupts this process (SIGINT, as Ctrl-C does)."""

from __future__ import annotations

import json
import sys

from tests.vllm.support import ENGINE_ARGS  # sets the vLLM environment first

MARKER = "REPLICAS "  # vLLM logs to stdout too: the test looks for this line


def main(model_path: str) -> None:
    from vllm import SamplingParams

    from lm_eval_ext.vllm.replicas import ReplicaPool, replica_pinning

    pinnings = [replica_pinning(index, 1, 0, [0, 1], 2) for index in range(2)]
    pool = ReplicaPool({"model": model_path, **ENGINE_ARGS}, pinnings)
    print(MARKER + json.dumps({"pids": [p.pid for p in pool._processes], "scratch_dir": pool._scratch_dir}), flush=True)
    endless = SamplingParams(max_tokens=900, ignore_eos=True, temperature=0)
    while True:  # each call keeps both replicas generating for a while
        pool.run([[1, 2, 3]] * 64, [endless] * 64)


if __name__ == "__main__":
    main(sys.argv[1])
