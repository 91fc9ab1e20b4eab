"""Intra-group libraries: the vendor's own torch backend, or the engine.

The hybrid algorithm needs four collectives inside a group (allreduce, reduce-scatter,
allgather, broadcast), each run to completion on the hybrid worker thread. The vendor process
group is constructed directly rather than with torch.distributed.new_group, because the backend
constructor runs while init_process_group is still building the default group, and new_group
needs that group to exist.
"""

from __future__ import annotations

import importlib
from datetime import timedelta
from typing import Protocol

import torch
import torch.distributed as dist
from torch.distributed import distributed_c10d as c10d

from . import _engine, _native
from ._engine import Communicator
from .topology import DEVICE_KINDS, ENGINE

# Modules that register a vendor's torch backend when imported (out-of-tree PyTorch plugins).
_PLUGIN_MODULES = {kind.backend: kind.plugin for kind in DEVICE_KINDS.values() if kind.plugin}
# The device each library's tensors live on.
_BACKEND_DEVICE = {"gloo": "cpu"} | {
    kind.backend: kind.device_type for kind in DEVICE_KINDS.values() if kind.backend != ENGINE
}


class IntraGroup(Protocol):
    """Blocking collectives among the ranks of one intra-group, on tensors on `device`."""

    device: torch.device

    def allreduce(self, t: torch.Tensor, op: int) -> None: ...
    def reduce_scatter(self, out: torch.Tensor, inp: torch.Tensor, op: int) -> None: ...
    def allgather(self, out: torch.Tensor, inp: torch.Tensor) -> None: ...
    def broadcast(self, t: torch.Tensor, root: int) -> None: ...


class EngineIntraGroup:
    """The engine inside a group (the default for cpu): shared memory between the group's ranks."""

    device = torch.device("cpu")

    def __init__(self, comm: Communicator) -> None:
        self.comm = comm

    def _run(self, call: _engine.Call, *keep: torch.Tensor) -> None:
        self.comm.run(_engine.EngineCalls([call], lambda: [], list(keep)))

    def allreduce(self, t: torch.Tensor, op: int) -> None:
        self._run(_engine.all_reduce(t, t, op), t)

    def reduce_scatter(self, out: torch.Tensor, inp: torch.Tensor, op: int) -> None:
        self._run(_engine.reduce_scatter(inp, out, op), out, inp)

    def allgather(self, out: torch.Tensor, inp: torch.Tensor) -> None:
        self._run(_engine.all_gather(inp, out), out, inp)

    def broadcast(self, t: torch.Tensor, root: int) -> None:
        self._run(_engine.broadcast(t, t, root), t)


class TorchIntraGroup:
    """A torch process group (gloo, nccl, cncl, hccl, xccl) inside a group.

    Uses the method names every torch from 1.13 on has (`_reduce_scatter_base`,
    `_allgather_base`) on the backend object itself.
    """

    def __init__(self, pg: object, device: torch.device) -> None:
        self.pg = pg
        self.device = device

    def allreduce(self, t: torch.Tensor, op: int) -> None:
        opts = dist.AllreduceOptions()
        opts.reduceOp = _native.torch_reduce_op(op)
        self.pg.allreduce([t], opts).wait()

    def reduce_scatter(self, out: torch.Tensor, inp: torch.Tensor, op: int) -> None:
        opts = dist.ReduceScatterOptions()
        opts.reduceOp = _native.torch_reduce_op(op)
        self.pg._reduce_scatter_base(out, inp, opts).wait()

    def allgather(self, out: torch.Tensor, inp: torch.Tensor) -> None:
        self.pg._allgather_base(out, inp).wait()

    def broadcast(self, t: torch.Tensor, root: int) -> None:
        opts = dist.BroadcastOptions()
        opts.rootRank = root
        opts.rootTensor = 0
        self.pg.broadcast([t], opts).wait()


