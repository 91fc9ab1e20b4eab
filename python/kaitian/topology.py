"""Who is in which group: device kinds, hosts, intra-group libraries.

Every rank declares a device kind and a host; ranks of one kind on one host form an intra-group
that talks through that kind's own library, and the groups meet in host memory through the
engine. The declarations are exchanged through the process group's store so that every rank
derives the same groups, in the same order, with the same roles.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from datetime import timedelta

import torch

from ._store import RendezvousValues

ENGINE = "kaitian"
"""Intra-group library name meaning "Kaitian's own engine" (shared memory on one host)."""


@dataclass(frozen=True)
class DeviceKind:
    """What Kaitian knows of one device kind (as `kaitian run --group KIND:...` names it)."""

    backend: str
    """The torch backend inside a group of this kind (ENGINE: the engine itself)."""
    device_type: str
    """The torch device type its tensors live on."""
    plugin: str | None = None
    """The out-of-tree module that registers the device and its backend with torch when imported."""


DEVICE_KINDS: dict[str, DeviceKind] = {
    "cuda": DeviceKind("nccl", "cuda"),
    "rocm": DeviceKind("nccl", "cuda"),  # ROCm builds of torch expose AMD GPUs as "cuda", RCCL as "nccl"
    "mlu": DeviceKind("cncl", "mlu", "torch_mlu"),
    "npu": DeviceKind("hccl", "npu", "torch_npu"),
    "xpu": DeviceKind("xccl", "xpu"),
    "cpu": DeviceKind(ENGINE, "cpu"),
}
"""The one table of device kinds in Python; other labels (cpu-slow, ...) are CPU groups."""

DEFAULT_INTRA_BACKENDS: dict[str, str] = {name: kind.backend for name, kind in DEVICE_KINDS.items()}
"""Device kind -> torch backend used inside a group of that kind; unlisted kinds use the engine."""


def local_device_kind() -> str:
    """KAITIAN_DEVICE_KIND, else cuda when this process sees a GPU, else cpu."""
    kind = os.environ.get("KAITIAN_DEVICE_KIND", "").strip()
    if kind:
        return kind
    return "cuda" if torch.cuda.is_available() else "cpu"


def local_host_id() -> str:
    """KAITIAN_HOST_ID, else the host name: ranks with equal ids share memory."""
    return os.environ.get("KAITIAN_HOST_ID", "").strip() or socket.gethostname()


def intra_backends(spec: str | None = None) -> dict[str, str]:
    """The kind -> backend mapping, defaults overridden by KAITIAN_INTRA_BACKEND.

    The spec is a comma-separated list of kind=backend, for example "cpu-a=gloo,cpu-b=kaitian"
    or "cuda=gloo" (backend "kaitian" is the engine itself). Labels are free-form, so two CPU
    groups with different libraries exercise on a CPU-only machine the code path a GPU+MLU box
    runs.
    """
    mapping = dict(DEFAULT_INTRA_BACKENDS)
    spec = os.environ.get("KAITIAN_INTRA_BACKEND", "") if spec is None else spec
    for item in filter(None, (part.strip() for part in spec.split(","))):
        kind, sep, backend = item.partition("=")
        if not sep or not kind.strip() or not backend.strip():
            raise ValueError(f"kaitian: KAITIAN_INTRA_BACKEND entry {item!r} is not kind=backend")
        mapping[kind.strip()] = backend.strip().lower()
    return mapping


@dataclass(frozen=True)
class Group:
    """One intra-group: ranks of one device kind on one host, in ascending rank order."""

    index: int
    kind: str
    host: str
    backend: str
    ranks: tuple[int, ...]

    @property
    def size(self) -> int:
        return len(self.ranks)


@dataclass(frozen=True)
class Topology:
    """The groups of a process group and this rank's place in them."""

    rank: int
    groups: tuple[Group, ...]

    @property
    def world_size(self) -> int:
        return sum(g.size for g in self.groups)

    @property
    def group(self) -> Group:
        """This rank's intra-group."""
        return next(g for g in self.groups if self.rank in g.ranks)

    @property
    def local_rank(self) -> int:
        """This rank's position inside its intra-group."""
        return self.group.ranks.index(self.rank)

    @property
    def is_flat(self) -> bool:
        """One group on the engine: the engine runs every collective over all ranks directly."""
        return len(self.groups) == 1 and self.groups[0].backend == ENGINE

    @property
    def columns(self) -> int:
        """How many shards cross between groups in parallel: the smallest group's size.

        With equal sizes every local rank carries one shard. With unequal sizes the first
        `columns` local ranks of every group carry one shard each (see ProcessGroupKaitian).
        """
        return min(g.size for g in self.groups)

    @property
    def equal_sizes(self) -> bool:
        return len({g.size for g in self.groups}) == 1

    def column_ranks(self, column: int) -> list[int]:
        """Global ranks of shard column `column`: local rank `column` of every group, in group order."""
        return [g.ranks[column] for g in self.groups]

    @staticmethod
    def build(rank: int, declarations: list[tuple[str, str]], backends: dict[str, str]) -> Topology:
        """Groups from every rank's (kind, host): deterministic, ordered by lowest global rank."""
        members: dict[tuple[str, str], list[int]] = {}
        for r, key in enumerate(declarations):
            members.setdefault(key, []).append(r)
        ordered = sorted(members.items(), key=lambda item: item[1][0])
        groups = tuple(
            Group(i, kind, host, backends.get(kind, ENGINE), tuple(ranks))
            for i, ((kind, host), ranks) in enumerate(ordered)
        )
        return Topology(rank, groups)

    @staticmethod
    def exchange(store: RendezvousValues, rank: int, size: int, timeout: timedelta) -> Topology:
        """Publishes this rank's declaration in the store and builds the topology from everyone's.

        Each rank also publishes its backend mapping, and a rank whose mapping disagrees with rank
        0's for a kind in use fails here, at start-up, instead of hanging in a mismatched library.
        """
        backends = intra_backends()
        mine = {"kind": local_device_kind(), "host": local_host_id(), "backends": backends}
        store.set(f"kaitian/topology/{rank}", json.dumps(mine))
        keys = [f"kaitian/topology/{r}" for r in range(size)]
        store.wait(keys, timeout)
        declared = [json.loads(store.get(k)) for k in keys]
        topology = Topology.build(rank, [(d["kind"], d["host"]) for d in declared], declared[0]["backends"])
        for g in topology.groups:
            if backends.get(g.kind, ENGINE) != g.backend:
                raise ValueError(
                    f"kaitian: rank {rank} maps device kind {g.kind!r} to {backends.get(g.kind, ENGINE)!r} but "
                    f"rank 0 maps it to {g.backend!r}; set KAITIAN_INTRA_BACKEND the same on every rank"
                )
        return topology
