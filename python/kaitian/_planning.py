"""The Swift planner's C ABI (ktPlanBatches, ktRebalancer* in kaitian.h) through ctypes.

Only argument conversion lives here; `planner` adds the measurement and re-exports these.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import Protocol

from . import _native


class StepCostLike(Protocol):
    """A rank's measured step cost (planner.StepCost): a fixed part plus a part per sample."""

    fixed_seconds: float
    seconds_per_sample: float


_MODES = {"fixed-global": _native.PLAN_FIXED_GLOBAL, "paper": _native.PLAN_PAPER}


def _mode(mode: str) -> int:
    try:
        return _MODES[mode]
    except KeyError:
        raise ValueError(f"kaitian: plan mode {mode!r} is unknown (use 'fixed-global' or 'paper')") from None


def _limits(max_batch: Sequence[int | None] | None, nranks: int) -> ctypes.Array | None:
    """ktPlanBatches' maxBatch array (<= 0 means no limit), or None when no rank has a limit."""
    if max_batch is None:
        return None
    if len(max_batch) != nranks:
        raise ValueError(f"kaitian: max_batch has {len(max_batch)} entries for {nranks} ranks")
    return (ctypes.c_int64 * nranks)(*[0 if m is None else int(m) for m in max_batch])


def plan_batches(
    seconds_per_sample: Sequence[float],
    batch: int,
    mode: str = "fixed-global",
    max_batch: Sequence[int | None] | None = None,
    fixed_seconds: Sequence[float] | None = None,
) -> list[int]:
    """Each rank's batch size from its compute seconds per sample (ktPlanBatches).

    "fixed-global" (default): `batch` is the global batch, split in proportion to speed (floors,
    then the samples left where they lengthen the slowest step least); the result sums to `batch`
    exactly and every rank gets at least 1, so the optimisation (learning rate, global batch) does
    not depend on the hardware mix. "paper": the fastest rank keeps `batch` and rank i gets
    batch * t_min / t_i (at least 1). `max_batch`, one entry per rank (None or <= 0 for no
    limit), caps each rank, e.g. by its device memory.
    `fixed_seconds`, one entry per rank, is the part of a step that does not grow with the batch
    (measure_cost); the plan then equalises fixed + batch * seconds_per_sample
    (ktPlanBatchesWithOverhead).
    """
    n = len(seconds_per_sample)
    if n == 0:
        raise ValueError("kaitian: plan_batches needs at least one rank")
    api = _native.planner_lib()
    seconds = (ctypes.c_double * n)(*[float(s) for s in seconds_per_sample])
    out = (ctypes.c_int64 * n)()
    limits = _limits(max_batch, n)
    if fixed_seconds is None:
        _native.check(api.ktPlanBatches(n, seconds, limits, int(batch), _mode(mode), out))
    else:
        if len(fixed_seconds) != n:
            raise ValueError(f"kaitian: fixed_seconds has {len(fixed_seconds)} entries for {n} ranks")
        fixed = (ctypes.c_double * n)(*[float(s) for s in fixed_seconds])
        _native.check(api.ktPlanBatchesWithOverhead(n, fixed, seconds, limits, int(batch), _mode(mode), out))
    return list(out)


class Rebalancer:
    """A ktRebalancer: smoothed per-rank speeds in, a plan out, changed only past a hysteresis.

    `hysteresis` is the fraction by which a new plan must shorten the predicted step time (the
    slowest rank's batch times its smoothed seconds per sample), in [0, 1).

    It is a pure function of what it is fed, so ranks that feed it the same (allgathered)
    observations in the same order propose the same plans without talking to each other.
    """

    def __init__(
        self,
        nranks: int,
        batch: int,
        mode: str = "fixed-global",
        max_batch: Sequence[int | None] | None = None,
        smoothing: float = 0.5,
        hysteresis: float = 0.05,
    ) -> None:
        api = _native.planner_lib()
        handle = ctypes.c_void_p()
        _native.check(
            api.ktRebalancerCreate(
                ctypes.byref(handle),
                int(nranks),
                int(batch),
                _mode(mode),
                _limits(max_batch, nranks),
                float(smoothing),
                float(hysteresis),
            )
        )
        self._handle: int | None = handle.value
        self.nranks = nranks

    def observe(self, rank: int, compute_seconds: float, samples: int, steps: int = 0) -> None:
        """Rank `rank` spent `compute_seconds` (compute only) on `samples` samples in `steps` steps.

        With the steps given (0: unknown), the rank's fixed part (set_step_costs) is taken out of
        the time before it is spread over the samples.
        """
        _native.check(
            _native.planner_lib().ktRebalancerObserveSteps(self._live(), rank, compute_seconds, samples, steps)
        )

    def set_step_costs(self, costs: Sequence[StepCostLike]) -> None:
        """Every rank's measured step cost (measure_plan(...).costs): observations of whole steps scale it.

        Why: a rank's time per sample depends on its batch (its fixed part is spread over the
        samples), so per sample only the plan reaches balance over several re-plans; with the
        costs' shape, the first re-plan lands on it.
        """
        if len(costs) != self.nranks:
            raise ValueError(f"kaitian: {len(costs)} step costs for {self.nranks} ranks")
        fixed = (ctypes.c_double * self.nranks)(*[c.fixed_seconds for c in costs])
        per_sample = (ctypes.c_double * self.nranks)(*[c.seconds_per_sample for c in costs])
        _native.check(_native.planner_lib().ktRebalancerSetStepCosts(self._live(), fixed, per_sample))

    def adopt(self, plan: Sequence[int]) -> None:
        """Makes `plan` the current plan, as if proposed (the plan training starts with)."""
        if len(plan) != self.nranks:
            raise ValueError(f"kaitian: a plan of {len(plan)} batches for {self.nranks} ranks")
        batches = (ctypes.c_int64 * self.nranks)(*[int(b) for b in plan])
        _native.check(_native.planner_lib().ktRebalancerAdopt(self._live(), batches))

    def propose(self) -> tuple[list[int], bool]:
        """The current plan, and whether it differs from the previous proposal."""
        out = (ctypes.c_int64 * self.nranks)()
        changed = ctypes.c_int()
        _native.check(_native.planner_lib().ktRebalancerPropose(self._live(), out, ctypes.byref(changed)))
        return list(out), bool(changed.value)

    def close(self) -> None:
        """Frees the native rebalancer; idempotent."""
        if self._handle:
            handle, self._handle = self._handle, None
            _native.check(_native.planner_lib().ktRebalancerFree(handle))

    def _live(self) -> int:
        if not self._handle:
            raise _native.KaitianInvalidUsageError("kaitian: the rebalancer is closed", _native.INVALID_USAGE)
        return self._handle

    def __enter__(self) -> Rebalancer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_handle", None) and _native._lib is not None:
            self.close()
