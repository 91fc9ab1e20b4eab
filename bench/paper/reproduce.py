"""Reproduces the Kaitian paper's Figures 2, 3 and 4 on this machine, in one run.

The paper trains MobileNetV2 on CIFAR-10 with 2 NVIDIA GPUs ("2G", NCCL) and 2 Cambricon MLUs
("2M", CNCL). Here the two device kinds are two groups of 2 CPU workers, made unequal by one of
two stand-ins for a slow accelerator:

  quota     cgroup CPU quotas (10 ms period): fast --fast-cpu CPU per worker on CPU 0, slow
            --slow-cpu on CPU 1. Pessimistic: the quota also throttles each rank's host threads
            (its communication), which an accelerator's host runs at full speed.
  emulated  EMULATION (`kaitian run --group KIND:N:speed=F`): the model's forward and backward
            are paced to a device F times as fast as a host core while the host threads run
            free; fast --fast-speed, slow --slow-speed, no quotas, no pinning.

Inside the fast group ranks talk through Kaitian's engine, inside the slow group through torch's
gloo (standing in for a vendor library), and the groups meet through Kaitian's host-memory path,
as GPUs and MLUs do. Every job runs examples/train.py under `kaitian run` on the same samples
(same epochs, same global batch), on scikit-learn's digits (real data, so accuracy means
something) with the example's small CNN, or with --workload mobilenet on generated CIFAR-shaped
data (CIFAR-10 cannot be downloaded here).

  Figure 2: time to train and test accuracy under both stand-ins: fast group alone (Kaitian's
            engine, the faster library here), both groups with Kaitian and online load
            adaptation, slow group alone (gloo), run in --rounds alternated rounds (fast alone,
            both, slow alone; quota, then emulated), reported as medians and ranges.
  Figure 3: per-worker step time and utilization (compute / step) of the hybrid job under an
            equal split, static measured shares and online re-balancing (quotas).
  Figure 4: homogeneous overhead: each group alone with backend "kaitian" against torch's gloo
            (quotas).

Writes docs/RESULTS.md and docs/results/figure-{2,3,4}.png (matplotlib), quoting the paper's
numbers beside ours (never instead of them). --json prints the raw results. Needs root (CPU
quotas). Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))  # benchlib, also when loaded from elsewhere (the tests)

from benchlib import keep_one_calibration, spread, stage_means_ms, stages_text  # noqa: E402

PAPER = {
    "figure2": {"2G (NCCL)": (236.4, 0.853), "2M (CNCL)": (166.3, 0.855), "2G+2M (Kaitian)": (137.4, 0.834)},
    "figure2_speedup": "42% faster than 2G alone, 17% faster than 2M alone",
    "figure4": {"2 GPUs": (232.4, 226.1), "2 MLUs": (161.3, 154.6)},  # (Kaitian, native) seconds
}


@dataclass(frozen=True)
class Job:
    """One `kaitian run` of examples/train.py."""

    name: str
    groups: list[str]  # --group values
    backend: str
    adaptive: str
    intra: str = ""  # KAITIAN_INTRA_BACKEND
    extra: list[str] = field(default_factory=list)


def groups(args: argparse.Namespace, fast: bool, slow: bool) -> list[str]:
    chosen = []
    if fast:
        chosen.append(f"fast:2:cpu={args.fast_cpu}:cpus=0")
    if slow:
        chosen.append(f"slow:2:cpu={args.slow_cpu}:cpus=1")
    return chosen


def jobs(args: argparse.Namespace) -> list[Job]:
    """Figures 3 and 4: the hybrid job's three load strategies and each group alone on either backend."""
    hybrid = "fast=kaitian,slow=gloo"
    return [
        Job("fast alone, gloo", groups(args, True, False), "gloo", "off"),
        Job("fast alone, kaitian", groups(args, True, False), "kaitian", "off", "fast=kaitian"),
        Job("slow alone, gloo", groups(args, False, True), "gloo", "off"),
        Job("slow alone, kaitian", groups(args, False, True), "kaitian", "off", "slow=kaitian"),
        Job("both, equal split", groups(args, True, True), "kaitian", "off", hybrid),
        Job("both, static shares", groups(args, True, True), "kaitian", "static", hybrid),
        Job("both, online", groups(args, True, True), "kaitian", "online", hybrid),
    ]


