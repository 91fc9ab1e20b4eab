"""AdaptiveSampler: DistributedSampler's contract with a different batch size on every rank.

Each iteration takes the next sum(plan) indices of the epoch's permutation; rank r gets the
plan[r] of them after the first sum(plan[:r]). So every rank runs the same number of iterations
(they share the schedule), every sample is used once per epoch, and the global batch of an
iteration is exactly the plan's sum, which the gradient weighting relies on.

Padding (drop_last=False): the last iteration is completed by wrapping around to the start of
the same permutation, so up to sum(plan) - 1 samples are seen twice in that epoch; every rank's
batch is full on every iteration (no short last batch to weight). drop_last=True drops the
incomplete last iteration instead (up to sum(plan) - 1 samples unused in that epoch).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence, Sized

import torch
import torch.distributed as dist
from torch.utils.data import Sampler


def _validated(plan: Sequence[int], replicas: int) -> list[int]:
    values = [int(b) for b in plan]
    if len(values) != replicas:
        raise ValueError(f"kaitian: a plan of {len(values)} batch sizes for {replicas} replicas")
    if any(b < 1 for b in values):
        raise ValueError(f"kaitian: every batch size must be at least 1, got {values}")
    return values


def loader_batch_size(plan: Sequence[int], rank: int) -> int:
    """Rank `rank`'s batch size for DataLoader(batch_size=...) under `plan`."""
    if not 0 <= rank < len(plan):
        raise ValueError(f"kaitian: rank {rank} outside a plan of {len(plan)} ranks")
    return int(plan[rank])


class AdaptiveSampler(Sampler[int]):
    """Drop-in for torch.utils.data.DistributedSampler with per-rank batch sizes (`batch_sizes`).

    Two ways to load:
    - `DataLoader(ds, batch_size=loader_batch_size(plan, rank), sampler=s)`, like DistributedSampler;
      the plan is then fixed for the epoch (the loader's batch size cannot change).
    - `DataLoader(ds, batch_sampler=s.batch_sampler())`: batches follow plan changes inside an epoch
      (what OnlineBalancer needs).

    `set_batch_sizes(plan)` takes effect at the next epoch (the next pass over the sampler);
    `set_batch_sizes(plan, iteration=j)` from iteration j of the current epoch (batch-sampler mode
    only). The plan of iteration j is the one of the latest call with the largest iteration <= j.
    """

    def __init__(
        self,
        dataset: Sized,
        num_replicas: int | None = None,
        rank: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        *,
        batch_sizes: Sequence[int],
    ) -> None:
        if num_replicas is None:
            num_replicas = dist.get_world_size() if dist.is_initialized() else len(batch_sizes)
        if rank is None:
            if not dist.is_initialized():
                raise ValueError("kaitian: pass rank, or initialize torch.distributed first")
            rank = dist.get_rank()
        if not 0 <= rank < num_replicas:
            raise ValueError(f"kaitian: rank {rank} outside [0, {num_replicas})")
        self.dataset = dataset
        self.num_replicas = num_replicas
        self.rank = rank
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0
        self._latest = _validated(batch_sizes, num_replicas)
        self._schedule: list[tuple[int, list[int]]] = [(0, self._latest)]
        self._yielded = 0
        self._active_flat = False
        self.pass_id = 0  # increments when a pass (an epoch's iteration) starts

    @property
    def batch_sizes(self) -> list[int]:
        """The latest plan: what the next epoch starts with."""
        return list(self._latest)

    @property
    def batch_size(self) -> int:
        """This rank's batch size in the latest plan."""
        return self._latest[self.rank]

    def set_epoch(self, epoch: int) -> None:
        """Seeds the next epoch's permutation with seed + epoch, as DistributedSampler does."""
        self.epoch = epoch

    def set_batch_sizes(self, batch_sizes: Sequence[int], iteration: int | None = None) -> None:
        """Switches plan from the next epoch, or (iteration=j) from iteration j of this epoch.

        Raises ValueError when batch j has already been handed out (a DataLoader with workers
        prefetches batches: schedule further ahead) or when the loader batches by a fixed size.
        """
        plan = _validated(batch_sizes, self.num_replicas)
        if iteration is not None:
            if self._active_flat:
                raise ValueError(
                    "kaitian: this epoch is loaded with a fixed DataLoader batch size; use "
                    "batch_sampler() to change plans inside an epoch, or switch at the next epoch"
                )
            if iteration < self._yielded:
                raise ValueError(
                    f"kaitian: cannot switch plans at iteration {iteration}: {self._yielded} batches of this "
                    "epoch were already prepared (DataLoader prefetch?); schedule the change further ahead"
                )
            self._schedule.append((iteration, plan))
        self._latest = plan

    def batch_sizes_at(self, iteration: int) -> list[int]:
        """The plan of iteration `iteration` of the current epoch."""
        best = self._schedule[0]
        for entry in self._schedule:
            if best[0] <= entry[0] <= iteration:
                best = entry
        return list(best[1])

    def iterations(self, batch_sizes: Sequence[int] | None = None) -> int:
        """Iterations per epoch under a plan held for the whole epoch (default: the latest)."""
        total = sum(self._latest if batch_sizes is None else batch_sizes)
        n = len(self.dataset)
        return n // total if self.drop_last else math.ceil(n / total)

    def _permutation(self) -> list[int]:
        n = len(self.dataset)
        if not self.shuffle:
            return list(range(n))
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        return torch.randperm(n, generator=generator).tolist()

    def _batches(self, flat: bool) -> Iterator[list[int]]:
        order = self._permutation()
        n = len(order)
        self._schedule = [(0, self._latest)]
        self._yielded = 0
        self._active_flat = flat
        self.pass_id += 1
        offset = 0
        iteration = 0
        try:
            while offset < n:
                plan = self.batch_sizes_at(iteration)
                total = sum(plan)
                if self.drop_last and offset + total > n:
                    break
                start = offset + sum(plan[: self.rank])
                batch = [order[(start + k) % n] for k in range(plan[self.rank])]
                self._yielded = iteration + 1
                yield batch
                offset += total
                iteration += 1
        finally:
            self._active_flat = False

    def __iter__(self) -> Iterator[int]:
        for batch in self._batches(flat=True):
            yield from batch

    def __len__(self) -> int:
        return self.iterations() * self.batch_size

    def batch_sampler(self) -> AdaptiveBatchSampler:
        """A view for DataLoader(batch_sampler=...) whose batches follow mid-epoch plan changes."""
        return AdaptiveBatchSampler(self)


class AdaptiveBatchSampler(Sampler[list[int]]):
    """AdaptiveSampler's batches, one list of indices per iteration (see AdaptiveSampler)."""

    def __init__(self, sampler: AdaptiveSampler) -> None:
        self.sampler = sampler

    def __iter__(self) -> Iterator[list[int]]:
        return self.sampler._batches(flat=False)

    def __len__(self) -> int:
        return self.sampler.iterations()
