"""The gloo intra-group's own reduce-scatter (a ring of sends and receives) against a reference."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
from kaitian import _native
from kaitian._vendor import GlooIntraGroup

REFERENCE = {
    _native.SUM: lambda parts: torch.stack(parts).sum(0),
    _native.PROD: lambda parts: torch.stack(parts).prod(0),
    _native.MAX: lambda parts: torch.stack(parts).amax(0),
    _native.MIN: lambda parts: torch.stack(parts).amin(0),
}


def run_group(size: int, work: object) -> list[object]:
    """Runs work(group, rank) on `size` gloo ranks (threads of this process); the results in rank order."""
    store = dist.HashStore()
    results: list[object] = [None] * size
    errors: list[BaseException] = []

    def rank_main(rank: int) -> None:
        try:
            group = GlooIntraGroup(dist.ProcessGroupGloo(store, rank, size, timedelta(seconds=30)), torch.device("cpu"))
            results[rank] = work(group, rank)  # type: ignore[operator]
        except BaseException as error:  # reported by the test thread
            errors.append(error)

    threads = [threading.Thread(target=rank_main, args=(r,)) for r in range(size)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    return results


@pytest.mark.parametrize("size", [2, 3, 5])
@pytest.mark.parametrize("width", [0, 1, 7, 1031])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.int64, torch.int32])
def test_reduce_scatter_matches_the_reference(size: int, width: int, dtype: torch.dtype) -> None:
    def inputs(rank: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(rank)
        if dtype.is_floating_point:
            return torch.randn(width * size, generator=generator, dtype=dtype)
        return torch.randint(-3, 4, (width * size,), generator=generator, dtype=dtype)

    for op, reference in REFERENCE.items():

        def work(group: GlooIntraGroup, rank: int, op: int = op) -> torch.Tensor:
            inp = inputs(rank)
            before = inp.clone()
            out = torch.full((width,), 99, dtype=dtype)
            group.reduce_scatter(out, inp, op)
            assert torch.equal(inp, before), "the input is left as it was"
            return out

        got = run_group(size, work)
        expected = (
            reference([inputs(r) for r in range(size)]).split(width) if width else [torch.empty(0, dtype=dtype)] * size
        )
        for rank in range(size):
            if dtype.is_floating_point:
                torch.testing.assert_close(got[rank], expected[rank], rtol=1e-6, atol=1e-6)
            else:
                assert torch.equal(got[rank], expected[rank]), (op, rank)


def test_mismatched_sizes_name_the_shapes() -> None:
    def work(group: GlooIntraGroup, rank: int) -> str:
        with pytest.raises(ValueError, match="reduce-scatter of 5 elements into 2 shards of 2"):
            group.reduce_scatter(torch.empty(2), torch.empty(5), _native.SUM)
        return "ok"

    assert run_group(2, work) == ["ok", "ok"]