class GlooIntraGroup(TorchIntraGroup):
    """gloo inside a group, with a reduce-scatter that sends what a reduce-scatter needs.

    Why: torch's gloo reduce-scatter is a clone of the input, a whole allreduce and a copy of one
    shard (ProcessGroupGloo::reduce_scatter_tensor_coalesced), so every rank sends the whole
    chunk; a reduce-scatter needs (L-1)/L of it. The hybrid allreduce runs a reduce-scatter and an
    allgather inside each group, which with gloo's cost one and a half allreduces. This one is a
    ring of gloo sends and receives: in step s, rank r passes its running sum of shard
    (r - s - 1) mod L to rank r + 1 and adds its own part to what rank r - 1 passed, so after
    L - 1 steps it holds shard r reduced over the group. Every element is summed on one rank
    only, so the allgather that follows hands every rank the same bits.
    """

    _COMBINE = {_native.SUM: torch.add, _native.PROD: torch.mul, _native.MAX: torch.maximum, _native.MIN: torch.minimum}
    _TAG = 0  # the group's communicators are each driven by one thread, one call at a time

    def reduce_scatter(self, out: torch.Tensor, inp: torch.Tensor, op: int) -> None:
        size, rank = self.pg.size(), self.pg.rank()
        combine = self._COMBINE.get(op)
        if size == 1 or combine is None or inp.dtype == torch.bool or not (out.is_contiguous() and inp.is_contiguous()):
            super().reduce_scatter(out, inp, op)
            return
        width = out.numel()
        if inp.numel() != width * size:
            raise ValueError(f"kaitian: reduce-scatter of {inp.numel()} elements into {size} shards of {width}")
        if width == 0:
            return
        shards = inp.view(-1).split(width)
        result = out.view(-1)
        received = torch.empty_like(result)
        running = torch.empty_like(result) if size > 2 else result
        carried = shards[(rank - 1) % size]
        for step in range(size - 1):
            sent = self.pg.send([carried], (rank + 1) % size, self._TAG)
            self.pg.recv([received], (rank - 1) % size, self._TAG).wait()
            sent.wait()
            target = result if step == size - 2 else running
            combine(shards[(rank - step - 2) % size], received, out=target)
            carried = target


def _current_device(kind: str) -> torch.device:
    """The device this process drives for a device type (index from the vendor's torch module)."""
    if kind == "cpu":
        return torch.device("cpu")
    module = getattr(torch, kind)
    return torch.device(kind, module.current_device())


def backend_device(backend: str) -> torch.device:
    """Where a group library's tensors live: the CPU for the engine and gloo, else the vendor's device."""
    return _current_device(_BACKEND_DEVICE.get(backend, "cpu"))


def create_torch_intra_group(
    backend: str, store: dist.Store, rank: int, size: int, timeout: timedelta, global_ranks: list[int]
) -> TorchIntraGroup:
    """The vendor process group for one intra-group, on its own prefix of the job's store.

    gloo runs here (the CPU-only test configurations). nccl, cncl, hccl and xccl are written
    against torch's and the vendors' public APIs but have not been run on hardware.
    """
    if backend == "gloo":
        return GlooIntraGroup(dist.ProcessGroupGloo(store, rank, size, timeout), torch.device("cpu"))
    device = backend_device(backend)
    if backend == "nccl":
        # Not run on hardware.
        options = dist.ProcessGroupNCCL.Options()
        options._timeout = timeout
        return TorchIntraGroup(dist.ProcessGroupNCCL(store, rank, size, options), device)
    # Out-of-tree backends (cncl from torch_mlu, hccl from torch_npu, xccl and any other name
    # registered with torch.distributed.Backend.register_backend): created through the same
    # creator torch's init_process_group would call. Not run on hardware.
    if backend in _PLUGIN_MODULES:
        importlib.import_module(_PLUGIN_MODULES[backend])
    ensure = getattr(dist.Backend, "_ensure_backend_registered", None)  # torch >= 2.15: lazy builtins
    if ensure is not None:
        ensure(backend)
    plugin = dist.Backend._plugins.get(backend.upper())
    if plugin is None:
        raise ValueError(f"kaitian: intra-group backend {backend!r} is not registered with torch.distributed")
    if getattr(plugin, "extended_api", False):
        options = c10d._DistributedBackendOptions()
        options.store = store
        options.group_rank = rank
        options.group_size = size
        options.timeout = timeout
        options.group_id = f"kaitian-intra-{global_ranks[0]}"
        options.global_ranks_in_group = global_ranks
        pg = plugin.creator_fn(options, None)
    else:
        pg = plugin.creator_fn(store, rank, size, timeout)
    return TorchIntraGroup(pg, device)
