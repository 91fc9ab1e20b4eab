"""The built-in device benchmark behind `kaitian devices --bench`.

Times one fixed training workload (a small CNN on 3x32x32 images, CIFAR's shape, forward and
backward, batch 32) on one device with `measure_speed`, the same clock the planner uses for the
user's own model, and prints seconds per sample. The workload is fixed so scores taken on
different hosts and days compare; a job's real shares still come from its own model (see
measure_plan), because devices rank differently on different models.

    python -m kaitian.device_bench --device cuda:0 --seconds 2 --json
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys

import torch
import torch.nn.functional as F
from torch import nn

from .planner import measure_speed
from .topology import DEVICE_KINDS

BATCH = 32


def benchmark_model() -> nn.Module:
    """The fixed workload: three conv layers and a linear head, about 6 M multiply-adds per sample."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    )


def torch_device(spec: str) -> torch.device:
    """`kind[:index]` (cpu, cuda:1, mlu:0, ...) as a torch device, importing the vendor's plugin."""
    kind, _, index = spec.partition(":")
    if kind not in DEVICE_KINDS:
        raise ValueError(f"unknown device kind '{kind}' in '{spec}'; use one of {', '.join(DEVICE_KINDS)}")
    device_type, plugin = DEVICE_KINDS[kind].device_type, DEVICE_KINDS[kind].plugin
    if plugin is not None:
        try:
            importlib.import_module(plugin)
        except ImportError as error:
            raise ValueError(f"device {spec} needs the {plugin} package for torch: {error}") from None
    if device_type == "cpu":
        return torch.device("cpu")
    module = getattr(torch, device_type, None)
    if module is None or not module.is_available():
        raise ValueError(f"device {spec}: this torch sees no {device_type} device")
    return torch.device(device_type, int(index or 0))


def run(spec: str, seconds: float, threads: int) -> dict[str, object]:
    """Seconds per sample of the fixed workload on `spec`, with what was measured."""
    device = torch_device(spec)
    torch.set_num_threads(threads)
    model = benchmark_model().to(device)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(BATCH, 3, 32, 32, generator=generator).to(device)
    labels = torch.randint(0, 10, (BATCH,), generator=generator).to(device)
    per_sample = measure_speed(model, (images, labels), F.cross_entropy, min_seconds=seconds)
    return {
        "device": spec,
        "seconds_per_sample": per_sample,
        "samples_per_second": 1.0 / per_sample,
        "batch": BATCH,
        "threads": threads,
        "torch": torch.__version__,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="kind[:index]: cpu, cuda:0, rocm:0, mlu:0, npu:0, xpu:0")
    parser.add_argument("--seconds", type=float, default=2.0, help="minimum timed window")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (one worker's worth: 1)")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.threads < 1:
        parser.error("--seconds must be > 0 and --threads >= 1")
    try:
        result = run(args.device, args.seconds, args.threads)
    except ValueError as error:
        print(f"kaitian.device_bench: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    if args.json:
        print(json.dumps(result))
    else:
        rate, seconds = float(result["samples_per_second"]), float(result["seconds_per_sample"])
        print(f"{args.device}: {rate:.1f} samples/s ({1e3 * seconds:.3f} ms per sample)")


if __name__ == "__main__":
    main()