STAND_INS = ("quota", "emulated")
# The order each round runs them in: the two configurations compared most (fast alone and both)
# back to back.
FIGURE2_CONFIGURATIONS = ("fast alone", "both", "slow alone")


def figure2_job(args: argparse.Namespace, mode: str, config: str) -> Job:
    """One Figure 2 configuration under one stand-in for a slow accelerator."""
    if mode == "quota":
        fast, slow = groups(args, True, False), groups(args, False, True)
    else:
        fast, slow = [f"fast:2:speed={args.fast_speed}"], [f"slow:2:speed={args.slow_speed}"]
    if config == "fast alone":
        # The fast group's own library in the hybrid job, and the faster one here: the harder baseline.
        return Job(f"{mode}: fast alone", fast, "kaitian", "off", "fast=kaitian")
    if config == "slow alone":
        return Job(f"{mode}: slow alone", slow, "gloo", "off")
    return Job(f"{mode}: both", fast + slow, "kaitian", "online", "fast=kaitian,slow=gloo")


def workload_arguments(args: argparse.Namespace) -> list[str]:
    if args.workload == "mobilenet":
        return ["--data", "synthetic", "--model", "mobilenet_v2", "--synthetic-samples", str(args.samples)]
    return ["--data", "digits", "--model", "cnn"]


