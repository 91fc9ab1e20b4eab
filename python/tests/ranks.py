"""Runs a function as N ranks of a "kaitian" process group, each in its own spawned process.

Spawned (not forked) so every rank starts with a clean torch and its own engine, as under
torchrun. Each rank sends back ("ok", value) or ("error", text); a rank that dies sends nothing.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import queue
import socket
import traceback
from collections.abc import Callable
from datetime import timedelta

import torch
from workloads import SCENARIOS


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(
    rank: int,
    size: int,
    port: int,
    env: dict[str, str],
    scenario: str | Callable[..., object],
    args: tuple[object, ...],
    results: object,
) -> None:
    os.environ.update(
        {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank), "WORLD_SIZE": str(size), **env}
    )
    try:
        import kaitian  # noqa: F401 (registers the backend)
        import torch
        import torch.distributed as dist

        torch.set_num_threads(1)
        dist.init_process_group("kaitian", rank=rank, world_size=size, timeout=timedelta(seconds=60))
        function = SCENARIOS[scenario] if isinstance(scenario, str) else scenario
        value = function(rank, size, *args)
        dist.destroy_process_group()
        # Bytes, not tensors: a queued tensor is shared by file descriptor and dies with this process.
        payload = io.BytesIO()
        torch.save(value, payload)
        results.put((rank, "ok", payload.getvalue()))
    except BaseException:
        results.put((rank, "error", traceback.format_exc()))


def run_ranks(
    scenario: str | Callable[..., object],
    size: int,
    env: Callable[[int], dict[str, str]] | None = None,
    args: tuple[object, ...] = (),
    timeout: float = 120.0,
    expect: int | None = None,
    exit_codes: dict[int, int | None] | None = None,
) -> dict[int, tuple[str, object]]:
    """Runs scenario(rank, size, *args) on `size` ranks; returns {rank: (status, value)}.

    `scenario` is a name in workloads.SCENARIOS or a module-level function (it is pickled to the
    spawned ranks).
    `expect` is how many ranks are expected to report (fewer when a scenario kills a rank).
    `exit_codes`, when given, receives each rank process's exit code, or None for a process that
    had not exited 10 s after the results were in (and was killed).
    """
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    base = {"KAITIAN_TIMEOUT": "20"}
    procs = [
        ctx.Process(
            target=_rank_main,
            args=(r, size, port, {**base, **(env(r) if env else {})}, scenario, args, results),
        )
        for r in range(size)
    ]
    for p in procs:
        p.start()
    out: dict[int, tuple[str, object]] = {}
    try:
        while len(out) < (size if expect is None else expect):
            rank, status, value = results.get(timeout=timeout)
            out[rank] = (status, torch.load(io.BytesIO(value)) if status == "ok" else value)
    except queue.Empty:
        pass
    finally:
        for rank, p in enumerate(procs):
            p.join(timeout=10)
            if exit_codes is not None:
                exit_codes[rank] = p.exitcode
            if p.is_alive():
                p.kill()
                p.join()
    return out


def assert_all_ok(out: dict[int, tuple[str, object]], size: int) -> list[object]:
    """The ranks' values in rank order; fails with every rank's traceback otherwise."""
    errors = [f"rank {r}: {v}" for r, (s, v) in sorted(out.items()) if s != "ok"]
    missing = [r for r in range(size) if r not in out]
    assert not errors and not missing, f"missing ranks {missing}\n" + "\n".join(errors)
    return [out[r][1] for r in range(size)]
