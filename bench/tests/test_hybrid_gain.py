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
    return {
        "samples_per_second": rate,
        "seconds": 10.0,
        "accuracy": 0.9,
        "final_plan": [1],
        "traces": traces,
        "job_seconds": 20.0 + 1000.0 / max(rate, 1.0),
        "startup_seconds": {"to first step": 20.0},
    }


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
    assert text.count("| emulated |") == 2 and text.count("| quota |") == 2, "throughput and end-to-end rows"
    assert "| quota | 30 (30-30) (20 (20-20)) | 30.8 (30.5-31.1) (20 (20-20)) | 0.974 (0.964-0.983) |" in text


def test_end_to_end_is_absent_from_older_runs() -> None:
    older = one_round(90.0)
    for config in older.values():
        config.pop("job_seconds")
    assert gain.end_to_end_lines([gain.mode_report("quota", [older])]) == []


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


def timed(job: dict[str, Any], first_end: float) -> dict[str, Any]:
    """job with wall-clock step ends, one step per step length from first_end, for every rank."""
    for t in job["traces"]:
        wall = first_end
        for step in t["steps"]:
            step["wall"] = wall
            wall += step["step"]
    return job


def test_side_by_side_counts_only_the_steps_both_jobs_shared() -> None:
    # Six steps per rank, the first 3 left out as warm-up. Fast: 1 s steps ending at 100..105, steady
    # over (102, 105]. Slow: 2 s steps ending at 103..113, steady over (107, 113]: no shared second.
    fast = timed(result(0.0, [trace(0, "fast", 32, 0.5, 1.0), trace(1, "fast", 32, 0.5, 1.0)]), 100.0)
    slow = timed(result(0.0, [trace(0, "slow", 16, 1.0, 2.0), trace(1, "slow", 16, 1.0, 2.0)]), 103.0)
    try:
        gain.side_by_side_summary(fast, slow)
        raise AssertionError("disjoint runs must be refused")
    except SystemExit as refused:
        assert "never overlapped" in str(refused)
    # Slow steps ending at 98..108, steady over (102, 108]: the window is (102, 105].
    fast = timed(result(0.0, [trace(0, "fast", 32, 0.5, 1.0), trace(1, "fast", 32, 0.5, 1.0)]), 100.0)
    slow = timed(result(0.0, [trace(0, "slow", 16, 1.0, 2.0), trace(1, "slow", 16, 1.0, 2.0)]), 98.0)
    pair = gain.side_by_side_summary(fast, slow)
    assert gain.overlap_window([fast, slow]) == (102.0, 105.0)
    assert pair["fast_samples_per_second"] == 64.0, "fast steps ending at 103, 104, 105, both ranks, over 3 s"
    assert pair["slow_samples_per_second"] == 32 / 3, "the slow step ending at 104, both ranks"
    assert pair["overlap_seconds"] == 3.0
    assert pair["samples_per_second"] == 64.0 + 32 / 3 and pair["fast_compute_ms_per_sample"] == 1e3 * 0.5 / 32


def test_report_shows_both_groups_side_by_side_when_measured() -> None:
    rounds = [one_round(130.0), one_round(126.0)]
    for r in rounds:
        pair = dict(r["fast alone"], samples_per_second=140.0)
        pair["fast_compute_ms_per_sample"] *= 1.1
        r[gain.SIDE_BY_SIDE] = pair
    report = gain.mode_report("quota", rounds)
    assert report["side_by_side"]["over_fast"] == [1.4, 1.4]
    assert [round(x, 2) for x in report["side_by_side"]["both_over_it"]] == [0.93, 0.9]
    text = "\n".join(gain.side_by_side_lines([report]))
    assert "| quota | 140 (140-140) | 1.4 (1.4-1.4) | 0.914 (0.9-0.929) | 1.1 (1.1-1.1) |" in text
    assert gain.side_by_side_lines([gain.mode_report("quota", [one_round(90.0)])]) == [], "older runs: no table"


def test_ceilings_come_from_the_hybrid_jobs_measured_costs() -> None:
    rounds = [one_round(130.0), one_round(120.0)]
    for round_, (ceiling, fast_ceiling) in zip(rounds, [(160.0, 125.0), (150.0, 120.0)], strict=True):
        round_["both"].update(ceiling=ceiling, fastest_group_ceiling=fast_ceiling)
    report = gain.mode_report("quota", rounds)
    assert report["ceiling"]["over_fast"] == [1.28, 1.25]
    assert report["ceiling"]["both_over_it"] == [130.0 / 160.0, 0.8]
    lines = "\n".join(gain.ceiling_lines([report]))
    assert "| quota | 1.27 (1.25-1.28) | 0.806 (0.8-0.812) |" in lines
    assert gain.ceiling_lines([gain.mode_report("quota", [one_round(90.0)])]) == [], "older runs had none"
    assert gain.parse_args(["--adaptive", "online"]).adaptive == "online"


def test_saved_results_render_the_same_report(tmp_path: Path, monkeypatch: Any, capsys: Any) -> None:
    """--json-out keeps what --from-json needs: the report renders again without running anything."""
    monkeypatch.setattr(gain, "measure", lambda args: {"quota": [one_round(90.0), one_round(95.0)]})
    saved, first, again = tmp_path / "gain.json", tmp_path / "first.md", tmp_path / "again.md"
    gain.main(["--modes", "quota", "--rounds", "2", "--json-out", str(saved), "--markdown", str(first)])
    monkeypatch.setattr(gain, "measure", lambda args: (_ for _ in ()).throw(AssertionError("measured again")))
    gain.main(["--from-json", str(saved), "--markdown", str(again)])
    capsys.readouterr()
    # The figures: after the provenance line, up to the command line (which names the output files).
    body = lambda path: path.read_text().split("\n", 3)[3].split("## Reproduce")[0]  # noqa: E731
    assert "rendered from saved results" in again.read_text()
    assert body(again) == body(first)
    assert "--json-out" in first.read_text()
