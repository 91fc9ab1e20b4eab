"""Heterogeneity benchmark: load-adaptive scheduling with workers of really unequal speed.

Workers are made unequal by cgroup CPU quotas through `kaitian run` (needs root):
  two workers:   A = 1.0 CPU on core 0, B = 0.3 CPU on core 1
  three workers: A = 1.0 CPU on core 0, B = 0.5 and C = 0.25 CPU sharing core 1
In one job per configuration, the same CNN trains on the same number of samples (global batch
fixed) with (a) an equal split, (b) static shares measured before training, (c) online
re-balancing starting from the measured shares (as examples/train.py does), and (d) worker A alone; every worker's solo
throughput is measured in the same job, and the ideal is their sum. Then (e) runs online
re-balancing while B's quota is changed mid-run (B writes its own cgroup's quota file) and
prints the throughput per window, to show the plan following the change.

Goals (issue 4): (c) >= 90% of ideal; (c) beats (d) by about what B adds; (c) about 2x (a).
Output is markdown (also saved with --out), or one JSON document with --json. --quick: fewer
samples, for a smoke run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULT_TAG = "HETEROGENEITY-RESULT "


@dataclass(frozen=True)
class Config:
    """A job: one group per worker, as `kaitian run --group` flags, and B's quota change."""

    name: str
    groups: list[str]  # KIND:1:cpu=Q:cpus=C
    quotas: list[float]
    changed_quota: float  # B's (rank 1's) quota after the change in phase (e)


CONFIGS = [
    Config("two workers (A 1.0 CPU, B 0.3 CPU)", ["a:1:cpu=1.0:cpus=0", "b:1:cpu=0.3:cpus=1"], [1.0, 0.3], 0.15),
    Config(
        "three workers (A 1.0 CPU, B 0.5 CPU, C 0.25 CPU; B and C share a core)",
        ["a:1:cpu=1.0:cpus=0", "b:1:cpu=0.5:cpus=1", "c:1:cpu=0.25:cpus=1"],
        [1.0, 0.5, 0.25],
        0.25,
    ),
]


# ---- pure helpers (tested without processes) ----


def quota_file(proc_self_cgroup: str, root: str = "/sys/fs/cgroup") -> tuple[Path, str]:
    """This process's CPU quota file and its format ("v1": cfs_quota_us, "v2": cpu.max).

    Read from /proc/self/cgroup: a v1 line names the cpu controller ("4:cpu,cpuacct:/path"),
    the v2 line is "0::/path". v1 wins when both are present, as `kaitian run` prefers v2 only
    when the v2 hierarchy has the cpu controller, in which case no v1 cpu line exists.
    """
    v2 = None
    for line in proc_self_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if "cpu" in controllers.split(","):
            return Path(root, "cpu", path.lstrip("/"), "cpu.cfs_quota_us"), "v1"
        if controllers == "":
            v2 = Path(root, path.lstrip("/"), "cpu.max")
    if v2 is None:
        raise ValueError("no cpu cgroup in /proc/self/cgroup")
    return v2, "v2"


def quota_period(path: Path, kind: str) -> int:
    """The period (microseconds) the quota in `path` is a share of, as `kaitian run` set it."""
    if kind == "v1":
        return int((path.parent / "cpu.cfs_period_us").read_text())
    return int(path.read_text().split()[1])


def quota_text(cpus: float, kind: str, period_us: int) -> str:
    """What to write to the quota file for `cpus` CPUs of a `period_us` period."""
    quota = int(cpus * period_us)
    return str(quota) if kind == "v1" else f"{quota} {period_us}"


def parse_result(output: str) -> dict[str, Any]:
    """The JSON rank 0 printed after RESULT_TAG (kaitian run prefixes the line with the rank)."""
    for line in output.splitlines():
        if RESULT_TAG in line:
            return json.loads(line.split(RESULT_TAG, 1)[1])
    raise ValueError("no result line in the job's output")


def verdicts(result: dict[str, Any]) -> list[tuple[str, bool, str]]:
    """(goal, met, figures) for the issue's goals, from one configuration's throughputs."""
    ideal, alone = result["ideal"], result["alone"]
    equal, online = result["modes"]["equal"]["throughput"], result["modes"]["online"]["throughput"]
    added_ideal = ideal / alone - 1
    added = online / alone - 1
    return [
        ("(c) >= 90% of ideal", online >= 0.9 * ideal, f"{100 * online / ideal:.0f}% of ideal"),
        (
            "(c) beats (d) by about what the other workers add",
            added >= 0.8 * added_ideal,
            f"+{100 * added:.0f}% over A alone; the others add +{100 * added_ideal:.0f}% ideally",
        ),
        ("(c) about 2x (a) equal split", online >= 1.8 * equal, f"{online / equal:.2f}x"),
    ]


