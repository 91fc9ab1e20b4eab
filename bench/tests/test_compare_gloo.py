"""Tests of the benchmark scripts' logic, and end-to-end runs on tiny sizes (no speed thresholds)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import benchlib
import compare_gloo
import torch_collective

BENCH_DIR = Path(__file__).resolve().parent.parent

JSON_KEYS = {
    "collective",
    "size_bytes",
    "count",
    "dtype",
    "op",
    "ranks",
    "backend",
    "time_us",
    "algbw_gbps",
    "busbw_gbps",
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8", 8),
        ("1K", 1024),
        ("1k", 1024),
        ("64M", 64 << 20),
        ("2G", 2 << 30),
        ("4KB", 4096),
        ("16MiB", 16 << 20),
        (" 3 ", 3),
    ],
)
def test_parse_size(text: str, expected: int) -> None:
    assert benchlib.parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "abc", "1.5M", "-1", "10X", "M"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        benchlib.parse_size(text)


@pytest.mark.parametrize("nbytes", [1, 8, 1000, 1024, 3 << 10, 64 << 20, 1 << 30])
def test_format_size_round_trips(nbytes: int) -> None:
    assert benchlib.parse_size(benchlib.format_size(nbytes)) == nbytes


def test_format_size_suffixes() -> None:
    assert benchlib.format_size(64 << 20) == "64M"
    assert benchlib.format_size(3 << 10) == "3K"
    assert benchlib.format_size(1 << 30) == "1G"
    assert benchlib.format_size(1536) == "1536"


def test_size_label() -> None:
    assert benchlib.size_label(8) == "8 B"
    assert benchlib.size_label(1024) == "1 KiB"
    assert benchlib.size_label(64 << 20) == "64 MiB"


def test_size_range() -> None:
    assert benchlib.size_range(8, 64) == [8, 16, 32, 64]
    assert benchlib.size_range(8, 100) == [8, 16, 32, 64]
    assert benchlib.size_range(5, 5) == [5]
    assert len(benchlib.size_range(8, 64 << 20)) == 24
    with pytest.raises(ValueError):
        benchlib.size_range(0, 8)
    with pytest.raises(ValueError):
        benchlib.size_range(16, 8)


@pytest.mark.parametrize(
    ("collective", "ranks", "factor"),
    [
        ("allreduce", 1, 0.0),
        ("allreduce", 2, 1.0),
        ("allreduce", 4, 1.5),
        ("allgather", 4, 0.75),
        ("reduce_scatter", 2, 0.5),
        ("alltoall", 8, 0.875),
        ("broadcast", 8, 1.0),
        ("reduce", 3, 1.0),
    ],
)
def test_busbw_factor(collective: str, ranks: int, factor: float) -> None:
    assert benchlib.busbw_factor(collective, ranks) == pytest.approx(factor)


def test_busbw_factor_rejects() -> None:
    with pytest.raises(ValueError):
        benchlib.busbw_factor("gather", 2)
    with pytest.raises(ValueError):
        benchlib.busbw_factor("allreduce", 0)


def test_bandwidths() -> None:
    algbw, busbw = benchlib.bandwidths("allreduce", 1_000_000_000, 4, 1e6)
    assert algbw == pytest.approx(1.0)
    assert busbw == pytest.approx(1.5)
    with pytest.raises(ValueError):
        benchlib.bandwidths("allreduce", 8, 2, 0.0)


def test_parse_json_lines_ignores_non_json_lines() -> None:
    text = "\n".join(
        [
            "# allreduce, 2 ranks",
            '  {"collective": "allreduce", "size_bytes": 8, "time_us": 3.5}',
            "",
            "progress: 50%",
            '{"collective": "allreduce", "size_bytes": 16, "time_us": 4.0}',
        ]
    )
    records = benchlib.parse_json_lines(text)
    assert [record["size_bytes"] for record in records] == [8, 16]


@pytest.mark.parametrize("line", ['{"collective": ', "{1, 2}"])
def test_parse_json_lines_rejects_malformed(line: str) -> None:
    with pytest.raises(ValueError):
        benchlib.parse_json_lines(line)


def test_by_size_filters_collective_and_untimed_records() -> None:
    records: list[dict[str, Any]] = [
        {"collective": "allreduce", "size_bytes": 8, "time_us": 1.0},
        {"collective": "broadcast", "size_bytes": 8, "time_us": 2.0},
        {"collective": "allreduce", "unsupported": "no"},
    ]
    assert benchlib.by_size(records, "allreduce") == {8: records[0]}


def test_torch_collective_helpers() -> None:
    assert torch_collective.canonical_dtype("float") == "float32"
    assert torch_collective.canonical_dtype("BFLOAT16") == "bfloat16"
    with pytest.raises(ValueError):
        torch_collective.canonical_dtype("complex64")
    assert torch_collective.reduced_value("sum", 4) == 10
    assert torch_collective.reduced_value("prod", 4) == 24
    assert torch_collective.reduced_value("min", 4) == 1
    assert torch_collective.reduced_value("max", 4) == 4
    assert torch_collective.reduced_value("avg", 4) == 2.5
    assert torch_collective.element_count("allreduce", 8, 4, 3) == 2
    assert torch_collective.element_count("allgather", 8, 4, 3) == 0
    assert torch_collective.element_count("alltoall", 40, 4, 3) == 9
    assert torch_collective.element_count("broadcast", 2, 4, 2) == 0
    assert torch_collective.parse_collectives("all") == benchlib.COLLECTIVES
    assert torch_collective.parse_collectives("allreduce, alltoall") == ("allreduce", "alltoall")
    with pytest.raises(ValueError):
        torch_collective.parse_collectives("allreduce,gather")


def test_torch_collective_args() -> None:
    args = torch_collective.parse_args(["-b", "1K", "-e", "4K", "--dtype", "half"])
    assert args.sizes == (1024, 2048, 4096)
    assert args.dtype == "float16"
    with pytest.raises(SystemExit):
        torch_collective.parse_args(["--root", "2", "--ranks", "2"])


def test_kaitian_command_follows_the_contract() -> None:
    command = compare_gloo.kaitian_command(Path("kaitian"), "shm", 64 << 20, 10, 2)
    assert command[:3] == ["kaitian", "bench", "allreduce"]
    flags = dict(zip(command[3:-1:2], command[4:-1:2], strict=True))
    assert flags["--ranks"] == "2"
    assert flags["--min-bytes"] == "8"
    assert flags["--max-bytes"] == "64M"
    assert flags["--dtype"] == "float32"
    assert flags["--op"] == "sum"
    assert flags["--transport"] == "shm"
    assert command[-1] == "--json"


def record(size: int, time_us: float, busbw: float, wrong: int = 0) -> dict[str, Any]:
    return {"collective": "allreduce", "size_bytes": size, "time_us": time_us, "busbw_gbps": busbw, "wrong": wrong}


BIG = 64 << 20


def rows_for(shm: list[dict[str, Any]], tcp: list[dict[str, Any]], gloo: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return compare_gloo.compare_rows(
        benchlib.by_size(shm, "allreduce"), benchlib.by_size(tcp, "allreduce"), benchlib.by_size(gloo, "allreduce")
    )


def test_compare_rows_ratios_and_gaps() -> None:
    rows = rows_for([record(8, 10.0, 0.001)], [], [record(8, 40.0, 0.0002), record(16, 50.0, 0.0003)])
    assert [row["size_bytes"] for row in rows] == [8, 16]
    assert rows[0]["gloo_over_shm_time"] == pytest.approx(4.0)
    assert rows[0]["shm_over_gloo_busbw"] == pytest.approx(5.0)
    assert rows[0]["tcp_time_us"] is None
    assert rows[0]["gloo_over_tcp_time"] is None
    assert rows[1]["shm_time_us"] is None
    assert compare_gloo.ratio(1.0, 0.0) is None


def verdicts(rows: list[dict[str, Any]], over_memcpy: float | None, over_iperf3: float | None) -> list[bool | None]:
    return [goal.met for goal in compare_gloo.evaluate_goals(rows, over_memcpy, over_iperf3)]


def test_goals_met() -> None:
    rows = rows_for(
        [record(8, 10.0, 0.0), record(BIG, 1000.0, 6.0)],
        [record(8, 50.0, 0.0), record(BIG, 5000.0, 3.0)],
        [record(8, 30.0, 0.0), record(BIG, 6000.0, 2.0)],
    )
    assert verdicts(rows, 0.5, 0.8) == [True, True, True]


def test_goals_not_met() -> None:
    rows = rows_for(
        [record(8, 10.1, 0.0), record(BIG, 1000.0, 5.9)],
        [record(BIG, 5000.0, 2.99)],
        [record(8, 30.0, 0.0), record(BIG, 6000.0, 2.0)],
    )
    assert verdicts(rows, 0.49, 0.9) == [False, False, False]


def test_goal_three_needs_both_iperf3_and_gloo() -> None:
    rows = rows_for([], [record(BIG, 5000.0, 3.0)], [record(BIG, 6000.0, 2.0)])
    assert verdicts(rows, None, 0.79)[2] is False
    assert verdicts(rows, None, 0.8)[2] is True
    assert verdicts(rows, None, None)[2] is None


def test_goals_fail_on_wrong_results() -> None:
    rows = rows_for(
        [record(8, 1.0, 0.0, wrong=1), record(BIG, 1000.0, 60.0, wrong=3)],
        [record(BIG, 1000.0, 60.0, wrong=2)],
        [record(8, 30.0, 0.0), record(BIG, 6000.0, 2.0)],
    )
    goals = compare_gloo.evaluate_goals(rows, 5.0, 5.0)
    assert [goal.met for goal in goals] == [False, False, False]
    assert "wrong" in goals[0].detail


def test_goals_not_measured() -> None:
    rows = rows_for([record(8, 1.0, 0.0)], [], [])
    assert verdicts(rows, None, None) == [None, True, None]


def test_medians_and_ratios_are_taken_per_round() -> None:
    """Rows are per-size medians over rounds; a ratio to a yardstick is taken within each round."""
    rounds = [[record(BIG, 100.0, 4.0)], [record(BIG, 300.0, 2.0)], [record(BIG, 200.0, 3.0, wrong=2)]]
    merged = compare_gloo.median_by_size(rounds)[BIG]
    assert (merged["time_us"], merged["busbw_gbps"], merged["wrong"]) == (200.0, 3.0, 2)
    # memcpy was fast in round 1 and slow in round 2: each round's ratio uses its own memcpy.
    ratios = compare_gloo.round_ratios(rounds, [8.0, 4.0, None], BIG)
    assert ratios == [0.5, 0.5]
    assert compare_gloo.spread(ratios) == {"median": 0.5, "min": 0.5, "max": 0.5}
    assert compare_gloo.spread([]) is None


def test_render_markdown() -> None:
    rows = rows_for([record(8, 10.0, 0.0)], [], [record(8, 40.0, 0.0)])
    document = {
        "date": "2026-01-01T00:00:00+00:00",
        "machine": {"cpu": "cpu", "cpus": 2, "platform": "linux", "torch": "2"},
        "config": {"ranks": 2, "dtype": "float32", "op": "sum", "iters": 5, "warmup": 1, "rounds": 2},
        "yardsticks": {"memcpy": {"median": 10.0, "min": 9.0, "max": 11.0}, "iperf3": None},
        "ratios": {"shm_over_memcpy": {"median": 0.4, "min": 0.3, "max": 0.5}, "tcp_over_iperf3": None},
        "runs": [{"kaitian_tcp": {"error": None}}, {"kaitian_tcp": {"error": "exited with status 1"}}],
        "rows": rows,
        "goals": [
            {"name": goal.name, "met": goal.met, "detail": goal.detail}
            for goal in compare_gloo.evaluate_goals(rows, None, None)
        ],
    }
    report = compare_gloo.render_markdown(document)
    assert "| 8 | 10.00 |" in report
    assert "memcpy 64 MiB: median 10.000 GB/s (9.000-11.000)" in report
    assert "shm busbw / memcpy, per round: median 0.40 (0.30-0.50)" in report
    assert "**met**" in report
    assert "**not measured**" in report
    assert "round 2 kaitian_tcp: exited with status 1" in report


def run_script(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=timeout, check=False, cwd=BENCH_DIR.parent
    )


def test_torch_collective_end_to_end() -> None:
    done = run_script(
        [
            str(BENCH_DIR / "torch_collective.py"),
            "-n",
            "2",
            "-c",
            "all",
            "-b",
            "8",
            "-e",
            "1K",
            "-w",
            "1",
            "-i",
            "3",
            "--json",
        ]
    )
    assert done.returncode == 0, done.stderr
    records = benchlib.parse_json_lines(done.stdout)
    assert {record["collective"] for record in records} == set(benchlib.COLLECTIVES)
    for line in done.stdout.splitlines():
        assert isinstance(json.loads(line), dict)
    for result in records:
        if "unsupported" in result:
            continue
        assert JSON_KEYS <= result.keys()
        assert result["backend"] == "gloo"
        assert result["ranks"] == 2
        assert result["dtype"] == "float32"
        assert result["time_us"] > 0
        assert result["algbw_gbps"] >= 0
        assert result["wrong"] == 0
        assert 8 <= result["size_bytes"] <= 1024
        assert result["size_bytes"] == result["count"] * 4
    allreduce = benchlib.by_size(records, "allreduce")
    assert sorted(allreduce) == benchlib.size_range(8, 1024)


def test_memcpy_end_to_end() -> None:
    done = run_script([str(BENCH_DIR / "torch_collective.py"), "--memcpy", "--max-bytes", "1M", "--json"])
    assert done.returncode == 0, done.stderr
    (result,) = benchlib.parse_json_lines(done.stdout)
    assert result["benchmark"] == "memcpy"
    assert result["size_bytes"] == 1 << 20
    assert result["best_gbps"] >= result["mean_gbps"] > 0


FAKE_KAITIAN = """
import json, sys
args = dict(zip(sys.argv[3::2], sys.argv[4::2]))
assert sys.argv[1:3] == ["bench", "allreduce"] and sys.argv[-1] == "--json", sys.argv
print("starting", args["--transport"], file=sys.stderr)
print("# table header that must be ignored")
size = int(args["--min-bytes"])
while size <= 1 << 20:
    print(json.dumps({"collective": "allreduce", "size_bytes": size, "count": size // 4, "dtype": "float32",
        "op": "sum", "root": -1, "ranks": 2, "transport": args["--transport"], "time_us": 5.0,
        "algbw_gbps": size / 5e3, "busbw_gbps": size / 5e3, "wrong": 0, "inplace_time_us": 5.0,
        "inplace_algbw_gbps": size / 5e3, "inplace_busbw_gbps": size / 5e3, "inplace_wrong": 0}))
    size *= 2
