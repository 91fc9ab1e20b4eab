"""Two hosts in network namespaces: the hierarchical allreduce and the flat ring, shared memory
inside the hosts and TCP across, against flat TCP.

Makes two network namespaces joined by a veth pair (10.214.0.1 and 10.214.0.2), each standing
for a host with 2 ranks (ranks 0 and 1 on host a, 2 and 3 on host b; every rank of a host gets
the same KAITIAN_HOST_ID, as `kaitian run` gives the workers of one node). Then times
``kaitian bench allreduce`` with 4 ranks at 8 B, 1 MiB, 16 MiB and 64 MiB in four layouts:

- **hierarchical**: transport auto, so ranks of one host use shared memory and the hops between
  the hosts TCP over the veth pair; large allreduces reduce-scatter inside each host, allreduce
  each piece between the hosts, and all-gather inside each host (the engine's default for
  hosts of equal rank counts);
- **flat ring**: the same links, with the hierarchical allreduce switched off
  (KAITIAN_HIERARCHICAL=0), so large allreduces run one ring over all 4 ranks, two of whose
  hops cross between the hosts;
- **flat TCP**: the same placement with every link on TCP (``--transport tcp``) and the ring;
- **one host, shm** (reference): 4 ranks in the root namespace, all on shared memory.

The layouts alternate within each round (their order rotating), and the report gives the median
busbw of each cell with its spread, and per size the ratios of hierarchical to flat ring and of
hierarchical to flat TCP, taken within each round.

What this models, and what not: the veth pair moves bytes at memory speed through the kernel,
as loopback does, and both "hosts" share this machine's 2 cores, so TCP between the hosts costs
CPU the ranks need, as it does on a real host, but no network limits it unless ``--link-rate``
shapes each direction with a tc token bucket (say 10gbit, a common NIC). The bytes sent between hosts
then weigh as on a real network; the hierarchical allreduce sends 2 buffers' worth across where
the ring sends 3.

Needs root and ``ip netns`` (CAP_NET_ADMIN). Output is markdown (also saved with ``--out FILE``),
or with ``--json`` one JSON document. Exits 1 if a measurement failed. Measures only; no
thresholds.
"""

from __future__ import annotations

import datetime
import os
import re
import secrets
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchlib import (
    cell_arguments,
    cell_errors,
    cell_statistics,
    cells_parser,
    first_bench_record,
    measure_local_cell,
    print_cell_progress,
    publish_cells,
    size_label,
)

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_KAITIAN = BENCH_DIR.parent / ".build" / "release" / "kaitian"
SIZES = (8, 1 << 20, 16 << 20, 64 << 20)
RANKS = 4
ADDRESSES = ("10.214.0.1", "10.214.0.2")
IP = "/usr/sbin/ip"


@dataclass(frozen=True)
class Layout:
    """Where the 4 ranks run, which transport they may use, and whether allreduce may go hierarchical."""

    key: str
    title: str
    two_hosts: bool
    transport: str
    hierarchical: bool


LAYOUTS = (
    Layout("hierarchical", "two hosts, shm inside, hierarchical", True, "auto", True),
    Layout("flat-ring", "two hosts, shm inside, flat ring", True, "auto", False),
    Layout("flat-tcp", "two hosts, flat TCP, flat ring", True, "tcp", False),
    Layout("one-host", "one host, shm (reference)", False, "shm", False),
)

# (numerator, denominator) layouts of the busbw ratios the report gives per size.
RATIOS = (("hierarchical", "flat-ring"), ("hierarchical", "flat-tcp"))


def host_of(rank: int) -> int:
    """Ranks 0 and 1 on host a (0), ranks 2 and 3 on host b (1)."""
    return rank // 2


def run_ip(*arguments: str) -> None:
    subprocess.run([IP, *arguments], check=True, capture_output=True, text=True, timeout=30)


