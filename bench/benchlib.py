"""Pure helpers shared by the benchmark scripts (no torch import here).

Conventions follow nccl-tests:

* ``size_bytes`` is the size of the whole buffer a collective works on (for
  allgather the gathered output, for reduce_scatter and alltoall the input).
* ``algbw = size_bytes / time`` in GB/s (1 GB = 1e9 bytes).
* ``busbw = algbw * factor`` with the per-collective factor of
  :func:`busbw_factor`, so that bus bandwidths of different collectives and
  rank counts are comparable with the hardware's bandwidth.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)
_SIZE_SHIFT = {"": 0, "k": 10, "m": 20, "g": 30, "t": 40}

COLLECTIVES = ("allreduce", "broadcast", "reduce", "allgather", "reduce_scatter", "alltoall")


def parse_size(text: str) -> int:
    """Parse a byte count such as ``8``, ``1K``, ``64M``, ``2GiB`` (binary multiples)."""
    match = _SIZE_RE.match(text)
    if match is None:
        raise ValueError(f"invalid size {text!r}: expected e.g. 8, 1K, 64M, 1G")
    number, suffix, _ = match.groups()
    return int(number) << _SIZE_SHIFT[suffix.lower()]


def format_size(nbytes: int) -> str:
    """Render a byte count with the largest binary suffix that divides it exactly."""
    for suffix, shift in (("G", 30), ("M", 20), ("K", 10)):
        if nbytes >= 1 << shift and nbytes % (1 << shift) == 0:
            return f"{nbytes >> shift}{suffix}"
    return str(nbytes)


def size_label(nbytes: int) -> str:
    """Human label for a byte count: ``8 B``, ``1 KiB``, ``64 MiB``."""
    text = format_size(nbytes)
    return f"{text[:-1]} {text[-1]}iB" if text[-1].isalpha() else f"{text} B"


def size_range(min_bytes: int, max_bytes: int) -> list[int]:
    """Sizes from ``min_bytes`` doubling while not above ``max_bytes``."""
    if min_bytes <= 0:
        raise ValueError("min size must be positive")
    if max_bytes < min_bytes:
        raise ValueError("max size must not be below min size")
    sizes = []
    size = min_bytes
    while size <= max_bytes:
        sizes.append(size)
        size *= 2
    return sizes


def busbw_factor(collective: str, ranks: int) -> float:
    """nccl-tests' bus-bandwidth factor for ``collective`` over ``ranks`` ranks."""
    if ranks < 1:
        raise ValueError("ranks must be at least 1")
    if collective == "allreduce":
        return 2 * (ranks - 1) / ranks
    if collective in ("allgather", "reduce_scatter", "alltoall"):
        return (ranks - 1) / ranks
    if collective in ("broadcast", "reduce"):
        return 1.0
    raise ValueError(f"unknown collective {collective!r}")


def bandwidths(collective: str, size_bytes: int, ranks: int, time_us: float) -> tuple[float, float]:
    """``(algbw, busbw)`` in GB/s for one collective call of ``time_us`` microseconds."""
    if time_us <= 0:
        raise ValueError("time must be positive")
    algbw = size_bytes / (time_us * 1e-6) / 1e9
    return algbw, algbw * busbw_factor(collective, ranks)


def parse_json_lines(text: str) -> list[dict[str, Any]]:
    """Parse a benchmark's ``--json`` output: one object per line.

    Lines not starting with ``{`` (progress, tables, blank lines) are ignored; a
    line that starts with ``{`` but is not a JSON object is an error.
    """
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped.startswith("{"):
            continue
        try:
            record = json.loads(stripped)
        except json.JSONDecodeError as error:
            raise ValueError(f"line {number}: malformed JSON: {error}") from error
        if not isinstance(record, dict):
            raise ValueError(f"line {number}: expected a JSON object")
        records.append(record)
    return records


def first_bench_record(stdout: str) -> dict[str, Any]:
    """The out-of-place time and busbw of the first size ``kaitian bench --json`` printed, or an error."""
    records = parse_json_lines(stdout)
    if not records:
        return {"error": "printed no JSON"}
    return {"time_us": records[0]["time_us"], "busbw_gbps": records[0]["busbw_gbps"]}


def cell_statistics(results: list[dict[str, Any]]) -> dict[str, float] | None:
    """A cell's rounds (``first_bench_record``s): busbw median and range, median time; None if all failed."""
    good = [r for r in results if "error" not in r]
    if not good:
        return None
    busbw = sorted(r["busbw_gbps"] for r in good)
    return {
        "busbw_median": statistics.median(busbw),
        "busbw_min": busbw[0],
        "busbw_max": busbw[-1],
        "time_median_us": statistics.median(r["time_us"] for r in good),
    }


