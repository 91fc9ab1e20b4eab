"""torch.distributed beyond DDP on "kaitian": FSDP2, DeviceMesh/DTensor, batched p2p, any-source recv, coalesced
allgather, monitored_barrier, async checkpoints and subgroup teardown, each checked against a
reference computed on every rank (or gloo's result in the same run).

Ranks are spawned by ranks.run_ranks with this module's scenario functions.
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import kaitian
import pytest
import torch
import torch.distributed as dist
from kaitian import _native
from kaitian.process_group import IS_BACKEND
from ranks import assert_all_ok, run_ranks
from torch import nn

pytestmark = [
    pytest.mark.skipif(
        not any(p.is_file() for p in _native.library_candidates()), reason="libKaitianC.so is not built"
    ),
    pytest.mark.skipif(not IS_BACKEND, reason="this torch cannot subclass its C++ Backend from Python"),
]

SIZES = [0, 1, 7, 1021, 3 << 20]
"""Elements per message: empty, one, odd, prime, and 12 MiB of float32 (above a shared-memory
ring, so a ring exchange deadlocks unless sends and receives progress together)."""


def ring_values(rank: int, n: int) -> torch.Tensor:
    return torch.arange(n, dtype=torch.float32) + 1000 * rank


def batch_ring(rank: int, size: int) -> int:
    """batch_isend_irecv rings in both directions, send listed before receive on every rank."""
    checks = 0
    for n in SIZES:
        right, left = (rank + 1) % size, (rank - 1) % size
        to_right, from_left = ring_values(rank, n), torch.empty(n)
        to_left, from_right = ring_values(rank, n) * 2, torch.empty(n)
        ops = [
            dist.P2POp(dist.isend, to_right, right),
            dist.P2POp(dist.isend, to_left, left),
            dist.P2POp(dist.irecv, from_left, left),
            dist.P2POp(dist.irecv, from_right, right),
        ]
        for work in dist.batch_isend_irecv(ops):
            work.wait()
        assert torch.equal(from_left, ring_values(left, n)), f"n={n}: from rank {left}"
        assert torch.equal(from_right, ring_values(right, n) * 2), f"n={n}: from rank {right}"
        checks += 2
    # A batched send matches a plain recv, and the reverse.
    if rank == 0:
        dist.batch_isend_irecv([dist.P2POp(dist.isend, torch.full((5,), 3.0), 1)])[0].wait()
        got = torch.empty(5)
        dist.recv(got, 1)
        assert torch.equal(got, torch.full((5,), 4.0))
    elif rank == 1:
        got = torch.empty(5)
        dist.recv(got, 0)
        assert torch.equal(got, torch.full((5,), 3.0))
        dist.batch_isend_irecv([dist.P2POp(dist.isend, torch.full((5,), 4.0), 0)])[0].wait()
    dist.barrier()
    return checks + 1


def any_source(rank: int, size: int) -> list[tuple[int, list[float]]]:
    """A receive from any rank: rank 0 takes one message from every other rank, with
    kaitian.recv_from_any and with gloo's dist.recv(src=None) in the same run, each time naming the
    sender; then a tag-7 message from rank 1 is passed over by a receive from any rank with tag 9
    (gloo matches by tag too) and taken by a plain recv after it. dist.recv(src=None) itself is
    refused on kaitian before anything is received, and names recv_from_any."""
    if IS_BACKEND:
        try:
            dist.recv(torch.empty(3), tag=9)
        except NotImplementedError as error:
            assert "kaitian.recv_from_any" in str(error)
        else:
            raise AssertionError("dist.recv(src=None) was not refused")
    received: list[list[tuple[int, list[float]]]] = []
    gloo = dist.new_group(backend="gloo")
    for group in (None, gloo):

        def recv_any(t: torch.Tensor, group: dist.ProcessGroup | None = group) -> int:
            return kaitian.recv_from_any(t, tag=9) if group is None else dist.recv(t, group=group, tag=9)

        got: list[tuple[int, list[float]]] = []
        if rank == 0:
            for _ in range(size - 1):
                t = torch.empty(3)
                src = recv_any(t)
                got.append((src, t.tolist()))
        else:
            dist.send(torch.full((3,), float(rank)), 0, group=group, tag=9)
        dist.barrier(group=group)
        if size > 2:
            if rank == 0:
                t, passed = torch.empty(3), torch.empty(3)
                got.append((recv_any(t), t.tolist()))
                got.append((dist.recv(passed, 1, group=group, tag=7), passed.tolist()))
            elif rank == 1:
                dist.send(torch.full((3,), 70.0), 0, group=group, tag=7)
            elif rank == 2:
                dist.send(torch.full((3,), 90.0), 0, group=group, tag=9)
        dist.barrier(group=group)
        received.append(sorted(got[: size - 1]) + got[size - 1 :])
    assert received[0] == received[1], f"kaitian {received[0]} but gloo {received[1]}"
    return received[0]


def premul_sum(rank: int, size: int) -> dict[str, object]:
    """PREMUL_SUM (FSDP2's op for a gradient divide factor): each rank scales its own input by its own
    factor, then the inputs are summed; the caller's input of a reduce-scatter stays as it was."""
    t = torch.full((5,), 3.0)
    dist.all_reduce(t, op=dist.ReduceOp.PREMUL_SUM(float(rank + 1)))
    inp = torch.arange(2.0 * size)
    out = torch.empty(2)
    dist.reduce_scatter_tensor(out, inp, op=dist.ReduceOp.PREMUL_SUM(0.5 * (rank + 1)))
    try:
        dist.all_reduce(torch.ones(2, dtype=torch.int32), op=dist.ReduceOp.PREMUL_SUM(2.0))
        refused = ""
    except ValueError as error:
        refused = str(error)
    return {"allreduce": t.tolist(), "reduce_scatter": out.tolist(), "input": inp.tolist(), "refused": refused}


def coalesced_allgather(rank: int, size: int) -> list[list[torch.Tensor]]:
    """all_gather_coalesced of three tensors of different shapes (one empty), on kaitian and gloo."""
    inputs = [torch.full((2, 3), float(rank)), torch.arange(5, dtype=torch.float32) * (rank + 1), torch.empty(0)]
    results = []
    for group in (None, dist.new_group(backend="gloo")):
        outputs = [[torch.empty_like(t) for t in inputs] for _ in range(size)]
        dist.all_gather_coalesced(outputs, inputs, group=group)
        results.append(outputs)
    for r in range(size):
        for got, want in zip(results[0][r], results[1][r], strict=True):
            assert torch.equal(got, want), f"rank {r}'s block differs from gloo's"
    return results[0]


def monitored(rank: int, size: int) -> dict[str, object]:
    """A monitored_barrier every rank reaches, then one that rank 1 skips."""
    dist.monitored_barrier(timeout=timedelta(seconds=10))
    outcome: dict[str, object] = {"raised": False}
    if rank != 1:
        try:
            dist.monitored_barrier(timeout=timedelta(seconds=2), wait_all_ranks=True)
        except RuntimeError as error:
            outcome = {"raised": True, "message": str(error)}
    # Collectives still work afterwards: the barrier used the store, not the engine.
    t = torch.ones(3)
    dist.all_reduce(t)
    outcome["sum"] = t.tolist()
    return outcome


def fsdp2(rank: int, size: int) -> list[torch.Tensor]:
    """FSDP2 (fully_shard) trains to the parameters of full-batch training in one process."""
    from torch.distributed.fsdp import fully_shard

    model = tiny_model()
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(3):
        x, y = tiny_batch(step, 6 * size)
        opt.zero_grad()
        per = x.shape[0] // size
        nn.functional.mse_loss(model(x[rank * per : (rank + 1) * per]), y[rank * per : (rank + 1) * per]).backward()
        opt.step()
    return [p.full_tensor().detach().clone() for p in model.parameters()]


UNEVEN = {2: [8, 4], 3: [8, 6, 4], 4: [7, 5, 4, 2]}
"""Per-rank batches of the weighted FSDP2 runs: B = 12, 18 or 18 samples, split unevenly."""


def fsdp2_weighted(rank: int, size: int) -> tuple[list[torch.Tensor], list[str]]:
    """FSDP2 with uneven batch shares and kaitian.install_fsdp_weighting: each rank's gradient weighs
    b_rank / B, so training matches full-batch training on all B samples (float16 gradients are refused:
    FSDP2 divides them after the sum). Also returns the stages the
    hybrid pipeline ran (kaitian.stage_times), which tell the hierarchical reduce-scatter apart."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    plan = UNEVEN[size]
    half = fully_shard(tiny_model(), mp_policy=MixedPrecisionPolicy(param_dtype=torch.float16))
    try:
        kaitian.install_fsdp_weighting(half, plan)
        raise AssertionError("float16 gradients were not refused")
    except ValueError as error:
        assert "use reduce_dtype float32 or bfloat16" in str(error)
    model = tiny_model()
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    kaitian.install_fsdp_weighting(model, plan)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    start = sum(plan[:rank])
    for step in range(3):
        x, y = tiny_batch(step, sum(plan))
        opt.zero_grad()
        mine = slice(start, start + plan[rank])
        nn.functional.mse_loss(model(x[mine]), y[mine]).backward()
        opt.step()
    return [p.full_tensor().detach().clone() for p in model.parameters()], sorted(kaitian.stage_times())


def tiny_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(7, 13), nn.Tanh(), nn.Linear(13, 3))


def tiny_batch(step: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    return torch.randn(n, 7, generator=g), torch.randn(n, 3, generator=g)


def full_batch_parameters(size: int, samples: int | None = None) -> list[torch.Tensor]:
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(3):
        x, y = tiny_batch(step, samples or 6 * size)
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


def dtensor(rank: int, size: int) -> dict[str, object]:
    """A DeviceMesh over the kaitian world: shard, redistribute to replicated, reduce."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (size,))
    full = torch.arange(6 * size * 5, dtype=torch.float32).reshape(6 * size, 5)
    sharded = distribute_tensor(full, mesh, [Shard(0)])
    assert torch.equal(sharded.to_local(), full.chunk(size)[rank])
    replicated = sharded.redistribute(mesh, [Replicate()])
    assert torch.equal(replicated.to_local(), full)
    total = (sharded * 2).sum().full_tensor()
    return {"total": total.item(), "mesh_backend": dist.get_backend(mesh.get_group())}


def async_checkpoint(rank: int, size: int, directory: str) -> list[float]:
    """dcp.async_save, then dcp.load into a fresh state dict (plain tensors are replicated: DCP
    writes one copy, rank 0's, and every rank loads it)."""
    import torch.distributed.checkpoint as dcp

    state = {"w": torch.full((4,), 7.0), "shared": torch.arange(3, dtype=torch.float32)}
    dcp.async_save(state, checkpoint_id=directory).result()
    dist.barrier()
    loaded = {"w": torch.empty(4), "shared": torch.empty(3)}
    dcp.load(loaded, checkpoint_id=directory)
    return loaded["w"].tolist() + loaded["shared"].tolist()


def subgroup_teardown(rank: int, size: int) -> list[float]:
    """new_group, a collective on it, destroy_process_group(subgroup), then the world still works."""
    sub = dist.new_group([0, 1])
    t = torch.full((2,), float(rank + 1))
    if rank in (0, 1):
        dist.all_reduce(t, group=sub)
    dist.destroy_process_group(sub)
    world = torch.ones(1)
    dist.all_reduce(world)
    return t.tolist() + world.tolist()


@pytest.mark.parametrize("size", [2, 3])
def test_batch_isend_irecv_rings_do_not_deadlock(size: int) -> None:
    assert all(v == 2 * len(SIZES) + 1 for v in assert_all_ok(run_ranks(batch_ring, size, timeout=120), size))


@pytest.mark.parametrize("size", [2, 3])
def test_recv_from_any_source_matches_gloo(size: int) -> None:
    values = assert_all_ok(run_ranks(any_source, size), size)
    want = [(r, [float(r)] * 3) for r in range(1, size)]
    if size > 2:
        want += [(2, [90.0] * 3), (1, [70.0] * 3)]
    assert values[0] == want


def test_premul_sum_scales_each_ranks_input_by_its_own_factor() -> None:
    size = 3
    values = assert_all_ok(run_ranks(premul_sum, size), size)
    weight = sum(range(1, size + 1))  # factors 1, 2, 3 (and halves of them for reduce_scatter)
    for rank, value in enumerate(values):
        assert value["allreduce"] == [3.0 * weight] * 5
        assert value["reduce_scatter"] == [0.5 * weight * (2 * rank), 0.5 * weight * (2 * rank + 1)]
        assert value["input"] == list(map(float, range(2 * size)))
        assert "PREMUL_SUM is defined for floating-point tensors only" in value["refused"]


def test_all_gather_coalesced_matches_gloo() -> None:
    values = assert_all_ok(run_ranks(coalesced_allgather, 3), 3)
    for r in range(3):  # every rank holds rank r's inputs in block r
        want = [torch.full((2, 3), float(r)), torch.arange(5, dtype=torch.float32) * (r + 1), torch.empty(0)]
        for rank in range(3):
            assert all(torch.equal(a, b) for a, b in zip(values[rank][r], want, strict=True)), f"rank {rank}, block {r}"


def test_monitored_barrier_names_the_rank_that_did_not_come() -> None:
    values = assert_all_ok(run_ranks(monitored, 3, timeout=60), 3)
    assert values[0]["raised"] and re.search(r"\brank 1 failed to pass monitoredBarrier", values[0]["message"])
    assert values[2]["raised"] and "rank 0 did not release" in values[2]["message"]
    assert not values[1]["raised"]
    assert all(v["sum"] == [3.0, 3.0, 3.0] for v in values)


@pytest.mark.parametrize("size", [2, 3])
def test_fsdp2_trains_as_full_batch_training(size: int) -> None:
    values = assert_all_ok(run_ranks(fsdp2, size, timeout=120), size)
    want = full_batch_parameters(size)
    for rank, params in enumerate(values):
        for i, (got, expected) in enumerate(zip(params, want, strict=True)):
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6, msg=f"rank {rank} parameter {i}")
            assert torch.equal(got, values[0][i]), f"rank {rank} parameter {i} differs from rank 0's"


