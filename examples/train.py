"""Data-parallel training that switches to Kaitian by one word: `--backend kaitian`.

A normal torch.distributed + DistributedDataParallel script. Launch it with `kaitian run`
(or torchrun): it reads RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT from the environment.

Load adaptation (--adaptive, works on any backend):
  off      every rank gets the same batch (DistributedSampler's behaviour)
  static   each rank's speed is measured on its own device before training, and the global
           batch is split in proportion (kaitian.measure_plan + AdaptiveSampler)
  online   static, then re-measured while training: kaitian.OnlineBalancer re-plans every
           --interval steps; gradients are weighted so the math equals full-batch training

Checkpoints (--checkpoint-dir): rank 0 saves model, optimizer, plan and epoch after every epoch
atomically (a temporary file, fsync, rename); --resume continues from the last one. Every rank
reseeds at each epoch start, so a resumed run computes what an uninterrupted one does.

Data:
  digits        scikit-learn's 8x8 handwritten digits (real data shipped inside scikit-learn)
  digits32      the same digits scaled to 3x32x32, for the CIFAR models (mobilenet_v2, resnet18)
  cifar10:DIR   CIFAR-10 from the standard python archive files in DIR (cifar-10-batches-py)
  synthetic     generated CIFAR-shaped data (3x32x32, 10 classes), said so in the output

Models: cnn (a small CNN for digits), mobilenet_v2 and resnet18 (torchvision, 10 classes, 32x32 inputs).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import kaitian  # registers the "kaitian" backend
import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, TensorDataset


@dataclass
class Dataset:
    train: TensorDataset
    test: TensorDataset
    description: str
    real: bool


def load_digits() -> Dataset:
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(digits.target, dtype=torch.int64)
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(len(labels), generator=generator)
    split = int(0.8 * len(labels))
    train, test = order[:split], order[split:]
    return Dataset(
        TensorDataset(images[train], labels[train]),
        TensorDataset(images[test], labels[test]),
        f"scikit-learn digits: {split} train / {len(labels) - split} test images, 8x8",
        real=True,
    )


def load_digits_rgb32() -> Dataset:
    """scikit-learn's digits as CIFAR-shaped images (3x32x32), for the CIFAR models on real data."""
    digits = load_digits()

    def upscale(data: TensorDataset) -> TensorDataset:
        images, labels = data.tensors
        scaled = F.interpolate(images, size=(32, 32), mode="bilinear", align_corners=False)
        return TensorDataset(scaled.expand(-1, 3, -1, -1).contiguous(), labels)

    return Dataset(
        upscale(digits.train),
        upscale(digits.test),
        digits.description.replace("8x8", "8x8 scaled to 3x32x32"),
        real=True,
    )


def load_cifar10(directory: Path) -> Dataset:
    """Reads the standard CIFAR-10 python archive (data_batch_1..5, test_batch)."""
    folder = directory / "cifar-10-batches-py" if (directory / "cifar-10-batches-py").is_dir() else directory

    def read(name: str) -> tuple[torch.Tensor, torch.Tensor]:
        with open(folder / name, "rb") as handle:
            batch = pickle.load(handle, encoding="bytes")
        images = torch.tensor(np.asarray(batch[b"data"]), dtype=torch.uint8).reshape(-1, 3, 32, 32)
        return images.float() / 255.0, torch.tensor(batch[b"labels"], dtype=torch.int64)

    parts = [read(f"data_batch_{index}") for index in range(1, 6)]
    train_x = torch.cat([x for x, _ in parts])
    train_y = torch.cat([y for _, y in parts])
    test_x, test_y = read("test_batch")
    return Dataset(
        TensorDataset(train_x, train_y),
        TensorDataset(test_x, test_y),
        f"CIFAR-10 from {folder}: {len(train_y)} train / {len(test_y)} test images",
        real=True,
    )


def synthetic_cifar(samples: int) -> Dataset:
    """Random CIFAR-shaped images whose class shifts the mean of one channel: learnable, not real."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (samples,), generator=generator)
    images = torch.randn(samples, 3, 32, 32, generator=generator) * 0.5
    images[:, 0] += (labels.float() / 10.0).view(-1, 1, 1)
    split = int(0.8 * samples)
    return Dataset(
        TensorDataset(images[:split], labels[:split]),
        TensorDataset(images[split:], labels[split:]),
        f"GENERATED CIFAR-shaped data ({samples} images, 3x32x32): CIFAR-10 cannot be downloaded here; "
        "pass --data cifar10:DIR to use the real archive",
        real=False,
    )


class DigitsNet(nn.Module):
    """A small CNN for 8x8 digits: heavy enough (about 1.3 M multiply-adds per sample forward)
    that compute, not Python overhead, sets a CPU worker's speed, so unequal workers show."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.hidden = nn.Linear(64 * 4 * 4, 128)
        self.out = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2)
        return self.out(F.relu(self.hidden(x.flatten(1))))


