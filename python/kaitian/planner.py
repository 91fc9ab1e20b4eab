"""Per-rank batch sizes from measured speed: the Swift planner (bound in _planning), and the measurement.

The planning math lives in Swift (the planner calls of kaitian.h) so every front end
(this package, the CLI, other languages) plans identically; this module only converts arguments,
times the user's own model, and gathers every rank's figure so all ranks plan from the same
numbers and therefore agree on the plan without a further round of communication.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ._planning import plan_batches
from .topology import local_device_kind, local_host_id


def _synchronize(device: torch.device) -> None:
    """Waits for queued kernels so the clock covers the work, not just its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_steps(
    model: nn.Module,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    loss_fn: Callable[..., torch.Tensor],
    steps: int,
    warmup: int,
    min_seconds: float,
) -> list[float]:
    """Mean seconds per step (forward, loss, backward) for each of `batches`, timed in turns.

    In turns (one step of each, then again) so that the host's drift, which reaches 1.7x within
    minutes on a shared machine, weighs on every batch alike. At least `steps` steps of each and
    `min_seconds` in all. The model is left as found: gradients and buffers are restored.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    saved_grads = [None if p.grad is None else p.grad.detach().clone() for p in params]
    saved_buffers = [b.detach().clone() for b in model.buffers()]
    device = batches[0][0].device

    def step(inputs: torch.Tensor, targets: torch.Tensor) -> None:
        for p in params:
            p.grad = None
        loss_fn(model(inputs), targets).backward()

    try:
        for _ in range(warmup):
            step(*batches[0])
        for batch in batches[1:]:
            step(*batch)
        _synchronize(device)
        totals = [0.0] * len(batches)
        done = 0
        started = time.perf_counter()
        while done < steps or time.perf_counter() - started < min_seconds:
            for index, batch in enumerate(batches):
                mark = time.perf_counter()
                step(*batch)
                _synchronize(device)
                totals[index] += time.perf_counter() - mark
            done += 1
    finally:
        with torch.no_grad():
            for p, g in zip(params, saved_grads, strict=True):
                p.grad = g
            for b, saved in zip(model.buffers(), saved_buffers, strict=True):
                b.copy_(saved)
    return [total / done for total in totals]


def measure_speed(
    model: nn.Module,
    sample_batch: tuple[torch.Tensor, ...] | list[torch.Tensor],
    loss_fn: Callable[..., torch.Tensor],
    steps: int = 3,
    warmup: int = 1,
    min_seconds: float = 0.5,
) -> float:
    """This rank's compute seconds per sample for the user's own model: forward, loss, backward.

    `sample_batch` is (inputs, targets) already on the model's device; `loss_fn(output, targets)`.
    Runs `warmup` untimed steps (allocator, kernel selection, caches), then at least `steps` timed
    steps and at least `min_seconds`: the mean over a long window, not a median of short steps,
    because CPU quotas (cgroup periods of 100 ms) and clock boosts make short steps lie. Nothing
    collective runs (pass the plain module, or call this before wrapping it in DDP), and the
    model is left as found: gradients and buffers (BatchNorm statistics) are restored.

    Why so few steps by default: a job's first step waits for its slowest rank's measurement. At a
    quarter of a core, 10 timed steps of MobileNetV2 (the old default) took 41 of a hybrid job's
    85 s start-up; `min_seconds` still keeps a fast rank's window long, one untimed step per batch
    size covers kernel selection and the allocator, and the online balancer re-measures while
    training anyway.
    """
    inputs, targets = sample_batch[0], sample_batch[1]
    if len(inputs) == 0:
        raise ValueError("kaitian: measure_speed needs a non-empty sample batch")
    return _time_steps(model, [(inputs, targets)], loss_fn, steps, warmup, min_seconds)[0] / len(inputs)


@dataclass(frozen=True)
class StepCost:
    """A rank's compute time for a step of b samples: fixed_seconds + b * seconds_per_sample."""

    fixed_seconds: float
    seconds_per_sample: float

    def seconds(self, batch: int) -> float:
        return self.fixed_seconds + batch * self.seconds_per_sample


def measure_cost(
    model: nn.Module,
    sample_batch: tuple[torch.Tensor, ...] | list[torch.Tensor],
    loss_fn: Callable[..., torch.Tensor],
    steps: int = 3,
    warmup: int = 1,
    min_seconds: float = 0.5,
) -> StepCost:
    """This rank's step cost as a fixed part and a part per sample (see plan_batches' fixed_seconds).

    Times the sample batch and its first half in turns (measure_speed's rules otherwise); the
    difference is the cost of the extra samples, the rest is fixed. Why two sizes: the fixed part
    (kernel launches, the framework's own work) weighs more the smaller a batch is, and the slow
    ranks of a hybrid job train small batches. When noise makes either part negative, or the batch
    has one sample, the cost is all per sample, as measure_speed measures it.
    """
    inputs, targets = sample_batch[0], sample_batch[1]
    samples = len(inputs)
    if samples == 0:
        raise ValueError("kaitian: measure_cost needs a non-empty sample batch")
    half = samples // 2
    if half == 0:
        return StepCost(0.0, measure_speed(model, sample_batch, loss_fn, steps, warmup, min_seconds))
    whole, part = _time_steps(
        model, [(inputs, targets), (inputs[:half], targets[:half])], loss_fn, steps, warmup, min_seconds
    )
    per_sample = (whole - part) / (samples - half)
    fixed = whole - samples * per_sample
    if per_sample <= 0 or fixed < 0:
        return StepCost(0.0, whole / samples)
    return StepCost(fixed, per_sample)