@pytest.mark.parametrize(
    "size, env",
    [
        pytest.param(3, None, id="flat-3"),
        # Two device kinds: gloo inside the cpu-a group, Kaitian's engine between the groups.
        pytest.param(
            3,
            lambda r: {"KAITIAN_DEVICE_KIND": ["cpu-a", "cpu-a", "cpu-b"][r], "KAITIAN_INTRA_BACKEND": "cpu-a=gloo"},
            id="hybrid-2+1",
        ),
        pytest.param(2, None, id="flat-2"),
        # Groups of equal size: FSDP2's reduce-scatter takes the hierarchical path.
        pytest.param(
            4,
            lambda r: {"KAITIAN_DEVICE_KIND": ["cpu-a", "cpu-b"][r % 2], "KAITIAN_INTRA_BACKEND": "cpu-a=gloo"},
            id="hybrid-2+2",
        ),
    ],
)
def test_fsdp2_with_uneven_shares_trains_as_full_batch_training(size: int, env: object) -> None:
    results = assert_all_ok(run_ranks(fsdp2_weighted, size, env=env, timeout=120), size)
    values = [params for params, _ in results]
    hierarchical = [("column order copy" in stages) for _, stages in results]
    assert hierarchical == [size == 4] * size, [stages for _, stages in results]
    want = full_batch_parameters(size, sum(UNEVEN[size]))
    for rank, params in enumerate(values):
        for i, (got, expected) in enumerate(zip(params, want, strict=True)):
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6, msg=f"rank {rank} parameter {i}")
            assert torch.equal(got, values[0][i]), f"rank {rank} parameter {i} differs from rank 0's"


def test_device_mesh_and_dtensor() -> None:
    size = 3
    values = assert_all_ok(run_ranks(dtensor, size), size)
    want = float(torch.arange(6 * size * 5, dtype=torch.float32).sum() * 2)
    assert all(v == {"total": want, "mesh_backend": "kaitian"} for v in values)


def test_async_checkpoint_round_trip(tmp_path: Path) -> None:
    values = assert_all_ok(run_ranks(async_checkpoint, 2, args=(str(tmp_path / "ckpt"),)), 2)
    assert values == [[7.0] * 4 + [0.0, 1.0, 2.0]] * 2


def test_destroying_a_subgroup_leaves_the_world_working() -> None:
    values = assert_all_ok(run_ranks(subgroup_teardown, 3), 3)
    assert values == [[3.0, 3.0, 3.0], [3.0, 3.0, 3.0], [3.0, 3.0, 3.0]]
