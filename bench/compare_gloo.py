"""Head-to-head allreduce benchmark: Kaitian (shm and tcp transports) against torch gloo.

In one invocation on this machine it measures

1. memcpy bandwidth of a 64 MiB buffer (the machine's yardstick),
2. ``kaitian bench allreduce --transport shm``,
3. ``kaitian bench allreduce --transport tcp``,
4. torch.distributed gloo allreduce (``torch_collective.py``),

all with 2 ranks, float32, sum, sizes 8 B to 64 MiB (1 MiB with ``--quick``),
then prints per-size times, bus bandwidths and ratios, and a verdict on the
project's three performance goals:

1. at 64 MiB, shm busbw >= 3x gloo's and >= 0.25x memcpy bandwidth;
2. at 8 B, shm time <= 1/3 of gloo's;
3. at 64 MiB, tcp busbw >= gloo's.

Output is markdown (also saved with ``--out FILE``), or with ``--json`` the
whole comparison as one JSON document. Exits 1 if a measurement failed to run.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchlib import by_size, format_size, parse_json_lines, size_label, table_cell, verdict_word

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
DEFAULT_KAITIAN = REPO_ROOT / ".build" / "release" / "kaitian"

RANKS = 2
DTYPE = "float32"
OP = "sum"
MIN_BYTES = 8
MAX_BYTES = 64 << 20
QUICK_MAX_BYTES = 1 << 20
MEMCPY_BYTES = 64 << 20

# The project's goals, and the only thresholds in this script.
BANDWIDTH_GOAL_BYTES = 64 << 20
LATENCY_GOAL_BYTES = 8
SHM_OVER_GLOO_BUSBW = 3.0
SHM_OVER_MEMCPY = 0.25
SHM_LATENCY_FRACTION_OF_GLOO = 1 / 3
TCP_OVER_GLOO_BUSBW = 1.0


@dataclass(frozen=True)
class Goal:
    """One performance goal: ``met`` is None when its inputs were not measured."""

    name: str
    met: bool | None
    detail: str


@dataclass(frozen=True)
class Run:
    """One benchmark command and what it produced."""

    command: list[str]
    records: list[dict[str, Any]]
    error: str | None


def kaitian_command(binary: Path, transport: str, max_bytes: int, iters: int, warmup: int) -> list[str]:
    return [
        str(binary),
        "bench",
        "allreduce",
        "--ranks",
        str(RANKS),
        "--min-bytes",
        str(MIN_BYTES),
        "--max-bytes",
        format_size(max_bytes),
        "--dtype",
        DTYPE,
        "--op",
        OP,
        "--transport",
        transport,
        "--iters",
        str(iters),
        "--warmup",
        str(warmup),
        "--json",
    ]


def gloo_command(python: str, max_bytes: int, iters: int, warmup: int) -> list[str]:
    return [
        python,
        str(BENCH_DIR / "torch_collective.py"),
        "--collectives",
        "allreduce",
        "--ranks",
        str(RANKS),
        "--min-bytes",
        str(MIN_BYTES),
        "--max-bytes",
        format_size(max_bytes),
        "--dtype",
        DTYPE,
        "--op",
        OP,
        "--iters",
        str(iters),
        "--warmup",
        str(warmup),
        "--json",
    ]


def memcpy_command(python: str) -> list[str]:
    return [
        python,
        str(BENCH_DIR / "torch_collective.py"),
        "--memcpy",
        "--max-bytes",
        format_size(MEMCPY_BYTES),
        "--json",
    ]


def run_json(command: list[str], timeout_s: float) -> Run:
    """Run a benchmark printing JSON lines; its stderr passes through as progress."""
    print(f"==> {' '.join(command)}", file=sys.stderr, flush=True)
    try:
        done = subprocess.run(command, stdout=subprocess.PIPE, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        return Run(command, [], str(error))
    try:
        records = parse_json_lines(done.stdout)
    except ValueError as error:
        return Run(command, [], f"unparsable output: {error}")
    if done.returncode != 0:
        return Run(command, records, f"exited with status {done.returncode}")
    if not records:
        return Run(command, records, "printed no JSON results")
    return Run(command, records, None)


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def compare_rows(
    shm: dict[int, dict[str, Any]], tcp: dict[int, dict[str, Any]], gloo: dict[int, dict[str, Any]]
) -> list[dict[str, Any]]:
    """One row per size measured by any run, with times, busbw and ratios (None if missing)."""
    rows = []
    for size in sorted(set(shm) | set(tcp) | set(gloo)):
        row: dict[str, Any] = {"size_bytes": size}
        for name, records in (("shm", shm), ("tcp", tcp), ("gloo", gloo)):
            record = records.get(size, {})
            row[f"{name}_time_us"] = record.get("time_us")
            row[f"{name}_busbw_gbps"] = record.get("busbw_gbps")
            if name != "gloo":
                row[f"{name}_wrong"] = record.get("wrong")
        for name in ("shm", "tcp"):
            row[f"gloo_over_{name}_time"] = ratio(row["gloo_time_us"], row[f"{name}_time_us"])
            row[f"{name}_over_gloo_busbw"] = ratio(row[f"{name}_busbw_gbps"], row["gloo_busbw_gbps"])
        rows.append(row)
    return rows


def _row(rows: list[dict[str, Any]], size: int) -> dict[str, Any]:
    return next((row for row in rows if row["size_bytes"] == size), {})


def _missing(row: dict[str, Any], keys: Sequence[str]) -> list[str]:
    return [key for key in keys if row.get(key) is None]


def _wrong(row: dict[str, Any], transport: str) -> str | None:
    wrong = row.get(f"{transport}_wrong")
    return f"kaitian {transport} reported {wrong} wrong elements" if wrong else None


def evaluate_goals(rows: list[dict[str, Any]], memcpy_gbps: float | None) -> list[Goal]:
    """The verdict on the three goals from comparison rows and memcpy bandwidth."""
    big = _row(rows, BANDWIDTH_GOAL_BYTES)
    small = _row(rows, LATENCY_GOAL_BYTES)
    big_label = size_label(BANDWIDTH_GOAL_BYTES)
    goals = []

    name = f"1. {big_label} shm busbw >= {SHM_OVER_GLOO_BUSBW:g}x gloo and >= {SHM_OVER_MEMCPY:g}x memcpy bandwidth"
    missing = _missing(big, ["shm_busbw_gbps", "gloo_busbw_gbps"]) + ([] if memcpy_gbps else ["memcpy_gbps"])
    if missing or memcpy_gbps is None:
        goals.append(Goal(name, None, f"not measured: {', '.join(missing)}"))
    else:
        shm, gloo = big["shm_busbw_gbps"], big["gloo_busbw_gbps"]
        wrong = _wrong(big, "shm")
        met = shm >= SHM_OVER_GLOO_BUSBW * gloo and shm >= SHM_OVER_MEMCPY * memcpy_gbps and wrong is None
        detail = (
            f"shm {shm:.3f} GB/s, gloo {gloo:.3f} GB/s ({shm / gloo:.2f}x, need {SHM_OVER_GLOO_BUSBW:g}x), "
            f"memcpy {memcpy_gbps:.3f} GB/s ({shm / memcpy_gbps:.2f}x, need {SHM_OVER_MEMCPY:g}x)"
        )
        goals.append(Goal(name, met, detail + (f"; {wrong}" if wrong else "")))

    name = f"2. {size_label(LATENCY_GOAL_BYTES)} shm time <= 1/{1 / SHM_LATENCY_FRACTION_OF_GLOO:g} of gloo's"
    missing = _missing(small, ["shm_time_us", "gloo_time_us"])
    if missing:
        goals.append(Goal(name, None, f"not measured: {', '.join(missing)}"))
    else:
        shm, gloo = small["shm_time_us"], small["gloo_time_us"]
        wrong = _wrong(small, "shm")
        met = shm <= SHM_LATENCY_FRACTION_OF_GLOO * gloo and wrong is None
        detail = (
            f"shm {shm:.2f} us, gloo {gloo:.2f} us"
            f" (gloo/shm {gloo / shm:.2f}x, need {1 / SHM_LATENCY_FRACTION_OF_GLOO:g}x)"
        )
        goals.append(Goal(name, met, detail + (f"; {wrong}" if wrong else "")))

    name = f"3. {big_label} tcp busbw >= gloo's"
    missing = _missing(big, ["tcp_busbw_gbps", "gloo_busbw_gbps"])
    if missing:
        goals.append(Goal(name, None, f"not measured: {', '.join(missing)}"))
    else:
        tcp, gloo = big["tcp_busbw_gbps"], big["gloo_busbw_gbps"]
        wrong = _wrong(big, "tcp")
        met = tcp >= TCP_OVER_GLOO_BUSBW * gloo and wrong is None
        detail = f"tcp {tcp:.3f} GB/s, gloo {gloo:.3f} GB/s ({tcp / gloo:.2f}x)"
        goals.append(Goal(name, met, detail + (f"; {wrong}" if wrong else "")))
    return goals


def render_markdown(document: dict[str, Any]) -> str:
    """The comparison as a markdown report."""
    config, machine, memcpy = document["config"], document["machine"], document["memcpy"]
    lines = [
        f"# Kaitian vs gloo: allreduce, {config['ranks']} ranks, {config['dtype']} {config['op']}",
        "",
        f"- date: {document['date']}",
        f"- machine: {machine['cpu']}, {machine['cpus']} CPUs, {machine['platform']}",
        f"- torch: {machine['torch']}; iters {config['iters']}, warmup {config['warmup']}",
        "- time: mean per-iteration time (max over ranks); busbw as in nccl-tests (allreduce: algbw x 2(n-1)/n)",
    ]
    if memcpy.get("best_gbps") is not None:
        lines.append(
            f"- memcpy {size_label(memcpy['size_bytes'])}: best {memcpy['best_gbps']:.3f} GB/s,"
            f" mean {memcpy['mean_gbps']:.3f} GB/s"
        )
    lines += [
        "",
        "| size (B) | shm time (us) | shm busbw (GB/s) | tcp time (us) | tcp busbw (GB/s) "
        "| gloo time (us) | gloo busbw (GB/s) | gloo/shm time | shm/gloo busbw | gloo/tcp time | tcp/gloo busbw |",
        "|" + "---:|" * 11,
    ]
    for row in document["rows"]:
        cells = [
            str(row["size_bytes"]),
            table_cell(row["shm_time_us"], 2),
            table_cell(row["shm_busbw_gbps"], 3),
            table_cell(row["tcp_time_us"], 2),
            table_cell(row["tcp_busbw_gbps"], 3),
            table_cell(row["gloo_time_us"], 2),
            table_cell(row["gloo_busbw_gbps"], 3),
            table_cell(row["gloo_over_shm_time"], 2),
            table_cell(row["shm_over_gloo_busbw"], 2),
            table_cell(row["gloo_over_tcp_time"], 2),
            table_cell(row["tcp_over_gloo_busbw"], 2),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Verdict", ""]
    lines += [f"- {goal['name']}: **{verdict_word(goal['met'])}** ({goal['detail']})" for goal in document["goals"]]
    errors = [(name, run["error"]) for name, run in document["runs"].items() if run["error"]]
    if errors:
        lines += ["", "## Errors", ""] + [f"- {name}: {error}" for name, error in errors]
    return "\n".join(lines) + "\n"


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), cpu)
    except OSError:
        pass
    try:
        torch_version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        torch_version = "not installed"
    return {"cpu": cpu, "cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch_version}


def build_document(
    config: dict[str, Any], memcpy: Run, runs: dict[str, Run], machine: dict[str, Any]
) -> dict[str, Any]:
    """Assemble the full comparison (rows and verdict) from the runs' records."""
    memcpy_record = memcpy.records[0] if memcpy.records else {}
    rows = compare_rows(
        by_size(runs["kaitian_shm"].records, "allreduce"),
        by_size(runs["kaitian_tcp"].records, "allreduce"),
        by_size(runs["gloo"].records, "allreduce"),
    )
    goals = evaluate_goals(rows, memcpy_record.get("best_gbps"))
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine,
        "config": config,
        "memcpy": memcpy_record | {"command": memcpy.command, "error": memcpy.error},
        "runs": {name: asdict(run) for name, run in runs.items()},
        "rows": rows,
        "goals": [asdict(goal) for goal in goals],
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kaitian", type=Path, default=DEFAULT_KAITIAN, help="kaitian binary (release build)")
    parser.add_argument("--python", default=sys.executable, help="python with torch for the gloo side")
    parser.add_argument("--iters", type=int, help="timed iterations per size (default 50, quick 5)")
    parser.add_argument("--warmup", type=int, help="untimed iterations per size (default 5, quick 1)")
    parser.add_argument("--quick", action="store_true", help="smoke test: few iterations, sizes up to 1 MiB")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds allowed per benchmark run")
    parser.add_argument("--json", action="store_true", help="print the comparison as one JSON document")
    parser.add_argument("--out", type=Path, help="also save the markdown report to this file")
    args = parser.parse_args(argv)
    if args.iters is None:
        args.iters = 5 if args.quick else 50
    if args.warmup is None:
        args.warmup = 1 if args.quick else 5
    if args.iters < 1 or args.warmup < 0:
        parser.error("need --iters >= 1 and --warmup >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    max_bytes = QUICK_MAX_BYTES if args.quick else MAX_BYTES
    config = {
        "ranks": RANKS,
        "dtype": DTYPE,
        "op": OP,
        "min_bytes": MIN_BYTES,
        "max_bytes": max_bytes,
        "iters": args.iters,
        "warmup": args.warmup,
        "quick": args.quick,
    }
    memcpy = run_json(memcpy_command(args.python), args.timeout)
    runs = {
        f"kaitian_{transport}": run_json(
            kaitian_command(args.kaitian, transport, max_bytes, args.iters, args.warmup), args.timeout
        )
        for transport in ("shm", "tcp")
    }
    runs["gloo"] = run_json(gloo_command(args.python, max_bytes, args.iters, args.warmup), args.timeout)
    document = build_document(config, memcpy, runs, machine_info())
    report = render_markdown(document)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report, encoding="utf-8")
    sys.stdout.write(json.dumps(document, indent=2) + "\n" if args.json else report)
    failed = memcpy.error is not None or any(run.error is not None for run in runs.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
