"""Two random SIGKILLs of a `kaitian run` training job (the bench script does 20).

Each kill must end the job with a non-zero launcher exit naming the rank, survivors' errors
naming it, no process left behind, a checkpoint that loads, and a resume equal bitwise to an
uninterrupted run.
"""

from __future__ import annotations

import kill_random
import pytest


def _launcher_or_skip() -> None:
    try:
        kill_random.launcher()
    except FileNotFoundError as error:
        pytest.skip(str(error))


def test_job_processes_finds_only_the_job() -> None:
    assert kill_random.job_processes("no-such-job-id") == []


def test_two_random_kills_are_reported_cleaned_up_and_resumable() -> None:
    _launcher_or_skip()
    result = kill_random.run(kills=2, epochs=12, seed=5)
    summary = kill_random.summarize(result)
    details = [(t["killed_rank"], t["launcher_exit"], t["survivor_errors"]) for t in result["trials"]]
    assert summary["hangs"] == 0, details
    assert summary["leftovers"] == 0, details
    assert summary["kills"] >= 1, details  # a kill drawn after the job ended is not counted
    assert summary["launcher_nonzero"] == summary["kills"], details
    assert summary["launcher_named_rank"] == summary["kills"], details
    assert summary["survivor_errors_naming_rank"] == summary["survivors"], details
    assert summary["checkpoints_unreadable"] == 0, details
    assert summary["resumed_equal"] == summary["resumed"], details
