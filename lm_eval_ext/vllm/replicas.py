"""EDGE: persistent data-parallel vLLM replicas without Ray.

``data_parallel_size=N`` starts N worker processes once per run; each pins itself to its own GPU
slice (``CUDA_VISIBLE_DEVICES``) or CPU cores (``VLLM_CPU_OMP_THREADS_BIND``), builds one
``vllm.LLM`` and then serves every request type until the pool closes. Stock lm-eval instead builds
N new engines through Ray for every request type (a full model load each time).

Shutdown is explicit (``close``, also at interpreter exit and when a run fails or is interrupted).
Workers ignore Ctrl-C (the parent decides), run in their own process group (so vLLM's own children
go with them), and exit by themselves if the parent dies. Each pool has its own scratch folder for
vLLM's socket files, removed on close.
"""

from __future__ import annotations

import atexit
import getpass
import logging
import multiprocessing
import os
import shutil
import signal
import tempfile
import threading
import time
import traceback
from collections.abc import Hashable, Iterator, Mapping, Sequence
from multiprocessing.connection import wait as wait_for_connections
from typing import Any

from lm_eval_ext.vllm.build import replica_pinning  # noqa: F401 (re-exported: pinning is decided in build)
from lm_eval_ext.vllm.engines import EngineOutput, collect, count_engine_start

logger = logging.getLogger(__name__)

#: Seconds a replica gets to exit after "close" before it is terminated, then killed.
REPLICA_EXIT_GRACE_S = 30.0
_PARENT_POLL_S = 1.0


def split_by_tokens(
    costs_tokens: Sequence[int], group_keys: Sequence[Hashable] | None, num_replicas: int,
    homes: Mapping[Hashable, int] | None = None,
) -> list[list[int]]:
    """Request indices per replica so that the replicas' token totals are as equal as possible.

    Requests with the same group key (e.g. the choices of one multiple-choice item) stay together;
    a group with a home (the replica that holds its cached blocks) goes there. The others: greedy
    longest-first, the costliest group to the least-loaded replica. Example: costs [5, 3, 3, 1]
    without groups over 2 replicas -> [[0, 3], [1, 2]] (6 and 6 tokens).
    """
    keys = list(group_keys) if group_keys is not None else list(range(len(costs_tokens)))
    groups: dict[Hashable, list[int]] = {}
    for index, key in enumerate(keys):
        groups.setdefault(key, []).append(index)
    homes = homes if group_keys is not None and homes else {}
    loads_tokens = [0] * num_replicas
    shards: list[list[int]] = [[] for _ in range(num_replicas)]
    placed = {key for key in groups if homes.get(key, num_replicas) < num_replicas}
    for key in placed:
        shards[homes[key]].extend(groups[key])
        loads_tokens[homes[key]] += sum(costs_tokens[i] for i in groups[key])
    rest = [members for key, members in groups.items() if key not in placed]
    for members in sorted(rest, key=lambda members: (-sum(costs_tokens[i] for i in members), members[0])):
        target = min(range(num_replicas), key=lambda r: (loads_tokens[r], r))
        shards[target].extend(members)
        loads_tokens[target] += sum(costs_tokens[i] for i in members)
    return [sorted(shard) for shard in shards]


def _exit_when_orphaned(parent_pid: int) -> None:
    while True:
        time.sleep(_PARENT_POLL_S)
        if os.getppid() != parent_pid:
            os._exit(1)


