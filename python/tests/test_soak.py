"""Short soak for CI: hundreds of random collectives on 2 + 3 heterogeneous ranks, all checked.

The long version (thousands of calls) is bench/reliability/soak.py; both share its code.
"""

from __future__ import annotations

import pytest
import soak
from kaitian import _native

pytestmark = pytest.mark.skipif(
    not any(p.is_file() for p in _native.library_candidates()), reason="libKaitianC.so is not built"
)

# A leak bound, not a speed threshold: one leaked buffer of the largest call per call would
# add hundreds of MiB over the second half; allocator and torch caches settle well below this.
RSS_SECOND_HALF_LIMIT = 32 * 2**20


def test_plan_is_the_same_on_every_rank_and_covers_every_kind() -> None:
    first = soak.plan(seed=7, calls=500, size=5, large=True)
    assert first == soak.plan(seed=7, calls=500, size=5, large=True)
    assert {call["kind"] for call in first[len(soak.KINDS) :]} == set(soak.KINDS)
    assert {call["count"] for call in first} >= {0, 1}


def test_wrong_counts_every_differing_element() -> None:
    import torch

    want = torch.tensor([1.0, 2.0, 3.0])
    assert soak._wrong(want.clone(), want, avg=False) == 0
    assert soak._wrong(torch.tensor([1.0, 0.0, 0.0]), want, avg=False) == 2
    assert soak._wrong(torch.tensor([1.0, 2.0]), want, avg=False) == 3


def test_short_soak_has_no_wrong_values_and_no_leaks() -> None:
    result = soak.run(calls=600, seed=11, large=True, timeout=80.0)
    assert result["calls_per_rank"] == 600 + len(soak.KINDS)
    assert result["wrong_values"] == 0, result["first_wrong"]
    assert result["fd_growth_max"] == 0, result
    assert result["rss_growth_second_half_max_bytes"] < RSS_SECOND_HALF_LIMIT, result
