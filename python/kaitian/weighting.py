"""Exact gradient averaging with unequal per-rank batches: a DDP communication hook, and FSDP2's
per-rank divide factors (install_fsdp_weighting).

Each rank's loss is a mean over its own b_i samples, so its gradient g_i is a per-rank mean.
DDP's default average (1/world) * sum(g_i) weights a sample on a small-batch rank more than one
on a large-batch rank (what the original prototype does). This hook scales g_i by b_i / B
(B = sum of the plan) and allreduces with SUM, which gives sum(b_i * g_i) / B: the mean over
all B samples, exactly the gradient of single-process training on the whole global batch.
One multiply per bucket and the ordinary SUM allreduce, so it works on every backend ("kaitian",
gloo, nccl) without a second collective for the sample counts: the plan is known to every rank.
"""

# No `from __future__ import annotations` here: DDP checks the hook's annotations at run time
# (dist.GradBucket, torch.futures.Future[torch.Tensor]) and would see strings.

import math
import time
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from .sampler import AdaptiveSampler


class GradientWeighting:
    """The hook's state: where each step's plan comes from, and when this rank's compute ended.

    With an AdaptiveSampler the plan may change between iterations, so the state counts the
    gradient synchronisations of the sampler's current pass (DDP fires the last bucket once per
    backward) and weights step k with the sampler's plan of iteration k. That holds whatever the
    DataLoader prefetches, because it counts steps actually trained, not batches prepared.
    """

    def __init__(self, source: AdaptiveSampler | Sequence[int], process_group: dist.ProcessGroup | None = None) -> None:
        self.process_group = process_group
        if isinstance(source, AdaptiveSampler):
            self.sampler: AdaptiveSampler | None = source
            self._plan: list[int] | None = None
            self.rank = source.rank
        else:
            self.sampler = None
            self._plan = [int(b) for b in source]
            self.rank = dist.get_rank(process_group)
            if len(self._plan) != dist.get_world_size(process_group):
                raise ValueError(f"kaitian: a plan of {len(self._plan)} ranks for a group of a different size")
        self.step = 0  # synchronisations done in the sampler's current pass
        self._pass_id = -1
        self.forward_start = 0.0  # perf_counter when the latest step's first forward was called
        self.module_start = 0.0  # ... and when the wrapped module's forward began (after DDP's own work)
        self.compute_end = 0.0  # perf_counter when the latest step's last bucket became ready
        self.last_batch = (0, 0)  # (this rank's samples, global samples) of the latest step

    def enter_forward(self) -> None:
        """Called as DDP's forward is called (a pre-hook on the DDP module); the step's first only."""
        if self.forward_start <= self.compute_end:
            self.forward_start = time.perf_counter()

    def enter_module(self) -> None:
        """Called as the wrapped module's forward begins, after DDP's pre-forward work; first only."""
        if self.module_start <= self.compute_end:
            self.module_start = time.perf_counter()

    def forward_wait(self, step_started: float) -> float:
        """Seconds DDP spent before the module's forward in the step begun at `step_started`.

        Why it is not compute: DDP first broadcasts the module's buffers (BatchNorm statistics)
        from rank 0, which waits for every rank to arrive. In a hybrid job a fast rank waited
        there 35 ms of every step for the slow group to finish its exchange; counted as compute,
        that made it look 7% slower than it was, and the plan gave its samples away.
        """
        if step_started <= self.forward_start <= self.module_start:
            return self.module_start - self.forward_start
        return 0.0

    def compute_seconds(self, step_started: float, now: float) -> float:
        """This rank's compute in the step begun at `step_started`: to its last gradient (or `now`
        when none was seen in it), without DDP's wait before the forward (forward_wait)."""
        end = self.compute_end if self.compute_end >= step_started else now
        return end - step_started - self.forward_wait(step_started)

    def current(self) -> tuple[int, int]:
        """(this rank's batch, global batch) of the step being reduced."""
        plan = self.current_plan()
        return plan[self.rank], sum(plan)

    def current_plan(self) -> list[int]:
        """Every rank's batch in the step being reduced."""
        if self.sampler is None:
            assert self._plan is not None
            return self._plan
        if self.sampler.pass_id != self._pass_id:
            self._pass_id = self.sampler.pass_id
            self.step = 0
        return list(self.sampler.batch_sizes_at(self.step))

    def finish_step(self, batch: tuple[int, int]) -> None:
        """Called at the last bucket: the rank's backward has produced every gradient."""
        self.compute_end = time.perf_counter()
        self.count_step(batch)

    def count_step(self, batch: tuple[int, int]) -> None:
        """Counts a step whose gradients are weighted with `batch` (this rank's, global)."""
        self.last_batch = batch
        self.step += 1