def _replica_main(conn: Any, index: int, env: dict[str, str], kwargs: dict, parent_pid: int) -> None:
    """Worker process: build one engine, then answer ("run", prompts, params) until ("close",):
    one ("part", [(index, output), ...]) per engine step that finished requests, then ("done", None)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.setpgid(0, 0)
    os.environ.update(env)
    threading.Thread(target=_exit_when_orphaned, args=(parent_pid,), daemon=True).start()
    from lm_eval_ext.vllm.engines import iter_finished, shutdown_llm
    from lm_eval_ext.vllm.prompt_logprobs import install

    try:
        from vllm import LLM

        llm = LLM(**kwargs)
        conn.send(("ready", (llm.llm_engine.model_config.max_model_len,
                             llm.llm_engine.vllm_config.cache_config.block_size, install(llm))))
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        return
    try:
        while True:
            message = conn.recv()
            if message[0] == "close":
                break
            try:
                for batch in iter_finished(llm, message[1], message[2]):
                    conn.send(("part", batch))
                conn.send(("done", None))
            except Exception:
                conn.send(("error", traceback.format_exc()))
    except EOFError:
        pass  # parent closed its end: shut down like "close"
    finally:
        shutdown_llm(llm)
        conn.close()


class ReplicaPool:
    """N persistent replicas; ``iter_batches`` splits one call's requests over all of them, the
    requests of one group (an item's choices) on one replica, and a group seen in the previous call
    (its warm-up, or the probes that repair it) on the replica that holds its cached blocks."""

    kind = "data_parallel"
    supports_prefix_scoring = True

    def __init__(self, kwargs: dict, pinnings: Sequence[dict[str, str]]) -> None:
        self._scratch_dir = tempfile.mkdtemp(prefix="lm_eval_ext_vllm_")
        self._processes: list[Any] = []
        self._connections: list[Any] = []
        self.num_engine_starts = 0
        self.max_model_len = 0
        self.block_size = 0
        self.scores_from_start = True
        self._last_homes: dict[Hashable, int] = {}  # group key -> replica, in the previous call
        atexit.register(self.close)
        try:
            self._start(kwargs, pinnings)
        except BaseException:
            self.close()
            raise

    @property
    def num_replicas(self) -> int:
        return len(self._processes)

    def _start(self, kwargs: dict, pinnings: Sequence[dict[str, str]]) -> None:
        context = multiprocessing.get_context("spawn")  # fork would copy this process's threads and locks
        for index, pinning in enumerate(pinnings):
            env = dict(pinning, TMPDIR=self._scratch_dir, VLLM_RPC_BASE_PATH=self._scratch_dir,
                       TORCHINDUCTOR_CACHE_DIR=inductor_cache_dir())
            parent_end, child_end = context.Pipe()
            process = context.Process(
                target=_replica_main, args=(child_end, index, env, kwargs, os.getpid()),
                name=f"vllm_ext-replica-{index}",
            )
            process.start()
            child_end.close()
            logger.info("vllm_ext: replica %d started as pid %d with %s", index, process.pid, pinning)
            self._processes.append(process)
            self._connections.append(parent_end)
        for index, conn in enumerate(self._connections):
            status, payload = self._receive(index, conn)
            if status != "ready":
                raise RuntimeError(f"vllm_ext replica {index} failed to start:\n{payload}")
            self.max_model_len, self.block_size, installed = payload
            self.scores_from_start = self.scores_from_start and installed
            self.num_engine_starts += 1
            count_engine_start(f"replica {index}, pid {self._processes[index].pid}")

    def _receive(self, index: int, conn: Any) -> tuple[str, Any]:
        try:
            return conn.recv()
        except EOFError:
            code = self._processes[index].exitcode
            raise RuntimeError(f"vllm_ext replica {index} exited unexpectedly (exit code {code})") from None

    def iter_batches(
        self, prompts: Sequence[list[int]], params: Sequence[Any], group_keys: Sequence[Hashable] | None = None,
        costs_tokens: Sequence[int] | None = None,
    ) -> Iterator[list[tuple[int, EngineOutput]]]:
        """Yield ``[(index, output), ...]`` as replicas finish requests; the pool is closed if the
        caller fails or is interrupted meanwhile (replicas would otherwise answer a dead request).
        ``costs_tokens``: what each request will compute (default: its prompt and generation budget),
        which the replicas are balanced by."""
        if not self._processes:
            raise RuntimeError("vllm_ext replica pool is closed (a request failed or the run was interrupted)")
        if costs_tokens is None:
            costs_tokens = [len(p) + (getattr(sp, "max_tokens", 1) or 1) for p, sp in zip(prompts, params)]
        shards = split_by_tokens(costs_tokens, group_keys, self.num_replicas, self._last_homes)
        if group_keys is not None:
            self._last_homes = {group_keys[i]: replica for replica, shard in enumerate(shards) for i in shard}
        pending = {}
        try:
            for conn, shard in zip(self._connections, shards):
                if shard:
                    conn.send(("run", [prompts[i] for i in shard], [params[i] for i in shard]))
                    pending[conn] = shard
            while pending:
                for conn in wait_for_connections(list(pending)):
                    shard = pending[conn]
                    status, payload = self._receive(self._connections.index(conn), conn)
                    if status == "part":
                        yield [(shard[position], output) for position, output in payload]
                    elif status == "done":
                        del pending[conn]
                    else:
                        raise RuntimeError(f"vllm_ext replica failed:\n{payload}")
        except BaseException:
            self.close(graceful=False)  # busy replicas would finish the abandoned work first
            raise

    def run(self, prompts, params, group_keys=None) -> list[EngineOutput]:
        return collect(self.iter_batches(prompts, params, group_keys), len(prompts))

    def close(self, graceful: bool = True) -> None:
        """Ask every replica to exit (``graceful``: wait up to :data:`REPLICA_EXIT_GRACE_S`), then
        terminate and kill stragglers with their process groups. Idempotent."""
        for conn in self._connections:
            try:
                conn.send(("close",))
            except (OSError, ValueError):
                pass  # replica already gone
        deadline = time.monotonic() + (REPLICA_EXIT_GRACE_S if graceful else 0.0)
        for process in self._processes:
            process.join(max(deadline - time.monotonic(), 0.1))
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for process in self._processes:
                if process.is_alive():
                    _signal_group(process.pid, sig)
                    process.join(5.0)
        for conn in self._connections:
            conn.close()
        if self._processes:
            logger.info("vllm_ext: %d replica(s) shut down", len(self._processes))
        self._processes, self._connections = [], []
        shutil.rmtree(self._scratch_dir, ignore_errors=True)
        atexit.unregister(self.close)


def inductor_cache_dir() -> str:
    """The compile cache this process would use; replicas keep it although their TMPDIR is private,
    else every pool recompiles the kernels torch.compile builds for vLLM on CPU (g++, slow)."""
    if "TORCHINDUCTOR_CACHE_DIR" in os.environ:
        return os.environ["TORCHINDUCTOR_CACHE_DIR"]
    return os.path.join(tempfile.gettempdir(), f"torchinductor_{getpass.getuser()}")


def _signal_group(pid: int, sig: int) -> None:
    for send in (os.killpg, os.kill):  # killpg: the replica's group (see _replica_main); kill: if not yet its own
        try:
            send(pid, sig)
        except ProcessLookupError:
            pass