def build_model(name: str) -> nn.Module:
    if name == "cnn":
        return DigitsNet()
    import torchvision

    if name == "mobilenet_v2":
        return torchvision.models.mobilenet_v2(num_classes=10)
    if name == "resnet18":
        return torchvision.models.resnet18(num_classes=10)
    raise SystemExit(f"unknown --model {name}; use cnn, mobilenet_v2 or resnet18")


def load_data(spec: str, synthetic_samples: int) -> Dataset:
    if spec == "digits":
        return load_digits()
    if spec == "digits32":
        return load_digits_rgb32()
    if spec == "synthetic":
        return synthetic_cifar(synthetic_samples)
    if spec.startswith("cifar10:"):
        return load_cifar10(Path(spec.split(":", 1)[1]))
    raise SystemExit(f"unknown --data {spec}; use digits, digits32, synthetic or cifar10:DIR")


def evaluate(model: nn.Module, data: TensorDataset) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for images, labels in DataLoader(data, batch_size=512):
            correct += int((model(images).argmax(1) == labels).sum())
    model.train()
    return correct / len(data)


@dataclass
class Checkpoint:
    """What a resumed run needs: the completed epoch, the weights, the optimizer, the plan."""

    epoch: int  # epochs completed
    model: dict
    optimizer: dict
    plan: list[int]
    samples: int  # samples this job trained before the checkpoint, all ranks

    FILE = "checkpoint.pt"

    def save(self, directory: Path) -> Path:
        """Writes atomically: a crash leaves the previous checkpoint or this one, never a torn file."""
        directory.mkdir(parents=True, exist_ok=True)
        final = directory / self.FILE
        partial = directory / f".{self.FILE}.{os.getpid()}.partial"
        with open(partial, "wb") as handle:
            torch.save(
                {
                    "epoch": self.epoch,
                    "model": self.model,
                    "optimizer": self.optimizer,
                    "plan": self.plan,
                    "samples": self.samples,
                },
                handle,
            )
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, final)
        descriptor = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        return final

    @classmethod
    def load(cls, directory: Path) -> Checkpoint | None:
        path = directory / cls.FILE
        if not path.is_file():
            return None
        state = torch.load(path, map_location="cpu", weights_only=True)
        return cls(state["epoch"], state["model"], state["optimizer"], list(state["plan"]), int(state["samples"]))


