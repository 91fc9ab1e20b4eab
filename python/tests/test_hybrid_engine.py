"""The engine's hybrid communicator through the C ABI, with torch's gloo lent as a group library.

The backend's own tests (test_process_group) run it on CPU tensors, which the engine reaches by
address. These run the path device tensors take (buffers by id, staged through host memory by
the hostView/commit callbacks) on the CPU, against a reference computed here, on every dtype
and op and on awkward sizes, and check that every rank ends with the same bytes.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
from kaitian import _native
from kaitian._hybrid import HybridEngine, StagingPool
from kaitian._store import EngineRendezvous, job_token
from kaitian._vendor import IntraGroup, create_torch_intra_group
from kaitian.profile import StageTimes
from kaitian.topology import local_host_id
from ranks import assert_all_ok, run_ranks

pytestmark = pytest.mark.skipif(
    not any(p.is_file() for p in _native.library_candidates()), reason="libKaitianC.so is not built"
)

DTYPES = [
    torch.float32,
    torch.float64,
    torch.float16,
    torch.bfloat16,
    torch.int32,
    torch.int64,
    torch.int8,
    torch.uint8,
]
OPS = [_native.SUM, _native.PROD, _native.MAX, _native.MIN, _native.AVG]
COUNTS = [0, 1, 7, 37, 1031]
TIMEOUT = timedelta(seconds=60)


def _input(rank: int, count: int, dtype: torch.dtype) -> torch.Tensor:
    """Small values (1 to 3), so that products of up to 5 ranks fit every dtype exactly."""
    return ((torch.arange(count) + rank) % 3 + 1).to(dtype)


def _expected(size: int, count: int, dtype: torch.dtype, op: int) -> torch.Tensor:
    inputs = torch.stack([_input(r, count, torch.int64) for r in range(size)])
    if op in (_native.SUM, _native.AVG):
        reduced = inputs.sum(0)
    elif op == _native.PROD:
        reduced = inputs.prod(0)
    elif op == _native.MAX:
        reduced = inputs.max(0).values
    else:
        reduced = inputs.min(0).values
    if op != _native.AVG:
        return reduced.to(dtype)
    if dtype.is_floating_point:
        return (reduced.to(torch.float64) / size).to(dtype)
    return torch.div(reduced, size, rounding_mode="trunc").to(dtype)


def staged_allreduce(rank: int, size: int, kinds: list[str], backends: dict[str, str]) -> torch.Tensor:
    """Every result's bytes, in call order (a uint8 tensor, which the harness can send back)."""
    store = dist.PrefixStore("hybrid-engine-test", dist.distributed_c10d._get_default_store())
    token = job_token(store, rank, TIMEOUT)
    rendezvous = EngineRendezvous(store, rank, token, TIMEOUT)
    members = [r for r, kind in enumerate(kinds) if kind == kinds[rank]]
    local, host = members.index(rank), local_host_id()

    def make_group(prefix: str, instance: int) -> IntraGroup | None:
        if backends[kinds[rank]] == "gloo":
            return create_torch_intra_group(
                "gloo", dist.PrefixStore(prefix + "/", store), local, len(members), TIMEOUT, members
            )
        return None  # the engine's own group, on regions it stages through the callbacks

    engine = HybridEngine(
        rendezvous.handle,
        size,
        rank,
        kinds[rank],
        (token, rendezvous.namespace + "staged", host, 60.0),
        make_group,
        torch.device("cpu"),
        StageTimes(),
        staged=True,
    )
    rendezvous.close(size)
    results: list[torch.Tensor] = []
    try:
        for dtype in DTYPES:
            for op in OPS:
                for count in COUNTS:
                    t = _input(rank, count, dtype)
                    engine.allreduce(t, op, lambda t=t: [t]).wait()
                    want = _expected(size, count, dtype, op)
                    assert torch.equal(t, want), f"rank {rank}: {dtype} op {op} x {count}: {t[:8]} != {want[:8]}"
                    results.append(t.view(torch.uint8).clone())
    finally:
        engine.close()
    return torch.cat(results)


@pytest.mark.parametrize(
    ("kinds", "chunk"),
    [
        pytest.param(["cpu-a", "cpu-b", "cpu-a", "cpu-b"], "40", id="equal-2+2-40B-chunks"),
        pytest.param(["cpu-a", "cpu-a", "cpu-b"], "4194304", id="unequal-2+1"),
        pytest.param(["cpu-a", "cpu-b", "cpu-b", "cpu-a", "cpu-b"], "64", id="unequal-2+3-64B-chunks"),
    ],
)
def test_staged_allreduce_matches_the_reference_on_every_dtype_and_op(kinds: list[str], chunk: str) -> None:
    size = len(kinds)
    backends = {"cpu-a": "gloo", "cpu-b": "kaitian"}
    results = assert_all_ok(
        run_ranks(staged_allreduce, size, lambda r: {"KAITIAN_HYBRID_CHUNK_BYTES": chunk}, args=(kinds, backends)),
        size,
    )
    for rank in range(1, size):
        assert torch.equal(results[rank], results[0]), f"rank {rank}'s bytes differ from rank 0's"


def test_staging_buffers_are_reused_per_dtype_and_size() -> None:
    pool = StagingPool(pinned=False, idle_limit=2)
    first = pool.take(torch.float32, 10)
    assert first.shape == (10,) and first.dtype == torch.float32
    pool.give(first)
    assert pool.take(torch.float32, 10).data_ptr() == first.data_ptr()
    assert pool.take(torch.float32, 10).data_ptr() != first.data_ptr()  # none idle: a new one
    other = pool.take(torch.bfloat16, 10)
    pool.give(other)
    assert pool.take(torch.float32, 10).data_ptr() != other.data_ptr()  # another kind is not reused
    kept = [pool.take(torch.int8, 3) for _ in range(3)]
    for buffer in kept:
        pool.give(buffer)
    again = {pool.take(torch.int8, 3).data_ptr() for _ in range(3)}
    assert len(again & {b.data_ptr() for b in kept[:2]}) == 2  # at most idle_limit kept