"""


def test_compare_gloo_end_to_end_with_fake_kaitian(tmp_path: Path) -> None:
    fake = tmp_path / "kaitian"
    fake.write_text(f"#!{sys.executable}\n{FAKE_KAITIAN}", encoding="utf-8")
    fake.chmod(0o755)
    out = tmp_path / "report.md"
    done = run_script(
        [
            str(BENCH_DIR / "compare_gloo.py"),
            "--quick",
            "--iters",
            "2",
            "--kaitian",
            str(fake),
            "--json",
            "--out",
            str(out),
        ]
    )
    assert done.returncode == 0, done.stderr + done.stdout
    document = json.loads(done.stdout)
    assert [row["size_bytes"] for row in document["rows"]] == benchlib.size_range(8, 1 << 20)
    assert all(row["gloo_time_us"] > 0 and row["shm_time_us"] == 5.0 for row in document["rows"])
    assert document["yardsticks"]["memcpy"]["median"] > 0
    assert document["yardsticks"]["iperf3"]["median"] > 0
    assert document["yardsticks"]["iperf3_bidir"]["median"] > 0
    assert all(run["iperf3_bidir"]["records"][0]["bidirectional"] for run in document["runs"])
    # The fake kaitian stops at 1 MiB: the 64 MiB goals are not measured, the 8 B one is.
    assert [goal["met"] is None for goal in document["goals"]] == [True, False, True]
    assert "## Verdict" in out.read_text(encoding="utf-8")


def test_compare_gloo_reports_missing_kaitian(tmp_path: Path) -> None:
    done = run_script(
        [str(BENCH_DIR / "compare_gloo.py"), "--quick", "--iters", "1", "--kaitian", str(tmp_path / "missing")]
    )
    assert done.returncode == 1
    assert "## Errors" in done.stdout
    assert "kaitian_shm" in done.stdout


def test_iperf3_error_reads_the_json_document_as_well_as_the_status() -> None:
    refused = '{"start": {}, "intervals": [], "end": {}, "error": "unable to connect to server: Connection refused"}'
    # iperf3 3.12 exits 0 with -J when it cannot connect: the error is only in the document.
    assert compare_gloo._iperf3_error(subprocess.CompletedProcess([], 0, refused, "")) == (
        "unable to connect to server: Connection refused"
    )
    assert "status 1" in str(compare_gloo._iperf3_error(subprocess.CompletedProcess([], 1, "garbage", "boom")))
    fine = '{"end": {"sum_received": {"bits_per_second": 8e9}}}'
    assert compare_gloo._iperf3_error(subprocess.CompletedProcess([], 0, fine, "")) is None
