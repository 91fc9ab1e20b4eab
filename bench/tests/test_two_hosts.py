"""The two-host bench's placement, commands, summary and report, on made-up cells (no namespaces)."""

from __future__ import annotations

import two_hosts

import benchlib


def document() -> dict[str, object]:
    cells: dict[str, list[dict[str, object]]] = {}
    for layout, scale in (("hierarchical", 2.0), ("flat-ring", 1.5), ("flat-tcp", 1.0), ("one-host", 4.0)):
        for size in two_hosts.SIZES:
            # Rounds of 1, 3 and 2 GB/s times the layout's scale.
            cells[f"{layout}/{size}"] = [{"busbw_gbps": scale * v, "time_us": 10.0 / v} for v in (1.0, 3.0, 2.0)]
    cells[f"flat-tcp/{1 << 20}"][1] = {"error": "rank 2 exited 1: boom"}
    return {
        "date": "2026-01-01",
        "rounds": 3,
        "layouts": [layout.key for layout in two_hosts.LAYOUTS],
        "sizes": list(two_hosts.SIZES),
        "cells": cells,
    }


def test_ranks_0_and_1_share_host_a_and_2_and_3_host_b() -> None:
    assert [two_hosts.host_of(rank) for rank in range(two_hosts.RANKS)] == [0, 0, 1, 1]


def test_every_rank_runs_the_same_bench_with_the_layouts_transport() -> None:
    arguments = benchlib.cell_arguments(two_hosts.RANKS, 16 << 20, "tcp")
    assert arguments[:2] == ["bench", "allreduce"]
    assert arguments[arguments.index("--ranks") + 1] == "4"
    assert arguments[arguments.index("--transport") + 1] == "tcp"
    assert arguments[arguments.index("--min-bytes") + 1] == arguments[arguments.index("--max-bytes") + 1]
    assert "--json" in arguments
    assert [(layout.transport, layout.hierarchical) for layout in two_hosts.LAYOUTS] == [
        ("auto", True),
        ("auto", False),
        ("tcp", False),
        ("shm", False),
    ]


def test_summary_takes_medians_and_pairs_the_two_host_layouts_within_each_round() -> None:
    summary = two_hosts.summarize(document())
    cell = summary["table"][f"hierarchical/{16 << 20}"]
    assert (cell["busbw_median"], cell["busbw_min"], cell["busbw_max"]) == (4.0, 2.0, 6.0)
    over_tcp = summary["ratios"]["hierarchical/flat-tcp"]
    assert over_tcp[str(16 << 20)] == {"median": 2.0, "min": 2.0, "max": 2.0}
    # The failed round is left out of the pairs, not paired with another round's figure.
    assert over_tcp[str(1 << 20)] == {"median": 2.0, "min": 2.0, "max": 2.0}
    assert summary["ratios"]["hierarchical/flat-ring"][str(8)]["median"] == 2.0 / 1.5
    assert summary["table"][f"flat-tcp/{1 << 20}"]["busbw_median"] == 1.5


def test_report_shows_every_layout_the_ratios_and_the_errors() -> None:
    doc = document()
    report = two_hosts.render_markdown(doc, two_hosts.summarize(doc))
    assert "| two hosts, shm inside, hierarchical | 4.000 (2.000-6.000) |" in report
    assert "| one host, shm (reference) |" in report
    assert "| two hosts, shm inside, hierarchical / two hosts, flat TCP, flat ring | 2.00x (2.00-2.00) |" in report
    assert "/ two hosts, shm inside, flat ring | 1.33x (1.33-1.33) |" in report
    assert "- flat-tcp/1048576: rank 2 exited 1: boom" in report


def test_a_cell_whose_every_round_failed_is_shown_as_failed() -> None:
    doc = document()
    doc["cells"]["one-host/8"] = [{"error": "timeout"}]  # type: ignore[index]
    report = two_hosts.render_markdown(doc, two_hosts.summarize(doc))
    assert "| one host, shm (reference) | failed |" in report