def _first(fut: torch.futures.Future) -> torch.Tensor:
    value = fut.value()
    return value[0] if isinstance(value, list) else value


def weighted_allreduce_hook(state: GradientWeighting, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """DDP comm hook: bucket *= b_rank / B, then SUM-allreduce; the result is the full-batch mean."""
    local, total = state.current()
    if bucket.is_last():
        state.finish_step((local, total))
    buffer = bucket.buffer()
    buffer.mul_(local / total)
    work = dist.all_reduce(buffer, op=dist.ReduceOp.SUM, group=state.process_group, async_op=True)
    return work.get_future().then(_first)


def install_weighting(
    model: DistributedDataParallel, sampler_or_plan: AdaptiveSampler | Sequence[int]
) -> GradientWeighting:
    """Registers weighted_allreduce_hook on `model` (once, before the first backward); returns its state."""
    state = GradientWeighting(sampler_or_plan, model.process_group)
    model.register_comm_hook(state, weighted_allreduce_hook)
    model.register_forward_pre_hook(lambda _module, _inputs: state.enter_forward())
    model.module.register_forward_pre_hook(lambda _module, _inputs: state.enter_module())
    return state


def install_fsdp_weighting(
    model: torch.nn.Module,
    sampler_or_plan: AdaptiveSampler | Sequence[int],
    process_group: dist.ProcessGroup | None = None,
) -> GradientWeighting:
    """FSDP2's counterpart of install_weighting: each rank's gradient weighs b_rank / B.

    Before every forward of `model` (the root of fully_shard), every FSDP module in it gets the
    gradient divide factor B / b_rank for the step's plan, so FSDP2 reduce-scatters with
    PREMUL_SUM(b_rank / B): sum(b_i * g_i) / B, the mean over all B samples, as full-batch
    training. Each forward counts as one step of the plan, so run one forward per optimizer step
    (no gradient accumulation over several forwards).

    Needs a float32 or bfloat16 reduce dtype: with float16 FSDP2 sums and divides afterwards by
    the factor, which is one rank's, not a weight per rank.
    """
    from torch.distributed.fsdp import FSDPModule

    modules = [m for m in model.modules() if isinstance(m, FSDPModule)]
    if not modules:
        raise ValueError("kaitian: install_fsdp_weighting needs a model with fully_shard applied")
    for module in modules:
        # FSDP2 keeps its policy privately; where it has moved, the check is skipped.
        policy = getattr(module._get_fsdp_state(), "_mp_policy", None)
        if policy is not None and (policy.reduce_dtype or policy.param_dtype) == torch.float16:
            raise ValueError(
                "kaitian: install_fsdp_weighting: FSDP2 divides float16 gradients after the sum, by one "
                "rank's factor, so uneven shares cannot be weighted; use reduce_dtype float32 or bfloat16"
            )
    state = GradientWeighting(sampler_or_plan, process_group)

    def before_forward(_module: torch.nn.Module, _inputs: object) -> None:
        plan = state.current_plan()
        local, total = plan[state.rank], sum(plan)
        factor = total / local if local > 0 else math.inf
        if factor == len(plan) and len(set(plan)) > 1:
            # FSDP2 turns a factor equal to the group size into AVG, others into PREMUL_SUM: on an
            # uneven plan the ranks would then disagree about the op (Kaitian refuses that as a
            # mismatch; NCCL would mix them). One ulp up keeps PREMUL_SUM, and the weight 1/factor
            # rounds to the same float32 or bfloat16 value the gradients are scaled with.
            factor = math.nextafter(factor, math.inf)
        for module in modules:
            module.set_gradient_divide_factor(factor)
        state.count_step((local, total))

    model.register_forward_pre_hook(before_forward)
    return state
