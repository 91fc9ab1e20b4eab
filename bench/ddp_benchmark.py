"""DDP training benchmark: backend "kaitian" against torch's "gloo", and hybrid against homogeneous.

In one invocation on this machine it trains the same steps, for each model, in three
configurations of 2 rank processes on the CPU (torch.set_num_threads(1) in each):

- ``gloo``: torch.distributed's gloo backend (the baseline);
- ``kaitian``: backend "kaitian", both ranks one cpu group on the engine (homogeneous);
- ``kaitian-hetero``: backend "kaitian", rank 0 of device kind cpu-a (intra-group library gloo)
  and rank 1 of kind cpu-b (the engine), i.e. two groups joined by the engine: the hybrid code
  path a GPU+MLU machine runs, at the same world size as ``kaitian``.

Models: torchvision MobileNetV2 and ResNet-18 (10 classes, 32x32 inputs), and ``tiny`` (a small
convolutional net for smoke runs). Data is GENERATED (CIFAR-shaped, fixed seed), not CIFAR-10:
only the step time matters here, and it does not depend on pixel values. Every rank trains the
same per-rank batch size; warmup steps are run and discarded, then the timed steps. The whole
sequence of configurations runs ``--rounds`` times, interleaved, and the statistics pool all rounds.

A step is zero_grad + forward + backward (DDP's gradient allreduce completes inside backward) +
SGD step. Its time is the slowest rank's, step by step. The verdict uses the median step time,
because this machine is shared and the median is robust against the odd scheduling stall; means
are printed too. Goals (issue 3): kaitian's step time at most gloo's, and the heterogeneous
configuration within 10% of the homogeneous one. Output is markdown (also saved with ``--out``),
or with ``--json`` one JSON document. Configurations run one after another, never concurrently.
Exits 1 if a configuration failed to run.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchlib import free_port, table_cell, verdict_word

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent

WORLD_SIZE = 2
MODELS = ("mobilenet_v2", "resnet18", "tiny")
DEFAULT_MODELS = ("mobilenet_v2", "resnet18")
CLASSES = 10
IMAGE = (3, 32, 32)
BATCH_POOL = 8  # distinct generated batches per rank, cycled: generation stays out of the step
DATA_SEED = 1234
HETERO_KINDS = ("cpu-a", "cpu-b")
HETERO_INTRA = "cpu-a=gloo,cpu-b=kaitian"

# The goals, and the only thresholds in this script.
KAITIAN_OVER_GLOO_GOAL = 1.0
HETERO_OVER_HOMOGENEOUS_GOAL = 1.10


@dataclass(frozen=True)
class Config:
    """One way of running the 2 ranks: a backend and, for the hybrid one, each rank's device kind."""

    name: str
    backend: str
    kinds: tuple[str, ...] = ()

    def rank_env(self, rank: int) -> dict[str, str]:
        """Kaitian's variables for one rank (an explicit cpu kind, so a GPU box measures the same)."""
        if self.backend != "kaitian":
            return {}
        if not self.kinds:
            return {"KAITIAN_DEVICE_KIND": "cpu"}
        return {"KAITIAN_DEVICE_KIND": self.kinds[rank], "KAITIAN_INTRA_BACKEND": HETERO_INTRA}


CONFIGS = (
    Config("gloo", "gloo"),
    Config("kaitian", "kaitian"),
    Config("kaitian-hetero", "kaitian", HETERO_KINDS),
)


@dataclass
class ConfigRun:
    """One model trained in one configuration in one round: per-rank step times, or why it failed."""

    model: str
    config: str
    round: int = 0
    step_times: dict[int, list[float]] = field(default_factory=dict)
    final_loss: float | None = None
    seconds: float = 0.0
    error: str | None = None


# ---- pure logic (tested without torch) ----


def slowest_rank_steps(step_times: dict[int, list[float]]) -> list[float]:
    """Each step's time on the slowest rank: a DDP step ends when its last rank ends."""
    if not step_times:
        return []
    per_rank = list(step_times.values())
    steps = min(len(times) for times in per_rank)
    return [max(times[i] for times in per_rank) for i in range(steps)]


