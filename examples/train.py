"""Data-parallel training that switches to Kaitian by one word: `--backend kaitian`.

A normal torch.distributed + DistributedDataParallel script. Launch it with `kaitian run`
(or torchrun): it reads RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT from the environment.

Data:
  digits        scikit-learn's 8x8 handwritten digits (real data shipped inside scikit-learn)
  cifar10:DIR   CIFAR-10 from the standard python archive files in DIR (cifar-10-batches-py)
  synthetic     generated CIFAR-shaped data (3x32x32, 10 classes), said so in the output

Models: mlp (digits), mobilenet_v2 and resnet18 (torchvision, 10 classes, 32x32 inputs).
"""

from __future__ import annotations

import argparse
import pickle
import time
from dataclasses import dataclass
from pathlib import Path

import kaitian  # noqa: F401  (registers the "kaitian" backend)
import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset


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
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 16, 3, padding=1)
        self.hidden = nn.Linear(16 * 4 * 4, 64)
        self.out = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv(x)), 2)
        return self.out(F.relu(self.hidden(x.flatten(1))))


def build_model(name: str) -> nn.Module:
    if name == "mlp":
        return DigitsNet()
    import torchvision

    if name == "mobilenet_v2":
        return torchvision.models.mobilenet_v2(num_classes=10)
    if name == "resnet18":
        return torchvision.models.resnet18(num_classes=10)
    raise SystemExit(f"unknown --model {name}; use mlp, mobilenet_v2 or resnet18")


def load_data(spec: str, synthetic_samples: int) -> Dataset:
    if spec == "digits":
        return load_digits()
    if spec == "synthetic":
        return synthetic_cifar(synthetic_samples)
    if spec.startswith("cifar10:"):
        return load_cifar10(Path(spec.split(":", 1)[1]))
    raise SystemExit(f"unknown --data {spec}; use digits, synthetic or cifar10:DIR")


def evaluate(model: nn.Module, data: TensorDataset) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for images, labels in DataLoader(data, batch_size=512):
            correct += int((model(images).argmax(1) == labels).sum())
    model.train()
    return correct / len(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default="kaitian", help="kaitian (or gloo, nccl: the one-word switch)")
    parser.add_argument("--data", default="digits")
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32, help="per-rank batch size")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--synthetic-samples", type=int, default=2048)
    args = parser.parse_args()

    torch.set_num_threads(1)
    torch.manual_seed(0)
    dist.init_process_group(args.backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    data = load_data(args.data, args.synthetic_samples)
    if rank == 0:
        print(f"data: {data.description}", flush=True)
        print(
            f"backend {args.backend}, {world} ranks, model {args.model}, per-rank batch {args.batch_size}", flush=True
        )

    model = DistributedDataParallel(build_model(args.model))
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    sampler = DistributedSampler(data.train, num_replicas=world, rank=rank, shuffle=True, seed=0)
    loader = DataLoader(data.train, batch_size=args.batch_size, sampler=sampler, drop_last=True)

    samples = 0
    started = time.perf_counter()
    loss = torch.tensor(0.0)
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        for images, labels in loader:
            optimizer.zero_grad()
            loss = F.cross_entropy(model(images), labels)
            loss.backward()
            optimizer.step()
            samples += len(labels)
        if rank == 0:
            print(f"epoch {epoch + 1}/{args.epochs}: loss {loss.item():.4f}", flush=True)
    elapsed = time.perf_counter() - started

    stats = torch.tensor([samples, elapsed, loss.item()], dtype=torch.float64)
    gathered = [torch.zeros_like(stats) for _ in range(world)]
    dist.all_gather(gathered, stats)
    accuracy = evaluate(model.module, data.test) if rank == 0 else 0.0
    if rank == 0:
        total = sum(float(row[0]) for row in gathered)
        wall = max(float(row[1]) for row in gathered)
        print("summary:", flush=True)
        for peer, row in enumerate(gathered):
            print(f"  rank {peer}: {int(row[0])} samples, {float(row[0] / row[1]):.1f} samples/s", flush=True)
        print(f"  total: {int(total)} samples in {wall:.1f} s = {total / wall:.1f} samples/s", flush=True)
        print(
            f"  final loss {loss.item():.4f}, test accuracy {accuracy:.3f} "
            f"({'real' if data.real else 'generated'} data)",
            flush=True,
        )
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