def markdown(results: list[dict[str, Any]]) -> str:
    """The report: one table per configuration, verdicts, and the quota-change timeline."""
    lines = []
    for result in results:
        ideal = result["ideal"]
        lines += [f"### {result['config']}", ""]
        solo = ", ".join(f"{k} {v:.1f}" for k, v in zip(result["kinds"], result["solo"], strict=True))
        lines += [f"Solo throughput (samples/s): {solo}; ideal = their sum = {ideal:.1f}.", ""]
        lines += ["| run | plan (final) | samples/s | % of ideal |", "|---|---|---:|---:|"]
        lines.append(f"| ideal (sum of solo) | - | {ideal:.1f} | 100% |")
        lines.append(f"| (d) worker A alone | - | {result['alone']:.1f} | {100 * result['alone'] / ideal:.0f}% |")
        for key, label in (("equal", "(a) equal split"), ("static", "(b) static measured"), ("online", "(c) online")):
            mode = result["modes"][key]
            lines.append(
                f"| {label} | {mode['plan']} | {mode['throughput']:.1f} | {100 * mode['throughput'] / ideal:.0f}% |"
            )
        lines.append("")
        lines += [f"- {'met' if ok else 'NOT met'}: {goal}: {figures}" for goal, ok, figures in verdicts(result)]
        change = result["change"]
        lines += [
            "",
            f"(e) B's quota {change['from']} -> {change['to']} CPU at step {change['at_step']} (online re-balancing); "
            f"ideal after the change {change['ideal_after']:.1f} samples/s:",
            "",
            "| steps | plan | samples/s |",
            "|---|---|---:|",
        ]
        lines += [f"| {w['steps']} | {w['plan']} | {w['throughput']:.1f} |" for w in change["windows"]]
        lines.append("")
    return "\n".join(lines)


# ---- the worker (one per rank, under kaitian run) ----


