"""Workers reach Redis through the C ABI by the same address string as the embedded store.

ktStoreConnect takes KAITIAN_STORE as kaitian run gives it: "redis://..." selects Redis, with the
keys under kaitian/$KAITIAN_JOB_ID/ and no job token. The ranks are spawned processes running the
C ABI's collectives scenario over a real redis-server that this test starts.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest
from test_c_abi import KT_INVALID_ARGUMENT, KT_MISMATCH, library_path, load, run_ranks

REDIS_SERVER = shutil.which("redis-server")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def redis_address() -> Iterator[str]:
    """A redis-server on a free port without persistence, killed after the test."""
    if REDIS_SERVER is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is not installed; scripts/setup.sh installs it")
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="kaitian-redis-") as directory:
        server = subprocess.Popen(
            [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            cwd=directory,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 5
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    assert server.poll() is None, "redis-server exited at start"
                    assert time.monotonic() < deadline, "redis-server did not start within 5 s"
                    time.sleep(0.01)
            yield f"redis://127.0.0.1:{port}"
        finally:
            server.kill()
            server.wait()


def test_collectives_over_redis(redis_address: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAITIAN_TIMEOUT", "10")
    monkeypatch.setenv("KAITIAN_JOB_ID", "c-abi-redis")
    monkeypatch.delenv("KAITIAN_TOKEN", raising=False)
    for outcome in run_ranks(redis_address, 3, "collectives"):
        assert outcome["wait"] == KT_MISMATCH, outcome  # the scenario ends with a count mismatch
    port = redis_address.rsplit(":", 1)[1]
    keys = subprocess.run(
        ["redis-cli", "-p", port, "--scan", "--pattern", "*"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert keys and all(key.startswith("kaitian/c-abi-redis/") for key in keys), keys


def test_redis_address_needs_a_job_id(redis_address: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KAITIAN_JOB_ID", raising=False)
    lib = load(str(library_path()))
    store = ctypes.c_void_p()
    assert lib.ktStoreConnect(ctypes.byref(store), redis_address.encode(), None, 5.0) == KT_INVALID_ARGUMENT
    assert "KAITIAN_JOB_ID" in lib.ktGetLastError().decode()


def _allreduce(rank: int, size: int) -> list[float]:
    import torch
    import torch.distributed as dist

    t = torch.full((3,), float(rank + 1))
    dist.all_reduce(t)
    return t.tolist()


def test_the_torch_backend_meets_in_redis_and_leaves_only_the_job_marker(redis_address: str) -> None:
    """KAITIAN_STORE=redis://... as kaitian run --store gives it: the process group's
    communicators and topology meet in Redis (MAC'd with the job token, since anyone with the
    Redis password can write there), and the last rank to join removes the group's keys."""
    from ranks import assert_all_ok
    from ranks import run_ranks as run_torch_ranks

    env = {
        "KAITIAN_STORE": redis_address,
        "KAITIAN_JOB_ID": "torch-redis",
        "KAITIAN_TOKEN": "redis-job-token-0123456789",
    }
    assert assert_all_ok(run_torch_ranks(_allreduce, 3, lambda _: env), 3) == [[6.0] * 3] * 3
    port = redis_address.rsplit(":", 1)[1]
    keys = subprocess.run(
        ["redis-cli", "-p", port, "--scan", "--pattern", "*"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert keys == ["kaitian/torch-redis/"], keys  # the job's marker, which expires with its TTL
