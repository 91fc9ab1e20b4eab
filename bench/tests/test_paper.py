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


def results() -> dict[str, dict[str, Any]]:
    hybrid = [trace(0, "fast", 0.05, 0.04, 40), trace(2, "slow", 0.05, 0.02, 24)]
    return {
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


def test_figure_rows_compare_the_right_jobs() -> None:
    rows = reproduce.figure2_rows(results())
    assert [row[1] for row in rows] == [10.0, 20.0, 7.0]
    assert rows[2][3] == "137.4 s, 83.4%"
    overhead = reproduce.figure4_rows(results())
    assert abs(overhead[0][3] - 0.05) < 1e-9 and abs(overhead[1][3] + 0.05) < 1e-9
    strategies = {row[0] for row in reproduce.figure3_rows(results())}
    assert strategies == {"equal split", "static shares", "online"}


def test_report_quotes_the_paper_beside_our_figures() -> None:
    args = reproduce.parse_args(["--epochs", "3"])
    args.load_before = 0.1
    text = reproduce.markdown(results(), args, ["figure-2.png"])
    assert "against the fast group alone: 30% less time; against the slow group alone: 65% less time" in text
    assert "Unlike the paper" not in text
    assert "2 GPUs: 232.4 s vs 226.1 s (+2.8%)" in text
    assert "| fast group (2 workers) | 10.50 s | 10.00 s | +5.0% |" in text
    assert "![figure-2.png](results/figure-2.png)" in text


def test_plots_are_written(tmp_path: Path) -> None:
    names = reproduce.plot(results(), tmp_path)
    assert names == ["figure-2.png", "figure-3.png", "figure-4.png"]
    for name in names:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_says_when_both_groups_lose_to_the_fast_one() -> None:
    args = reproduce.parse_args([])
    args.load_before = 0.1
    slower = results()
    slower["both, online"]["seconds"] = 12.0
    text = reproduce.markdown(slower, args, [])
    assert "against the fast group alone: 20% more time" in text
    assert "Unlike the paper" in text


def test_report_breaks_the_hybrid_step_down() -> None:
    both = results()
    for record in both["both, online"]["traces"]:
        for step in record["steps"]:
            step["stages"] = {"relay between groups": 0.004, "in-group allgather": 0.002}
    args = reproduce.parse_args([])
    args.load_before = 0.1
    text = reproduce.markdown(both, args, [])
    assert (
        "| 0 | fast | 40.0 | 50.0 ms | 40.0 ms | 10.0 ms | in-group allgather 2.0, relay between groups 4.0 |" in text
    )
    assert "| 2 | slow | 24.0 | 50.0 ms | 20.0 ms | 30.0 ms |" in text
