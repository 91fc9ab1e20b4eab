"""How the engine's allreduce scales with the number of ranks on one host (shared memory).

Runs ``kaitian bench allreduce`` as processes for 2, 3, 4, 6 and 8 ranks at 8 B, 1 MiB, 16 MiB
and 64 MiB, in alternated rounds (every rank count once per round, the order rotating), and
prints the median busbw per cell with its spread, and the scaling figures:

- 4 ranks' busbw at 16 MiB against 2 ranks';
- per byte moved, how much slower 8 ranks are than 4 at each size (busbw 4 / busbw 8: busbw
  counts the 2(n-1)/n of the buffer that each rank moves).

On a 2-core machine 3 or more ranks oversubscribe the cores: the spin-then-futex wait of a rank
whose peer is descheduled must yield, or every step waits out a time slice.

Output is markdown (also saved with ``--out FILE``), or with ``--json`` one JSON document.
Exits 1 if a measurement failed to run. Measures only; no thresholds.
"""

from __future__ import annotations

import datetime
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchlib import (
    cell_errors,
    cell_statistics,
    cells_parser,
    measure_local_cell,
    print_cell_progress,
    publish_cells,
    size_label,
)

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_KAITIAN = BENCH_DIR.parent / ".build" / "release" / "kaitian"
RANKS = (2, 3, 4, 6, 8)
SIZES = (8, 1 << 20, 16 << 20, 64 << 20)


def run(binary: Path, rounds: int, timeout: float, progress: bool = True) -> dict[str, Any]:
    """Every (ranks, size) cell once per round; the rank order rotates each round."""
    cells: dict[str, list[dict[str, Any]]] = {}
    for round_index in range(rounds):
        order = RANKS[round_index % len(RANKS) :] + RANKS[: round_index % len(RANKS)]
        for ranks in order:
            for size in SIZES:
                result = measure_local_cell(binary, ranks, size, "shm", timeout)
                cells.setdefault(f"{ranks}/{size}", []).append(result)
                if progress:
                    print_cell_progress(round_index, rounds, f"{ranks} ranks", size, result)
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "rounds": rounds,
        "ranks": list(RANKS),
        "sizes": list(SIZES),
        "cells": cells,
    }


def summarize(document: dict[str, Any]) -> dict[str, Any]:
    """Medians and spreads per cell, and the scaling figures."""
    table = {key: cell for key, results in document["cells"].items() if (cell := cell_statistics(results))}

    def cell(ranks: int, size: int) -> dict[str, float] | None:
        return table.get(f"{ranks}/{size}")

    four, two = cell(4, 16 << 20), cell(2, 16 << 20)
    scaling: dict[str, Any] = {
        "busbw_4_over_2_at_16MiB": four["busbw_median"] / two["busbw_median"] if four and two else None,
        "slowdown_per_byte_8_over_4": {},
    }
    for size in SIZES:
        eight, four_ranks = cell(8, size), cell(4, size)
        if eight and four_ranks:
            # busbw counts the bytes each rank moves (2(n-1)/n of the buffer), so its ratio is the
            # slowdown per byte moved.
            scaling["slowdown_per_byte_8_over_4"][str(size)] = four_ranks["busbw_median"] / eight["busbw_median"]
    return {"table": table, "scaling": scaling}


def ranks_by_size_table(
    document: dict[str, Any], summary: dict[str, Any], cell: Callable[[dict[str, float]], str]
) -> list[str]:
    """A markdown table with one row per rank count and one column per size."""
    lines = [
        "| ranks | " + " | ".join(size_label(size) for size in document["sizes"]) + " |",
        "|---:|" + "---:|" * len(document["sizes"]),
    ]
    for ranks in document["ranks"]:
        entries = [summary["table"].get(f"{ranks}/{size}") for size in document["sizes"]]
        lines.append(
            f"| {ranks} | " + " | ".join("failed" if entry is None else cell(entry) for entry in entries) + " |"
        )
    return lines


def render_markdown(document: dict[str, Any], summary: dict[str, Any]) -> str:
    lines = [
        "# Engine allreduce scaling with ranks (shared memory, one host)",
        "",
        f"- date: {document['date']}; {document['rounds']} alternated rounds; float32 sum, out of place",
        "- cell: median busbw in GB/s (min-max over rounds); busbw = algbw x 2(n-1)/n as in nccl-tests",
        "",
    ]
    lines += ranks_by_size_table(
        document, summary, lambda e: f"{e['busbw_median']:.3f} ({e['busbw_min']:.3f}-{e['busbw_max']:.3f})"
    )
    lines += ["", "Median time per call (us):", ""]
    lines += ranks_by_size_table(document, summary, lambda e: f"{e['time_median_us']:.1f}")
    scaling = summary["scaling"]
    lines += ["", "## Scaling", ""]
    ratio = scaling["busbw_4_over_2_at_16MiB"]
    lines.append(f"- 4 ranks' busbw at 16 MiB / 2 ranks': {'-' if ratio is None else f'{ratio:.2f}'}")
    for size, slowdown in scaling["slowdown_per_byte_8_over_4"].items():
        lines.append(
            f"- {size_label(int(size))}: 8 ranks are {slowdown:.2f}x slower per byte moved than 4 (busbw 4 / 8)"
        )
    errors = cell_errors(document["cells"])
    if errors:
        lines += ["", "## Errors", "", *errors]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = cells_parser(__doc__ or "", DEFAULT_KAITIAN)
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    document = run(args.kaitian, args.rounds, args.timeout)
    summary = summarize(document)
    return publish_cells(document, summary, render_markdown(document, summary), args)


if __name__ == "__main__":
    sys.exit(main())
