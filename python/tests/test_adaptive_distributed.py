"""Load-adaptive scheduling across spawned ranks: exact weighting, and re-balancing under a slowdown.

Ranks are spawned by ranks.run_ranks with this module's scenario functions and their arguments.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import kaitian
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from kaitian import _native
from ranks import assert_all_ok, run_ranks
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, TensorDataset

pytestmark = pytest.mark.skipif(not _native.has_planner(), reason="libKaitianC.so built without the planner")


def run(scenario: Callable[..., object], size: int, *args: object, timeout: float = 90.0) -> list[object]:
    """Every rank's return value of scenario(rank, size, *args), in rank order."""
    return assert_all_ok(run_ranks(scenario, size, args=args, timeout=timeout), size)


def regression_data() -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(48, 5, generator=g)
    y = x @ torch.randn(5, 1, generator=g) + 0.1 * torch.randn(48, 1, generator=g)
    return TensorDataset(x, y)


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 1))


def train(model: nn.Module, loader: DataLoader, sampler: kaitian.AdaptiveSampler, epochs: int = 2) -> torch.Tensor:
    """SGD with momentum over `epochs`; the flattened final parameters."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for x, y in loader:
            optimizer.zero_grad()
            F.mse_loss(model(x), y).backward()
            optimizer.step()
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def weighting_scenario(rank: int, size: int, plan: list[int]) -> dict[str, torch.Tensor]:
    """The same training with the weighted hook on "kaitian" and on gloo, and DDP's plain average."""
    data = regression_data()
    gloo = dist.new_group(backend="gloo")
    out = {}
    for name, group, weighted in (("kaitian", None, True), ("gloo", gloo, True), ("unweighted", None, False)):
        sampler = kaitian.AdaptiveSampler(data, size, rank, seed=3, batch_sizes=plan)
        loader = DataLoader(data, batch_sampler=sampler.batch_sampler())
        model = DistributedDataParallel(small_model(), process_group=group)
        if weighted:
            kaitian.install_weighting(model, sampler)
        out[name] = train(model, loader, sampler)
    return out


def full_batch_reference(global_batch: int) -> torch.Tensor:
    """Single-process training on the whole global batch of every iteration, in the same order."""
    data = regression_data()
    sampler = kaitian.AdaptiveSampler(data, 1, 0, seed=3, batch_sizes=[global_batch])
    return train(small_model(), DataLoader(data, batch_sampler=sampler.batch_sampler()), sampler)


@pytest.mark.parametrize("plan", [[3, 9], [2, 3, 7]])
def test_weighted_hook_equals_full_batch_training_and_the_plain_average_does_not(plan: list[int]) -> None:
    reference = full_batch_reference(sum(plan))
    results = run(weighting_scenario, len(plan), plan)
    for rank, got in enumerate(results):
        for backend in ("kaitian", "gloo"):
            assert torch.allclose(got[backend], reference, atol=1e-5, rtol=1e-5), (
                f"rank {rank} {backend}: max error {(got[backend] - reference).abs().max():.3g}"
            )
        assert (got["unweighted"] - reference).abs().max() > 1e-3, "the unweighted average should be off"


SLOW_FROM = 15  # the step from which rank 1 becomes 4x slower
STEPS = 45


def rebalance_scenario(rank: int, size: int) -> dict[str, object]:
    """Compute made of sleeps proportional to the batch; rank 1 slows down 4x at SLOW_FROM."""
    data = TensorDataset(torch.randn(16 * STEPS, 4), torch.randn(16 * STEPS, 1))
    sampler = kaitian.AdaptiveSampler(data, size, rank, batch_sizes=[8, 8])
    loader = DataLoader(data, batch_sampler=sampler.batch_sampler())
    torch.manual_seed(0)
    model = DistributedDataParallel(nn.Linear(4, 1))
    balancer = kaitian.OnlineBalancer(model, sampler, interval=5, smoothing=0.7, hysteresis=0.25)
    lengths = []
    for step, (x, y) in enumerate(loader):
        per_sample = 0.004 if rank == 1 and step >= SLOW_FROM else 0.001
        with balancer.step():
            time.sleep(per_sample * len(x))
            F.mse_loss(model(x), y).backward()
        lengths.append(len(x))
    stored = dist.distributed_c10d._get_default_store().get("kaitian/plan/history") if rank == 0 else b"[]"
    balancer.close()
    return {"lengths": lengths, "history": [c.__dict__ for c in balancer.history], "stored": json.loads(stored)}


def test_online_balancer_shrinks_a_slowed_ranks_share_on_every_rank_at_the_same_step() -> None:
    results = run(rebalance_scenario, 2)
    lengths = [r["lengths"] for r in results]
    assert len(lengths[0]) == len(lengths[1]), "both ranks ran the same number of iterations"
    assert all(a + b == 16 for a, b in zip(*lengths, strict=True)), "plans switched at the same iteration"
    assert all(b >= 7 for b in lengths[1][:SLOW_FROM]), f"no big move before the slowdown: {lengths[1]}"
    assert lengths[1][-1] <= 5, f"the slow rank's share should approach 16/5 = 3.2: {lengths[1]}"
    history = results[0]["history"]
    decisions = [[(c["step"], c["iteration"], c["old"], c["new"]) for c in r["history"]] for r in results]
    assert decisions[0] == decisions[1], "both ranks made the same changes"
    shrink = [c for c in history if c["new"][1] < c["old"][1]]
    assert shrink and shrink[0]["step"] > SLOW_FROM
    assert shrink[0]["seconds_per_sample"][1] > 2 * shrink[0]["seconds_per_sample"][0]
    assert [c["new"] for c in results[0]["stored"]] == [c["new"] for c in history], "the monitor's copy"