def summarize(steps: list[float]) -> dict[str, float | None]:
    """Mean and median in milliseconds of step times in seconds (None if there are none)."""
    if not steps:
        return {"mean_ms": None, "median_ms": None}
    return {"mean_ms": statistics.fmean(steps) * 1e3, "median_ms": statistics.median(steps) * 1e3}


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def verdict(value: float | None, goal: float) -> bool | None:
    """Whether a ratio meets its goal (at most `goal`); None when it was not measured."""
    return None if value is None else value <= goal


def model_rows(runs: list[ConfigRun]) -> list[dict[str, Any]]:
    """Per model: each configuration's summary over all rounds, the two ratios and the two verdicts."""
    rows = []
    for model in dict.fromkeys(run.model for run in runs):
        row: dict[str, Any] = {"model": model, "configs": {}}
        for name in dict.fromkeys(run.config for run in runs if run.model == model):
            rounds = [run for run in runs if run.model == model and run.config == name]
            steps = [t for run in rounds for t in slowest_rank_steps(run.step_times)]
            losses = [run.final_loss for run in rounds if run.final_loss is not None]
            errors = [f"round {run.round}: {run.error}" for run in rounds if run.error]
            row["configs"][name] = summarize(steps) | {
                "steps": len(steps),
                "round_medians_ms": [summarize(slowest_rank_steps(run.step_times))["median_ms"] for run in rounds],
                "final_loss": losses[-1] if losses else None,
                "error": "; ".join(errors) or None,
            }

        def median(name: str, row: dict[str, Any] = row) -> float | None:
            return row["configs"].get(name, {}).get("median_ms")

        def mean(name: str, row: dict[str, Any] = row) -> float | None:
            return row["configs"].get(name, {}).get("mean_ms")

        row["kaitian_over_gloo"] = ratio(median("kaitian"), median("gloo"))
        row["kaitian_over_gloo_mean"] = ratio(mean("kaitian"), mean("gloo"))
        row["hetero_over_homogeneous"] = ratio(median("kaitian-hetero"), median("kaitian"))
        row["hetero_over_homogeneous_mean"] = ratio(mean("kaitian-hetero"), mean("kaitian"))
        row["kaitian_le_gloo"] = verdict(row["kaitian_over_gloo"], KAITIAN_OVER_GLOO_GOAL)
        row["hetero_within_10pct"] = verdict(row["hetero_over_homogeneous"], HETERO_OVER_HOMOGENEOUS_GOAL)
        rows.append(row)
    return rows