def cell_errors(cells: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Markdown list items naming every failed round of every cell."""
    return [f"- {key}: {r['error']}" for key, results in cells.items() for r in results if "error" in r]


def cell_arguments(ranks: int, size: int, transport: str) -> list[str]:
    """``kaitian bench`` arguments (after the binary) for one cell: a float32 sum allreduce of `size`
    bytes on `ranks` ranks, with enough calls for small sizes to average out and few for 64 MiB."""
    iters, warmup = (200, 20) if size <= 1 << 20 else (10, 2)
    return [
        "bench",
        "allreduce",
        "--ranks",
        str(ranks),
        "--min-bytes",
        str(size),
        "--max-bytes",
        str(size),
        "--transport",
        transport,
        "--iters",
        str(iters),
        "--warmup",
        str(warmup),
        "--json",
    ]


def measure_local_cell(binary: Path, ranks: int, size: int, transport: str, timeout: float) -> dict[str, Any]:
    """One cell run by ``kaitian bench`` with its own store and rank processes on this host: its
    ``first_bench_record``, or an error."""
    command = [str(binary), *cell_arguments(ranks, size, transport)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        return {"error": str(error)}
    if done.returncode != 0:
        return {"error": f"exited {done.returncode}: {done.stderr.strip()[-300:]}"}
    return first_bench_record(done.stdout)


def print_cell_progress(round_index: int, rounds: int, what: str, size: int, result: dict[str, Any]) -> None:
    """One line on stderr per measured cell, so a long run shows where it is."""
    shown = result.get("error") or f"{result['busbw_gbps']:.3f} GB/s, {result['time_us']:.1f} us"
    print(f"round {round_index + 1}/{rounds}: {what}, {size_label(size)}: {shown}", file=sys.stderr, flush=True)


def cells_parser(description: str, default_binary: Path) -> argparse.ArgumentParser:
    """The options of a bench that measures cells of ``kaitian bench`` in alternated rounds."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kaitian", type=Path, default=default_binary, help="kaitian binary (release build)")
    parser.add_argument("--rounds", type=int, default=3, help="alternated rounds (default 3)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds allowed per cell")
    parser.add_argument("--json", action="store_true", help="print the raw results and summary as JSON")
    parser.add_argument("--out", type=Path, help="also save the markdown report to this file")
    return parser


def publish_cells(document: dict[str, Any], summary: dict[str, Any], report: str, args: argparse.Namespace) -> int:
    """Saves the report (``--out``), prints it or the JSON (``--json``); 1 if any round of a cell failed."""
    if args.out is not None:
        args.out.write_text(report, encoding="utf-8")
    sys.stdout.write(json.dumps(document | {"summary": summary}, indent=2) + "\n" if args.json else report)
    failed = any("error" in r for results in document["cells"].values() for r in results)
    return 1 if failed else 0


def by_size(records: Iterable[dict[str, Any]], collective: str) -> dict[int, dict[str, Any]]:
    """Index timed results of one collective by ``size_bytes`` (skips non-timed records)."""
    return {
        int(record["size_bytes"]): record
        for record in records
        if record.get("collective") == collective and "time_us" in record
    }


def verdict_word(met: bool | None) -> str:
    """How a report states a goal: met, NOT met, or not measured (None)."""
    return {True: "met", False: "NOT met", None: "not measured"}[met]


def table_cell(value: float | None, digits: int) -> str:
    """A markdown table cell: the value to `digits` decimals, or "-" when it was not measured."""
    return "-" if value is None else f"{value:.{digits}f}"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (for a rendezvous of local ranks)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stage_means_ms(steps: list[dict[str, Any]]) -> dict[str, float]:
    """Mean milliseconds per step of each hybrid pipeline stage, by name in order.

    A step's "stages" (examples/train.py's trace, from kaitian.stage_times()) maps a stage's
    name to its wall seconds in that step; a step without one counts as 0 for it.
    """
    totals: dict[str, float] = {}
    for step in steps:
        for name, seconds in step.get("stages", {}).items():
            totals[name] = totals.get(name, 0.0) + seconds
    return {name: 1e3 * total / len(steps) for name, total in sorted(totals.items())}


def stages_text(stages_ms: dict[str, float]) -> str:
    """A report cell: "name ms, ..." with one decimal, or "-" when there are none."""
    return ", ".join(f"{name} {ms:.1f}" for name, ms in stages_ms.items()) or "-"


def spread(values: list[float]) -> str:
    """median (min-max) of values, as text."""
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3g}"
    return f"{statistics.median(values):.3g} ({min(values):.3g}-{max(values):.3g})"


def keep_one_calibration(cache: Path) -> Path:
    """The cache folder every job of this benchmark uses, its emulated-device calibrations kept fresh.

    One calibration for the whole run: the first emulated job calibrates, and every later job,
    whatever its mode or configuration, paces to the same costs (a calibration would otherwise
    expire after an hour, or come from another run, and change the devices between the runs
    being compared).
    """
    folder = cache / "kaitian"
    if folder.is_dir():
        for calibration in folder.glob("emulation-*.json"):
            os.utime(calibration)
    return cache
