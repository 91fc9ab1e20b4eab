"""Argument checks for the process group's collectives, before anything reaches the engine.

The engine trusts the counts and pointers it is given: a list one tensor short, an output too
small for what the peers send, or split sizes that do not add up would have it read or write past
a buffer. torch's front end checks some of these and not others (and custom callers reach the
backend directly), so every call checks its own, and a mistake raises ValueError at the call,
naming the rank, the collective and what is wrong, before any rank is left waiting.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class CallChecks:
    """Checks of one rank's arguments for a group of `size` ranks."""

    def __init__(self, rank: int, size: int) -> None:
        self.rank = rank
        self.size = size

    def _fail(self, call: str, problem: str) -> ValueError:
        return ValueError(f"kaitian: rank {self.rank}: {call}: {problem}")

    def rank_in_group(self, call: str, what: str, rank: int) -> None:
        if not 0 <= rank < self.size:
            raise self._fail(call, f"{what} {rank} is not a rank of this group of {self.size}")

    def one_per_rank(self, call: str, what: str, tensors: Sequence[torch.Tensor]) -> None:
        if len(tensors) != self.size:
            raise self._fail(call, f"{what} has {len(tensors)} tensors; it needs one per rank ({self.size})")

    def same_dtype(self, call: str, reference: torch.Tensor, tensors: Sequence[torch.Tensor]) -> None:
        for i, t in enumerate(tensors):
            if t.dtype != reference.dtype:
                raise self._fail(call, f"tensor {i} is {t.dtype}, the input is {reference.dtype}")

    def elements(self, call: str, what: str, tensor: torch.Tensor, expected: int) -> None:
        if tensor.numel() != expected:
            raise self._fail(call, f"{what} has {tensor.numel()} elements; it needs {expected}")

    def one_block_per_rank(self, call: str, role: str, blocks: Sequence[torch.Tensor], like: torch.Tensor) -> None:
        """A root's `role` list ("input", "output") for gather or scatter: per rank, a block like `like`."""
        self.one_per_rank(call, f"the {role} list", blocks)
        self.same_dtype(call, like, blocks)
        for i, block in enumerate(blocks):
            self.elements(call, f"{role} {i}", block, like.numel())

    def splits(self, call: str, what: str, splits: Sequence[int], tensor: torch.Tensor) -> None:
        """Split sizes along dim 0: one per rank, none negative, adding up to the rows; or none (equal rows)."""
        rows = tensor.shape[0] if tensor.dim() else 1
        if not splits:
            if rows % self.size:
                raise self._fail(call, f"{what} has {rows} rows, which {self.size} ranks cannot share equally")
            return
        if len(splits) != self.size or any(s < 0 for s in splits) or sum(splits) != rows:
            raise self._fail(
                call, f"{what} split sizes {list(splits)} must be {self.size} counts >= 0 adding up to {rows} rows"
            )
