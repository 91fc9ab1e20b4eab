"""Failures in hybrid jobs and timed-out waits: errors that are quick, clear, and leave nothing behind."""

from __future__ import annotations

import re
import signal

import pytest
from kaitian import _native
from ranks import run_ranks

pytestmark = pytest.mark.skipif(
    not any(p.is_file() for p in _native.library_candidates()), reason="libKaitianC.so is not built"
)

TIMEOUT = 10.0
INTRA = "cpu-a=gloo,cpu-b=kaitian"


def kinds_env(kinds: list[str], timeout: float = TIMEOUT) -> object:
    return lambda r: {"KAITIAN_DEVICE_KIND": kinds[r], "KAITIAN_INTRA_BACKEND": INTRA, "KAITIAN_TIMEOUT": str(timeout)}


@pytest.mark.parametrize(
    "kinds",
    [
        # The dead rank is the whole engine group: rank 1 waits inside gloo for rank 0's broadcast.
        pytest.param(["cpu-a", "cpu-a", "cpu-b"], id="engine-rank-dies"),
        # The dead rank is in the gloo group: rank 0's gloo call breaks, rank 1 waits in the engine.
        pytest.param(["cpu-a", "cpu-b", "cpu-a"], id="gloo-rank-dies"),
    ],
)
def test_killed_rank_in_hybrid_job(kinds: list[str]) -> None:
    """Survivors raise well within KAITIAN_TIMEOUT, name the dead rank by its global rank, and exit.

    Quick means well under the timeout: waiting for gloo's own timeout (the group's) would pass
    a bound of TIMEOUT, so the bound is half of it.
    """
    size, dead = len(kinds), len(kinds) - 1
    exit_codes: dict[int, int | None] = {}
    out = run_ranks("kill_timed", size, kinds_env(kinds), timeout=90, expect=size - 1, exit_codes=exit_codes)
    assert dead not in out, "the killed rank reported"
    for rank in range(size - 1):
        status, value = out.get(rank, ("missing", None))
        assert status == "ok", f"rank {rank}: {status} {value}"
        assert value["raised"], f"rank {rank} did not notice the dead rank"
        assert value["detect_seconds"] < TIMEOUT / 2, f"rank {rank} took {value['detect_seconds']:.1f} s"
        # The all-ranks communicator's words: "... lost rank 2 (pid 123 on host 'vm'): its process exited ..."
        assert re.search(rf"lost rank {dead}\b", value["message"]), value["message"]
    assert exit_codes[dead] == -signal.SIGKILL
    assert all(exit_codes[rank] == 0 for rank in range(size - 1)), f"survivors did not exit cleanly: {exit_codes}"


@pytest.mark.parametrize(
    "env",
    [
        pytest.param(None, id="flat"),
        pytest.param(kinds_env(["cpu-a", "cpu-b"], timeout=20), id="hybrid"),
    ],
)
def test_work_wait_honours_its_timeout(env: object) -> None:
    """A wait shorter than the collective raises a timeout naming rank and call; the call still completes."""
    out = run_ranks("wait_timeout", 2, env, timeout=60)
    status, value = out[0]
    assert status == "ok", value
    assert value["raised"], "Work.wait(timeout=0.5 s) returned for a collective that took 3 s"
    assert value["type"] == "KaitianTimeoutError"
    assert 0.4 < value["wait_seconds"] < 2.0, value["wait_seconds"]
    assert re.search(r"rank 0: allreduce #\d+", value["message"]), value["message"]
    assert all(status == "ok" and v["sum"] == [2.0] * 4 for status, v in out.values()), out
