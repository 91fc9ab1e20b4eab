"""What each spawned rank runs: collective checks against a reference, DDP training, a crash.

Every input is a function of (rank, case), so each rank computes the reference result of every
collective itself. Values are small integers wherever the op allows, so sums and products are
exact in every dtype (float16 and bfloat16 included) whatever order the engine reduces in.
"""

from __future__ import annotations

import os
import signal
import time
from datetime import timedelta

import kaitian
import torch
import torch.distributed as dist
from kaitian import kaitian_backend
from torch import nn

DTYPES = [
    torch.float16,
    torch.bfloat16,
    torch.float32,
    torch.float64,
    torch.int8,
    torch.uint8,
    torch.int32,
    torch.int64,
]
OPS = {
    "sum": dist.ReduceOp.SUM,
    "product": dist.ReduceOp.PRODUCT,
    "min": dist.ReduceOp.MIN,
    "max": dist.ReduceOp.MAX,
    "avg": dist.ReduceOp.AVG,
}


def value(rank: int, case: int, n: int, dtype: torch.dtype, op: str = "sum") -> torch.Tensor:
    """A deterministic input: small non-negative ints, {1, 2} for products, signs for floats."""
    g = torch.Generator().manual_seed(rank * 7919 + case)
    if op == "product":
        t = torch.randint(1, 3, (n,), generator=g)
    else:
        t = torch.randint(0, 5, (n,), generator=g)
    if dtype.is_floating_point and op != "avg":
        t = t * (torch.randint(0, 2, (n,), generator=g) * 2 - 1)
    return t.to(dtype)


def reference(op: str, inputs: list[torch.Tensor]) -> torch.Tensor:
    stacked = torch.stack([x.double() for x in inputs])
    if op == "sum":
        return stacked.sum(0)
    if op == "product":
        return stacked.prod(0)
    if op == "min":
        return stacked.min(0).values
    if op == "max":
        return stacked.max(0).values
    return stacked.sum(0) / len(inputs)


def check_equal(got: torch.Tensor, want: torch.Tensor, what: str, avg: bool = False) -> None:
    if avg and got.dtype.is_floating_point:
        tol = 1e-2 if got.element_size() == 2 else 1e-6
        ok = torch.allclose(got.double(), want.double(), rtol=tol, atol=tol)
    elif avg:
        ok = bool(((got.double() - want.double().trunc()).abs() <= 1).all())
    else:
        ok = torch.equal(got.double(), want.double())
    assert ok, f"{what}: got {got.tolist()[:8]} want {want.tolist()[:8]}"