def gather_floats(values: list[float], group: dist.ProcessGroup | None) -> list[list[float]]:
    """Every rank's `values` (float64), in rank order, on a device the group's backend accepts."""
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend(group) == "nccl" else "cpu"
    mine = torch.tensor(values, dtype=torch.float64, device=device)
    out = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
    dist.all_gather(out, mine, group=group)
    return [t.cpu().tolist() for t in out]


def gather_speeds(
    seconds_per_sample: float, max_batch: int | None = None, group: dist.ProcessGroup | None = None
) -> tuple[list[float], list[int | None]]:
    """Every rank's seconds per sample and batch limit (None: no limit), through one allgather."""
    rows = gather_floats([seconds_per_sample, float(max_batch or 0)], group)
    return [row[0] for row in rows], [int(row[1]) if row[1] > 0 else None for row in rows]


SAME_DEVICE_TOLERANCE = 0.1
"""Ranks of one device kind on one host whose measurements are within this fraction of their
median are taken to be the same device (see pool_same_devices)."""


def same_device_groups(seconds_per_sample: Sequence[float], devices: Sequence[str]) -> list[list[int]]:
    """The ranks taken to be one device: same `devices` entry, figures within SAME_DEVICE_TOLERANCE
    of their group's median (see pool_same_devices); groups of two or more, in rank order."""
    if len(devices) != len(seconds_per_sample):
        raise ValueError(f"kaitian: {len(devices)} device names for {len(seconds_per_sample)} ranks")
    groups = []
    for device in sorted(set(devices)):
        members = [r for r, d in enumerate(devices) if d == device]
        centre = statistics.median(seconds_per_sample[r] for r in members)
        alike = [r for r in members if abs(seconds_per_sample[r] - centre) <= SAME_DEVICE_TOLERANCE * centre]
        if len(alike) > 1:
            groups.append(alike)
    return groups


def pool_by_groups(values: Sequence[float], groups: list[list[int]]) -> list[float]:
    """`values` with every group's members given the group's mean."""
    pooled = [float(v) for v in values]
    for members in groups:
        mean = statistics.fmean(values[r] for r in members)
        for r in members:
            pooled[r] = mean
    return pooled


def pool_same_devices(seconds_per_sample: Sequence[float], devices: Sequence[str]) -> list[float]:
    """Each rank's figure, with ranks of one device (same `devices` entry) given their group's mean.

    Why: a measurement window of a second or two differs by a few percent between identical
    devices, and the plan follows the noise: two MobileNetV2 ranks of one emulated device,
    measured 2% apart, were planned [21, 20] with their slower peers [11, 12], where [21, 21] and
    [11, 11] are right; the rank with 12 then set every step, 9% slower. Identical devices also
    reach the in-group collective together when their batches are equal. Ranks whose figures
    differ from their group's median by more than SAME_DEVICE_TOLERANCE keep their own figure:
    one kind name may cover different models, and a throttled device must be planned as it is.
    """
    return pool_by_groups(seconds_per_sample, same_device_groups(seconds_per_sample, devices))


@dataclass(frozen=True)
class MeasuredPlan:
    """measure_plan's result: the plan, and every rank's figures it was made from (rank order).

    Unpacks as (plan, speeds), the pair measure_plan returned before it gave the costs too.
    """

    plan: list[int]
    speeds: list[float]
    """Seconds per sample at the sample batch's size, ranks of one device pooled."""
    costs: list[StepCost]
    """Each rank's step cost, pooled the same way: what OnlineBalancer scales while training."""

    def __iter__(self) -> Iterator[list[int] | list[float]]:
        return iter((self.plan, self.speeds))


def measure_plan(
    model: nn.Module,
    sample_batch: tuple[torch.Tensor, ...] | list[torch.Tensor],
    loss_fn: Callable[..., torch.Tensor],
    batch: int,
    mode: str = "fixed-global",
    max_batch: int | None = None,
    group: dist.ProcessGroup | None = None,
    steps: int = 3,
    warmup: int = 1,
    min_seconds: float = 0.5,
) -> MeasuredPlan:
    """Measures this rank (measure_cost), gathers every rank's figures, plans from them.

    Collective: every rank of `group` must call it. `max_batch` is this rank's own limit (its
    device memory). Every rank plans from the same gathered numbers, so all get the same plan,
    which equalises the predicted step times (fixed part and per-sample part, plan_batches'
    fixed_seconds). Ranks of one device kind on one host that measured alike are planned as one
    device (pool_same_devices). Returns the plan with the speeds and step costs it came from
    (MeasuredPlan; `plan, speeds = measure_plan(...)` still unpacks).
    """
    cost = measure_cost(model, sample_batch, loss_fn, steps, warmup, min_seconds)
    samples = len(sample_batch[0])
    rows = gather_floats(
        [cost.seconds(samples) / samples, cost.fixed_seconds, cost.seconds_per_sample, float(max_batch or 0)], group
    )
    devices: list[str] = [""] * len(rows)
    dist.all_gather_object(devices, f"{local_device_kind()}@{local_host_id()}", group=group)
    groups = same_device_groups([row[0] for row in rows], devices)
    speeds = pool_by_groups([row[0] for row in rows], groups)
    fixed = pool_by_groups([row[1] for row in rows], groups)
    per_sample = pool_by_groups([row[2] for row in rows], groups)
    limits = [int(row[3]) if row[3] > 0 else None for row in rows]
    has_limits = any(m is not None for m in limits)
    plan = plan_batches(per_sample, batch, mode, limits if has_limits else None, fixed_seconds=fixed)
    return MeasuredPlan(plan, speeds, [StepCost(f, c) for f, c in zip(fixed, per_sample, strict=True)])
