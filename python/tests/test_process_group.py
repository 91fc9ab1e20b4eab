"""The "kaitian" backend end to end: ranks are real processes, as under torchrun."""

from __future__ import annotations

import re

import pytest
import torch
from kaitian import _native
from ranks import assert_all_ok, run_ranks
from workloads import STEPS, train

pytestmark = pytest.mark.skipif(
    not any(p.is_file() for p in _native.library_candidates()), reason="libKaitianC.so is not built"
)


def hybrid_env(kinds: list[str], chunk_bytes: int | None = None) -> object:
    """Ranks declare the given device kinds; cpu-a groups use gloo inside, cpu-b the engine.

    With `chunk_bytes`, hybrid allreduces are cut into chunks that small, so every tensor of the
    checks (37 elements and up) crosses the pipeline in several chunks, the last one short.
    """
    chunks = {} if chunk_bytes is None else {"KAITIAN_HYBRID_CHUNK_BYTES": str(chunk_bytes)}
    return lambda r: {"KAITIAN_DEVICE_KIND": kinds[r], "KAITIAN_INTRA_BACKEND": "cpu-a=gloo,cpu-b=kaitian", **chunks}


def check_gradients(per_rank: list[dict[str, object]], size: int) -> None:
    """Bitwise identical across ranks, and equal to single-process training on the full batch."""
    single = train(0, 1, ddp=False)
    for rank in range(1, size):
        for step in range(STEPS):
            for a, b in zip(per_rank[0]["grads"][step], per_rank[rank]["grads"][step], strict=True):
                assert torch.equal(a, b), f"rank {rank} step {step}: gradients differ from rank 0"
    for step in range(STEPS):
        for got, want in zip(per_rank[0]["grads"][step], single[step], strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


FLAT = [("cpu", "kaitian")]
HYBRID = [("cpu-a", "gloo"), ("cpu-b", "kaitian")]


@pytest.mark.parametrize(
    ("size", "env", "groups"),
    [
        pytest.param(2, None, FLAT, id="flat-2"),
        pytest.param(3, None, FLAT, id="flat-3"),
        # Unequal groups: {0, 1} cpu-a over gloo and {2} cpu-b over the engine.
        pytest.param(3, hybrid_env(["cpu-a", "cpu-a", "cpu-b"]), HYBRID, id="hybrid-2+1"),
        # Equal groups (reduce-scatter / column allreduce / allgather), interleaved ranks.
        pytest.param(4, hybrid_env(["cpu-a", "cpu-b", "cpu-a", "cpu-b"]), HYBRID, id="hybrid-2+2"),
        # Unequal groups whose smaller one has two ranks: two shard columns, then broadcasts.
        pytest.param(5, hybrid_env(["cpu-a", "cpu-a", "cpu-b", "cpu-b", "cpu-b"]), HYBRID, id="hybrid-2+3"),
        # The same two layouts with 40-byte chunks: many chunks in flight through the pipeline's
        # stages at once, each padded to the group size on its own.
        pytest.param(4, hybrid_env(["cpu-a", "cpu-b", "cpu-a", "cpu-b"], 40), HYBRID, id="hybrid-2+2-chunked"),
        pytest.param(5, hybrid_env(["cpu-a", "cpu-a", "cpu-b", "cpu-b", "cpu-b"], 40), HYBRID, id="hybrid-2+3-chunked"),
    ],
)
def test_collectives_and_ddp(size: int, env: object, groups: list[tuple[str, str]]) -> None:
    values = assert_all_ok(run_ranks("full", size, env), size)
    assert [(kind, backend) for kind, backend, _ in values[0]["groups"]] == groups
    assert all(v["checks"] > 50 for v in values)
    check_gradients(values, size)
    if groups == HYBRID:  # the engine times DDP's hybrid allreduces, whichever library runs a group
        for _, _, ranks in values[0]["groups"]:
            for rank in ranks:
                stages = values[rank]["stages"]
                assert (len(ranks) == 1) != any(name.startswith("in-group") for name in stages), (rank, stages)
        assert values[0]["stages"].get("relay between groups", 0) > 0, values[0]["stages"]


def test_killed_rank_makes_the_others_raise() -> None:
    size, timeout = 3, 5.0
    out = run_ranks("kill", size, lambda r: {"KAITIAN_TIMEOUT": str(timeout)}, timeout=60, expect=size - 1)
    assert size - 1 not in out, "the killed rank reported"
    for rank in range(size - 1):
        status, value = out.get(rank, ("missing", None))
        assert status == "ok", f"rank {rank}: {status} {value}"
        assert value["raised"], f"rank {rank} did not notice the dead rank"
        assert value["seconds"] < timeout + 10, f"rank {rank} took {value['seconds']:.1f}s"
        # The engine's words, e.g. "rank 1: lost rank 2 (pid 123 on host 'vm'): its process exited ..."
        assert re.search(rf"rank {size - 1}\b", value["message"]), value["message"]


@pytest.mark.parametrize(
    ("size", "env"),
    [pytest.param(2, None, id="flat-2"), pytest.param(3, hybrid_env(["cpu-a", "cpu-a", "cpu-b"]), id="hybrid-2+1")],
)
def test_destroy_and_init_again_in_one_process(size: int, env: object) -> None:
    # Each construction must use its own rendezvous keys: the first one's endpoints and shared
    # memory names are still in the store, and point at communicators that are gone.
    values = assert_all_ok(run_ranks("reinit", size, env, timeout=120), size)
    base = size * (size - 1) / 2
    assert values == [[base + size * round_ for round_ in range(3)]] * size


@pytest.mark.parametrize(
    ("size", "env"),
    [pytest.param(2, None, id="flat-2"), pytest.param(3, hybrid_env(["cpu-a", "cpu-a", "cpu-b"]), id="hybrid-2+1")],
)
def test_ddp_with_the_powersgd_hook_matches_gloo(size: int, env: object) -> None:
    values = assert_all_ok(run_ranks("powersgd", size, env, timeout=120), size)
    for rank, value in enumerate(values):
        for i, (got, want) in enumerate(zip(value["kaitian"], value["gloo"], strict=True)):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=f"rank {rank} parameter {i}")
            assert torch.equal(got, values[0]["kaitian"][i]), f"rank {rank} parameter {i} differs from rank 0's"
