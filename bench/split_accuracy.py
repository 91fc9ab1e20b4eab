"""How much test accuracy a short run's batch split and seed move, with no communication at all.

A hybrid job trains with uneven per-rank batches (the planner's split, for example 27+27+5+5 of a
global batch of 64), where the fast group alone splits evenly (32+32). The gradients are weighted
so the step equals full-batch training, except where the model normalises per batch: each rank's
BatchNorm uses its own batch's statistics, and DDP keeps rank 0's running statistics. So two
configurations of bench/hybrid_gain.py end with different test accuracies even when the engine is
exact. This script measures how large that difference is by itself: it trains the same model in
one process, simulating DDP's math for each split (a forward and backward per rank's slice with
its own BatchNorm statistics, the loss weighted by b_rank / B, running statistics from rank 0's
slice only), for several seeds, and prints each split's accuracy spread.

    .venv/bin/python bench/split_accuracy.py --splits 32+32,27+27+5+5 --seeds 4

A spread across seeds as wide as the difference between splits means a run's accuracy says nothing
about the split (or the hybrid path) training worse; more epochs narrow it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))  # a script: train.py's loaders

import train  # noqa: E402


def parse_splits(text: str) -> list[list[int]]:
    """ "32+32,27+27+5+5" -> [[32, 32], [27, 27, 5, 5]]; every batch at least 1."""
    try:
        splits = [[int(b) for b in part.split("+")] for part in text.split(",") if part.strip()]
    except ValueError:
        splits = []
    if not splits or any(min(s) < 1 for s in splits):
        raise SystemExit(f"--splits {text!r}: give batches per rank joined by '+', splits by ',' (e.g. 32+32,27+5)")
    return splits


def train_split(model: nn.Module, data: train.Dataset, split: list[int], epochs: int, lr: float) -> float:
    """Trains `model` with DDP's math over ranks of batches `split`; returns its test accuracy."""
    images, labels = data.train.tensors
    batch = sum(split)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    for epoch in range(epochs):
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(epoch))
        for start in range(0, len(images) - batch + 1, batch):
            indices = order[start : start + batch].split(split)
            optimizer.zero_grad()
            # DDP broadcasts rank 0's buffers before every forward: the other ranks' updates of the
            # running statistics are lost, so rank 0's forward runs last, from the saved buffers.
            saved = [b.clone() for b in model.buffers()]
            for rank in [*range(1, len(split)), 0]:
                if rank == 0:
                    for buffer, value in zip(model.buffers(), saved, strict=True):
                        buffer.copy_(value)
                part = indices[rank]
                loss = F.cross_entropy(model(images[part]), labels[part]) * (len(part) / batch)
                loss.backward()
            optimizer.step()
    return train.evaluate(model, data.test)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="mobilenet_v2", help="as examples/train.py: cnn, mobilenet_v2, resnet18")
    parser.add_argument("--data", default="digits32", help="as examples/train.py: digits, digits32")
    parser.add_argument("--splits", default="32+32,16+16+16+16,27+27+5+5,22+22+10+10")
    parser.add_argument("--seeds", type=int, default=4, help="model initialisations per split")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=0.05, help="as examples/train.py")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout instead of the table")
    args = parser.parse_args(argv)
    splits = parse_splits(args.splits)
    torch.set_num_threads(1)
    data = train.load_data(args.data, 0)
    results: dict[str, list[float]] = {}
    for split in splits:
        name = "+".join(map(str, split))
        results[name] = []
        for seed in range(args.seeds):
            started = time.perf_counter()
            torch.manual_seed(seed)
            accuracy = train_split(train.build_model(args.model), data, split, args.epochs, args.lr)
            results[name].append(accuracy)
            if not args.json:
                took = time.perf_counter() - started
                print(f"  split {name}, seed {seed}: accuracy {accuracy:.3f} ({took:.0f} s)", file=sys.stderr)
    if args.json:
        print(json.dumps({"model": args.model, "data": args.data, "epochs": args.epochs, "accuracy": results}))
        return
    print(f"{args.model} on {args.data}, {args.epochs} epoch(s), {args.seeds} seed(s) per split")
    print("| split | median | min | max |")
    print("|---|---:|---:|---:|")
    for name, values in results.items():
        print(f"| {name} | {statistics.median(values):.3f} | {min(values):.3f} | {max(values):.3f} |")
    medians = [statistics.median(v) for v in results.values()]
    widest = max(max(v) - min(v) for v in results.values())
    print(f"between splits' medians: {max(medians) - min(medians):.3f}; widest spread over seeds: {widest:.3f}")


if __name__ == "__main__":
    main()