def check_collectives(rank: int, size: int) -> int:
    """Every collective against its reference; returns how many checks ran."""
    checks = 0
    n = 37  # not a multiple of any group size: exercises shard padding
    for di, dtype in enumerate(DTYPES):
        for oi, (name, op) in enumerate(OPS.items()):
            case = di * 10 + oi
            t = value(rank, case, n, dtype, name)
            dist.all_reduce(t, op=op)
            want = reference(name, [value(r, case, n, dtype, name) for r in range(size)])
            check_equal(t, want.to(dtype) if name != "avg" else want, f"all_reduce {name} {dtype}", avg=name == "avg")
            checks += 1

    # reduce_scatter_tensor: hierarchical on hybrid jobs of equal group sizes (column order,
    # in-group reduce-scatter, reduce-scatter between groups), flat otherwise.
    for di, dtype in enumerate(DTYPES):
        for oi, (name, op) in enumerate(OPS.items()):
            case = 400 + di * 10 + oi
            inputs = [value(r, case, 3 * size, dtype, name) for r in range(size)]
            out = torch.empty(3, dtype=dtype)
            dist.reduce_scatter_tensor(out, inputs[rank], op=op)
            want = reference(name, inputs)[rank * 3 : (rank + 1) * 3]
            what = f"reduce_scatter_tensor {name} {dtype}"
            check_equal(out, want.to(dtype) if name != "avg" else want, what, avg=name == "avg")
            checks += 1

    # bool: SUM is "any", PRODUCT "all" (as gloo and NCCL define them); AVG has no meaning.
    for oi, name in enumerate(("sum", "product", "min", "max")):
        flags = value(rank, 50 + oi, n, torch.int64) > 2  # True on some ranks only, per element
        dist.all_reduce(flags, op=OPS[name])
        stacked = torch.stack([value(r, 50 + oi, n, torch.int64) > 2 for r in range(size)])
        want = stacked.any(0) if name in ("sum", "max") else stacked.all(0)
        assert flags.dtype == torch.bool and torch.equal(flags, want), f"all_reduce {name} bool: {flags.tolist()[:8]}"
        checks += 1
    masks = [torch.empty(n, dtype=torch.bool) for _ in range(size)]
    dist.all_gather(masks, value(rank, 55, n, torch.int64) > 2)
    for r in range(size):
        assert torch.equal(masks[r], value(r, 55, n, torch.int64) > 2), "all_gather bool"
    checks += 1
    stop = torch.tensor([rank == size - 1])  # the "any rank says stop" idiom
    dist.all_reduce(stop, op=dist.ReduceOp.MAX)
    assert bool(stop), "all_reduce MAX bool: the last rank's stop was lost"
    try:
        dist.all_reduce(torch.tensor([True]), op=dist.ReduceOp.AVG)
        raise AssertionError("all_reduce AVG bool was accepted")
    except ValueError as refused:
        assert "AVG is not defined for bool" in str(refused), refused
    checks += 1

    # A future callback that issues another collective and waits for it (DDP's PowerSGD hook,
    # .then() chains): it must not run on the thread that has to finish that collective.
    first = torch.ones(5)

    def second_allreduce(fut: torch.futures.Future) -> torch.Tensor:
        again = fut.value()[0] * 2
        dist.all_reduce(again, async_op=True).get_future().wait()
        return again

    chained = dist.all_reduce(first, async_op=True).get_future().then(second_allreduce).wait()
    check_equal(chained, torch.full((5,), 2.0 * size * size), "a callback's own all_reduce")
    checks += 1

    # Asynchronous, several in flight, then waited in order.
    tensors = [value(rank, 100 + i, 1000 * (i + 1), torch.float32) for i in range(4)]
    works = [dist.all_reduce(t, async_op=True) for t in tensors]
    for i, (t, w) in enumerate(zip(tensors, works, strict=True)):
        w.wait()
        want = reference("sum", [value(r, 100 + i, 1000 * (i + 1), torch.float32) for r in range(size)])
        check_equal(t, want, "async all_reduce")
        checks += 1

    # Non-contiguous: a transposed view is reduced through a temporary and copied back.
    base = value(rank, 200, 24, torch.float32).view(4, 6)
    t = base.t()
    dist.all_reduce(t)
    want = reference("sum", [value(r, 200, 24, torch.float32).view(4, 6) for r in range(size)]).t()
    check_equal(t, want, "all_reduce non-contiguous")
    checks += 1

    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.int64):
        root = size - 1
        t = value(rank, 300, n, dtype)
        dist.broadcast(t, src=root)
        check_equal(t, value(root, 300, n, dtype), f"broadcast {dtype}")

        outs = [torch.empty(n, dtype=dtype) for _ in range(size)]
        dist.all_gather(outs, value(rank, 301, n, dtype))
        for r in range(size):
            check_equal(outs[r], value(r, 301, n, dtype), f"all_gather {dtype}")

        out = torch.empty(n * size, dtype=dtype)
        dist.all_gather_into_tensor(out, value(rank, 302, n, dtype))
        check_equal(out, torch.cat([value(r, 302, n, dtype) for r in range(size)]), f"all_gather_into_tensor {dtype}")

        out = torch.empty(n, dtype=dtype)
        dist.reduce_scatter_tensor(out, value(rank, 303, n * size, dtype), op=dist.ReduceOp.MAX)
        want = reference("max", [value(r, 303, n * size, dtype) for r in range(size)])[rank * n : (rank + 1) * n]
        check_equal(out, want, f"reduce_scatter_tensor max {dtype}")

        out = torch.empty(n, dtype=dtype)
        dist.reduce_scatter(out, list(value(rank, 304, n * size, dtype).chunk(size)))
        want = reference("sum", [value(r, 304, n * size, dtype) for r in range(size)])[rank * n : (rank + 1) * n]
        check_equal(out, want, f"reduce_scatter {dtype}")

        t = value(rank, 305, n, dtype)
        dist.reduce(t, dst=root, op=dist.ReduceOp.MIN)
        if rank == root:
            check_equal(t, reference("min", [value(r, 305, n, dtype) for r in range(size)]), f"reduce {dtype}")

        gathered = [torch.empty(n, dtype=dtype) for _ in range(size)] if rank == 0 else None
        dist.gather(value(rank, 306, n, dtype), gathered, dst=0)
        if rank == 0:
            for r in range(size):
                check_equal(gathered[r], value(r, 306, n, dtype), f"gather {dtype}")

        out = torch.empty(n, dtype=dtype)
        scatter_list = [value(r, 307, n, dtype) for r in range(size)] if rank == 0 else None
        dist.scatter(out, scatter_list, src=0)
        check_equal(out, value(rank, 307, n, dtype), f"scatter {dtype}")
        checks += 8

    # all_to_all_single, equal and uneven splits (rank r sends r + p + 1 rows to rank p).
    send = value(rank, 400, 3 * size, torch.float32).view(size, 3)
    out = torch.empty(size, 3)
    dist.all_to_all_single(out, send)
    for p in range(size):
        check_equal(out[p], value(p, 400, 3 * size, torch.float32).view(size, 3)[rank], "all_to_all_single")
    in_splits = [rank + p + 1 for p in range(size)]
    out_splits = [p + rank + 1 for p in range(size)]
    send = torch.arange(sum(in_splits) * 2, dtype=torch.float64).view(-1, 2) + 1000 * rank
    out = torch.empty(sum(out_splits), 2, dtype=torch.float64)
    dist.all_to_all_single(out, send, out_splits, in_splits)
    offset = 0
    for p in range(size):
        sent = torch.arange(sum(p + q + 1 for q in range(size)) * 2, dtype=torch.float64).view(-1, 2) + 1000 * p
        start = sum(p + q + 1 for q in range(rank))
        check_equal(out[offset : offset + out_splits[p]], sent[start : start + out_splits[p]], "all_to_all_single v")
        offset += out_splits[p]
    checks += 2

    dist.barrier()

    # Point to point around a ring: even ranks send first, odd ranks receive first.
    nxt, prv = (rank + 1) % size, (rank - 1) % size
    got = torch.empty(5, dtype=torch.int32)
    if size > 1:
        if rank % 2 == 0:
            dist.send(value(rank, 500, 5, torch.int32), nxt)
            dist.recv(got, prv)
        else:
            dist.recv(got, prv)
            dist.send(value(rank, 500, 5, torch.int32), nxt)
        check_equal(got, value(prv, 500, 5, torch.int32), "send/recv")
        checks += 1

    # A subgroup (new_group) of the first and last rank: its own topology, engine and token.
    if size >= 3:
        members = [0, size - 1]
        sub = dist.new_group(members, backend="kaitian")
        if rank in members:
            t = value(rank, 600, n, torch.float32)
            dist.all_reduce(t, group=sub)
            check_equal(t, reference("sum", [value(r, 600, n, torch.float32) for r in members]), "subgroup all_reduce")
            checks += 1

    # Refusals are clear errors raised at the call, not hangs; the backend's own checks are
    # reached directly too (torch's front end checks some arguments first, other callers do not).
    backend = kaitian_backend()
    assert backend is not None
    for bad in (
        lambda: dist.all_reduce(torch.ones(2, dtype=torch.int16)),
        lambda: dist.all_reduce(torch.ones(2, dtype=torch.int32), op=dist.ReduceOp.BAND),
        lambda: backend.allgather([[torch.empty(2)] * (size + 1)], [torch.ones(2)]),
        lambda: backend._allgather_base(torch.empty(2 * size - 1), torch.ones(2)),
        lambda: backend._reduce_scatter_base(torch.empty(2), torch.ones(2 * size + 1)),
        lambda: backend.alltoall_base(torch.empty(size), torch.ones(size), [1] * size, [2] * size),
        lambda: dist.broadcast(torch.ones(2), src=size),
    ):
        try:
            bad()
        except (TypeError, ValueError) as error:
            assert "kaitian" in str(error)
        else:
            raise AssertionError("an unsupported dtype or op was accepted")
    return checks


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


