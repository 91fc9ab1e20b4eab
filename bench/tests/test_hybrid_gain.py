"""bench/hybrid_gain.py's summaries and report, on made-up runs (no processes)."""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("hybrid_gain", REPO / "bench" / "hybrid_gain.py")
assert spec is not None and spec.loader is not None
gain = importlib.util.module_from_spec(spec)
sys.modules["hybrid_gain"] = gain
spec.loader.exec_module(gain)


def trace(rank: int, kind: str, batch: int, compute: float, step: float) -> dict[str, Any]:
    steps = [
        {"batch": batch, "compute": compute, "step": step, "stages": {"relay between groups": 0.01}} for _ in range(6)
    ]
    return {"rank": rank, "kind": kind, "steps": steps, "thread_cpu_seconds": {"python": 3.0, "kt-hybrid1": 0.5}}


def result(rate: float, traces: list[dict[str, Any]]) -> dict[str, Any]:
    return {"samples_per_second": rate, "seconds": 10.0, "accuracy": 0.9, "final_plan": [1], "traces": traces}


def one_round(both_rate: float) -> dict[str, dict[str, Any]]:
    fast = [trace(0, "fast", 32, 0.32, 0.35), trace(1, "fast", 32, 0.32, 0.35)]
    slow = [trace(0, "slow", 32, 0.64, 0.70), trace(1, "slow", 32, 0.64, 0.70)]
    mixed = [trace(0, "fast", 22, 0.242, 0.30), trace(1, "fast", 22, 0.242, 0.30)]
    mixed += [trace(2, "slow", 10, 0.22, 0.30), trace(3, "slow", 10, 0.22, 0.30)]
    return {
        "fast alone": gain.job_summary(result(100.0, fast)),
        "both": gain.job_summary(result(both_rate, mixed)),
        "slow alone": gain.job_summary(result(50.0, slow)),
    }


def test_summaries_compare_each_round_with_its_own_baselines() -> None:
    rounds = [one_round(130.0), one_round(140.0), one_round(120.0)]
    report = gain.mode_report("emulated", rounds)
    assert report["both_over_fast"] == [1.3, 1.4, 1.2]
    assert [round(x, 3) for x in report["both_over_ideal"]] == [0.867, 0.933, 0.8]
    # Fast ranks: 10 ms per sample alone, 11 ms in the hybrid job; exposed 30 ms -> 58 ms.
    assert [round(x, 3) for x in report["fast_compute_ratio"]] == [1.1] * 3
    assert round(report["fast_exposed_ms"]["both"][0]) == 58
    assert gain.spread([1.2, 1.3, 1.4]) == "1.3 (1.2-1.4)"
    assert "1.30x as fast as the fast group alone" in gain.verdict(report)
    slower = gain.mode_report("quota", [one_round(80.0)])
    assert "SLOWER than the fast group alone (0.80x)" in gain.verdict(slower)


def test_report_names_the_stand_ins_and_breaks_the_step_down() -> None:
    args = gain.parse_args(["--rounds", "2"])
    raw = {"emulated": [one_round(130.0), one_round(125.0)], "quota": [one_round(90.0), one_round(95.0)]}
    reports = [gain.mode_report(mode, rounds) for mode, rounds in raw.items()]
    text = gain.markdown(reports, raw, args, "measured now")
    assert "EMULATED" in text and "Hurts Kaitian" in text and "May favour Kaitian" in text
    assert "relay between groups 10.0" in text and "kt-hybrid1 0.5 s" in text
    assert text.count("| emulated |") == 1 and text.count("| quota |") == 1


def test_arguments() -> None:
    assert gain.parse_args([]).modes == ["quota", "emulated"]
    assert isinstance(gain.parse_args(["--modes", "emulated"]), argparse.Namespace)


def test_one_calibration_is_kept_fresh_for_the_whole_run(tmp_path: Path) -> None:
    assert gain.keep_one_calibration(tmp_path / "cache") == tmp_path / "cache", "nothing to keep yet"
    folder = tmp_path / "cache" / "kaitian"
    folder.mkdir(parents=True)
    calibration, other = folder / "emulation-0123.json", folder / "emulation.lock"
    for path in (calibration, other):
        path.write_text("{}")
        os.utime(path, (1_000_000, 1_000_000))
    gain.keep_one_calibration(tmp_path / "cache")
    assert calibration.stat().st_mtime > 1_000_000 and other.stat().st_mtime == 1_000_000