def worker(args: argparse.Namespace) -> None:
    """Runs every phase of one configuration on this rank; rank 0 prints the result line."""
    sys.path.insert(0, str(REPO / "python"))
    import kaitian
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from kaitian.device_bench import benchmark_model
    from kaitian.planner import gather_floats
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data import DataLoader, TensorDataset

    torch.set_num_threads(1)
    dist.init_process_group("kaitian")
    rank, world = dist.get_rank(), dist.get_world_size()
    batch = args.batch

    # The same CNN `kaitian devices --bench` times, seeded the same way on every rank.
    build = benchmark_model

    generator = torch.Generator().manual_seed(0)
    images = torch.randn(args.samples, 3, 32, 32, generator=generator)
    labels = torch.randint(0, 10, (args.samples,), generator=generator)
    data = TensorDataset(images, labels)

    def solo(seconds: float) -> float:
        """Samples per second of this rank training alone on the whole global batch for `seconds`.

        The global batch, because that is how the worker would train alone (and per-sample cost
        falls with the batch, so a smaller solo batch would understate the ideal).
        """
        model = build()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        x, y = images[:batch], labels[:batch]
        for _ in range(3):  # warm-up: the first steps pay for allocation and kernel selection
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
            done += len(x)
        return done / (time.perf_counter() - started)

    def gather(value: float) -> list[float]:
        return [row[0] for row in gather_floats([value], None)]

    def train(plan: list[int], online: bool, change_at: int | None = None) -> dict[str, Any]:
        """One epoch over the data under `plan`; throughput, final plan, windows of step times."""
        model = DistributedDataParallel(build())
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        sampler = kaitian.AdaptiveSampler(data, world, rank, batch_sizes=plan)
        loader = DataLoader(data, batch_sampler=sampler.batch_sampler())
        balancer = kaitian.OnlineBalancer(model, sampler, interval=args.interval) if online else None
        if balancer is None:
            kaitian.install_weighting(model, sampler)
        stamps, plans = [], []
        dist.barrier()
        started = time.perf_counter()
        for step, (x, y) in enumerate(loader):
            if change_at is not None and step == change_at and rank == 1:
                path, kind = quota_file(Path("/proc/self/cgroup").read_text())
                path.write_text(quota_text(args.changed_quota, kind, quota_period(path, kind)))
            plans.append(sampler.batch_sizes_at(step))
            optimizer.zero_grad()
            if balancer is None:
                F.cross_entropy(model(x), y).backward()
            else:
                with balancer.step():
                    F.cross_entropy(model(x), y).backward()
            optimizer.step()
            stamps.append(time.perf_counter())
        dist.barrier()
        elapsed = time.perf_counter() - started
        processed = sum(sum(p) for p in plans)
        windows = []
        previous = started
        for end in range(args.interval, len(stamps) + 1, args.interval):
            window = plans[end - args.interval : end]
            windows.append(
                {
                    "steps": f"{end - args.interval}-{end - 1}",
                    "plan": window[-1],
                    "throughput": sum(sum(p) for p in window) / (stamps[end - 1] - previous),
                }
            )
            previous = stamps[end - 1]
        if balancer is not None:
            balancer.close()
        return {"plan": sampler.batch_sizes, "throughput": processed / elapsed, "windows": windows}

    solos = gather(solo(args.solo_seconds))
    equal = [batch // world + (1 if r < batch % world else 0) for r in range(world)]
    modes = {"equal": train(equal, online=False)}
    sample = (images[: batch // world], labels[: batch // world])
    measured, speeds = kaitian.measure_plan(build(), sample, F.cross_entropy, batch, min_seconds=args.measure_seconds)
    modes["static"] = train(measured, online=False)
    modes["static"]["measured_seconds_per_sample"] = speeds
    modes["online"] = train(measured, online=True)
    steps = len(modes["online"]["windows"]) * args.interval
    change = train(modes["online"]["plan"], online=True, change_at=steps // 2)
    solos_after = gather(solo(args.solo_seconds))
    if rank == 0:
        result = {
            "config": args.config_name,
            "kinds": [chr(ord("A") + r) for r in range(world)],
            "quotas": args.quotas,
            "batch": batch,
            "samples": args.samples,
            "solo": solos,
            "ideal": sum(solos),
            "alone": solos[0],
            "modes": modes,
            "change": {
                "from": args.quotas[1],
                "to": args.changed_quota,
                "at_step": steps // 2,
                "windows": change["windows"],
                "solo_after": solos_after,
                "ideal_after": sum(solos_after),
                "throughput": change["throughput"],
            },
        }
        print(RESULT_TAG + json.dumps(result), flush=True)
    dist.destroy_process_group()


# ---- the driver ----


def run_config(config: Config, args: argparse.Namespace) -> dict[str, Any]:
    """One `kaitian run` job for a configuration; its result."""
    launcher = REPO / ".build" / "release" / "kaitian"
    command = [str(launcher), "run"]
    for group in config.groups:
        command += ["--group", group]
    command += ["--", sys.executable, str(Path(__file__).resolve()), "--worker"]
    command += ["--config-name", config.name, "--quotas", ",".join(str(q) for q in config.quotas)]
    command += ["--changed-quota", str(config.changed_quota), "--samples", str(args.samples)]
    command += ["--batch", str(args.batch), "--interval", str(args.interval)]
    command += ["--solo-seconds", str(args.solo_seconds), "--measure-seconds", str(args.measure_seconds)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout, cwd=REPO)
    if done.returncode != 0:
        raise SystemExit(f"job failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return parse_result(done.stdout)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: fewer samples, shorter solo runs")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON document")
    parser.add_argument("--out", type=Path, help="also save the markdown report to this file")
    parser.add_argument("--configs", default="2,3", help="which configurations: 2 workers, 3 workers")
    parser.add_argument("--samples", type=int, help="samples per run (default 3840, quick 768)")
    parser.add_argument("--batch", type=int, default=128, help="global batch")
    parser.add_argument("--interval", type=int, default=5, help="re-balancing interval in steps")
    parser.add_argument("--solo-seconds", type=float, help="each worker's solo run (default 6, quick 2)")
    parser.add_argument("--measure-seconds", type=float, default=2.0, help="measure_speed's minimum window")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per job")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--config-name", default="", help=argparse.SUPPRESS)
    parser.add_argument("--quotas", type=lambda s: [float(q) for q in s.split(",")], help=argparse.SUPPRESS)
    parser.add_argument("--changed-quota", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.samples is None:
        args.samples = 768 if args.quick else 3840
    if args.solo_seconds is None:
        args.solo_seconds = 2.0 if args.quick else 6.0
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return
    if os.geteuid() != 0:
        raise SystemExit("CPU quotas need root (cgroups): run as root")
    wanted = {int(c) for c in args.configs.split(",")}
    results = [run_config(c, args) for c in CONFIGS if len(c.quotas) in wanted]
    report = markdown(results)
    if args.out:
        args.out.write_text(report + "\n")
    print(json.dumps(results, indent=1) if args.json else report, flush=True)


if __name__ == "__main__":
    main()