@contextmanager
def two_namespaces(link_rate: str | None = None) -> Iterator[tuple[str, str]]:
    """Two network namespaces joined by a veth pair, each direction shaped to `link_rate` (tc's
    notation, e.g. 10gbit) when given; removed again on the way out."""
    base = f"kt2h{os.getpid() % 100_000}"
    names = (f"{base}a", f"{base}b")
    veth = (f"{base}x", f"{base}y")
    try:
        run_ip("netns", "add", names[0])
        run_ip("netns", "add", names[1])
        run_ip("link", "add", veth[0], "type", "veth", "peer", "name", veth[1])
        for index in (0, 1):
            run_ip("link", "set", veth[index], "netns", names[index])
            run_ip("-n", names[index], "addr", "add", f"{ADDRESSES[index]}/24", "dev", veth[index])
            run_ip("-n", names[index], "link", "set", veth[index], "up")
            run_ip("-n", names[index], "link", "set", "lo", "up")
            if link_rate is not None:
                # A token bucket limits what leaves each end, as a NIC of that speed would (netem is
                # not in every kernel); its 4 MB burst is negligible next to the messages timed.
                run_ip(
                    "netns", "exec", names[index], "tc", "qdisc", "add", "dev", veth[index], "root",
                    "tbf", "rate", link_rate, "burst", "4mb", "latency", "100ms",
                )  # fmt: skip
        yield names
    except subprocess.CalledProcessError as error:
        command = " ".join(error.cmd[1:])
        raise SystemExit(f"two_hosts: `ip {command}` failed: {error.stderr.strip()}") from error
    finally:
        # Deleting a namespace deletes the veth end inside it, and with it the pair.
        for name in names:
            subprocess.run([IP, "netns", "del", name], capture_output=True, check=False)


LISTENING = re.compile(r"listening on \S*:(\d+)")


def start_store(binary: Path, namespace: str, environment: dict[str, str], timeout: float) -> tuple[Any, int]:
    """A store in host a's namespace on a free port; returns the process and the port."""
    store = subprocess.Popen(
        [IP, "netns", "exec", namespace, str(binary), "store", "serve", "--host", ADDRESSES[0], "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
    )
    deadline = time.monotonic() + timeout
    assert store.stdout is not None
    while time.monotonic() < deadline:
        line = store.stdout.readline()
        if not line:
            break
        match = LISTENING.search(line)
        if match:
            return store, int(match.group(1))
    store.kill()
    raise RuntimeError(f"the store did not start: {store.stderr.read().strip() if store.stderr else ''}")


def measure_two_hosts(
    binary: Path, namespaces: tuple[str, str], layout: Layout, size: int, token_file: Path, timeout: float
) -> dict[str, Any]:
    """One cell of a two-host layout: 4 rank processes, 2 in each namespace."""
    environment = os.environ | {
        "KAITIAN_TOKEN_FILE": str(token_file),
        "KAITIAN_HIERARCHICAL": "1" if layout.hierarchical else "0",
    }
    environment.pop("KAITIAN_TOKEN", None)
    try:
        store, port = start_store(binary, namespaces[0], environment, timeout)
    except (OSError, RuntimeError) as error:
        return {"error": str(error)}
    try:
        ranks = []
        for rank in range(RANKS):
            host = host_of(rank)
            command = [IP, "netns", "exec", namespaces[host], str(binary)]
            command += cell_arguments(RANKS, size, layout.transport)
            command += ["--worker-rank", str(rank), "--store-address", f"{ADDRESSES[0]}:{port}"]
            ranks.append(
                subprocess.Popen(
                    command,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    env=environment | {"KAITIAN_HOST_ID": f"host-{'ab'[host]}"},
                )
            )
        outputs = []
        for rank, process in enumerate(ranks):
            try:
                stdout, stderr = process.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                for other in ranks:
                    other.kill()
                return {"error": f"rank {rank} did not finish within {timeout:.0f} s"}
            if process.returncode != 0:
                return {"error": f"rank {rank} exited {process.returncode}: {stderr.strip()[-300:]}"}
            outputs.append(stdout)
    finally:
        store.terminate()
        store.wait(timeout=10)
    return first_bench_record(outputs[0])


def run(
    binary: Path, rounds: int, timeout: float, link_rate: str | None = None, progress: bool = True
) -> dict[str, Any]:
    """Every (layout, size) cell once per round; the layout order rotates each round."""
    cells: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="kaitian-two-hosts-") as scratch, two_namespaces(link_rate) as namespaces:
        # The job token goes to the ranks in a file of mode 0600, never on a command line.
        token_file = Path(scratch) / "token"
        token_file.touch(mode=0o600)
        token_file.write_text(secrets.token_hex(32) + "\n", encoding="utf-8")
        for round_index in range(rounds):
            shift = round_index % len(LAYOUTS)
            for layout in LAYOUTS[shift:] + LAYOUTS[:shift]:
                for size in SIZES:
                    if layout.two_hosts:
                        result = measure_two_hosts(binary, namespaces, layout, size, token_file, timeout)
                    else:
                        result = measure_local_cell(binary, RANKS, size, "shm", timeout)
                    cells.setdefault(f"{layout.key}/{size}", []).append(result)
                    if progress:
                        print_cell_progress(round_index, rounds, layout.title, size, result)
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "rounds": rounds,
        "link_rate": link_rate,
        "layouts": [layout.key for layout in LAYOUTS],
        "sizes": list(SIZES),
        "cells": cells,
    }