def render_markdown(document: dict[str, Any]) -> str:
    """The benchmark as a markdown report: one table of step times, one of ratios, the verdicts."""
    config, machine = document["config"], document["machine"]
    lines = [
        f"# DDP training step time: kaitian vs gloo, {config['world_size']} processes on the CPU",
        "",
        f"- date: {document['date']}",
        f"- machine: {machine['cpu']}, {machine['cpus']} CPUs, {machine['platform']}",
        f"- torch {machine['torch']}, torchvision {machine['torchvision']}; 1 thread per process",
        f"- data: GENERATED CIFAR-shaped images (3x32x32, 10 classes, seed {DATA_SEED}), not CIFAR-10",
        f"- per-rank batch {config['batch_size']}; {config['rounds']} rounds, each running every configuration"
        f" in turn ({config['warmup']} warmup steps, then {config['steps']} timed); statistics over all rounds",
        "- step time: slowest rank per step (zero_grad, forward, backward with DDP's allreduce, SGD step)",
        f"- kaitian-hetero: rank 0 kind {HETERO_KINDS[0]}, rank 1 kind {HETERO_KINDS[1]}"
        f" (KAITIAN_INTRA_BACKEND={HETERO_INTRA}): two groups joined by the engine",
        "",
        "| model | config | mean (ms) | median (ms) | median per round (ms) | final loss |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for row in document["rows"]:
        for name, summary in row["configs"].items():
            loss = summary["final_loss"]
            cells = [
                row["model"],
                name,
                table_cell(summary["mean_ms"], 1),
                table_cell(summary["median_ms"], 1),
                " / ".join(table_cell(median, 1) for median in summary["round_medians_ms"]),
                "-" if loss is None else f"{loss:.4f}",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "| model | kaitian/gloo median | kaitian/gloo mean | hetero/homogeneous median | hetero/homogeneous mean |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in document["rows"]:
        cells = [
            row["model"],
            table_cell(row["kaitian_over_gloo"], 3),
            table_cell(row["kaitian_over_gloo_mean"], 3),
            table_cell(row["hetero_over_homogeneous"], 3),
            table_cell(row["hetero_over_homogeneous_mean"], 3),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Verdict (median step time)", ""]
    for row in document["rows"]:
        lines.append(
            f"- {row['model']}: kaitian <= gloo: **{verdict_word(row['kaitian_le_gloo'])}**"
            f" (ratio {table_cell(row['kaitian_over_gloo'], 3)});"
            f" hetero within {HETERO_OVER_HOMOGENEOUS_GOAL - 1:.0%} of homogeneous:"
            f" **{verdict_word(row['hetero_within_10pct'])}** (ratio {table_cell(row['hetero_over_homogeneous'], 3)})"
        )
    errors = [run for run in document["runs"] if run["error"]]
    if errors:
        lines += ["", "## Errors", ""]
        lines += [f"- {run['model']} / {run['config']} / round {run['round']}: {run['error']}" for run in errors]
    return "\n".join(lines) + "\n"


def parse_models(text: str) -> list[str]:
    """A comma-separated list of known model names, order kept, duplicates dropped."""
    names = list(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    unknown = [name for name in names if name not in MODELS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"models must be a comma-separated subset of {', '.join(MODELS)}")
    return names


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=parse_models, help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--steps", type=int, help="timed steps per configuration and round (default 80, quick 3)")
    parser.add_argument("--warmup", type=int, help="untimed steps first, in every run (default 10, quick 1)")
    parser.add_argument("--rounds", type=int, help="times every configuration runs, interleaved (default 2, quick 1)")
    parser.add_argument("--batch-size", type=int, default=32, help="per-rank batch size")
    parser.add_argument("--quick", action="store_true", help="smoke run: model tiny, a few steps")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds allowed per configuration")
    parser.add_argument("--python", default=sys.executable, help="python with torch, torchvision, kaitian")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON document")
    parser.add_argument("--out", type=Path, help="also save the markdown report to this file")
    args = parser.parse_args(argv)
    if args.models is None:
        args.models = ["tiny"] if args.quick else list(DEFAULT_MODELS)
    if args.steps is None:
        args.steps = 3 if args.quick else 80
    if args.warmup is None:
        args.warmup = 1 if args.quick else 10
    if args.rounds is None:
        args.rounds = 1 if args.quick else 2
    if args.steps < 1 or args.warmup < 0 or args.batch_size < 1 or args.rounds < 1:
        parser.error("need --steps >= 1, --warmup >= 0, --batch-size >= 1 and --rounds >= 1")
    return args


# ---- running the ranks ----


def run_config(model: str, config: Config, round_index: int, args: argparse.Namespace) -> ConfigRun:
    """Trains `model` in `config`: WORLD_SIZE rank processes of this script, each printing one JSON line."""
    print(f"==> {model} / {config.name} / round {round_index}", file=sys.stderr, flush=True)
    run = ConfigRun(model, config.name, round_index)
    port = free_port()
    spec = json.dumps({"model": model, "steps": args.steps, "warmup": args.warmup, "batch_size": args.batch_size})
    started = time.monotonic()
    procs = []
    for rank in range(WORLD_SIZE):
        env = os.environ | config.rank_env(rank)
        env |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank)}
        env |= {"WORLD_SIZE": str(WORLD_SIZE), "LOCAL_RANK": str(rank), "OMP_NUM_THREADS": "1"}
        command = [args.python, str(Path(__file__).resolve()), "--rank-worker", config.backend, spec]
        procs.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    deadline = started + args.timeout
    for rank, proc in enumerate(procs):
        try:
            out, err = proc.communicate(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            run.error = f"rank {rank} did not finish within {args.timeout:.0f} s"
            break
        if proc.returncode != 0:
            tail = err.strip().splitlines()[-3:]
            run.error = f"rank {rank} exited with status {proc.returncode}: {' / '.join(tail)}"
            break
        record = json.loads(out.strip().splitlines()[-1])
        run.step_times[rank] = record["step_times"]
        run.final_loss = record["final_loss"] if rank == 0 else run.final_loss
    for proc in procs:  # after a failure, the others may wait for it forever
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    run.seconds = time.monotonic() - started
    return run


def rank_worker(backend: str, spec: dict[str, Any]) -> None:
    """One rank: DDP-trains the model on generated data and prints its step times as a JSON line."""
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(REPO_ROOT / "python"))  # this checkout's package, whatever is installed
    import kaitian  # noqa: F401  (registers the "kaitian" backend)
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=120))
    rank = dist.get_rank()
    torch.manual_seed(0)  # the same initial weights on every rank and in every configuration
    model = DistributedDataParallel(build_model(spec["model"]))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    batches = generated_batches(rank, spec["batch_size"])
    times = []
    loss = torch.zeros(())
    for step in range(spec["warmup"] + spec["steps"]):
        images, labels = batches[step % len(batches)]
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - started)
    dist.destroy_process_group()
    print(json.dumps({"rank": rank, "step_times": times[spec["warmup"] :], "final_loss": loss.item()}), flush=True)