BATCH = 60  # divisible by every world size tested
STEPS = 4


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randn(BATCH, 8, generator=g), torch.randint(0, 4, (BATCH,), generator=g)


def train(
    rank: int, size: int, ddp: bool, kill_at: int | None = None, starts: list[float] | None = None
) -> list[list[torch.Tensor]]:
    """SGD on the same global batches; each rank takes its slice. Returns gradients per step.

    `starts`, when given, receives each step's start time (time.monotonic()).
    """
    torch.manual_seed(0)
    model = Net()
    if ddp:
        model = nn.parallel.DistributedDataParallel(model, bucket_cap_mb=0.004)  # several buckets
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    per = BATCH // size
    grads = []
    for step in range(STEPS):
        x, y = batch(step)
        x, y = x[rank * per : (rank + 1) * per], y[rank * per : (rank + 1) * per]
        if starts is not None:
            starts.append(time.monotonic())
        if kill_at is not None and step == kill_at and rank == size - 1:
            os.kill(os.getpid(), signal.SIGKILL)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
        opt.step()
    return grads


def scenario_full(rank: int, size: int) -> dict[str, object]:
    backend = kaitian_backend()
    assert backend is not None
    groups = [(g.kind, g.backend, g.ranks) for g in backend.topology.groups]
    checks = check_collectives(rank, size)
    kaitian.stage_times()  # DDP's stages only, below
    return {"groups": groups, "checks": checks, "grads": train(rank, size, ddp=True), "stages": kaitian.stage_times()}


def scenario_ddp(rank: int, size: int) -> dict[str, object]:
    return {"grads": train(rank, size, ddp=True)}


