"""Under `kaitian run` (KAITIAN_STORE set) the engine's communicators meet in the job's Kaitian store.

That store admits only holders of the job token, so the values the engine trusts (peer endpoints,
shared-memory segment names) are out of reach of anyone who can write torch's own TCPStore.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.distributed as dist
from kaitian import kaitian_backend
from kaitian._store import StoreConnection
from ranks import assert_all_ok, run_ranks
from test_telemetry import TOKEN, Server


@pytest.fixture
def server() -> Iterator[Server]:
    started = Server()
    yield started
    started.stop()


def allreduce_and_namespace(rank: int, size: int) -> tuple[list[float], str]:
    t = torch.full((5,), float(rank + 1))
    dist.all_reduce(t)
    backend = kaitian_backend()
    assert backend is not None
    return t.tolist(), backend.rendezvous_namespace


def test_communicators_meet_in_the_job_store(server: Server) -> None:
    env = {"KAITIAN_STORE": server.address, "KAITIAN_TOKEN": TOKEN}
    values = assert_all_ok(run_ranks(allreduce_and_namespace, 3, lambda _: env), 3)
    assert [v[0] for v in values] == [[6.0] * 5] * 3
    namespaces = {v[1] for v in values}
    assert len(namespaces) == 1 and namespaces != {""}, namespaces
    reader = StoreConnection(server.address, TOKEN)
    try:
        # The engine's endpoint of rank 0, MAC'd with the job token (32 bytes more than the text).
        endpoint = reader.get(f"{namespaces.pop()}kaitian/world/endpoint/0", timeout=1.0)
    finally:
        reader.close()
    assert endpoint.startswith(b"127.0.0.1\n") and len(endpoint) > 32


def test_a_wrong_token_cannot_join_through_the_job_store(server: Server) -> None:
    env = {"KAITIAN_STORE": server.address, "KAITIAN_TOKEN": "not-the-job-token-0123456789"}
    out = run_ranks(allreduce_and_namespace, 2, lambda _: env, timeout=60)
    assert sorted(out) == [0, 1]
    for status, text in out.values():
        assert status == "error" and "token" in str(text), text
