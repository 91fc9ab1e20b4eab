"""The scaling bench's summary and report, on made-up cells (no measurement, no thresholds)."""

from __future__ import annotations

import engine_scaling


def document() -> dict[str, object]:
    cells: dict[str, list[dict[str, object]]] = {}
    for ranks in engine_scaling.RANKS:
        for size in engine_scaling.SIZES:
            # Rounds of 1.0, 3.0 and 2.0 GB/s over the rank count; 8 ranks at 8 B failed once.
            cells[f"{ranks}/{size}"] = [
                {"busbw_gbps": value / ranks, "time_us": 10.0 * value} for value in (1.0, 3.0, 2.0)
            ]
    cells["8/8"].append({"error": "exited 1: boom"})
    return {
        "date": "2026-01-01",
        "rounds": 3,
        "ranks": list(engine_scaling.RANKS),
        "sizes": list(engine_scaling.SIZES),
        "cells": cells,
    }


def test_summary_takes_medians_and_the_scaling_ratios() -> None:
    summary = engine_scaling.summarize(document())
    cell = summary["table"]["4/16777216"]
    assert (cell["busbw_median"], cell["busbw_min"], cell["busbw_max"]) == (0.5, 0.25, 0.75)
    assert cell["time_median_us"] == 20.0
    assert summary["scaling"]["busbw_4_over_2_at_16MiB"] == 0.5
    assert summary["scaling"]["slowdown_per_byte_8_over_4"]["8"] == 2.0


def test_report_shows_every_cell_and_the_errors() -> None:
    doc = document()
    report = engine_scaling.render_markdown(doc, engine_scaling.summarize(doc))
    assert "| 2 | 1.000 (0.500-1.500) |" in report
    assert "- 4 ranks' busbw at 16 MiB / 2 ranks': 0.50" in report
    assert "8 ranks are 2.00x slower per byte moved than 4" in report
    assert "- 8/8: exited 1: boom" in report


def test_a_cell_whose_every_round_failed_is_shown_as_failed() -> None:
    doc = document()
    doc["cells"]["6/8"] = [{"error": "timeout"}]  # type: ignore[index]
    report = engine_scaling.render_markdown(doc, engine_scaling.summarize(doc))
    assert "| 6 | failed |" in report