def parameter_digest(model: nn.Module) -> str:
    """SHA-256 of every parameter and buffer in order: equal digests mean bitwise-equal models."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def initial_plan(
    args: argparse.Namespace, model: nn.Module, data: Dataset, world: int, warmup: int
) -> kaitian.MeasuredPlan:
    """The first plan: an equal split, or measured on every rank's own device (collective).

    `warmup` untimed steps come first (an emulated device calibrates in them)."""
    if args.adaptive == "off":
        return kaitian.MeasuredPlan([args.batch_size] * world, [], [])
    global_batch = args.global_batch or args.batch_size * world
    images, labels = data.train.tensors
    share = max(1, global_batch // world)
    return kaitian.measure_plan(
        model,
        (images[:share], labels[:share]),
        F.cross_entropy,
        global_batch,
        warmup=warmup,
        min_seconds=args.measure_seconds,
    )


def ceiling(costs: list[kaitian.StepCost], batch: int) -> float:
    """Samples/s of `batch` samples per step split over ranks of these step costs, compute only.

    The split equalises the predicted step times (the planner's); the step is the slowest rank's.
    """
    plan = kaitian.plan_batches(
        [c.seconds_per_sample for c in costs], batch, fixed_seconds=[c.fixed_seconds for c in costs]
    )
    return batch / max(c.seconds(b) for c, b in zip(costs, plan, strict=True))


def group_gain(
    kinds: list[str], speeds: list[float], achieved: float, costs: list[kaitian.StepCost] | None, batch: int
) -> dict[str, float | str] | None:
    """What the job gains over its fastest group alone, by the speeds measured before training.

    Each group's solo figure is the sum of its ranks' measured compute speeds (samples/s, compute
    only: an upper bound on what the group alone would train); the ideal is the sum over all groups.
    With the ranks' step costs, also the ceilings at this global batch: the same batch split over
    the fastest group's ranks, and over all ranks (compute only). Why both: the solo figures are
    speeds at the measurement's batch, but in the job each rank's batch is a share of the global
    one, and the smaller it is, the more of each step is the part that does not shrink with it.
    """
    if not speeds or len(speeds) != len(kinds) or min(speeds) <= 0:
        return None
    solo: dict[str, float] = {}
    for kind, seconds in zip(kinds, speeds, strict=True):
        solo[kind] = solo.get(kind, 0.0) + 1.0 / seconds
    fastest = max(solo, key=lambda kind: solo[kind])
    ideal = sum(solo.values())
    gain: dict[str, float | str] = {
        "fastest_group": fastest,
        "fastest_group_alone": solo[fastest],
        "ideal": ideal,
        "achieved": achieved,
        "over_fastest_group": achieved / solo[fastest],
        "of_ideal": achieved / ideal,
    }
    if costs is not None and len(costs) == len(kinds):
        gain["fastest_group_ceiling"] = ceiling([c for c, k in zip(costs, kinds, strict=True) if k == fastest], batch)
        gain["ceiling"] = ceiling(costs, batch)
    return gain


def wait_at_gate(gate: Path, rank: int, timeout: float) -> None:
    """Says this job is ready (rank 0), then waits until the benchmark opens the gate.

    Jobs started together finish their start-up at different times (a slow device's job imports
    and measures slower); the gate lines up their training loops.
    """
    if rank == 0:
        (gate / f"ready-{os.getpid()}").touch()
    deadline = time.monotonic() + timeout
    while not (gate / "go").exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"rank {rank}: {gate / 'go'} did not appear within {timeout:.0f} s")
        time.sleep(0.01)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default="kaitian", help="kaitian (or gloo, nccl: the one-word switch)")
    parser.add_argument("--data", default="digits")
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32, help="per-rank batch with --adaptive off")
    parser.add_argument(
        "--global-batch", type=int, default=0, help="adaptive: the global batch (default batch-size x ranks)"
    )
    parser.add_argument("--adaptive", choices=["off", "static", "online"], default="online")
    parser.add_argument("--interval", type=int, default=10, help="online: steps between re-plans")
    parser.add_argument(
        "--no-broadcast-buffers",
        dest="broadcast_buffers",
        action="store_false",
        help="DDP(broadcast_buffers=False): each rank keeps its own BatchNorm statistics, with no broadcast "
        "from rank 0 before every forward",
    )
    parser.add_argument("--measure-seconds", type=float, default=1.0, help="adaptive: each rank's timed warm-up")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument(
        "--bucket-cap-mb",
        type=float,
        help="DDP's gradient bucket size (torch's default 25): smaller buckets start crossing groups during backward",
    )
    parser.add_argument("--synthetic-samples", type=int, default=2048)
    parser.add_argument("--checkpoint-dir", type=Path, help="save a checkpoint here after every epoch")
    parser.add_argument(
        "--resume", action="store_true", help="continue from --checkpoint-dir's checkpoint if there is one"
    )
    parser.add_argument("--result-json", type=Path, help="rank 0 writes the summary here as JSON")
    parser.add_argument("--trace-dir", type=Path, help="every rank writes its per-step times to rank-R.json here")
    parser.add_argument(
        "--start-gate",
        type=Path,
        help="benchmarks starting jobs together: rank 0 creates ready-<pid> here after start-up, then every "
        "rank waits for a file named go before its first step",
    )
    args = parser.parse_args()
    if args.resume and args.checkpoint_dir is None:
        parser.error("--resume needs --checkpoint-dir")

    torch.set_num_threads(1)
    torch.manual_seed(0)
    startup = {"imports": kaitian.process_age_seconds()}
    mark = time.perf_counter()
    dist.init_process_group(args.backend)
    startup["init_process_group"] = time.perf_counter() - mark
    mark = time.perf_counter()
    rank, world = dist.get_rank(), dist.get_world_size()
    data = load_data(args.data, args.synthetic_samples)
    say = print if rank == 0 else (lambda *_, **__: None)
    say(f"data: {data.description}", flush=True)

    network = build_model(args.model)
    # Under `kaitian run --group KIND:N:speed=F` this rank emulates an accelerator F times as fast
    # as a host core (compute paced, host threads free); without it the model runs as it is.
    device = kaitian.emulate_device(network)
    if device is not None:
        say(f"EMULATED devices: rank {rank} computes at {device.speed:g}x a host core", flush=True)
    optimizer = torch.optim.SGD(network.parameters(), lr=args.lr, momentum=0.9)
    resumed = Checkpoint.load(args.checkpoint_dir) if args.resume else None
    if resumed is not None:
        network.load_state_dict(resumed.model)
        optimizer.load_state_dict(resumed.optimizer)
        plan, speeds, costs = resumed.plan, [], None
        say(
            f"resumed from {args.checkpoint_dir / Checkpoint.FILE}: {resumed.epoch} epochs done, plan {plan}",
            flush=True,
        )
    else:
        if args.resume:
            say(f"no checkpoint in {args.checkpoint_dir} yet: starting from scratch", flush=True)
        startup["data and model"] = time.perf_counter() - mark
        mark = time.perf_counter()
        warmup = device.warmup_steps() if device is not None else 1
        measured = initial_plan(args, network, data, world, warmup)
        plan, speeds, costs = measured.plan, measured.speeds, measured.costs or None
        startup["measurement"] = time.perf_counter() - mark
    first_epoch = resumed.epoch if resumed else 0
    say(f"backend {args.backend}, {world} ranks, model {args.model}, adaptive {args.adaptive}, plan {plan}", flush=True)
    if speeds:
        say(
            "measured seconds per sample: " + ", ".join(f"rank {r} {s * 1e3:.3f} ms" for r, s in enumerate(speeds)),
            flush=True,
        )

    buckets = {} if args.bucket_cap_mb is None else {"bucket_cap_mb": args.bucket_cap_mb}
    model = DistributedDataParallel(network, broadcast_buffers=args.broadcast_buffers, **buckets)
    sampler = kaitian.AdaptiveSampler(data.train, world, rank, shuffle=True, seed=0, batch_sizes=plan)
    loader = DataLoader(data.train, batch_sampler=sampler.batch_sampler())
    balancer = (
        kaitian.OnlineBalancer(model, sampler, interval=args.interval, step_costs=costs)
        if args.adaptive == "online"
        else None
    )
    weighting = balancer.weighting if balancer else kaitian.install_weighting(model, sampler)
    # Under `kaitian run`, `kaitian monitor` shows each rank's steps; OnlineBalancer reports its
    # own, so the script reports them only without it.
    telemetry = kaitian.job_telemetry() if balancer is None else None
    trace: list[dict[str, float]] = []  # per step, with --trace-dir: time, batch, compute and step seconds

    if args.start_gate is not None:
        wait_at_gate(args.start_gate, rank, timeout=600.0)
    cpu_before_training = kaitian.thread_cpu_seconds()  # the trace reports the training loop's share
    earlier = resumed.samples if resumed else 0  # samples all ranks trained before the checkpoint
    trained = 0  # samples this rank trained in this process, for its throughput
    started = time.perf_counter()
    loss = torch.tensor(0.0)
    for epoch in range(first_epoch, args.epochs):
        sampler.set_epoch(epoch)
        torch.manual_seed(1000 * epoch + rank)  # the same random stream whether resumed or not
        for images, labels in loader:
            step_started = time.perf_counter()
            if "to first step" not in startup:
                startup["to first step"] = kaitian.process_age_seconds()
            optimizer.zero_grad()
            if balancer is None:
                loss = F.cross_entropy(model(images), labels)
                forward_end = time.perf_counter()
                loss.backward()
            else:
                with balancer.step():
                    loss = F.cross_entropy(model(images), labels)
                    forward_end = time.perf_counter()
                    loss.backward()
            optimizer.step()
            trained += len(labels)
            now = time.perf_counter()
            # Compute runs to the last gradient, without DDP's broadcast of buffers before the
            # forward, which waits for the other ranks (the weighting hooks note both); the rest
            # of the step is waiting for the other ranks and the exchange.
            compute = weighting.compute_seconds(step_started, now)
            before_forward = weighting.forward_wait(step_started)
            if args.trace_dir is not None:
                trace.append(
                    {
                        "time": now - started,
                        "wall": time.time(),  # to line up the steps of jobs run side by side
                        "batch": len(labels),
                        "compute": compute,
                        "forward": forward_end - step_started - before_forward,
                        # DDP's broadcast of buffers before the forward: waiting for the other ranks
                        "before_forward": before_forward,
                        "step": now - step_started,
                        "stages": kaitian.stage_times(),
                    }
                )
            if telemetry is not None:
                telemetry.record_step(
                    batch=len(labels),
                    step_seconds=now - step_started,
                    compute_seconds=compute,
                    epoch=epoch,
                )
        samples_so_far = torch.tensor([float(trained)], dtype=torch.float64)
        dist.all_reduce(samples_so_far)
        say(f"epoch {epoch + 1}/{args.epochs}: loss {loss.item():.4f}, plan {sampler.batch_sizes}", flush=True)
        if args.checkpoint_dir is not None and rank == 0:
            Checkpoint(
                epoch + 1,
                network.state_dict(),
                optimizer.state_dict(),
                sampler.batch_sizes,
                earlier + int(samples_so_far.item()),
            ).save(args.checkpoint_dir)
    elapsed = time.perf_counter() - started

    stats = torch.tensor([trained, elapsed, loss.item()], dtype=torch.float64)
    gathered = [torch.zeros_like(stats) for _ in range(world)]
    dist.all_gather(gathered, stats)
    kinds: list[str] = [""] * world
    dist.all_gather_object(kinds, kaitian.local_device_kind())
    accuracy = evaluate(network, data.test) if rank == 0 else 0.0
    digest = parameter_digest(network)
    if rank == 0:
        total = sum(float(row[0]) for row in gathered)
        wall = max(float(row[1]) for row in gathered)
        final = sampler.batch_sizes
        print("summary:", flush=True)
        for peer, row in enumerate(gathered):
            rate = float(row[0] / row[1]) if row[1] > 0 else 0.0
            print(
                f"  rank {peer}: {int(row[0])} samples, {rate:.1f} samples/s, final share {final[peer]}/{sum(final)}",
                flush=True,
            )
        print(f"  total: {int(total)} samples in {wall:.1f} s = {total / max(wall, 1e-9):.1f} samples/s", flush=True)
        gain = group_gain(kinds, speeds, total / max(wall, 1e-9), costs, sum(final))
        if gain is not None and len(set(kinds)) > 1:
            if (published := kaitian.job_telemetry()) is not None:  # `kaitian monitor` shows and plots it
                published.record_gain(
                    fastest_group=str(gain["fastest_group"]),
                    fastest_group_alone=float(gain["fastest_group_alone"]),
                    ideal=float(gain["ideal"]),
                    achieved=float(gain["achieved"]),
                )
            print(
                f"  gain: {gain['over_fastest_group']:.2f}x the fastest group ({gain['fastest_group']}) alone, "
                f"{100 * gain['of_ideal']:.0f}% of all groups together, by the compute speeds measured "
                f"before training ({gain['fastest_group_alone']:.1f} and {gain['ideal']:.1f} samples/s: "
                "compute only, upper bounds)",
                flush=True,
            )
            if "ceiling" in gain:
                print(
                    f"  ceiling at a global batch of {sum(final)}, compute only: {gain['ceiling']:.1f} samples/s "
                    f"for all groups, {gain['fastest_group_ceiling']:.1f} for the fastest alone "
                    f"({float(gain['ceiling']) / float(gain['fastest_group_ceiling']):.2f}x); this job reached "
                    f"{100 * float(gain['achieved']) / float(gain['ceiling']):.0f}% of it",
                    flush=True,
                )
        print(
            "  start-up: "
            + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in startup.items())
            + " (imports and to first step: since the process started)",
            flush=True,
        )
        if balancer is not None:
            print(f"  plan changes: {len(balancer.history)}", flush=True)
            for change in balancer.history:
                print(
                    f"    epoch {change.epoch + 1} iteration {change.iteration}: {change.old} -> {change.new}",
                    flush=True,
                )
        print(
            f"  final loss {loss.item():.4f}, test accuracy {accuracy:.3f} "
            f"({'real' if data.real else 'generated'} data)",
            flush=True,
        )
        print(f"  final parameters sha256 {digest}", flush=True)
        if args.result_json is not None:
            result = {
                "world_size": world,
                "adaptive": args.adaptive,
                "samples_per_rank": [int(row[0]) for row in gathered],
                "seconds": wall,
                "samples_per_second": total / max(wall, 1e-9),
                "final_plan": final,
                "plan_changes": [asdict(c) for c in balancer.history] if balancer else [],
                "loss": loss.item(),
                "accuracy": accuracy,
                "real_data": data.real,
                "parameters_sha256": digest,
                "gain": gain,
                "startup_seconds": startup,
            }
            args.result_json.write_text(json.dumps(result, indent=1) + "\n")
    if args.trace_dir is not None:
        args.trace_dir.mkdir(parents=True, exist_ok=True)
        record = {
            "rank": rank,
            "kind": kaitian.local_device_kind(),
            "emulated_device": device.report() if device is not None else None,
            # CPU seconds per thread name during the training loop only (start-up excluded)
            "thread_cpu_seconds": {
                name: round(seconds - cpu_before_training.get(name, 0.0), 3)
                for name, seconds in kaitian.thread_cpu_seconds().items()
            },
            "steps": trace,
        }
        (args.trace_dir / f"rank-{rank}.json").write_text(json.dumps(record) + "\n")
    if balancer is not None:
        balancer.close()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
