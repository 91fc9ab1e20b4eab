"""bench/paper/reproduce.py's pure parts: statistics, tables and the report, from made-up runs."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("reproduce", REPO / "bench" / "paper" / "reproduce.py")
assert spec is not None and spec.loader is not None
reproduce = importlib.util.module_from_spec(spec)
sys.modules["reproduce"] = reproduce
spec.loader.exec_module(reproduce)


def trace(rank: int, kind: str, step: float, compute: float, batch: int, steps: int = 6) -> dict[str, Any]:
    return {
        "rank": rank,
        "kind": kind,
        "steps": [{"time": i * step, "batch": batch, "compute": compute, "step": step} for i in range(steps)],
    }


def job(seconds: float, accuracy: float, traces: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "seconds": seconds,
        "accuracy": accuracy,
        "samples_per_second": 1000 / seconds,
        "final_plan": [40, 40, 24, 24],
        "plan_changes": [{"old": [32] * 4, "new": [40, 40, 24, 24]}],
        "traces": traces or [],
    }


def figure2_round(fast: float, both: float, slow: float) -> dict[str, dict[str, Any]]:
    hybrid = [trace(0, "fast", 0.05, 0.04, 40), trace(2, "slow", 0.05, 0.02, 24)]
    return {"fast alone": job(fast, 0.95), "both": job(both, 0.96, hybrid), "slow alone": job(slow, 0.94)}


def results() -> dict[str, Any]:
    hybrid = [trace(0, "fast", 0.05, 0.04, 40), trace(2, "slow", 0.05, 0.02, 24)]
    return {
        "figure2": {
            "quota": [figure2_round(10.0, 12.0, 20.0), figure2_round(11.0, 12.5, 22.0)],
            "emulated": [figure2_round(10.0, 8.0, 20.0), figure2_round(12.0, 8.0, 20.0), figure2_round(9.0, 7.5, 18.0)],
        },
        "fast alone, gloo": job(10.0, 0.95),
        "slow alone, gloo": job(20.0, 0.94),
        "fast alone, kaitian": job(10.5, 0.95),
        "slow alone, kaitian": job(19.0, 0.94),
        "both, equal split": job(9.0, 0.95, hybrid),
        "both, static shares": job(7.5, 0.95, hybrid),
        "both, online": job(7.0, 0.96, hybrid),
    }


def test_worker_stats_drop_the_warm_up_steps() -> None:
    record = trace(0, "fast", 0.05, 0.04, 32)
    record["steps"][0] = {"time": 0.0, "batch": 32, "compute": 5.0, "step": 9.0}  # a slow first step
    stats = reproduce.worker_stats(record)
    assert abs(stats["step_ms"] - 50.0) < 1e-9
    assert abs(stats["utilization"] - 0.8) < 1e-9
    assert stats["batch"] == 32


def test_figure2_compares_both_groups_with_each_alone_round_by_round() -> None:
    summary = reproduce.figure2_summary(results()["figure2"]["emulated"])
    assert summary["both_over_fast"] == [1.25, 1.5, 1.2]
    assert summary["both_over_slow"] == [2.5, 2.5, 2.4]
    # 1/8 against 1/10 + 1/20: the hybrid job reached 83% of the two groups' summed throughput.
    assert abs(summary["both_over_sum"][0] - (1 / 8) / (1 / 10 + 1 / 20)) < 1e-12
    assert summary["seconds"]["fast alone"] == [10.0, 12.0, 9.0]


def test_figure_rows_compare_the_right_jobs() -> None:
    summaries = {mode: reproduce.figure2_summary(rounds) for mode, rounds in results()["figure2"].items()}
    rows = reproduce.figure2_rows(summaries)
    assert [row[:3] for row in rows[:3]] == [
        ("quota", "fast group alone (2 workers, Kaitian's engine)", "10.5 (10-11) s"),
        ("quota", "both groups, Kaitian, online shares", "12.2 (12-12.5) s"),
        ("quota", "slow group alone (2 workers, gloo)", "21 (20-22) s"),
    ]
    assert rows[4][2] == "8 (7.5-8) s" and rows[4][4] == "137.4 s, 83.4%"
    overhead = reproduce.figure4_rows(results())
    assert abs(overhead[0][3] - 0.05) < 1e-9 and abs(overhead[1][3] + 0.05) < 1e-9
    strategies = {row[0] for row in reproduce.figure3_rows(results())}
    assert strategies == {"equal split", "static shares", "online"}


def test_report_quotes_the_paper_beside_our_figures() -> None:
    args = reproduce.parse_args(["--epochs", "3"])
    args.load_before = 0.1
    text = reproduce.markdown(results(), args, ["figure-2.png"])
    assert "- **emulated**: both groups train faster than the fast group alone, 1.25 (1.2-1.5)x as fast" in text
    assert "- **quota**: both groups train SLOWER than the fast group alone, 0.857 (0.833-0.88)x" in text
    assert "2 GPUs: 232.4 s vs 226.1 s (+2.8%)" in text
    assert "| fast group (2 workers) | 10.50 s | 10.00 s | +5.0% |" in text
    assert "![figure-2.png](results/figure-2.png)" in text
    assert "EMULATED device speeds, fast 0.3 and slow 0.15" in text
    assert "--rounds 3" in text


def test_plots_are_written(tmp_path: Path) -> None:
    names = reproduce.plot(results(), tmp_path)
    assert names == ["figure-2.png", "figure-3.png", "figure-4.png"]
    for name in names:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_explains_each_stand_in_that_loses_to_the_fast_group() -> None:
    args = reproduce.parse_args([])
    args.load_before = 0.1
    text = reproduce.markdown(results(), args, [])
    assert "Under CPU quotas, unlike the paper" in text
    assert "With emulated devices too" not in text
    slower = results()
    for record in slower["figure2"]["emulated"]:
        record["both"]["seconds"] = 30.0
    assert "With emulated devices too" in reproduce.markdown(slower, args, [])


def test_report_breaks_each_stand_ins_hybrid_step_down() -> None:
    both = results()
    for record in both["figure2"]["emulated"][-1]["both"]["traces"]:
        for step in record["steps"]:
            step["stages"] = {"relay between groups": 0.004, "in-group allgather": 0.002}
    args = reproduce.parse_args([])
    args.load_before = 0.1
    text = reproduce.markdown(both, args, [])
    emulated = text[text.index("**emulated**\n") :]
    assert (
        "| 0 | fast | 40.0 | 50.0 ms | 40.0 ms | 10.0 ms | in-group allgather 2.0, relay between groups 4.0 |"
        in emulated
    )
    assert "| 2 | slow | 24.0 | 50.0 ms | 20.0 ms | 30.0 ms |" in text


def test_rounds_default_to_three_and_one_when_quick() -> None:
    assert reproduce.parse_args([]).rounds == 3
    assert reproduce.parse_args(["--quick"]).rounds == 1
    assert reproduce.parse_args(["--rounds", "5"]).rounds == 5
