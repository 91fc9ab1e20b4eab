"""Head-to-head allreduce benchmark: Kaitian (shm and tcp transports) against torch gloo.

In one invocation on this machine it measures, in ``--rounds`` alternated rounds (default 3),

1. memcpy bandwidth of a 64 MiB buffer (the machine's yardstick for shared memory),
2. ``kaitian bench allreduce --transport shm``,
3. ``kaitian bench allreduce --transport tcp``,
4. torch.distributed gloo allreduce (``torch_collective.py``),
5. iperf3, one stream over loopback (the yardstick for TCP), and one stream each way at once
   (``--bidir``: what each of two ranks can send while it also receives, as an allreduce does),

all with 2 ranks, float32, sum, sizes 8 B to 64 MiB (1 MiB with ``--quick``). Why rounds: this
machine's memory bandwidth drifts (memcpy at 64 MiB measured 6.1 to 11.9 GB/s in one day), so a
ratio is only meaningful between runs taken close together; each round's ratios are taken within
the round, and the report shows their median and spread. Per size, times and bandwidths are the
medians over rounds. Then the verdict on the engine's goals (issue 12):

1. at 64 MiB, shm busbw >= 0.5x memcpy bandwidth (median of the rounds' ratios);
2. at 8 B, shm time <= 10 us (median);
3. at 64 MiB, tcp busbw >= 0.8x iperf3's single stream (median of the rounds' ratios) and
   >= 1.5x gloo's.

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
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchlib import by_size, format_size, free_port, parse_json_lines, size_label, table_cell, verdict_word

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

IPERF3_SECONDS = 2

# The engine's goals (issue 12), and the only thresholds in this script.
BANDWIDTH_GOAL_BYTES = 64 << 20
LATENCY_GOAL_BYTES = 8
SHM_OVER_MEMCPY = 0.5
SHM_LATENCY_US = 10.0
TCP_OVER_IPERF3 = 0.8
TCP_OVER_GLOO_BUSBW = 1.5


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


def measure_iperf3(seconds: int = IPERF3_SECONDS, bidirectional: bool = False) -> Run:
    """One iperf3 stream over loopback for `seconds`: a record with ``gbps`` (GB/s, 1e9 bytes).

    With `bidirectional`, one stream each way at the same time (``--bidir``), and ``gbps`` is the
    mean of the two directions: on 2 cores the two directions share the CPUs that copy the bytes,
    as the two ranks of an allreduce do, each sending while it receives.
    """
    binary = shutil.which("iperf3")
    if binary is None:
        return Run(["iperf3"], [], "iperf3 is not installed (scripts/setup.sh installs it)")
    port = str(free_port())
    server_command = [binary, "-s", "-1", "-B", "127.0.0.1", "-p", port]
    command = [binary, "-c", "127.0.0.1", "-p", port, "-t", str(seconds), "-J"] + (["--bidir"] if bidirectional else [])
    print(f"==> {' '.join(command)}", file=sys.stderr, flush=True)
    server = subprocess.Popen(server_command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # The server listens within milliseconds; the client retries until then. iperf3 3.12 with -J
        # exits 0 when it cannot connect, and says so only in the document's "error".
        for _ in range(100):
            done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 30, check=False)
            error = _iperf3_error(done)
            if error is None or "refused" not in error:
                break
            time.sleep(0.05)
        if error is not None:
            return Run(command, [], f"iperf3 failed: {error}")
        end = json.loads(done.stdout)["end"]
        directions = ["sum_received", "sum_received_bidir_reverse"] if bidirectional else ["sum_received"]
        bits = statistics.fmean(end[direction]["bits_per_second"] for direction in directions)
        record = {"benchmark": "iperf3", "streams": 1, "bidirectional": bidirectional, "gbps": bits / 8e9}
        return Run(command, [record], None)
    except (OSError, subprocess.TimeoutExpired, ValueError, KeyError) as error:
        return Run(command, [], str(error))
    finally:
        server.kill()
        server.wait()


def _iperf3_error(done: subprocess.CompletedProcess[str]) -> str | None:
    """What went wrong in one iperf3 client run (its exit status or its JSON's "error"), or None."""
    try:
        document = json.loads(done.stdout)
    except ValueError:
        document = {}
    error = document.get("error") if isinstance(document, dict) else None
    if error:
        return str(error)
    if done.returncode != 0:
        return f"exited with status {done.returncode}: {(done.stdout + done.stderr)[-300:]}"
    return None


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


def median_by_size(rounds: Sequence[Sequence[dict[str, Any]]]) -> dict[int, dict[str, Any]]:
    """Per size, the median time and busbw over the rounds' allreduce records (wrong: the most)."""
    merged: dict[int, list[dict[str, Any]]] = {}
    for records in rounds:
        for size, record in by_size(records, "allreduce").items():
            merged.setdefault(size, []).append(record)
    result = {}
    for size, records in merged.items():
        wrong = [r["wrong"] for r in records if r.get("wrong") is not None]
        result[size] = {
            "time_us": statistics.median(r["time_us"] for r in records),
            "busbw_gbps": statistics.median(r["busbw_gbps"] for r in records),
            "wrong": max(wrong) if wrong else None,
        }
    return result


def round_ratios(
    numerators: Sequence[Sequence[dict[str, Any]]], denominators: Sequence[float | None], size: int
) -> list[float]:
    """Each round's busbw at `size` over that round's yardstick (memcpy or iperf3)."""
    ratios = []
    for records, yardstick in zip(numerators, denominators, strict=True):
        record = by_size(records, "allreduce").get(size)
        if record is not None and yardstick:
            ratios.append(record["busbw_gbps"] / yardstick)
    return ratios


def spread(values: Sequence[float]) -> dict[str, float] | None:
    """Median, min and max, or None without values."""
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


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


def evaluate_goals(
    rows: list[dict[str, Any]], shm_over_memcpy: float | None, tcp_over_iperf3: float | None
) -> list[Goal]:
    """The verdict on the goals from the median rows and the median per-round ratios."""
    big = _row(rows, BANDWIDTH_GOAL_BYTES)
    small = _row(rows, LATENCY_GOAL_BYTES)
    big_label = size_label(BANDWIDTH_GOAL_BYTES)
    goals = []

    name = f"1. {big_label} shm busbw >= {SHM_OVER_MEMCPY:g}x memcpy bandwidth"
    missing = _missing(big, ["shm_busbw_gbps"]) + ([] if shm_over_memcpy is not None else ["memcpy"])
    if missing or shm_over_memcpy is None:
        goals.append(Goal(name, None, f"not measured: {', '.join(missing)}"))
    else:
        wrong = _wrong(big, "shm")
        met = shm_over_memcpy >= SHM_OVER_MEMCPY and wrong is None
        detail = f"shm {big['shm_busbw_gbps']:.3f} GB/s, {shm_over_memcpy:.2f}x memcpy (median of rounds)"
        goals.append(Goal(name, met, detail + (f"; {wrong}" if wrong else "")))

    name = f"2. {size_label(LATENCY_GOAL_BYTES)} shm time <= {SHM_LATENCY_US:g} us"
    missing = _missing(small, ["shm_time_us"])
    if missing:
        goals.append(Goal(name, None, f"not measured: {', '.join(missing)}"))
    else:
        shm = small["shm_time_us"]
        wrong = _wrong(small, "shm")
        met = shm <= SHM_LATENCY_US and wrong is None
        gloo = small.get("gloo_time_us")
        detail = f"shm {shm:.2f} us" + (f", gloo {gloo:.2f} us" if gloo else "")
        goals.append(Goal(name, met, detail + (f"; {wrong}" if wrong else "")))

    name = f"3. {big_label} tcp busbw >= {TCP_OVER_IPERF3:g}x iperf3 (one stream) and >= {TCP_OVER_GLOO_BUSBW:g}x gloo"
    missing = _missing(big, ["tcp_busbw_gbps", "gloo_busbw_gbps"]) + ([] if tcp_over_iperf3 is not None else ["iperf3"])
    if missing or tcp_over_iperf3 is None:
        goals.append(Goal(name, None, f"not measured: {', '.join(missing)}"))
    else:
        tcp, gloo = big["tcp_busbw_gbps"], big["gloo_busbw_gbps"]
        wrong = _wrong(big, "tcp")
        met = tcp_over_iperf3 >= TCP_OVER_IPERF3 and tcp >= TCP_OVER_GLOO_BUSBW * gloo and wrong is None
        detail = (
            f"tcp {tcp:.3f} GB/s, {tcp_over_iperf3:.2f}x iperf3 (median of rounds), "
            f"gloo {gloo:.3f} GB/s ({tcp / gloo:.2f}x)"
        )
        goals.append(Goal(name, met, detail + (f"; {wrong}" if wrong else "")))
    return goals


def render_markdown(document: dict[str, Any]) -> str:
    """The comparison as a markdown report."""
    config, machine = document["config"], document["machine"]
    lines = [
        f"# Kaitian vs gloo: allreduce, {config['ranks']} ranks, {config['dtype']} {config['op']}",
        "",
        f"- date: {document['date']}",
        f"- machine: {machine['cpu']}, {machine['cpus']} CPUs, {machine['platform']}",
        f"- torch: {machine['torch']}; iters {config['iters']}, warmup {config['warmup']}, "
        f"{config['rounds']} alternated rounds (memcpy, shm, tcp, gloo, iperf3 one way and both ways in each)",
        "- time: mean per-iteration time (max over ranks), median over rounds; busbw as in nccl-tests "
        "(allreduce: algbw x 2(n-1)/n)",
    ]
    for name, label in (
        ("memcpy", f"memcpy {size_label(MEMCPY_BYTES)}"),
        ("iperf3", "iperf3, one loopback stream"),
        ("iperf3_bidir", "iperf3, one loopback stream each way at once, per direction"),
    ):
        yardstick = document["yardsticks"].get(name)
        if yardstick is not None:
            lines.append(
                f"- {label}: median {yardstick['median']:.3f} GB/s ({yardstick['min']:.3f}-{yardstick['max']:.3f})"
            )
    for key, label in (
        ("shm_over_memcpy", f"{size_label(BANDWIDTH_GOAL_BYTES)} shm busbw / memcpy"),
        ("tcp_over_iperf3", f"{size_label(BANDWIDTH_GOAL_BYTES)} tcp busbw / iperf3"),
        ("tcp_over_iperf3_bidir", f"{size_label(BANDWIDTH_GOAL_BYTES)} tcp busbw / iperf3 each way at once"),
    ):
        ratio_spread = document["ratios"].get(key)
        if ratio_spread is not None:
            lines.append(
                f"- {label}, per round: median {ratio_spread['median']:.2f} "
                f"({ratio_spread['min']:.2f}-{ratio_spread['max']:.2f})"
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
    errors = [
        (f"round {index + 1} {name}", run["error"])
        for index, round_runs in enumerate(document["runs"])
        for name, run in round_runs.items()
        if run["error"]
    ]
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


def _yardstick(run: Run, key: str) -> float | None:
    return run.records[0].get(key) if run.records else None


def build_document(config: dict[str, Any], rounds: list[dict[str, Run]], machine: dict[str, Any]) -> dict[str, Any]:
    """Assemble the comparison (median rows, per-round ratios, verdict) from every round's runs."""

    def records(name: str) -> list[list[dict[str, Any]]]:
        return [round_runs[name].records for round_runs in rounds]

    memcpy = [_yardstick(round_runs["memcpy"], "best_gbps") for round_runs in rounds]
    iperf3 = [_yardstick(round_runs["iperf3"], "gbps") for round_runs in rounds]
    iperf3_bidir = [
        _yardstick(round_runs["iperf3_bidir"], "gbps") for round_runs in rounds if "iperf3_bidir" in round_runs
    ]
    rows = compare_rows(
        median_by_size(records("kaitian_shm")), median_by_size(records("kaitian_tcp")), median_by_size(records("gloo"))
    )
    ratios = {
        "shm_over_memcpy": spread(round_ratios(records("kaitian_shm"), memcpy, BANDWIDTH_GOAL_BYTES)),
        "tcp_over_iperf3": spread(round_ratios(records("kaitian_tcp"), iperf3, BANDWIDTH_GOAL_BYTES)),
    }
    if len(iperf3_bidir) == len(rounds):
        ratios["tcp_over_iperf3_bidir"] = spread(
            round_ratios(records("kaitian_tcp"), iperf3_bidir, BANDWIDTH_GOAL_BYTES)
        )
    goals = evaluate_goals(
        rows,
        ratios["shm_over_memcpy"]["median"] if ratios["shm_over_memcpy"] else None,
        ratios["tcp_over_iperf3"]["median"] if ratios["tcp_over_iperf3"] else None,
    )
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine,
        "config": config,
        "yardsticks": {
            "memcpy": spread([value for value in memcpy if value]),
            "iperf3": spread([value for value in iperf3 if value]),
            "iperf3_bidir": spread([value for value in iperf3_bidir if value]),
        },
        "ratios": ratios,
        "runs": [{name: asdict(run) for name, run in round_runs.items()} for round_runs in rounds],
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
    parser.add_argument("--rounds", type=int, help="alternated rounds of every measurement (default 3, quick 1)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds allowed per benchmark run")
    parser.add_argument("--json", action="store_true", help="print the comparison as one JSON document")
    parser.add_argument("--out", type=Path, help="also save the markdown report to this file")
    args = parser.parse_args(argv)
    if args.iters is None:
        args.iters = 5 if args.quick else 50
    if args.warmup is None:
        args.warmup = 1 if args.quick else 5
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    if args.iters < 1 or args.warmup < 0 or args.rounds < 1:
        parser.error("need --iters >= 1, --warmup >= 0 and --rounds >= 1")
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
        "rounds": args.rounds,
    }
    rounds: list[dict[str, Run]] = []
    for index in range(args.rounds):
        print(f"==> round {index + 1} of {args.rounds}", file=sys.stderr, flush=True)
        round_runs = {"memcpy": run_json(memcpy_command(args.python), args.timeout)}
        for transport in ("shm", "tcp"):
            round_runs[f"kaitian_{transport}"] = run_json(
                kaitian_command(args.kaitian, transport, max_bytes, args.iters, args.warmup), args.timeout
            )
        round_runs["gloo"] = run_json(gloo_command(args.python, max_bytes, args.iters, args.warmup), args.timeout)
        round_runs["iperf3"] = measure_iperf3()
        round_runs["iperf3_bidir"] = measure_iperf3(bidirectional=True)
        for name, run in round_runs.items():
            if run.error is not None:
                print(f"error: {name}: {run.error}", file=sys.stderr, flush=True)
        rounds.append(round_runs)
    document = build_document(config, rounds, machine_info())
    report = render_markdown(document)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report, encoding="utf-8")
    sys.stdout.write(json.dumps(document, indent=2) + "\n" if args.json else report)
    failed = any(run.error is not None for round_runs in rounds for run in round_runs.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
