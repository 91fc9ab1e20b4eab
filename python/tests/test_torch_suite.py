"""PyTorch's own distributed tests on "kaitian": bench/torch_suite.py's quick selection, 3 ranks.

Every test of the selection must pass or be skipped by the suite itself (it gates some tests on
backend names), except the ones listed in KNOWN_FAILURES, which name what kaitian lacks. A known
failure that starts passing fails this test too, so the list cannot go stale.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

KNOWN_FAILURES = {
    # The three tests below meet one limit of torch 2.15: it hands the caller its own wrapper of a
    # Python backend's Work (PyWorkHolder), which passes on wait() and get_future() only.
    # dist.recv(src=None) asks that wrapper for sourceRank(), so kaitian refuses it up front and
    # offers kaitian.recv_from_any, which returns the sender (test_torch_apis.py checks it
    # against gloo).
    "test_send_recv_any_source": "dist.recv(src=None): torch's wrapper of a Python backend's Work has no sourceRank()",
    # Both assert Work.is_completed() right after wait(). torch 2.15 hands the caller its own
    # wrapper of a Python backend's Work, whose is_completed() stays False even after wait()
    # (measured: also when the backend returns torch's own _create_work_from_future; gloo's C++
    # Work gives True). wait() and get_future() are right.
    "test_isend": "Work.is_completed() through torch's wrapper of a Python backend's Work",
    "test_irecv": "Work.is_completed() through torch's wrapper of a Python backend's Work",
}


def test_the_quick_selection_passes_on_kaitian() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "torch_suite.py"), "--backends", "kaitian", "--json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    outcomes: dict[str, str] = json.loads(done.stdout)["kaitian"]
    assert len(outcomes) >= 20, outcomes
    failed = {name: outcome for name, outcome in outcomes.items() if outcome.startswith("failed")}
    assert set(failed) == set(KNOWN_FAILURES), f"failed: {failed}; known: {KNOWN_FAILURES}"
    passed = [name for name, outcome in outcomes.items() if outcome == "passed"]
    assert len(passed) >= len(outcomes) // 2, outcomes