def build_model(name: str) -> Any:  # noqa: ANN401 (torch is imported lazily, in the ranks only)
    """A fresh model with 10 classes; torchvision's models accept 32x32 inputs as they are."""
    import torch.nn as nn

    if name == "tiny":
        return nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(8, CLASSES),
        )
    import torchvision

    return getattr(torchvision.models, name)(num_classes=CLASSES)


def generated_batches(rank: int, batch_size: int) -> list[tuple[Any, Any]]:
    """CIFAR-shaped random images whose class shifts one channel's mean; different on every rank."""
    import torch

    generator = torch.Generator().manual_seed(DATA_SEED + rank)
    batches = []
    for _ in range(BATCH_POOL):
        labels = torch.randint(0, CLASSES, (batch_size,), generator=generator)
        images = torch.randn(batch_size, *IMAGE, generator=generator) * 0.5
        images[:, 0] += (labels.float() / CLASSES).view(-1, 1, 1)
        batches.append((images, labels))
    return batches


# ---- the report ----


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), cpu)
    except OSError:
        pass
    versions = {}
    for package in ("torch", "torchvision"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return {"cpu": cpu, "cpus": os.cpu_count(), "platform": platform.platform(), **versions}


def build_document(config: dict[str, Any], runs: list[ConfigRun], machine: dict[str, Any]) -> dict[str, Any]:
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine,
        "config": config,
        "runs": [asdict(run) for run in runs],
        "rows": model_rows(runs),
    }


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--rank-worker"]:
        rank_worker(argv[1], json.loads(argv[2]))
        return 0
    args = parse_args(argv)
    config = {
        "world_size": WORLD_SIZE,
        "models": args.models,
        "configs": [asdict(c) for c in CONFIGS],
        "batch_size": args.batch_size,
        "steps": args.steps,
        "warmup": args.warmup,
        "rounds": args.rounds,
        "quick": args.quick,
        "data": "generated",
        "threads_per_process": 1,
    }
    # Rounds interleave the configurations, so a slow spell of this shared machine (load from
    # other processes) is spread over all of them instead of biasing whichever ran during it.
    runs = [
        run_config(model, c, round_index, args)
        for model in args.models
        for round_index in range(args.rounds)
        for c in CONFIGS
    ]
    document = build_document(config, runs, machine_info())
    report = render_markdown(document)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report, encoding="utf-8")
    sys.stdout.write(json.dumps(document, indent=2) + "\n" if args.json else report)
    return 1 if any(run.error for run in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
