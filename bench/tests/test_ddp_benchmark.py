"""Tests of the DDP benchmark's logic, and one end-to-end --quick run (no speed thresholds)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import ddp_benchmark
import pytest

BENCH_DIR = Path(__file__).resolve().parent.parent


def test_parse_models_keeps_order_and_drops_duplicates() -> None:
    assert ddp_benchmark.parse_models("resnet18, mobilenet_v2,resnet18") == ["resnet18", "mobilenet_v2"]


@pytest.mark.parametrize("text", ["", ",", "vgg16", "tiny,alexnet"])
def test_parse_models_rejects(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        ddp_benchmark.parse_models(text)


def test_parse_args_defaults_and_quick() -> None:
    args = ddp_benchmark.parse_args([])
    assert (args.models, args.steps, args.warmup, args.rounds) == (["mobilenet_v2", "resnet18"], 80, 10, 2)
    assert args.batch_size == 32
    quick = ddp_benchmark.parse_args(["--quick"])
    assert (quick.models, quick.steps, quick.warmup, quick.rounds) == (["tiny"], 3, 1, 1)
    explicit = ddp_benchmark.parse_args(["--quick", "--models", "resnet18", "--steps", "7", "--batch-size", "4"])
    assert (explicit.models, explicit.steps, explicit.batch_size) == (["resnet18"], 7, 4)


@pytest.mark.parametrize("argv", [["--steps", "0"], ["--warmup", "-1"], ["--batch-size", "0"], ["--rounds", "0"]])
def test_parse_args_rejects(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        ddp_benchmark.parse_args(argv)


def test_rank_env_per_config() -> None:
    gloo, homogeneous, hetero = ddp_benchmark.CONFIGS
    assert gloo.rank_env(0) == {}
    assert homogeneous.rank_env(1) == {"KAITIAN_DEVICE_KIND": "cpu"}
    assert [hetero.rank_env(r)["KAITIAN_DEVICE_KIND"] for r in range(2)] == ["cpu-a", "cpu-b"]
    assert hetero.rank_env(0)["KAITIAN_INTRA_BACKEND"] == "cpu-a=gloo,cpu-b=kaitian"


def test_slowest_rank_per_step() -> None:
    times = {0: [1.0, 5.0, 2.0], 1: [3.0, 1.0, 2.0, 9.0]}  # extra steps of one rank are ignored
    assert ddp_benchmark.slowest_rank_steps(times) == [3.0, 5.0, 2.0]
    steps = ddp_benchmark.slowest_rank_steps(times)
    assert ddp_benchmark.summarize(steps) == pytest.approx({"mean_ms": 10000 / 3, "median_ms": 3000.0})
    assert ddp_benchmark.summarize([]) == {"mean_ms": None, "median_ms": None}


@pytest.mark.parametrize(
    ("numerator", "denominator", "expected"),
    [(2.0, 4.0, 0.5), (None, 4.0, None), (2.0, None, None), (2.0, 0.0, None)],
)
def test_ratio(numerator: float | None, denominator: float | None, expected: float | None) -> None:
    assert ddp_benchmark.ratio(numerator, denominator) == expected


@pytest.mark.parametrize(
    ("value", "goal", "expected"), [(1.0, 1.0, True), (1.001, 1.0, False), (1.09, 1.1, True), (None, 1.0, None)]
)
def test_verdict(value: float | None, goal: float, expected: bool | None) -> None:
    assert ddp_benchmark.verdict(value, goal) is expected


def _run(
    model: str, config: str, step_ms: float, error: str | None = None, round_index: int = 0
) -> ddp_benchmark.ConfigRun:
    times = {} if error else {0: [step_ms / 1e3] * 3, 1: [step_ms / 1e3] * 3}
    return ddp_benchmark.ConfigRun(model, config, round_index, times, None if error else 2.3, 1.0, error)


def test_model_rows_ratios_and_verdicts() -> None:
    runs = [
        _run("resnet18", "gloo", 100.0),
        _run("resnet18", "kaitian", 90.0),
        _run("resnet18", "kaitian-hetero", 108.0),
        _run("resnet18", "kaitian-hetero", 132.0, round_index=1),  # pooled: mean 120 ms
        _run("tiny", "gloo", 10.0),
        _run("tiny", "kaitian", 0.0, error="rank 1 exited with status 1"),
        _run("tiny", "kaitian-hetero", 10.0),
    ]
    resnet, tiny = ddp_benchmark.model_rows(runs)
    assert resnet["kaitian_over_gloo"] == pytest.approx(0.9)
    assert resnet["configs"]["kaitian-hetero"]["steps"] == 6
    assert resnet["configs"]["kaitian-hetero"]["round_medians_ms"] == pytest.approx([108.0, 132.0])
    assert resnet["hetero_over_homogeneous_mean"] == pytest.approx(120 / 90)
    assert (resnet["kaitian_le_gloo"], resnet["hetero_within_10pct"]) == (True, False)
    assert (tiny["kaitian_le_gloo"], tiny["hetero_within_10pct"]) == (None, None)
    document = ddp_benchmark.build_document(
        {"world_size": 2, "batch_size": 32, "steps": 3, "warmup": 1, "rounds": 2},
        runs,
        {"cpu": "test", "cpus": 2, "platform": "test", "torch": "x", "torchvision": "y"},
    )
    report = ddp_benchmark.render_markdown(document)
    assert "GENERATED" in report and "**NOT met**" in report and "**not measured**" in report
    assert "tiny / kaitian / round 0: rank 1 exited with status 1" in report
    assert "| 108.0 / 132.0 |" in report


def test_quick_run_end_to_end(tmp_path: Path) -> None:
    """Real ranks with each configuration, a tiny model and 2 steps: the JSON and markdown are well formed."""
    out = tmp_path / "report.md"
    command = [sys.executable, str(BENCH_DIR / "ddp_benchmark.py"), "--quick", "--steps", "2", "--json"]
    done = subprocess.run(command + ["--out", str(out)], capture_output=True, text=True, timeout=120, check=False)
    document = json.loads(done.stdout)
    assert done.returncode == 0, [run["error"] for run in document["runs"]]
    assert document["config"]["data"] == "generated"
    assert [(run["model"], run["config"]) for run in document["runs"]] == [
        ("tiny", "gloo"),
        ("tiny", "kaitian"),
        ("tiny", "kaitian-hetero"),
    ]
    for run in document["runs"]:
        assert run["error"] is None
        assert sorted(run["step_times"]) == ["0", "1"]  # JSON object keys
        assert all(len(times) == 2 and all(t > 0 for t in times) for times in run["step_times"].values())
    (row,) = document["rows"]
    for key in ("kaitian_over_gloo", "hetero_over_homogeneous"):
        assert row[key] > 0
    for key in ("kaitian_le_gloo", "hetero_within_10pct"):
        assert isinstance(row[key], bool)
    assert out.read_text(encoding="utf-8").startswith("# DDP training step time")