def summarize(document: dict[str, Any]) -> dict[str, Any]:
    """Medians and spreads per cell, and the RATIOS per size (each taken within a round)."""
    table = {key: cell for key, results in document["cells"].items() if (cell := cell_statistics(results))}
    ratios: dict[str, dict[str, dict[str, float]]] = {}
    for numerator, denominator in RATIOS:
        by_size: dict[str, dict[str, float]] = {}
        for size in document["sizes"]:
            # One entry per round in both layouts (a failed round is an error entry), so they pair up.
            pairs = zip(
                document["cells"].get(f"{numerator}/{size}", []),
                document["cells"].get(f"{denominator}/{size}", []),
                strict=True,
            )
            values = sorted(
                top["busbw_gbps"] / bottom["busbw_gbps"]
                for top, bottom in pairs
                if "error" not in top and "error" not in bottom and bottom["busbw_gbps"] > 0
            )
            if values:
                by_size[str(size)] = {"median": statistics.median(values), "min": values[0], "max": values[-1]}
        ratios[f"{numerator}/{denominator}"] = by_size
    return {"table": table, "ratios": ratios}


def render_markdown(document: dict[str, Any], summary: dict[str, Any]) -> str:
    titles = {layout.key: layout.title for layout in LAYOUTS}
    sizes = document["sizes"]
    header = ["| layout | " + " | ".join(size_label(size) for size in sizes) + " |", "|---|" + "---:|" * len(sizes)]

    def rows(cell: Any) -> list[str]:
        lines = []
        for key in document["layouts"]:
            entries = [summary["table"].get(f"{key}/{size}") for size in sizes]
            shown = ["failed" if entry is None else cell(entry) for entry in entries]
            lines.append(f"| {titles[key]} | " + " | ".join(shown) + " |")
        return lines

    lines = [
        "### Two hosts in network namespaces: hierarchical allreduce, flat ring, flat TCP",
        "",
        f"- date: {document['date']}; {document['rounds']} alternated rounds; 4 ranks, 2 per host; "
        "float32 sum allreduce, out of place",
        "- cell: median busbw in GB/s (min-max over rounds); busbw = algbw x 2(n-1)/n as in nccl-tests",
        "- the hosts are network namespaces on one 2-core machine joined by a veth pair "
        + (
            f"shaped to {document['link_rate']} each way (tc tbf)"
            if document.get("link_rate")
            else "(no network limit)"
        ),
        "",
        *header,
        *rows(lambda e: f"{e['busbw_median']:.3f} ({e['busbw_min']:.3f}-{e['busbw_max']:.3f})"),
        "",
        "Median time per call (us):",
        "",
        *header,
        *rows(lambda e: f"{e['time_median_us']:.1f}"),
        "",
        "Busbw ratios, each taken within a round (median and range):",
        "",
        "| ratio | " + " | ".join(size_label(size) for size in sizes) + " |",
        "|---|" + "---:|" * len(sizes),
    ]
    for name, by_size in summary["ratios"].items():
        numerator, denominator = name.split("/")
        shown = [
            "-" if (r := by_size.get(str(size))) is None else f"{r['median']:.2f}x ({r['min']:.2f}-{r['max']:.2f})"
            for size in sizes
        ]
        lines.append(f"| {titles[numerator]} / {titles[denominator]} | " + " | ".join(shown) + " |")
    errors = cell_errors(document["cells"])
    if errors:
        lines += ["", "Errors:", "", *errors]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = cells_parser(__doc__ or "", DEFAULT_KAITIAN)
    parser.add_argument(
        "--link-rate",
        help="shape each direction between the hosts to this rate with a tc token bucket (e.g. 10gbit), as a real "
        "network link; default: no limit",
    )
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if os.geteuid() != 0:
        parser.error("needs root: it makes network namespaces (ip netns)")
    document = run(args.kaitian, args.rounds, args.timeout, args.link_rate)
    summary = summarize(document)
    return publish_cells(document, summary, render_markdown(document, summary), args)


if __name__ == "__main__":
    raise SystemExit(main())
