"""heterogeneity.py: the pure logic (cgroup files, result parsing, verdicts, report)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import heterogeneity
import pytest


def test_quota_file_v1_and_v2() -> None:
    v1 = "9:name=systemd:/\n2:cpuacct:/\n1:cpu,cpuacct:/kaitian-ab12/rank-1\n0::/\n"
    assert heterogeneity.quota_file(v1) == (Path("/sys/fs/cgroup/cpu/kaitian-ab12/rank-1/cpu.cfs_quota_us"), "v1")
    v2 = "0::/kaitian-ab12/rank-1\n"
    assert heterogeneity.quota_file(v2) == (Path("/sys/fs/cgroup/kaitian-ab12/rank-1/cpu.max"), "v2")
    assert heterogeneity.quota_text(0.15, "v1", 10_000) == "1500"
    assert heterogeneity.quota_text(0.3, "v2", 100_000) == "30000 100000"


def test_quota_period_read_from_the_cgroup(tmp_path: Path) -> None:
    (tmp_path / "cpu.cfs_period_us").write_text("10000\n")
    assert heterogeneity.quota_period(tmp_path / "cpu.cfs_quota_us", "v1") == 10_000
    (tmp_path / "cpu.max").write_text("3000 10000\n")
    assert heterogeneity.quota_period(tmp_path / "cpu.max", "v2") == 10_000


def result(equal: float, static: float, online: float) -> dict:
    windows = [{"steps": "0-4", "plan": [49, 15], "throughput": 1000.0}]
    return {
        "config": "two workers",
        "kinds": ["A", "B"],
        "solo": [800.0, 240.0],
        "ideal": 1040.0,
        "alone": 800.0,
        "modes": {
            "equal": {"plan": [32, 32], "throughput": equal},
            "static": {"plan": [49, 15], "throughput": static},
            "online": {"plan": [50, 14], "throughput": online},
        },
        "change": {"from": 0.3, "to": 0.15, "at_step": 30, "windows": windows, "ideal_after": 920.0},
    }


def test_verdicts_against_the_issue_goals() -> None:
    good = heterogeneity.verdicts(result(480.0, 990.0, 1000.0))
    assert [ok for _, ok, _ in good] == [True, True, True]
    bad = heterogeneity.verdicts(result(480.0, 990.0, 820.0))
    assert [ok for _, ok, _ in bad] == [False, False, False]


def test_parse_result_from_prefixed_output_and_report() -> None:
    line = "[rank 0 a] " + heterogeneity.RESULT_TAG + json.dumps(result(480.0, 990.0, 1000.0))
    parsed = heterogeneity.parse_result("noise\n" + line + "\n")
    report = heterogeneity.markdown([parsed])
    assert "| (c) online | [50, 14] | 1000.0 | 96% |" in report
    assert "met: (c) >= 90% of ideal" in report and "| 0-4 | [49, 15] | 1000.0 |" in report


def test_defaults_quick_and_full() -> None:
    quick = heterogeneity.parse_args(["--quick"])
    full = heterogeneity.parse_args([])
    assert quick.samples < full.samples and quick.solo_seconds < full.solo_seconds


@pytest.mark.skipif(
    os.geteuid() != 0 or not (heterogeneity.REPO / ".build" / "release" / "kaitian").is_file(),
    reason="needs root (cgroup quotas) and the release launcher",
)
def test_quick_smoke_run_two_workers(tmp_path: Path) -> None:
    out = tmp_path / "report.md"
    done = subprocess.run(
        [sys.executable, str(Path(heterogeneity.__file__)), "--quick", "--configs", "2", "--json", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (run,) = json.loads(done.stdout)
    assert run["ideal"] > run["alone"] > 0
    assert all(mode["throughput"] > 0 and sum(mode["plan"]) == run["batch"] for mode in run["modes"].values())
    assert "(c) online" in out.read_text()
