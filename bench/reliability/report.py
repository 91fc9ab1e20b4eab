"""Runs every reliability scenario and writes docs/RELIABILITY.md (one command).

    .venv/bin/python bench/reliability/report.py [--kills 20] [--soak-calls 3000] [--cuts 5]

Scenarios: random SIGKILLs of a `kaitian run` training job (kill_random.py), link cuts and
degraded links between two network namespaces (netfaults.py), a soak of random checked
collectives on heterogeneous groups (soak.py), bad input against a running job's ports
(probe.py), and each attack of the security review, tried by its test (security.py). Progress
goes to stdout; the raw results go to --json-out if given.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import kill_random  # noqa: E402
import netfaults  # noqa: E402
import probe  # noqa: E402
import security  # noqa: E402
import soak  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "RELIABILITY.md"


def _spread(values: list[float]) -> str:
    if not values:
        return "-"
    values = sorted(values)
    return f"{values[0]:.2f} / {statistics.median(values):.2f} / {values[-1]:.2f} s"


def _say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def collect(args: argparse.Namespace) -> dict[str, Any]:
    """Runs the scenarios in turn, printing progress; returns their raw results."""
    results: dict[str, Any] = {}
    _say(f"1/5 random kills: {args.kills} SIGKILLs of a 3-rank training job under kaitian run")
    results["kills"] = kill_random.run(args.kills, args.epochs, args.seed, progress=_say)
    _say(f"2/5 network faults: {args.cuts} cuts of each kind between two namespaces, then degraded links")
    results["network"] = netfaults.run_all(args.cuts, progress=_say)
    _say(f"3/5 soak: {args.soak_calls} random collectives on 2 + 3 heterogeneous ranks")
    results["soak"] = soak.run(args.soak_calls, args.seed, large=True, timeout=3600.0)
    _say(
        f"    {results['soak']['wrong_values']} wrong values, fd growth {results['soak']['fd_growth_max']}, "
        f"{results['soak']['seconds']:.0f} s"
    )
    _say("4/5 bad input against a running job's ports")
    results["probe"] = probe.run(progress=_say)
    _say("5/5 security: each attack of the security review, tried by its test")
    results["security"] = security.run()
    _say(f"    held {sum(r['held'] for r in results['security'])}/{len(results['security'])}")
    return results


def table(results: dict[str, Any]) -> list[str]:
    """The summary table: one row per scenario."""
    rows = [
        "| scenario | faults injected | errors reported | time to detect (min / median / max) "
        "| wrong values | leftovers |",
        "|---|---|---|---|---|---|",
    ]
    kills = kill_random.summarize(results["kills"])
    times = kills["detect_seconds"]
    differing = kills["resumed"] - kills["resumed_equal"]
    rows.append(
        f"| SIGKILL of a random rank at a random time (kaitian run, examples/train.py, 3 ranks in 2 groups) "
        f"| {kills['kills']} | launcher exit non-zero {kills['launcher_nonzero']}/{kills['kills']}, naming the rank "
        f"{kills['launcher_named_rank']}/{kills['kills']}; survivors' errors naming it "
        f"{kills['survivor_errors_naming_rank']}/{kills['survivors']}; hangs {kills['hangs']} "
        f"| {_spread(list(times)) if times else '-'} (kill to launcher exit) "
        f"| resumed runs differing from an uninterrupted one: {differing}/{kills['resumed']} "
        f"| {kills['leftovers']} processes |"
    )
    network = results["network"]
    for fault in dict.fromkeys(c["fault"] for c in network["cuts"]):
        cuts = [c for c in network["cuts"] if c["fault"] == fault]
        ways = ", both ways" if fault.startswith("tc") else ""
        seconds = [s for c in cuts for s in c["detect_seconds"] if s is not None]
        named = sum(sum(c["names_peer"]) for c in cuts)
        rows.append(
            f"| link cut: {fault}{ways} (2 namespaces, heartbeat timeout {cuts[0]['heartbeat_timeout']:g} s, "
            f"call timeout 60 s) | {len(cuts)} | errors naming the other rank {named}/{2 * len(cuts)}; "
            f"ranks exiting 3: {sum(c['exit_codes'].count(3) for c in cuts)}/{2 * len(cuts)} "
            f"| {_spread(seconds)} (cut to each rank's error) | - | - |"
        )
    clean = next((d for d in network["degraded"] if d["qdisc"] == "none"), None)
    for run in network["degraded"]:
        if run["qdisc"] == "none" or clean is None:
            continue
        rows.append(
            f"| degraded link: {run['qdisc']} ({run['iterations']} allreduces of {run['elements']} floats) "
            f"| {run['iterations']} | none: the job completed | - (took {run['seconds']:.2f} s; clean link "
            f"{clean['seconds']:.2f} s) | {run['wrong_values']} | - |"
        )
    s = results["soak"]
    rows.append(
        f"| soak: {s['calls_per_rank']} random collectives x {s['ranks']} ranks (2 gloo + 3 engine, joined by the "
        f"engine), every op/dtype/size/root | - | - | - | {s['wrong_values']} | fd growth {s['fd_growth_max']}; "
        f"RSS growth {s['rss_growth_max_bytes'] / 2**20:.1f} MiB after warm-up, "
        f"{s['rss_growth_second_half_max_bytes'] / 2**20:.1f} MiB over the second half |"
    )
    p = results["probe"]
    refused = sum(r["refused"] for r in p["rows"])
    working = sum(r["job_kept_working"] for r in p["rows"])
    names = ", ".join(dict.fromkeys(r["probe"] for r in p["rows"]))
    seconds = [r["seconds"] for r in p["rows"]]
    rows.append(
        f"| bad input on the job's store port ({names}) | {len(p['rows'])} | refused {refused}/{len(p['rows'])}; "
        f"job kept working after {working}/{len(p['rows'])} | {_spread(seconds)} (probe to refusal) "
        f"| {p['job_wrong_values']} | - |"
    )
    return rows


def current_commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    return done.stdout.strip() or "?"


def render(results: dict[str, Any], args: argparse.Namespace, seconds: float | None, commit: str) -> str:
    kills = kill_random.summarize(results["kills"])
    network = results["network"]
    took = "?" if seconds is None else f"{seconds / 60:.0f}"
    lines = [
        "# Reliability",
        "",
        "Generated by `.venv/bin/python bench/reliability/report.py"
        f" --kills {args.kills} --cuts {args.cuts} --soak-calls {args.soak_calls}` on"
        f" {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, commit {commit} (measured),"
        f" {os.cpu_count()} cores, Linux {platform.release()}; the run took {took} min."
        " Do not edit by hand: rerun the command.",
        "",
        *table(results),
        "",
        "## What each row means",
        "",
        "- **SIGKILL**: `kaitian run --group cpu:2 --group cpu-b:1 -- python examples/train.py --adaptive off"
        f" --epochs {args.epochs} --checkpoint-dir DIR`; a random rank is killed at a random time in the first"
        " 60% of training. Time to detect is from the kill to the launcher's exit (it has then stopped every"
        " worker). Leftovers: processes whose environment holds the job's `KAITIAN_JOB_ID`, 0.5 s after the"
        f" launcher exits. Kills that landed after the last collective (rank 0 had printed its summary;"
        " nothing left to fail):"
        f" {kills['kills_after_the_rank_finished']}, not counted as faults. Checkpoints that loaded:"
        f" {kills['checkpoints_intact']}/{kills['kills']}"
        f" (unreadable: {kills['checkpoints_unreadable']}; a kill before the first epoch ends leaves none)."
        f" Resumed with `--resume`: {kills['resumed_equal']}/{kills['resumed']} ended with final parameters"
        " bitwise equal (sha256) to an uninterrupted run's.",
        "- **Link cut**: two network namespaces joined by a veth pair, one rank in each (TCP, distinct"
        " `KAITIAN_HOST_ID`), looping on checked allreduces. A cut closes no socket, so only heartbeats"
        " (`KAITIAN_HEARTBEAT_TIMEOUT`, 2 s here, 15 s by default) find it; without them the call timeout"
        " (60 s here, 300 s by default) would.",
        "- **Degraded link**: the same pair with a queueing discipline on both ends; results must stay exact,"
        " only the time changes (reported, not asserted).",
        "- **Soak**: every rank draws the same seeded random calls (allreduce, reduce, broadcast, allgather,"
        " reduce_scatter, alltoall, gather, scatter, barrier; float16, bfloat16, float32, float64, int8,"
        " uint8, int32, int64; sum, product, min, max, avg; 0, 1, primes up to 65537 elements; random roots)"
        " and checks each result against a reference computed from every rank's seeded input, bitwise"
        " except avg of floats. Open fds and RSS (after `malloc_trim`) are sampled after a warm-up that runs"
        " every kind once, at the middle and at the end.",
        "- **Bad input**: `kaitian run --group cpu:2` running a checked allreduce loop; each probe is sent to"
        " its embedded store port (the engine's listening ports close after set-up: found open"
        f" {results['probe']['engine_ports_after_setup']}); refused means the server closed the connection or"
        " answered with a refusal verdict, and the job must progress with zero wrong values after each probe.",
        "",
    ]
    if "security" in results:  # absent from results saved before it existed
        lines += [
            "## Security",
            "",
            "Each attack of the security review, tried for real by the named test in this run (an impostor"
            " on a socket, a forged value in a store, a segment of the wrong mode, a SIGKILLed launcher);"
            " held means the test ran and the defence did exactly what the row says"
            " (`bench/reliability/security.py` runs this table alone).",
            "",
            *security.table(results["security"]),
            "",
            "What is not protected, as with NCCL and Gloo: data frames after the handshake are not"
            " encrypted, and not integrity-checked unless every rank sets `KAITIAN_INTEGRITY=1`. An"
            " attacker on the network path between hosts can read gradients, and without"
            " `KAITIAN_INTEGRITY=1` change them in flight; with it, everything sent over TCP travels in"
            " records with an HMAC-SHA256 under keys of its own connection (derived from the handshake's"
            " nonces), so a changed, dropped, repeated or reordered record fails the call (its cost:"
            " [BENCHMARKS-INTEGRITY.md](BENCHMARKS-INTEGRITY.md)). Run jobs on a network you trust,"
            " or set it. The job token lives in"
            " each worker's environment (`KAITIAN_TOKEN`), readable by the same user and root. Under"
            " torchrun without `KAITIAN_TOKEN`, rank 0 draws the token and publishes it in torch's"
            " TCPStore, so whoever reaches that store can join; set `KAITIAN_TOKEN`, or use `kaitian run`,"
            " whose workers meet in the job's own store. Anyone with the Redis password can read and write"
            " every job's keys in that Redis (the values the ranks trust carry the job token's MAC, so"
            " they cannot be forged there); `rediss://` protects the connection to Redis with TLS.",
            "",
        ]
    skipped = network["skipped"]
    if skipped:
        lines += ["## Not run here", ""]
        lines += [f"- {reason}" for reason in skipped]
        lines.append("")
    lines += [
        "## Reproduce",
        "",
        "As root (network namespaces), with the package built (`swift build --product kaitian`,"
        " `swift build --product KaitianC`):",
        "",
        "```",
        ".venv/bin/python bench/reliability/report.py          # everything, writes this file",
        ".venv/bin/python bench/reliability/kill_random.py --kills 20",
        ".venv/bin/python bench/reliability/netfaults.py --repeat 5",
        ".venv/bin/python bench/reliability/soak.py --calls 3000",
        ".venv/bin/python bench/reliability/probe.py",
        ".venv/bin/python bench/reliability/security.py",
        "```",
        "",
        "Short versions run in CI: python/tests/test_random_kills.py, test_network_faults.py, test_soak.py,"
        " test_port_probes.py, and the Swift heartbeat tests in Tests/KaitianTests/ProcessTests.swift.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=30, help="epochs of each training run")
    parser.add_argument("--cuts", type=int, default=5, help="cuts of each kind")
    parser.add_argument("--soak-calls", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json-out", type=Path, help="also write the raw results here")
    parser.add_argument("--from-json", type=Path, help="render raw results saved by --json-out instead of running")
    parser.add_argument("--output", type=Path, default=DOC)
    args = parser.parse_args()
    started = time.monotonic()
    if args.from_json is not None:
        saved = json.loads(args.from_json.read_text())
        # Files from before the run time was saved hold the results alone.
        results, seconds = saved.get("results", saved), saved.get("seconds")
        commit = saved.get("commit", "?")
    else:
        commit = current_commit()
        results = collect(args)
        seconds: float | None = time.monotonic() - started
    if args.json_out is not None:
        saved = {"results": results, "seconds": seconds, "commit": commit}
        args.json_out.write_text(json.dumps(saved, indent=1) + "\n")
    args.output.write_text(render(results, args, seconds, commit))
    _say(f"wrote {args.output}")


if __name__ == "__main__":
    main()
