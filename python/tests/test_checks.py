"""Argument checks of the process group's collectives (kaitian._checks), without ranks."""

from __future__ import annotations

import pytest
import torch
from kaitian._checks import CallChecks

checks = CallChecks(rank=1, size=3)


def test_lists_need_one_tensor_per_rank() -> None:
    checks.one_per_rank("allgather", "the output list", [torch.ones(2)] * 3)
    with pytest.raises(
        ValueError, match=r"rank 1: allgather: the output list has 2 tensors; it needs one per rank \(3\)"
    ):
        checks.one_per_rank("allgather", "the output list", [torch.ones(2)] * 2)


def test_sizes_dtypes_and_roots() -> None:
    checks.elements("gather", "output 0", torch.ones(4), 4)
    with pytest.raises(ValueError, match="output 0 has 3 elements; it needs 4"):
        checks.elements("gather", "output 0", torch.ones(3), 4)
    with pytest.raises(ValueError, match="tensor 1 is torch.int64, the input is torch.float32"):
        checks.same_dtype("scatter", torch.ones(1), [torch.ones(1), torch.ones(1, dtype=torch.int64)])
    for bad in (-1, 3):
        with pytest.raises(ValueError, match=f"root {bad} is not a rank of this group of 3"):
            checks.rank_in_group("broadcast", "root", bad)
    checks.rank_in_group("broadcast", "root", 2)


@pytest.mark.parametrize("splits", [[1, 2], [1, 1, 1, 1], [2, 2, 1], [-1, 3, 2]])
def test_split_sizes_must_add_up(splits: list[int]) -> None:
    with pytest.raises(ValueError, match="must be 3 counts >= 0 adding up to 4 rows"):
        checks.splits("alltoall_base", "the input", splits, torch.ones(4, 2))


def test_no_splits_needs_rows_every_rank_can_share() -> None:
    checks.splits("alltoall_base", "the input", [], torch.ones(6, 2))
    checks.splits("alltoall_base", "the input", [0, 4, 0], torch.ones(4, 2))
    with pytest.raises(ValueError, match="has 4 rows, which 3 ranks cannot share equally"):
        checks.splits("alltoall_base", "the input", [], torch.ones(4, 2))


def test_a_roots_blocks_match_the_other_side() -> None:
    checks.one_block_per_rank("scatter", "input", [torch.ones(4)] * 3, torch.empty(4))
    with pytest.raises(ValueError, match=r"scatter: input 2 has 3 elements; it needs 4"):
        checks.one_block_per_rank("scatter", "input", [torch.ones(4), torch.ones(4), torch.ones(3)], torch.empty(4))
    with pytest.raises(ValueError, match=r"gather: the output list has 2 tensors"):
        checks.one_block_per_rank("gather", "output", [torch.ones(4)] * 2, torch.empty(4))
    with pytest.raises(ValueError, match="tensor 0 is torch.int64, the input is torch.float32"):
        checks.one_block_per_rank("gather", "output", [torch.ones(4, dtype=torch.int64)] * 3, torch.empty(4))
