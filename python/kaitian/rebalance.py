"""OnlineBalancer: re-plans per-rank batch sizes during training from measured compute time.

Every rank times its own compute per step (see `OnlineBalancer.step`); every `interval` steps
all ranks allgather (compute seconds, samples) of the window and feed them, in rank order, to
identical Rebalancers. The rebalancer is deterministic, so every rank gets the same proposal;
rank 0's is broadcast and compared anyway, so a divergence fails loudly instead of hanging a
later collective. A changed plan is scheduled in the AdaptiveSampler at the same iteration on
every rank, logged, kept in `history`, and written as JSON to the job's torch store
(`<store_key>/history`, `<store_key>/current`). Under `kaitian run`, every step's timing and
rank 0's plan changes also go to the job's Kaitian store for `kaitian monitor` (JobTelemetry).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from ._native import KaitianMismatchError
from ._planning import Rebalancer
from .planner import StepCost, gather_floats
from .sampler import AdaptiveSampler
from .telemetry import JobTelemetry, job_telemetry
from .weighting import install_weighting

log = logging.getLogger("kaitian")

STORE_KEY = "kaitian/plan"


@dataclass(frozen=True)
class PlanChange:
    """One switch of plan: where it happened, what changed, and the speeds that caused it."""

    step: int  # balancer steps done when the change was decided
    epoch: int
    iteration: int  # iteration of the epoch from which the new plan is used
    old: list[int]
    new: list[int]
    seconds_per_sample: list[float]  # each rank's compute seconds per sample in the window
    time: float  # time.time() of the decision


class OnlineBalancer:
    """Keeps the AdaptiveSampler's plan matched to the ranks' measured speeds while training.

    Construction is collective (every rank of the model's group), installs the exact-weighting
    comm hook on `model`, and needs the loader built as
    DataLoader(ds, batch_sampler=sampler.batch_sampler()). Wrap each step's forward and backward
    in `with balancer.step():` (the optimizer step may stay outside). `lookahead` is how many
    batches the DataLoader prepares ahead (0 with num_workers=0; num_workers * prefetch_factor
    otherwise): a new plan starts that many iterations after the decision so no prepared batch
    is of the old size. `max_batch` is this rank's own limit (device memory), None for none.
    `telemetry` receives each step's timing and rank 0's plan changes: True (the default) uses
    `job_telemetry()` (None outside `kaitian run`), False turns it off, or pass a JobTelemetry.
    `step_costs`, every rank's measured step cost (`measure_plan(...).costs`), lets the plan
    keep each rank's fixed part of a step apart from its work per sample (Rebalancer.set_step_costs),
    so one re-plan reaches balance; without it the rebalancer sees seconds per sample only, right
    only at the batches observed, and approaches balance over several re-plans.
    """

    def __init__(
        self,
        model: DistributedDataParallel,
        sampler: AdaptiveSampler,
        interval: int = 20,
        mode: str = "fixed-global",
        max_batch: int | None = None,
        smoothing: float = 0.5,
        hysteresis: float = 0.05,
        lookahead: int = 0,
        store_key: str = STORE_KEY,
        rebalancer: Rebalancer | None = None,
        telemetry: JobTelemetry | None | bool = True,
        step_costs: Sequence[StepCost] | None = None,
    ) -> None:
        if interval < 1:
            raise ValueError("kaitian: the re-balancing interval must be at least 1 step")
        self.sampler = sampler
        self.interval = interval
        self.lookahead = lookahead
        self.store_key = store_key
        self.telemetry = job_telemetry() if telemetry is True else telemetry or None
        self.group = model.process_group
        self.weighting = install_weighting(model, sampler)
        plan = sampler.batch_sizes
        limits = [row[0] for row in gather_floats([float(max_batch or 0)], self.group)]
        batch = sum(plan) if mode == "fixed-global" else max(plan)
        self.rebalancer = rebalancer or Rebalancer(
            len(plan), batch, mode, [int(m) if m > 0 else None for m in limits], smoothing, hysteresis
        )
        # Later proposals are weighed against the plan the ranks really start with (measured
        # before training, restored from a checkpoint, or even).
        self.rebalancer.adopt(plan)
        if step_costs is not None:
            self.rebalancer.set_step_costs(step_costs)
        self.history: list[PlanChange] = []
        self.steps = 0
        self._seconds = 0.0
        self._samples = 0
        self._window_steps = 0
        self._publish()

    @contextmanager
    def step(self) -> Iterator[None]:
        """Times this rank's compute for one step (forward + backward inside the block).

        Compute ends when DDP hands the last gradient bucket to the hook, i.e. when backward has
        produced every gradient; the wait for the other ranks' allreduce that follows (inside
        backward) is not counted, nor is DDP's broadcast of buffers before the forward, which
        waits for the other ranks too (GradientWeighting.forward_wait). Every `interval` steps,
        re-plans (a collective).
        """
        started = time.perf_counter()
        yield
        compute = self.weighting.compute_seconds(started, time.perf_counter())
        batch = self.weighting.last_batch[0]
        self._seconds += compute
        self._samples += batch
        self._window_steps += 1
        self.steps += 1
        if self.telemetry is not None:
            self.telemetry.record_step(
                batch=batch,
                step_seconds=time.perf_counter() - started,
                compute_seconds=compute,
                epoch=self.sampler.epoch,
            )
        if self.steps % self.interval == 0:
            self.rebalance()

    def rebalance(self) -> PlanChange | None:
        """Collective: feeds the window's observations of every rank, applies a changed plan.

        Called every `interval` steps by `step`; call it at epoch ends too if wanted (on every rank).
        """
        rows = gather_floats([self._seconds, float(self._samples), float(self._window_steps)], self.group)
        self._seconds, self._samples, self._window_steps = 0.0, 0, 0
        for rank, (seconds, samples, steps) in enumerate(rows):
            if samples > 0 and seconds > 0:
                self.rebalancer.observe(rank, seconds, int(samples), int(steps))
        proposal, changed = self.rebalancer.propose()
        self._check_agreement(proposal)
        old = self.sampler.batch_sizes
        if not changed or proposal == old:
            return None
        iteration = self.weighting.step + self.lookahead
        self.sampler.set_batch_sizes(proposal, iteration=iteration)
        change = PlanChange(
            step=self.steps,
            epoch=self.sampler.epoch,
            iteration=iteration,
            old=old,
            new=proposal,
            seconds_per_sample=[s / n if n > 0 else 0.0 for s, n, _ in rows],
            time=time.time(),
        )
        self.history.append(change)
        log.info(
            "kaitian: plan %s -> %s from epoch %d iteration %d (seconds per sample %s)",
            old,
            proposal,
            change.epoch,
            iteration,
            ", ".join(f"{s:.3g}" for s in change.seconds_per_sample),
        )
        self._publish()
        if self.telemetry is not None and dist.get_rank(self.group) == 0:
            self.telemetry.record_plan_change(**asdict(change))
        return change

    def _check_agreement(self, proposal: Sequence[int]) -> None:
        """Rank 0's proposal must equal ours: the ranks fed identical data to identical planners."""
        mine = torch.tensor(list(proposal), dtype=torch.int64)
        device = "cuda" if dist.get_backend(self.group) == "nccl" else "cpu"
        theirs = mine.to(device, copy=True)
        root = dist.get_global_rank(self.group, 0) if self.group is not None else 0
        dist.broadcast(theirs, src=root, group=self.group)
        if not torch.equal(theirs.cpu(), mine):
            raise KaitianMismatchError(
                f"kaitian: rank {dist.get_rank(self.group)} proposed plan {mine.tolist()} but rank 0 "
                f"proposed {theirs.cpu().tolist()}: the ranks' rebalancers diverged"
            )

    def _publish(self) -> None:
        """Rank 0 writes the current plan and the history as JSON to the job's torch store."""
        if dist.get_rank(self.group) != 0:
            return
        store = dist.distributed_c10d._get_default_store()
        store.set(f"{self.store_key}/current", json.dumps(self.sampler.batch_sizes))
        store.set(f"{self.store_key}/history", json.dumps([asdict(c) for c in self.history]))

    def close(self) -> None:
        """Frees the native rebalancer and publishes the telemetry's last steps."""
        self.rebalancer.close()
        if self.telemetry is not None:
            self.telemetry.flush()