def scenario_kill(rank: int, size: int) -> dict[str, object]:
    """The last rank dies at step 2; the survivors must fail, not hang, and say who died."""
    start = time.monotonic()
    try:
        train(rank, size, ddp=True, kill_at=2)
        for _ in range(1000):  # keep communicating in case the death landed between steps
            dist.all_reduce(torch.ones(1))
    except Exception as error:
        return {"raised": True, "message": str(error), "seconds": time.monotonic() - start}
    return {"raised": False, "message": "", "seconds": time.monotonic() - start}


def scenario_kill_timed(rank: int, size: int) -> dict[str, object]:
    """As scenario_kill, timed from the start of the step in which the last rank dies.

    DDP keeps the ranks in step, so a survivor starts that step within a few milliseconds of the
    rank's death: `detect_seconds` is how long the survivor took to notice it.
    """
    starts: list[float] = []
    try:
        train(rank, size, ddp=True, kill_at=2, starts=starts)
        for _ in range(1000):
            dist.all_reduce(torch.ones(1))
    except Exception as error:
        return {"raised": True, "message": str(error), "detect_seconds": time.monotonic() - starts[-1]}
    return {"raised": False, "message": "", "detect_seconds": time.monotonic() - starts[-1]}


def scenario_wait_timeout(rank: int, size: int) -> dict[str, object]:
    """Rank 0 waits with a short Work.wait(timeout) for an allreduce the others join late.

    Returns what rank 0's wait raised and how long it took, and whether the allreduce still
    completed correctly once everyone joined (the collective stays issued after a timed-out wait).
    """
    t = torch.ones(4)
    result: dict[str, object] = {"raised": False, "message": "", "wait_seconds": 0.0}
    if rank != 0:
        time.sleep(3.0)
    work = dist.all_reduce(t, async_op=True)
    if rank == 0:
        started = time.monotonic()
        try:
            work.wait(timeout=timedelta(seconds=0.5))
        except RuntimeError as error:
            result.update(raised=True, message=str(error), type=type(error).__name__)
        result["wait_seconds"] = time.monotonic() - started
    work.wait()
    result["sum"] = t.tolist()
    dist.barrier()
    return result


def scenario_reinit(rank: int, size: int) -> list[float]:
    """destroy_process_group, then init_process_group again, three times in one process."""
    sums = []
    for round_ in range(3):
        dist.destroy_process_group()
        dist.init_process_group("kaitian", rank=rank, world_size=size, timeout=timedelta(seconds=60))
        t = torch.full((3,), float(rank + round_))
        dist.all_reduce(t)
        sums.append(t[0].item())
    return sums


def powersgd_parameters(rank: int, size: int, group: object) -> list[torch.Tensor]:
    """Parameters after DDP training with the PowerSGD comm hook over `group`.

    The hook's future callback issues and waits on a second allreduce: it hangs a backend that
    runs callbacks on the thread that must finish that allreduce. One bucket: with several, the
    training thread's next bucket races the callbacks' allreduces, under gloo too (see
    kaitian._completion).
    """
    from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook

    torch.manual_seed(0)
    model = nn.parallel.DistributedDataParallel(Net(), process_group=group)
    state = powerSGD_hook.PowerSGDState(process_group=group, matrix_approximation_rank=1, start_powerSGD_iter=2)
    model.register_comm_hook(state, powerSGD_hook.powerSGD_hook)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    per = BATCH // size
    for step in range(STEPS + 2):
        x, y = batch(step)
        opt.zero_grad()
        nn.functional.cross_entropy(
            model(x[rank * per : (rank + 1) * per]), y[rank * per : (rank + 1) * per]
        ).backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


_REFERENCE_GROUPS: list[object] = []
"""gloo groups kept for the life of the process. Why: PowerSGD's future callbacks run on gloo's
run-loop thread and hold the group; when the last reference went there, ProcessGroupGloo's
destructor joined that very thread and the process aborted ("terminate called after throwing an
instance of 'std::system_error' what(): Resource deadlock avoided", seen once in CI, in the
reference run, not kaitian's)."""


def scenario_powersgd(rank: int, size: int) -> dict[str, list[torch.Tensor]]:
    """DDP with PowerSGD on the kaitian group and, as the reference, on a gloo group."""
    gloo = dist.new_group(backend="gloo")
    _REFERENCE_GROUPS.append(gloo)
    return {
        "kaitian": powersgd_parameters(rank, size, dist.group.WORLD),
        "gloo": powersgd_parameters(rank, size, gloo),
    }


SCENARIOS = {
    "powersgd": scenario_powersgd,
    "reinit": scenario_reinit,
    "full": scenario_full,
    "ddp": scenario_ddp,
    "kill": scenario_kill,
    "kill_timed": scenario_kill_timed,
    "wait_timeout": scenario_wait_timeout,
}
