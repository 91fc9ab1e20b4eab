"""Under `kaitian run` (KAITIAN_STORE set) the engine's communicators meet in the job's Kaitian store.

That store admits only holders of the job token, so the values the engine trusts (peer endpoints,
shared-memory segment names) and the topology are out of reach of anyone who can write torch's own
TCPStore; the topology is MAC'd with the token as well, for a Redis store; and the group's keys are
removed once every rank has joined.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
from kaitian import kaitian_backend
from kaitian._native import KaitianTimeoutError
from kaitian._store import SignedValues, StoreConnection
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
        # Once every rank had joined, the last one removed the group's keys (endpoints, topology).
        namespace = namespaces.pop()
        for key in ("kaitian/world/endpoint/0", "kaitian/topology/0", "joined"):
            with pytest.raises(KaitianTimeoutError):
                reader.get(namespace + key, timeout=0.1)
        reader.set(namespace + "probe", b"1")  # the namespace itself is usable: the miss is real
        assert reader.get(namespace + "probe") == b"1"
    finally:
        reader.close()


def test_topology_values_without_the_tokens_mac_are_refused(server: Server) -> None:
    """KAITIAN_STORE may be a Redis that others can write: the topology is MAC'd with the token."""
    connection = StoreConnection(server.address, TOKEN)
    try:
        values = SignedValues(connection, "group/x/kaitian/", TOKEN)
        values.set("topology/0", '{"kind": "cpu"}')
        values.wait(["topology/0"], timedelta(seconds=1))
        assert values.get("topology/0") == b'{"kind": "cpu"}'
        # Rewritten by something without the token: same text, MAC of another token, or none.
        other = SignedValues(connection, "group/x/kaitian/", "another-token-0123456789")
        other.set("topology/1", '{"kind": "cpu"}')
        connection.set("group/x/kaitian/topology/2", b"0" * 64 + b'{"kind": "cpu"}')
        connection.set("group/x/kaitian/topology/3", b"{}")
        for rank in (1, 2, 3):
            with pytest.raises(ValueError, match=f"'topology/{rank}'.*does not carry the job token's MAC"):
                values.get(f"topology/{rank}")
    finally:
        connection.close()


def test_a_wrong_token_cannot_join_through_the_job_store(server: Server) -> None:
    env = {"KAITIAN_STORE": server.address, "KAITIAN_TOKEN": "not-the-job-token-0123456789"}
    out = run_ranks(allreduce_and_namespace, 2, lambda _: env, timeout=60)
    assert sorted(out) == [0, 1]
    for status, text in out.values():
        assert status == "error" and "token" in str(text), text
