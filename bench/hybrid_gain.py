"""Does adding a slower group make training faster? The fast group alone, the slow group alone and
both groups, run in alternation, with per-stage and per-thread breakdowns.

Two stand-ins for a slow device, each reported on its own:

  quota     cgroup CPU quotas (fast: --fast-cpu per worker on CPU 0, slow: --slow-cpu on CPU 1).
            Pessimistic: the quota also throttles the rank's host threads (the engine's, gloo's,
            the hybrid worker's), which an accelerator's host would run at full speed.
  emulated  EMULATION: `kaitian run --group KIND:N:speed=F`; the model's forward and backward are
            paced to a device F times as fast as a host core (kaitian.emulate_device) while the
            host threads run free, as beside a GPU. Fast: --fast-speed, slow: --slow-speed; no
            quotas, no pinning. Faithful to the host side; the emulated device itself is a sleep.

Every round runs each mode's configurations in turn (fast alone, both, slow alone, ...), so the
runs compared were taken minutes, not hours, apart; the report gives medians and the spread over
rounds, and per-round ratios (both / fast alone, both / (fast + slow), the "ideal"). Each round
also starts fast alone and slow alone together, two jobs with no exchange ("side by side"): their
summed throughput is what this machine gives both groups at once (each paying its own exchange).

The job is examples/train.py under `kaitian run`, the same for every configuration: MobileNetV2
(the paper's model) on scikit-learn's digits scaled to 3x32x32 (real images; CIFAR-10 cannot be
downloaded here), static measured shares, the same global batch. Inside the fast group the engine
(the NCCL stand-in), inside the slow group torch's gloo (the CNCL stand-in); fast alone uses the
engine, the faster of the two libraries on this machine, so the baseline is the harder one.

Needs root (quotas). Writes nothing unless --markdown FILE; --json prints the raw results.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))  # benchlib, also when loaded from elsewhere (the tests)

from benchlib import keep_one_calibration, spread, stage_means_ms, stages_text  # noqa: E402

CONFIGURATIONS = ("fast alone", "both", "slow alone")
SHARES = {
    "static": "static measured shares",
    "online": "shares measured before training and re-planned while training (every 10 steps)",
}
# The fast-alone and slow-alone jobs started together as two independent jobs with no exchange:
# what this machine gives both groups at once, the reference a hybrid job is held against here.
SIDE_BY_SIDE = "side by side"


def group_flags(mode: str, config: str, args: argparse.Namespace) -> list[str]:
    """The --group values of one configuration in one stand-in mode."""
    if mode == "quota":
        fast, slow = f"fast:2:cpu={args.fast_cpu}:cpus=0", f"slow:2:cpu={args.slow_cpu}:cpus=1"
    else:
        fast, slow = f"fast:2:speed={args.fast_speed}", f"slow:2:speed={args.slow_speed}"
    chosen = {"fast alone": [fast], "slow alone": [slow], "both": [fast, slow]}[config]
    return [flag for group in chosen for flag in ("--group", group)]


def run_job(
    mode: str,
    config: str,
    args: argparse.Namespace,
    folder: Path,
    epochs: int | None = None,
    gate: Path | None = None,
) -> dict[str, Any]:
    """One `kaitian run` of examples/train.py; its result JSON with every rank's trace."""
    folder.mkdir(parents=True)
    command = [str(REPO / ".build" / "release" / "kaitian"), "run", "--log-dir", str(folder / "logs")]
    command += group_flags(mode, config, args)
    command += ["--", sys.executable, str(REPO / "examples" / "train.py"), "--backend", "kaitian"]
    command += ["--model", args.model, "--data", args.data, "--adaptive", args.adaptive]
    command += ["--global-batch", str(args.global_batch), "--epochs", str(epochs or args.epochs)]
    if gate is not None:
        command += ["--start-gate", str(gate)]
    command += ["--measure-seconds", str(args.measure_seconds)]
    if args.bucket_cap_mb is not None:
        command += ["--bucket-cap-mb", str(args.bucket_cap_mb)]
    command += ["--result-json", str(folder / "result.json"), "--trace-dir", str(folder / "trace")]
    env = dict(os.environ, PYTHONPATH=str(REPO / "python"), KAITIAN_INTRA_BACKEND="fast=kaitian,slow=gloo")
    env["XDG_CACHE_HOME"] = str(keep_one_calibration(folder.parent / "cache"))
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=args.timeout)
    if done.returncode != 0:
        raise SystemExit(f"{mode} / {config} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    result = json.loads((folder / "result.json").read_text())
    result["job_seconds"] = time.perf_counter() - started
    result["traces"] = [json.loads(p.read_text()) for p in sorted((folder / "trace").glob("rank-*.json"))]
    return result


def run_side_by_side(mode: str, args: argparse.Namespace, folder: Path, slow_share: float) -> dict[str, Any]:
    """Fast alone and slow alone started together; their throughputs while both were training.

    Both jobs wait at a gate after start-up, so their training loops begin together. The slow job
    trains enough epochs to outlast the fast one (slow_share: its throughput over fast's, alone),
    and no more.
    """
    gate = folder / "gate"
    gate.mkdir(parents=True)
    slow_epochs = max(1, math.ceil(args.epochs / max(slow_share, 1e-3)))
    with ThreadPoolExecutor(max_workers=2) as pool:
        fast = pool.submit(run_job, mode, "fast alone", args, folder / "fast", gate=gate)
        slow = pool.submit(run_job, mode, "slow alone", args, folder / "slow", epochs=slow_epochs, gate=gate)
        deadline = time.monotonic() + args.timeout
        while len(list(gate.glob("ready-*"))) < 2 and not (fast.done() or slow.done()):
            if time.monotonic() > deadline:
                raise SystemExit("side by side: the jobs did not reach their start gate")
            time.sleep(0.05)
        (gate / "go").touch()
        return side_by_side_summary(fast.result(), slow.result())


# ---- pure summaries (tested without processes) ----


def steady_steps(trace: dict[str, Any], skip: int = 3) -> list[dict[str, Any]]:
    """A rank's steps without the first `skip` (warm-up), or all of them when there are too few."""
    return trace["steps"][skip:] or trace["steps"]


def rank_summary(trace: dict[str, Any]) -> dict[str, Any]:
    """Per rank: mean batch, compute per sample, step, exposed communication, stage means."""
    steps = steady_steps(trace)
    samples = sum(s["batch"] for s in steps)
    return {
        "rank": trace["rank"],
        "kind": trace["kind"],
        "batch": samples / len(steps),
        "compute_ms_per_sample": 1e3 * sum(s["compute"] for s in steps) / max(samples, 1),
        "step_ms": 1e3 * statistics.fmean(s["step"] for s in steps),
        "exposed_ms": 1e3 * statistics.fmean(s["step"] - s["compute"] for s in steps),
        "stages_ms": stage_means_ms(steps),
        "thread_cpu_seconds": trace.get("thread_cpu_seconds", {}),
    }


def job_summary(result: dict[str, Any]) -> dict[str, Any]:
    ranks = [rank_summary(t) for t in result["traces"]]
    fast = [r for r in ranks if r["kind"] == "fast"]
    return {
        "samples_per_second": result["samples_per_second"],
        "seconds": result["seconds"],
        # What a user waits for: the whole `kaitian run`, and its part before the first step.
        "job_seconds": result.get("job_seconds"),
        "to_first_step_seconds": (result.get("startup_seconds") or {}).get("to first step"),
        "accuracy": result["accuracy"],
        "plan": result["final_plan"],
        "fast_compute_ms_per_sample": statistics.fmean(r["compute_ms_per_sample"] for r in fast) if fast else None,
        # The fast ranks' wait after their last gradient: what communication (and the slowest rank)
        # adds to a step the fast devices alone would have set.
        "fast_exposed_ms": statistics.fmean(r["exposed_ms"] for r in fast) if fast else None,
        # Compute-only ceilings at this global batch from the ranks' measured step costs (a
        # hybrid job's only): all groups, and the fast group alone (examples/train.py's group_gain).
        "ceiling": (result.get("gain") or {}).get("ceiling"),
        "fastest_group_ceiling": (result.get("gain") or {}).get("fastest_group_ceiling"),
        "ranks": ranks,
    }


def overlap_window(jobs: list[dict[str, Any]]) -> tuple[float, float]:
    """The wall-clock span in which every job was in its steady steps."""
    starts, ends = [], []
    for job in jobs:
        steps = [s for t in job["traces"] for s in steady_steps(t)]
        starts.append(min(s["wall"] - s["step"] for s in steps))
        ends.append(max(s["wall"] for s in steps))
    return max(starts), min(ends)


def samples_per_second_within(job: dict[str, Any], window: tuple[float, float]) -> float:
    """A job's throughput from the steps it finished inside window (every rank's samples)."""
    begin, end = window
    samples = sum(s["batch"] for t in job["traces"] for s in steady_steps(t) if begin < s["wall"] <= end)
    return samples / (end - begin)


def side_by_side_summary(fast: dict[str, Any], slow: dict[str, Any]) -> dict[str, Any]:
    """Each group's throughput while both ran, and the fast ranks' compute then."""
    window = overlap_window([fast, slow])
    if window[1] - window[0] <= 0:
        raise SystemExit("side by side: the two jobs' steady steps never overlapped (more --epochs)")
    summary = job_summary(fast)
    fast_rate = samples_per_second_within(fast, window)
    slow_rate = samples_per_second_within(slow, window)
    summary.update(
        samples_per_second=fast_rate + slow_rate,
        fast_samples_per_second=fast_rate,
        slow_samples_per_second=slow_rate,
        overlap_seconds=window[1] - window[0],
    )
    return summary


def mode_report(mode: str, rounds: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Medians and spreads over rounds for one mode, with per-round ratios."""

    def series(config: str, key: str) -> list[float]:
        return [r[config][key] for r in rounds if r[config].get(key) is not None]

    gain = [r["both"]["samples_per_second"] / r["fast alone"]["samples_per_second"] for r in rounds]
    ideal = [
        r["both"]["samples_per_second"]
        / (r["fast alone"]["samples_per_second"] + r["slow alone"]["samples_per_second"])
        for r in rounds
    ]
    compute = [r["both"]["fast_compute_ms_per_sample"] / r["fast alone"]["fast_compute_ms_per_sample"] for r in rounds]
    exposed = [r["both"]["fast_exposed_ms"] / max(r["fast alone"]["fast_exposed_ms"], 1e-9) for r in rounds]
    paired = [r for r in rounds if SIDE_BY_SIDE in r]  # absent from runs saved before it existed
    timed = [r for r in rounds if r["both"].get("job_seconds") and r["fast alone"].get("job_seconds")]
    bounded = [r["both"] for r in rounds if r["both"].get("ceiling")]  # absent before the ceilings existed
    return {
        "ceiling": {
            "over_fast": [b["ceiling"] / b["fastest_group_ceiling"] for b in bounded],
            "both_over_it": [b["samples_per_second"] / b["ceiling"] for b in bounded],
        },
        "side_by_side": {
            "sum": [r[SIDE_BY_SIDE]["samples_per_second"] for r in paired],
            "over_fast": [
                r[SIDE_BY_SIDE]["samples_per_second"] / r["fast alone"]["samples_per_second"] for r in paired
            ],
            "both_over_it": [r["both"]["samples_per_second"] / r[SIDE_BY_SIDE]["samples_per_second"] for r in paired],
            "fast_compute_ratio": [
                r[SIDE_BY_SIDE]["fast_compute_ms_per_sample"] / r["fast alone"]["fast_compute_ms_per_sample"]
                for r in paired
            ],
        },
        "end_to_end": {
            "job_seconds": {c: series(c, "job_seconds") for c in CONFIGURATIONS},
            "to_first_step_seconds": {c: series(c, "to_first_step_seconds") for c in CONFIGURATIONS},
            "fast_over_both": [r["fast alone"]["job_seconds"] / r["both"]["job_seconds"] for r in timed],
        },
        "mode": mode,
        "rounds": len(rounds),
        "throughput": {c: series(c, "samples_per_second") for c in CONFIGURATIONS},
        "accuracy": {c: series(c, "accuracy") for c in CONFIGURATIONS},
        "both_over_fast": gain,
        "both_over_ideal": ideal,
        "fast_compute_ms_per_sample": {c: series(c, "fast_compute_ms_per_sample") for c in ("fast alone", "both")},
        "fast_compute_ratio": compute,
        "fast_exposed_ms": {c: series(c, "fast_exposed_ms") for c in ("fast alone", "both")},
        "fast_exposed_ratio": exposed,
    }


def stage_table(round_: dict[str, dict[str, Any]]) -> list[str]:
    """Markdown rows: per rank of the hybrid job, batch, compute, step, exposed, stages, thread CPU."""
    rows = []
    for r in round_["both"]["ranks"]:
        threads = sorted(r["thread_cpu_seconds"].items(), key=lambda item: -item[1])[:4]
        cpu = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in threads) or "-"
        rows.append(
            f"| {r['rank']} | {r['kind']} | {r['batch']:.1f} | {r['compute_ms_per_sample']:.2f} | "
            f"{r['step_ms']:.0f} | {r['exposed_ms']:.0f} | {stages_text(r['stages_ms'])} | {cpu} |"
        )
    return rows


def verdict(rep: dict[str, Any]) -> str:
    """One sentence per mode, computed from the medians: does the slow group add speed?"""
    gain = statistics.median(rep["both_over_fast"])
    ideal = statistics.median(rep["both_over_ideal"])
    if gain > 1:
        outcome = f"both groups train {gain:.2f}x as fast as the fast group alone"
    else:
        outcome = f"both groups train SLOWER than the fast group alone ({gain:.2f}x)"
    return (
        f"- **{rep['mode']}**: {outcome}, {100 * ideal:.0f}% of the sum of the two groups alone "
        f"(median of {rep['rounds']} alternated rounds; range {min(rep['both_over_fast']):.2f}-"
        f"{max(rep['both_over_fast']):.2f}x)."
    )


def side_by_side_lines(reports: list[dict[str, Any]]) -> list[str]:
    """Both solo jobs at once (what the machine gives both groups), and the hybrid job against it."""
    measured = [rep for rep in reports if rep["side_by_side"]["sum"]]
    if not measured:
        return []
    lines = [
        "",
        "**Side by side: what the machine gives both groups at once.** The fast-alone and "
        "slow-alone jobs started together, as two independent jobs with no exchange between "
        "them. Their throughputs, counted while both were training, add up to what this machine "
        "gives the two groups at once; the fast ranks' compute shows what the other group's mere "
        "presence costs them, on shared cores, caches and memory. Not a strict bound: each solo "
        "job also pays its own full gradient exchange every step, which the hybrid job shares.",
        "",
        "| stand-in | side by side: fast + slow | side by side / fast alone | both / side by side | "
        "fast ranks' compute, side by side / alone |",
        "|---|---:|---:|---:|---:|",
    ]
    for rep in measured:
        pair = rep["side_by_side"]
        lines.append(
            f"| {rep['mode']} | {spread(pair['sum'])} | {spread(pair['over_fast'])} | "
            f"{spread(pair['both_over_it'])} | {spread(pair['fast_compute_ratio'])} |"
        )
    return lines


def end_to_end_lines(reports: list[dict[str, Any]]) -> list[str]:
    """The user's measure: the whole job's wall time, start-up included, both groups against fast alone."""
    measured = [rep for rep in reports if rep["end_to_end"]["fast_over_both"]]
    if not measured:
        return []
    lines = [
        "",
        "**End to end: the same epochs, from `kaitian run` to its exit.** Start-up is each job's "
        "time to its first step (imports, process group, data and model, measuring every rank). In "
        "quota mode the slow ranks' host runs at their quota, so their imports and model building "
        "take about twice as long as the fast ranks': that slows the hybrid job's start-up, and an "
        "accelerator's host would not (it runs at full speed). Short runs weigh start-up heavily; "
        "the throughput above is what a long run approaches.",
        "",
        "| stand-in | fast alone: job s (first step s) | both: job s (first step s) | "
        "time to train, fast alone / both |",
        "|---|---:|---:|---:|",
    ]
    for rep in measured:
        jobs, first = rep["end_to_end"]["job_seconds"], rep["end_to_end"]["to_first_step_seconds"]
        lines.append(
            f"| {rep['mode']} | {spread(jobs['fast alone'])} ({spread(first['fast alone'])}) | "
            f"{spread(jobs['both'])} ({spread(first['both'])}) | {spread(rep['end_to_end']['fast_over_both'])} |"
        )
    return lines


def ceiling_lines(reports: list[dict[str, Any]]) -> list[str]:
    """What the global batch allows at best: the compute-only ceilings from measured step costs."""
    measured = [rep for rep in reports if rep["ceiling"]["over_fast"]]
    if not measured:
        return []
    lines = [
        "",
        "**Ceiling at this global batch, compute only.** Before training, every rank of the hybrid "
        "job times a step of two batch sizes, which gives its step cost as a fixed part plus a part "
        "per sample (`kaitian.measure_plan`). From those costs: the global batch split over the fast "
        "ranks alone, and over all ranks (the planner's split), with no communication at all. Why "
        "this matters: giving samples to the slow group shortens the fast ranks' steps only by the "
        "part per sample, and the slow ranks' small batches are mostly fixed part, so the gain "
        "available at a given global batch can be well below the sum of the groups' solo speeds.",
        "",
        "| stand-in | ceiling: all groups / fast alone | both / ceiling of all groups |",
        "|---|---:|---:|",
    ]
    for rep in measured:
        bound = rep["ceiling"]
        lines.append(f"| {rep['mode']} | {spread(bound['over_fast'])} | {spread(bound['both_over_it'])} |")
    return lines


def reproduce_flags(args: argparse.Namespace) -> list[str]:
    """The flags that give this run again."""
    flags = ["--rounds", str(args.rounds), "--modes", ",".join(args.modes), "--epochs", str(args.epochs)]
    flags += ["--global-batch", str(args.global_batch), "--adaptive", args.adaptive]
    flags += ["--fast-cpu", f"{args.fast_cpu:g}", "--slow-cpu", f"{args.slow_cpu:g}"]
    flags += ["--fast-speed", f"{args.fast_speed:g}", "--slow-speed", f"{args.slow_speed:g}"]
    if args.bucket_cap_mb is not None:
        flags += ["--bucket-cap-mb", f"{args.bucket_cap_mb:g}"]
    if not args.side_by_side:
        flags.append("--no-side-by-side")
    report = args.markdown if args.markdown is not None else Path("docs/HYBRID-GAIN.md")
    flags += ["--markdown", str(report)]
    if getattr(args, "json_out", None) is not None:
        flags += ["--json-out", str(args.json_out)]
    return flags


def commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO)
    return done.stdout.strip() or "unknown"


def markdown(
    reports: list[dict[str, Any]], raw: dict[str, list[dict[str, Any]]], args: argparse.Namespace, provenance: str
) -> str:
    lines = [
        "# Does adding a slower group make training faster?",
        "",
        f"Generated by `bench/hybrid_gain.py` (do not edit by hand); {provenance}. "
        f"MobileNetV2 (the paper's model) on scikit-learn's digits scaled to 3x32x32, {args.epochs} "
        f"epoch(s), global batch {args.global_batch}, DDP buckets of "
        f"{args.bucket_cap_mb or 25:g} MB, {SHARES[args.adaptive]}, {args.rounds} rounds run "
        "in alternation (fast alone, both, slow alone, then the next stand-in). Medians, with the "
        "spread over rounds in parentheses. Fast group: 2 workers, Kaitian's engine inside (the NCCL "
        "stand-in); slow group: 2 workers, torch's gloo inside (the CNCL stand-in); the groups meet "
        "through the engine. Fast alone uses the engine, the faster library here, so the baseline is "
        "the harder one.",
        "",
        "Two stand-ins for a slow accelerator, reported apart:",
        "",
        f"- **quota**: cgroup CPU quotas, fast {args.fast_cpu} CPU per worker pinned to CPU 0, slow "
        f"{args.slow_cpu} CPU per worker pinned to CPU 1. **Hurts Kaitian**: the quota also throttles "
        "each rank's communication threads (gloo's, the engine's, the hybrid pipeline's), which an "
        "accelerator's host runs at full speed.",
        f"- **emulated**: EMULATED device speeds, fast {args.fast_speed} and slow {args.slow_speed} of "
        "a host core (`kaitian run --group KIND:N:speed=F`, `kaitian.emulate_device`): each rank "
        "computes on the CPU, then waits until a device of that speed would have finished, with one "
        "calibration of the host's cost shared by every rank and job. Host threads run free, as beside "
        "a GPU. **May favour Kaitian**: the emulated devices are slow (a few samples per second), so "
        "communication is small next to compute; on real accelerators compute is faster and the same "
        "exchange weighs more. **And hurts it**: the real compute still runs on this machine's 2 "
        "cores, and a paced backward takes about twice the CPU time of an unpaced one (measured "
        "alone: 1.7-2.6x, it wakes to cold caches), so with both groups the four ranks keep most "
        "of the 2 cores busy and the communication threads compete with them for a core, as "
        "they would not beside real accelerators.",
        "",
        *[verdict(rep) for rep in reports],
        "",
        "| stand-in | fast alone | slow alone | both | both / fast alone | both / (fast + slow) | "
        "fast ranks' compute, both / alone | fast ranks' exposed comm, alone -> both |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for rep in reports:
        t = rep["throughput"]
        exposed = rep["fast_exposed_ms"]
        lines.append(
            f"| {rep['mode']} | {spread(t['fast alone'])} | {spread(t['slow alone'])} | {spread(t['both'])} | "
            f"{spread(rep['both_over_fast'])} | {spread(rep['both_over_ideal'])} | "
            f"{spread(rep['fast_compute_ratio'])} | {spread(exposed['fast alone'])} ms -> "
            f"{spread(exposed['both'])} ms |"
        )
    lines += end_to_end_lines(reports)
    lines += side_by_side_lines(reports)
    lines += ceiling_lines(reports)
    accuracy = "; ".join(
        f"{rep['mode']}: "
        + ", ".join(f"{c} {100 * statistics.median(rep['accuracy'][c]):.1f}%" for c in CONFIGURATIONS)
        for rep in reports
    )
    lines += [
        "",
        "Throughput in samples/s of the training loop (start-up excluded). Fast ranks' compute is "
        "the time from a step's start to its last gradient, per sample; exposed communication is "
        "the rest of the step (the exchange after the last gradient, and waiting for the slowest "
        f"rank). Test accuracy (median): {accuracy}. A short run's accuracy depends on the seed and "
        "on how the global batch is split over ranks (each rank's BatchNorm normalises its own "
        "slice) more than on anything the engine does: `bench/split_accuracy.py` measures that "
        "spread without any communication. The hybrid path's math is checked by the tests instead "
        "(gradients bitwise equal on every rank and equal to full-batch training).",
        "",
        "## Where a hybrid step's time goes",
        "",
        "Last round, per rank, means per step in ms. Stages are wall time on the hybrid pipeline's "
        "threads (they overlap each other and the backward pass, and include waiting for peers); "
        "thread CPU is the four busiest threads during the training loop (`python` runs the loop itself).",
        "",
    ]
    for mode, rounds in raw.items():
        lines += [
            f"**{mode}**",
            "",
            "| rank | group | batch | compute ms/sample | step ms | exposed ms | stages (ms per step) | thread CPU |",
            "|---:|---|---:|---:|---:|---:|---|---|",
            *stage_table(rounds[-1]),
            "",
        ]
    lines += [
        "## Reproduce",
        "",
        "```",
        "sudo .venv/bin/python bench/hybrid_gain.py " + " ".join(reproduce_flags(args)),
        "```",
        "",
        "This machine's speed drifts by up to 1.7x within minutes: compare ratios within a round, "
        "not figures across runs.",
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", default="quota,emulated", help="comma-separated: quota, emulated")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default="mobilenet_v2")
    parser.add_argument("--data", default="digits32")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--global-batch", type=int, default=64)
    parser.add_argument("--measure-seconds", type=float, default=3.0)
    parser.add_argument(
        "--adaptive",
        choices=sorted(SHARES),
        default="static",
        help="examples/train.py's --adaptive: shares measured before training, or also re-planned while training",
    )
    parser.add_argument("--fast-cpu", type=float, default=0.5)
    parser.add_argument("--slow-cpu", type=float, default=0.25)
    # Emulated speeds low enough that the real compute leaves some of this machine's 2 cores free
    # (0.9 cores with both groups by the calibrated costs; pacing's own overhead brings it near 1.8).
    parser.add_argument("--fast-speed", type=float, default=0.3)
    parser.add_argument("--slow-speed", type=float, default=0.15)
    parser.add_argument(
        "--bucket-cap-mb",
        type=float,
        default=4.0,
        help="DDP bucket size for every configuration (torch's default is 25; 4 lets MobileNetV2's "
        "exchange start during backward)",
    )
    parser.add_argument(
        "--no-side-by-side",
        dest="side_by_side",
        action="store_false",
        help="skip running fast alone and slow alone at the same time (what the machine gives both groups at once)",
    )
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per job")
    parser.add_argument("--markdown", type=Path, help="write the report here")
    parser.add_argument("--json", action="store_true", help="print the raw results as JSON")
    parser.add_argument("--json-out", type=Path, help="also write the raw results as JSON here (for --from-json)")
    parser.add_argument("--from-json", type=Path, help="render the report from a --json output instead of running")
    args = parser.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not args.modes or any(m not in ("quota", "emulated") for m in args.modes):
        parser.error("--modes takes quota, emulated or both")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.from_json is not None:
        saved = json.loads(args.from_json.read_text())
        for key, value in saved["args"].items():
            if key not in ("markdown", "json", "from_json", "json_out"):
                setattr(args, key, value)
        raw = saved["raw"]
        provenance = f"measured {saved['measured']} at commit {saved['commit']}, rendered from saved results"
    else:
        raw = measure(args)
        provenance = f"measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} at commit {commit()}"
    reports = [mode_report(mode, rounds) for mode, rounds in raw.items()]
    text = markdown(reports, raw, args, provenance)
    print(text)
    if args.markdown is not None:
        args.markdown.write_text(text)
    if (args.json or args.json_out is not None) and args.from_json is None:
        saved_args = {k: v for k, v in vars(args).items() if k not in ("markdown", "from_json", "json_out")}
        measured = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        saved = json.dumps({"args": saved_args, "commit": commit(), "measured": measured, "raw": raw}, indent=1)
        if args.json:
            print(saved)
        if args.json_out is not None:
            args.json_out.write_text(saved + "\n")


def measure(args: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    """Runs every round; per mode, the rounds' summaries of each configuration."""
    if "quota" in args.modes and os.geteuid() != 0:
        raise SystemExit("quota mode needs root (cgroups): run as root, or --modes emulated")
    scratch = Path(tempfile.mkdtemp(prefix="kaitian-gain-"))
    raw: dict[str, list[dict[str, Any]]] = {mode: [] for mode in args.modes}
    total = args.rounds * len(args.modes) * (len(CONFIGURATIONS) + int(args.side_by_side))
    done = 0
    try:
        for round_index in range(args.rounds):
            for mode in args.modes:
                results = {}
                for config in CONFIGURATIONS:
                    done += 1
                    print(
                        f"[{done}/{total}] round {round_index + 1}, {mode}: {config} ...", file=sys.stderr, flush=True
                    )
                    folder = scratch / f"{round_index}-{mode}-{config.replace(' ', '-')}"
                    results[config] = job_summary(run_job(mode, config, args, folder))
                    s = results[config]
                    print(
                        f"        {s['samples_per_second']:.1f} samples/s, plan {s['plan']}, "
                        f"fast compute {s['fast_compute_ms_per_sample'] or 0:.2f} ms/sample, "
                        f"fast exposed {s['fast_exposed_ms'] or 0:.0f} ms",
                        file=sys.stderr,
                        flush=True,
                    )
                if args.side_by_side:
                    done += 1
                    print(f"[{done}/{total}] round {round_index + 1}, {mode}: {SIDE_BY_SIDE} ...", file=sys.stderr)
                    share = results["slow alone"]["samples_per_second"] / results["fast alone"]["samples_per_second"]
                    pair = run_side_by_side(mode, args, scratch / f"{round_index}-{mode}-side-by-side", share)
                    results[SIDE_BY_SIDE] = pair
                    print(
                        f"        fast {pair['fast_samples_per_second']:.1f} + slow "
                        f"{pair['slow_samples_per_second']:.1f} samples/s over {pair['overlap_seconds']:.0f} s, "
                        f"fast compute {pair['fast_compute_ms_per_sample']:.2f} ms/sample",
                        file=sys.stderr,
                        flush=True,
                    )
                raw[mode].append(results)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return raw


if __name__ == "__main__":
    main()