def run_job(job: Job, args: argparse.Namespace, folder: Path, cache: Path) -> dict[str, Any]:
    """Runs one job in `folder`; its summary (result JSON) with every rank's per-step trace."""
    ranks = sum(int(g.split(":")[1]) for g in job.groups)
    batch = ["--global-batch", str(args.global_batch)]
    if job.adaptive == "off":
        batch = ["--batch-size", str(args.global_batch // ranks)]
    command = [str(REPO / ".build" / "release" / "kaitian"), "run", "--log-dir", str(folder / "logs")]
    for group in job.groups:
        command += ["--group", group]
    command += ["--", sys.executable, str(REPO / "examples" / "train.py"), "--backend", job.backend]
    command += ["--adaptive", job.adaptive, "--epochs", str(args.epochs), "--interval", str(args.interval)]
    command += [*batch, *workload_arguments(args), "--result-json", str(folder / "result.json")]
    command += ["--trace-dir", str(folder / "trace"), *job.extra]
    env = dict(os.environ, PYTHONPATH=str(REPO / "python"), XDG_CACHE_HOME=str(keep_one_calibration(cache)))
    if job.intra:
        env["KAITIAN_INTRA_BACKEND"] = job.intra
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=args.timeout)
    if done.returncode != 0:
        raise SystemExit(f"job '{job.name}' failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    result = json.loads((folder / "result.json").read_text())
    result["job_seconds"] = time.perf_counter() - started
    result["traces"] = [json.loads(p.read_text()) for p in sorted((folder / "trace").glob("rank-*.json"))]
    return result


def folder_name(name: str) -> str:
    return name.replace(": ", "-").replace(", ", "-").replace(" ", "-")


# ---- pure helpers (tested without processes) ----


def worker_stats(trace: dict[str, Any], skip: int = 2) -> dict[str, float]:
    """Mean step and compute time of one worker (first `skip` steps dropped: warm-up)."""
    steps = trace["steps"][skip:] or trace["steps"]
    step = statistics.fmean(s["step"] for s in steps) if steps else 0.0
    compute = statistics.fmean(s["compute"] for s in steps) if steps else 0.0
    batch = statistics.fmean(s["batch"] for s in steps) if steps else 0.0
    return {
        "step_ms": 1e3 * step,
        "compute_ms": 1e3 * compute,
        "utilization": compute / step if step > 0 else 0.0,
        "batch": batch,
    }


FIGURE2_LABELS = {
    "fast alone": ("fast group alone (2 workers, Kaitian's engine)", "2G (NCCL)"),
    "both": ("both groups, Kaitian, online shares", "2G+2M (Kaitian)"),
    "slow alone": ("slow group alone (2 workers, gloo)", "2M (CNCL)"),
}


def figure2_summary(rounds: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """One stand-in's Figure 2 over its rounds: per configuration the training times and accuracies,
    and per round how both groups compare with each group alone and with their sum.

    Every job trains the same samples, so a throughput ratio is the inverse ratio of times; the
    sum of the groups alone is the ideal a hybrid job can reach (1/fast + 1/slow in samples per
    second).
    """
    seconds = {c: [r[c]["seconds"] for r in rounds] for c in FIGURE2_CONFIGURATIONS}
    accuracy = {c: [r[c]["accuracy"] for r in rounds] for c in FIGURE2_CONFIGURATIONS}
    pairs = list(zip(seconds["fast alone"], seconds["both"], seconds["slow alone"], strict=True))
    return {
        "seconds": seconds,
        "accuracy": accuracy,
        "both_over_fast": [fast / both for fast, both, _ in pairs],
        "both_over_slow": [slow / both for _, both, slow in pairs],
        "both_over_sum": [(1 / both) / (1 / fast + 1 / slow) for fast, both, slow in pairs],
    }


def median(values: list[float]) -> float:
    return statistics.median(values)


def figure2_rows(summaries: dict[str, dict[str, Any]]) -> list[tuple[str, str, str, str, str]]:
    """(stand-in, configuration, training time, accuracy, paper's figure) for Figure 2's table."""
    paper = PAPER["figure2"]
    rows = []
    for mode, summary in summaries.items():
        for config in FIGURE2_CONFIGURATIONS:
            label, key = FIGURE2_LABELS[config]
            rows.append(
                (
                    mode,
                    label,
                    f"{spread(summary['seconds'][config])} s",
                    f"{100 * median(summary['accuracy'][config]):.1f}%",
                    f"{paper[key][0]:.1f} s, {100 * paper[key][1]:.1f}%",
                )
            )
    return rows


def figure2_verdict(mode: str, summary: dict[str, Any]) -> str:
    """One sentence: how both groups compare with each group alone, as the paper says it."""
    over_fast = median(summary["both_over_fast"])
    word = "faster" if over_fast > 1 else "SLOWER"
    return (
        f"- **{mode}**: both groups train {word} than the fast group alone, {spread(summary['both_over_fast'])}x "
        f"as fast (median and range of the rounds), {spread(summary['both_over_slow'])}x as fast as the slow "
        f"group alone, {100 * median(summary['both_over_sum']):.0f}% of the sum of the two groups alone "
        f"(range {100 * min(summary['both_over_sum']):.0f}-{100 * max(summary['both_over_sum']):.0f}%)."
    )


def hybrid_breakdown(trace: dict[str, Any], skip: int = 2) -> dict[str, Any]:
    """One rank of the hybrid job: mean batch, step, compute, exposed time and stage wall times (ms)."""
    stats = worker_stats(trace, skip)
    stages = stage_means_ms(trace["steps"][skip:] or trace["steps"])
    return {**stats, "exposed_ms": stats["step_ms"] - stats["compute_ms"], "stages_ms": stages}


def breakdown_lines(job: dict[str, Any]) -> list[str]:
    """Markdown: where one hybrid job's step goes, per rank."""
    lines = [
        "| rank | group | mean batch | step | compute | exposed | stages (ms per step) |",
        "|---:|---|---:|---:|---:|---:|---|",
    ]
    for trace in job["traces"]:
        b = hybrid_breakdown(trace)
        lines.append(
            f"| {trace['rank']} | {trace['kind']} | {b['batch']:.1f} | {b['step_ms']:.1f} ms | "
            f"{b['compute_ms']:.1f} ms | {b['exposed_ms']:.1f} ms | {stages_text(b['stages_ms'])} |"
        )
    return lines


def figure3_rows(results: dict[str, dict[str, Any]]) -> list[tuple[str, int, str, dict[str, float]]]:
    """(strategy, rank, kind, stats) for every worker of the three hybrid jobs."""
    rows = []
    for name in ("both, equal split", "both, static shares", "both, online"):
        for trace in results[name]["traces"]:
            rows.append((name.split(", ")[1], trace["rank"], trace["kind"], worker_stats(trace)))
    return rows


def figure4_rows(results: dict[str, dict[str, Any]]) -> list[tuple[str, float, float, float]]:
    """(group, kaitian seconds, gloo seconds, overhead) for Figure 4."""
    rows = []
    for group in ("fast", "slow"):
        ours, native = results[f"{group} alone, kaitian"]["seconds"], results[f"{group} alone, gloo"]["seconds"]
        rows.append((f"{group} group (2 workers)", ours, native, ours / native - 1))
    return rows


# Said in the report when, under quotas, the hybrid job loses to the fast group alone, as it can here.
SLOWER_UNDER_QUOTAS = """Under CPU quotas, unlike the paper, adding the slow group did not beat the fast group alone.
The quota that makes a group slow also slows its communication: a rank at 0.25 CPU runs its
share of every gradient exchange (torch's gloo inside the group, the hybrid path's copies and
threads) at a quarter of a core, and with this small model the exchange, not the compute, fills
much of each step (the breakdown below, and the utilization column of Figure 3). An accelerator
computes on the device and communicates on an unthrottled host, which is what the emulated
stand-in models."""

# Said when the emulated devices' hybrid job loses too: then the stand-in is not to blame.
SLOWER_EMULATED = """With emulated devices too, adding the slow group did not beat the fast group alone: the
breakdown below shows where the hybrid step goes."""


def stand_in_lines(args: argparse.Namespace) -> list[str]:
    """What each stand-in models, and whether it favours or hurts Kaitian."""
    return [
        f"- **quota**: cgroup CPU quotas, fast {args.fast_cpu} CPU per worker pinned to CPU 0, slow "
        f"{args.slow_cpu} CPU per worker pinned to CPU 1. **Hurts Kaitian**: the quota also throttles "
        "each rank's communication threads, which an accelerator's host runs at full speed.",
        f"- **emulated**: EMULATED device speeds, fast {args.fast_speed} and slow {args.slow_speed} of a "
        "host core (`kaitian run --group KIND:N:speed=F`): each rank computes on the CPU, then waits "
        "until a device of that speed would have finished; host threads run free, as beside a GPU. "
        "**May favour Kaitian**: slow devices make communication small next to compute. **And hurts "
        "it**: the real compute of all four ranks still shares this machine's 2 cores with the "
        "communication threads.",
    ]


def figure2_lines(results: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """Markdown: Figure 2 under both stand-ins, its verdicts and each hybrid job's breakdown."""
    summaries = {mode: figure2_summary(rounds) for mode, rounds in results["figure2"].items()}
    lines = [
        "## Figure 2: training time and accuracy",
        "",
        f"Two stand-ins for a slow accelerator, in {args.rounds} alternated round(s): each round runs "
        "fast alone, both and slow alone under quotas, then the same with emulated devices. Medians, "
        "with the range over rounds in parentheses; accuracy is the median.",
        "",
        *stand_in_lines(args),
        "",
        "| stand-in | configuration | training time | test accuracy | paper |",
        "|---|---|---:|---:|---|",
        *(f"| {' | '.join(row)} |" for row in figure2_rows(summaries)),
        "",
        *(figure2_verdict(mode, summary) for mode, summary in summaries.items()),
        "",
        f"Paper: {PAPER['figure2_speedup']}. The fast group alone runs on Kaitian's engine, the "
        "faster library on this machine (Figure 4), so the baseline is the harder one.",
    ]
    explanations = {"quota": SLOWER_UNDER_QUOTAS, "emulated": SLOWER_EMULATED}
    for mode, summary in summaries.items():
        if median(summary["both_over_fast"]) <= 1:
            lines += ["", *explanations[mode].split("\n")]
    lines += [
        "",
        "Where the hybrid job's step goes (the last round's job; per rank, means per step after the "
        "first 2): compute runs to the last gradient; exposed is the rest of the step, the exchange "
        "after the last gradient and waiting for the slowest rank; stages are the hybrid allreduce's "
        "wall times on its pipeline threads (they overlap each other and the backward pass).",
    ]
    for mode, rounds in results["figure2"].items():
        lines += ["", f"**{mode}**", "", *breakdown_lines(rounds[-1]["both"])]
    return lines


# Said under Figure 2 always: where the paper's model is measured the way issue 11 asks.
FIGURE2_ON_MOBILENET = (
    "Figure 2 on the paper's model (MobileNetV2 on the digits at 3x32x32, with test accuracy), under "
    "both stand-ins (CPU quotas, and emulated devices whose communication threads are not "
    "throttled), in alternated runs with medians, spreads and a per-stage breakdown of the hybrid "
    "step: [HYBRID-GAIN.md](HYBRID-GAIN.md) at global batch 64, "
    "[HYBRID-GAIN-batch128.md](HYBRID-GAIN-batch128.md) at 128 and, CPU quotas only, "
    "[HYBRID-GAIN-batch256.md](HYBRID-GAIN-batch256.md) at 256 (`bench/hybrid_gain.py`)."
)


def markdown(results: dict[str, Any], args: argparse.Namespace, figures: list[str]) -> str:
    lines = [
        "# The paper's evaluation, reproduced on this machine",
        "",
        "Generated by `.venv/bin/python bench/paper/reproduce.py` (do not edit by hand); "
        f"run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average before the run "
        f"{args.load_before:.2f}.",
        "",
        "Setup: two groups of 2 CPU workers each, made unequal by a stand-in for a slow accelerator "
        "(Figure 2 shows both stand-ins; Figures 3 and 4 use CPU quotas). Workload: examples/train.py, "
        f"{workload_text(args)}, {args.epochs} epochs, global batch {args.global_batch}. Inside the fast "
        "group the ranks use Kaitian's engine, inside the slow group torch's gloo (a vendor library's "
        "stand-in); the groups meet through Kaitian. The paper's numbers (2 NVIDIA GPUs + 2 Cambricon "
        "MLUs, MobileNetV2 on CIFAR-10) are quoted for comparison; they are not this machine's. Times "
        "are the training loop's wall time (slowest rank), without start-up.",
        "",
        *figure2_lines(results, args),
        "",
        FIGURE2_ON_MOBILENET,
        "",
        "## Figure 3: load adaptation",
        "",
        "Per worker, mean over the run (first 2 steps dropped): step time, compute time (forward "
        "and backward until the last gradient is ready) and utilization = compute / step. A "
        "balanced plan gives every worker the same step time and high utilization.",
        "",
        "| strategy | rank | group | mean batch | step | compute | utilization | job training time |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    names = {"equal split": "both, equal split", "static shares": "both, static shares", "online": "both, online"}
    for strategy, rank, kind, stats in figure3_rows(results):
        seconds = results[names[strategy]]["seconds"]
        lines.append(
            f"| {strategy} | {rank} | {kind} | {stats['batch']:.1f} | {stats['step_ms']:.1f} ms | "
            f"{stats['compute_ms']:.1f} ms | {100 * stats['utilization']:.0f}% | {seconds:.2f} s |"
        )
    online = results["both, online"]
    lines += [
        "",
        f"Online plan changes: {len(online['plan_changes'])}; final plan {online['final_plan']}. "
        "The paper shows the same effect as utilization bars: its online mechanism converges to "
        "the balanced strategy.",
        "",
        "## Figure 4: homogeneous overhead",
        "",
        "| group | backend kaitian | torch gloo | overhead | paper |",
        "|---|---:|---:|---:|---|",
    ]
    paper4 = list(PAPER["figure4"].items())
    for (label, ours, native, overhead), (paper_label, (p_ours, p_native)) in zip(
        figure4_rows(results), paper4, strict=True
    ):
        lines.append(
            f"| {label} | {ours:.2f} s | {native:.2f} s | {100 * overhead:+.1f}% | "
            f"{paper_label}: {p_ours} s vs {p_native} s ({100 * (p_ours / p_native - 1):+.1f}%) |"
        )
    lines += ["", "## Plots", ""]
    lines += [f"![{name}](results/{name})" for name in figures]
    lines += [
        "",
        "## Reproduce",
        "",
        "```",
        f"sudo .venv/bin/python bench/paper/reproduce.py --epochs {args.epochs} --workload {args.workload} "
        f"--rounds {args.rounds}",
        "```",
        "",
        "One run on a shared 2-core machine: other load changes the numbers; compare runs, not single "
        "figures. `--json` prints the raw results, including every rank's per-step trace.",
    ]
    return "\n".join(lines) + "\n"


def workload_text(args: argparse.Namespace) -> str:
    if args.workload == "mobilenet":
        return f"MobileNetV2 on {args.samples} generated CIFAR-shaped images (accuracy not meaningful)"
    return "a small CNN on scikit-learn's digits (1437 train / 360 test images)"


def plot(results: dict[str, Any], folder: Path) -> list[str]:
    """figure-2.png, figure-3.png and figure-4.png in `folder`; their names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    names = []

    summaries = {mode: figure2_summary(rounds) for mode, rounds in results["figure2"].items()}
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    width = 0.8 / len(summaries)
    for index, (mode, summary) in enumerate(summaries.items()):
        positions = [p + (index - (len(summaries) - 1) / 2) * width for p in range(len(FIGURE2_CONFIGURATIONS))]
        times = [summary["seconds"][c] for c in FIGURE2_CONFIGURATIONS]
        medians = [median(t) for t in times]
        errors = [
            [m - min(t) for m, t in zip(medians, times, strict=True)],
            [max(t) - m for m, t in zip(medians, times, strict=True)],
        ]
        left.bar(positions, medians, width=width, yerr=errors, capsize=3, label=mode)
        right.bar(
            positions, [100 * median(summary["accuracy"][c]) for c in FIGURE2_CONFIGURATIONS], width=width, label=mode
        )
    for axis in (left, right):
        axis.set_xticks(range(len(FIGURE2_CONFIGURATIONS)), ["fast alone", "both (Kaitian)", "slow alone"])
        axis.legend(fontsize=8, title="stand-in", title_fontsize=8)
    left.set_ylabel("training time (s), median and range")
    left.set_title("Figure 2: time to train the same samples")
    right.set_ylabel("test accuracy (%)")
    right.set_ylim(0, 100)
    right.set_title("accuracy")
    fig.tight_layout()
    fig.savefig(folder / "figure-2.png", dpi=110)
    plt.close(fig)
    names.append("figure-2.png")

    strategies = ("both, equal split", "both, static shares", "both, online")
    fig, axes = plt.subplots(2, 3, figsize=(12, 5.5), sharex="col")
    for column, name in enumerate(strategies):
        for trace in results[name]["traces"]:
            times = [s["time"] for s in trace["steps"]]
            axes[0][column].plot(
                times, [1e3 * s["step"] for s in trace["steps"]], lw=0.8, label=f"rank {trace['rank']} {trace['kind']}"
            )
            axes[1][column].plot(times, [s["batch"] for s in trace["steps"]], lw=1.0, drawstyle="steps-post")
        axes[0][column].set_title(name.split(", ")[1])
        axes[1][column].set_xlabel("time (s)")
    axes[0][0].set_ylabel("step time (ms)")
    axes[1][0].set_ylabel("batch (samples)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Figure 3: step time and batch share per worker")
    fig.tight_layout()
    fig.savefig(folder / "figure-3.png", dpi=110)
    plt.close(fig)
    names.append("figure-3.png")

    f4 = figure4_rows(results)
    fig, axis = plt.subplots(figsize=(6, 3.6))
    positions = range(len(f4))
    axis.bar([p - 0.2 for p in positions], [row[1] for row in f4], width=0.4, label="kaitian")
    axis.bar([p + 0.2 for p in positions], [row[2] for row in f4], width=0.4, label="gloo")
    axis.set_xticks(list(positions), [row[0] for row in f4])
    axis.set_ylabel("training time (s)")
    axis.set_title("Figure 4: homogeneous overhead")
    axis.legend()
    fig.tight_layout()
    fig.savefig(folder / "figure-4.png", dpi=110)
    plt.close(fig)
    names.append("figure-4.png")
    return names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", choices=["digits", "mobilenet"], default="digits")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--global-batch", type=int, default=128)
    parser.add_argument("--interval", type=int, default=5, help="online re-balancing interval (steps)")
    parser.add_argument("--samples", type=int, default=1024, help="--workload mobilenet: generated images")
    parser.add_argument("--fast-cpu", type=float, default=0.5, help="quota stand-in: CPU per fast worker")
    parser.add_argument("--slow-cpu", type=float, default=0.25, help="quota stand-in: CPU per slow worker")
    parser.add_argument("--fast-speed", type=float, default=0.3, help="emulated stand-in: fast device speed")
    parser.add_argument("--slow-speed", type=float, default=0.15, help="emulated stand-in: slow device speed")
    parser.add_argument("--rounds", type=int, help="Figure 2's alternated rounds (default 3, --quick 1)")
    parser.add_argument("--quick", action="store_true", help="2 epochs, 1 round, no docs written (a smoke run)")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "RESULTS.md")
    parser.add_argument("--json", action="store_true", help="print the raw results as JSON")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per job")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs = 2
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("CPU quotas need root (cgroups): run as root")
    args.load_before = os.getloadavg()[0]
    scratch = Path(tempfile.mkdtemp(prefix="kaitian-paper-"))
    cache = scratch / "cache"  # one emulated-device calibration for every job of the run
    planned = [
        (f"round {n}", figure2_job(args, mode, config))
        for n in range(1, args.rounds + 1)
        for mode in STAND_INS
        for config in FIGURE2_CONFIGURATIONS
    ] + [("", job) for job in jobs(args)]
    results: dict[str, Any] = {"figure2": {mode: [] for mode in STAND_INS}}
    try:
        for index, (round_name, job) in enumerate(planned, 1):
            print(
                f"[{index}/{len(planned)}] {' '.join([round_name, job.name]).strip()} ...", file=sys.stderr, flush=True
            )
            result = run_job(job, args, scratch / folder_name(f"{round_name} {job.name}".strip()), cache)
            if round_name:
                mode, config = job.name.split(": ")
                rounds = results["figure2"][mode]
                if not rounds or config in rounds[-1]:
                    rounds.append({})
                rounds[-1][config] = result
            else:
                results[job.name] = result
            print(
                f"        {result['seconds']:.2f} s training, {result['samples_per_second']:.0f} samples/s, "
                f"accuracy {100 * result['accuracy']:.1f}%, plan {result['final_plan']}",
                file=sys.stderr,
                flush=True,
            )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if args.json:
        print(json.dumps(results, indent=1))
    if args.quick:
        print(markdown(results, args, []))
        return
    figures = plot(results, args.out.parent / "results")
    args.out.write_text(markdown(results, args, figures))
    print(f"wrote {args.out} and {len(figures)} plots in {args.out.parent / 'results'}", file=sys.stderr)


if __name__ == "__main__":
    main()
