"""The torch.distributed process group "kaitian".

Two ways to run, chosen from the topology at construction:

Flat: every rank is in one group served by the engine (the default for CPU ranks on one host).
Each collective becomes engine calls issued from the calling thread; the future completes from the
engine thread, so DDP's allreduce of one bucket overlaps the backward pass of the next.

Hybrid: several groups, or a group served by a vendor library. The engine's hybrid communicator
(`_hybrid.HybridEngine`) runs every collective in issue order on its three stage
threads, so that a collective's steps (vendor library inside the group, engine between groups)
never interleave with the next collective's. Allreduce is hierarchical and runs in the engine,
which calls the group's library through callbacks; the hierarchical reduce-scatter and allgather
(equal group sizes) are Python steps on those threads; every other collective is staged through
host memory and run by the engine over all ranks, which is exact for every op and dtype and keeps
the vendor libraries to the four collectives every one of them has.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.torch_version import TorchVersion

from . import _engine, _native
from ._checks import CallChecks
from ._completion import completion_thread
from ._engine import Communicator, EngineCalls, copied_back, host, host_empty
from ._hybrid import HybridEngine, Task, settle_failure
from ._store import EngineRendezvous, job_token
from ._vendor import IntraGroup, backend_device, create_torch_intra_group
from .profile import StageTimes
from .topology import ENGINE, Topology, local_host_id

BACKEND_NAME = "kaitian"

Future = torch.futures.Future
Job = Callable[[Future], None]


MINIMUM_TORCH = (2, 0)
"""The oldest torch "kaitian" runs on: C++ callers (DDP's reducer) reach a Python Work's wait()
and get_future() through torch's PyWork trampoline from 2.0 on. torch 1.13.1 was tried: without
it DDP's construction hung, and with torch's own work in its place a hybrid bfloat16 allreduce
returned unreduced values and destroying and initialising again failed, so it is refused."""


def _work_from_future(fut: Future, call: str, source: Callable[[], int] | None = None) -> _FutureWork:
    """The Work of one collective, completed by `fut`; `call` names it in errors ("rank 0: allreduce #7").

    Python's Future.set_exception stores the exception as the future's *value*, which only Python
    callers unwrap; C++ callers such as DDP's reducer would read it as a tensor list and crash.
    Chaining through `then` turns it into a real error of the C++ future: wait() raises it (with
    the engine's message) in C++ and Python alike.
    """
    return _FutureWork(fut.then(_value), call, source)


def _for_callbacks(fut: Future, issued_on_completion_thread: bool) -> Future:
    """A future with `fut`'s value that completes on the completion thread, for users' callbacks.

    A callback may issue a further collective and wait for it (PowerSGD, `.then()` chains), so it
    must not run on the engine's or the pipeline's thread that completes that collective (see
    _completion). A collective issued by such a callback keeps `fut` itself: the completion thread
    is the one waiting for it.
    """
    if issued_on_completion_thread:
        return fut
    handed_over = Future()
    fut.add_done_callback(lambda _: completion_thread().post(lambda: handed_over.set_result(None)))
    return handed_over.then(lambda _: fut.value())


def _value(fut: Future) -> list[torch.Tensor]:
    return fut.value()


class _FutureWork(torch._C._distributed_c10d.Work):
    """A Work over a future whose wait honours its timeout, and whose users' callbacks may block.

    A Python Work rather than torch's `_create_work_from_future`, whose wait ignores the timeout.
    torch calls this class's wait and get_future from C++ too (DDP's reducer takes the future) and
    keeps the Python object alive while C++ holds the Work, from torch 2.0 on (MINIMUM_TORCH).

    The future that get_future hands out completes on the completion thread, not on the engine's
    or the pipeline's thread that completes the collective (see _completion: a callback may wait
    on a further collective). Only then: that hand-over costs a thread wake-up (150 us on an
    8-byte allreduce, measured), which a plain wait() does not need, for it attaches no callbacks.
    """

    def __init__(self, fut: Future, call: str, source: Callable[[], int] | None = None) -> None:
        super().__init__()
        self._fut = fut
        self._call = call
        self._source = source
        self._handed_out: Future | None = None
        self._lock = threading.Lock()
        # Issued by a callback: its future completes on the engine's thread, for the callback
        # may wait for it on the completion thread (see _completion).
        self._issued_on_completion_thread = completion_thread().is_current()

    def is_completed(self) -> bool:
        return self._fut.done()

    def wait(self, timeout: timedelta | None = None) -> bool:
        """Waits for the collective; with a positive `timeout`, at most that long.

        A plain wait() gets None from Python and timedelta(0) (torch's kNoTimeout) from C++: then
        the process group's own deadline, which the engine applies to every call, is the limit.
        When `timeout` expires first this raises KaitianTimeoutError naming rank and call, as
        torch's backends raise on a timed-out wait; the collective stays issued and may still
        complete, so its tensors must not be reused until the group is aborted or destroyed.
        """
        seconds = timeout.total_seconds() if timeout is not None else 0.0
        if seconds > 0 and not self._fut.done():
            settled = threading.Event()
            self._fut.add_done_callback(lambda _: settled.set())
            if not settled.wait(seconds):
                raise _native.KaitianTimeoutError(
                    f"kaitian: {self._call}: not complete after Work.wait(timeout={seconds:g} s)", _native.TIMEOUT
                )
        self._fut.wait()
        return True

    def result(self) -> list[torch.Tensor]:
        return self._fut.value()

    def _source_rank(self) -> int:
        """The rank a receive from any rank took its message from (torch's dist.recv(src=None) asks)."""
        self._fut.wait()
        if self._source is None:
            raise ValueError(f"kaitian: {self._call}: only a receive from any rank has a source rank")
        return self._source()

    def source_rank(self) -> int:
        return self._source_rank()

    def get_future(self) -> Future:
        with self._lock:
            if self._handed_out is None:
                self._handed_out = _for_callbacks(self._fut, self._issued_on_completion_thread)
            return self._handed_out


def _torch_op(opts: object) -> object:
    """The ReduceOp of an options object with reduceOp, or a bare ReduceOp; SUM when none is given."""
    return getattr(opts, "reduceOp", opts) if opts is not None else dist.ReduceOp.SUM


def _is_premul_sum(op: object) -> bool:
    return getattr(op, "op", None) == dist.ReduceOp.PREMUL_SUM


def _reduce_op(opts: object, tensors: list[torch.Tensor]) -> int:
    """The engine's reduce op for the reduce op of `opts` over these tensors (bool included).

    PREMUL_SUM is SUM here: its callers scale their inputs first (see _premul_factor)."""
    op = _torch_op(opts)
    if _is_premul_sum(op):
        return _native.SUM
    return _native.reduce_op_for(op, (t.dtype for t in tensors))


def _premul_factor(opts: object, call: str, tensors: list[torch.Tensor]) -> float | torch.Tensor | None:
    """The factor of a PREMUL_SUM reduce op, else None.

    PREMUL_SUM(f) is NCCL's: each rank multiplies its own input by its own f, then the inputs are
    summed. FSDP2 asks for it when a gradient divide factor is set (set_gradient_divide_factor),
    which is how uneven batch shares are weighted (kaitian.install_fsdp_weighting). The engine has
    no such op: the collective scales (a copy of) its input and sums. Floating dtypes only, as NCCL.
    """
    op = _torch_op(opts)
    if not _is_premul_sum(op):
        return None
    if not all(t.is_floating_point() for t in tensors):
        raise ValueError(f"kaitian: {call}: reduce op PREMUL_SUM is defined for floating-point tensors only")
    return op.factor  # type: ignore[attr-defined]


def _size_array(values: list[int], keep: list[object]) -> ctypes.Array:
    array = (ctypes.c_size_t * len(values))(*values)
    keep.append(array)
    return array


@dataclass
class _Transfer:
    """A send or receive collected between start_coalescing and end_coalescing."""

    sending: bool
    tensor: torch.Tensor
    peer: int
    tag: int


def _this_init(store: dist.Store, size: int) -> dist.Store:
    """The part of `store` that belongs to this construction of the group, none of an earlier one.

    After destroy_process_group, init_process_group in the same process names its group as
    before and may get the same store, which still holds the first group's endpoints, segment
    names and topology: read back, they point at communicators that are gone. Every rank counts
    itself in on one key, so the n-th construction of a group of `size` ranks reads the counts
    (n-1)*size+1 .. n*size, and uses keys of its own. Ranks agree on n because a construction
    only ends once every rank has joined it, and so counted itself in.
    """
    generation = (store.add("kaitian/constructions", 1) - 1) // size
    return dist.PrefixStore(f"kaitian/{generation}", store)


class _TrampolineReached(Exception):
    """Raised by the probe backend's allreduce: C++ called back into a Python Backend subclass."""


def _backend_base() -> type:
    """torch's C++ Backend when a Python subclass of it is called from C++, else ProcessGroup.

    Why: a Backend is what torch's own backends are. init_process_group wraps it in a
    ProcessGroup of its own, registered for every device type the backend names, with the
    group's name and description; DeviceMesh, FSDP2, DTensor, batch_isend_irecv,
    all_gather_coalesced, monitored_barrier and async checkpoints look backends up that way
    ("No backend type associated with device type cpu" otherwise). Recent torch has a trampoline
    that lets a Python subclass of Backend override the collectives; older torch (1.13 on) only
    lets a Python subclass of ProcessGroup do so, and there the group is a ProcessGroup itself.
    The probe asks the running torch: it registers a Backend whose allreduce raises a marker
    with a throwaway ProcessGroup and calls allreduce through C++.
    """
    c10d = torch._C._distributed_c10d
    if not hasattr(c10d, "Backend") or not hasattr(c10d.ProcessGroup, "_register_backend"):
        return dist.ProcessGroup

    class Probe(c10d.Backend):  # type: ignore[misc, name-defined]
        def allreduce(self, tensors: list[torch.Tensor], opts: object = None) -> dist.Work:
            raise _TrampolineReached

    try:
        pg = c10d.ProcessGroup(c10d.HashStore(), 0, 1)
        pg._register_backend(torch.device("cpu"), c10d.ProcessGroup.BackendType.CUSTOM, Probe(0, 1))
        pg.allreduce([torch.zeros(1)])
    except _TrampolineReached:
        return c10d.Backend
    except Exception:  # noqa: BLE001 - any other outcome means no trampoline
        return dist.ProcessGroup
    return dist.ProcessGroup


_BASE = _backend_base()
IS_BACKEND = _BASE is not dist.ProcessGroup
"""True when "kaitian" groups are torch Backends inside torch's own ProcessGroups (see _backend_base)."""


class ProcessGroupKaitian(_BASE):  # type: ignore[misc, valid-type]
    """torch.distributed backend over Kaitian's engine and, inside groups, the vendors' libraries.

    Created by torch's init_process_group / new_group through the registered creator; every rank
    of the group must construct it (the constructor joins communicators and vendor groups). On
    torch with a Backend trampoline it is a Backend, registered by torch for cpu and cuda in a
    ProcessGroup of torch's (`kaitian_backend(group)` finds it); on older torch it is the
    ProcessGroup itself.

    Deadline: KAITIAN_TIMEOUT (seconds) when set, else init_process_group's timeout; the engine
    applies it to every call and fails the call (and so the Work) when it passes. An engine error
    reaches Work.wait() as a RuntimeError carrying the engine's message, which names the rank, the
    call (kind, sequence number, dtype, count) and the cause, for example a lost peer's rank.
    """

    def __init__(self, store: dist.Store, rank: int, size: int, timeout: timedelta) -> None:
        super().__init__(rank, size)
        env_timeout = os.environ.get("KAITIAN_TIMEOUT")
        self._timeout_seconds = float(env_timeout) if env_timeout else timeout.total_seconds()
        self._rank = rank
        self._size = size
        self._calls = itertools.count(1)
        self._checks = CallChecks(rank, size)
        self.stage_times = StageTimes()  # the hybrid collectives' stages, for kaitian.stage_times()
        store = _this_init(store, size)
        self._store: dist.Store | None = store  # for monitored_barrier, which must not depend on the engine
        self._monitored_barriers = itertools.count(1)
        self._coalesced: list[_Transfer] | None = None  # between start_coalescing and end_coalescing
        self._coalesced_done = Future()
        token = job_token(store, rank, timeout)
        rendezvous = EngineRendezvous(store, rank, token, timeout)
        self.rendezvous_namespace = rendezvous.namespace  # where its communicators met (tests read it)
        host_id = local_host_id()

        def communicator(nranks: int, comm_rank: int, prefix: str) -> Communicator:
            prefix = rendezvous.namespace + prefix
            return Communicator(rendezvous.handle, nranks, comm_rank, prefix, token, host_id, self._timeout_seconds)

        # Communicators are joined in one global order (world, intra, columns) so that no two
        # ranks wait on each other's joins in opposite orders.
        joined = 0
        try:
            self.topology = Topology.exchange(rendezvous.values, rank, size, timeout)
            self._intra: IntraGroup | None = None
            self._intra_gather: IntraGroup | None = None
            self._column: Communicator | None = None
            self._worker: HybridEngine | None = None
            if self.topology.is_flat:
                self._world = communicator(size, rank, "kaitian/world")
            else:
                self._set_up_hybrid(store, rendezvous, token, host_id)
            joined = size
        finally:
            rendezvous.close(joined)

    def _set_up_hybrid(self, store: dist.Store, rendezvous: EngineRendezvous, token: str, host_id: str) -> None:
        """The engine's hybrid communicator, lent this rank's group library (torch's or the engine)."""
        topo = self.topology
        group, local = topo.group, topo.local_rank

        def intra_group(prefix: str, instance: int) -> IntraGroup | None:
            if group.backend == ENGINE:
                return None  # the engine runs its own inside the group, without calling back into Python
            return create_torch_intra_group(
                group.backend,
                dist.PrefixStore(prefix + "/", store),
                local,
                group.size,
                timedelta(seconds=self._timeout_seconds),
                list(group.ranks),
            )

        device = backend_device(group.backend)
        worker = HybridEngine(
            rendezvous.handle,
            self._size,
            self._rank,
            group.kind,
            (token, rendezvous.namespace + "kaitian/hybrid", host_id, self._timeout_seconds),
            intra_group,
            device,
            self.stage_times,
        )
        self._worker = worker
        if len(worker.groups) == 2:  # the reduce stage's instance, then the gather stage's
            self._intra, self._intra_gather = worker.groups
        self._world = worker.world
        self._column = worker.column
        engine_view = worker.topology(self._size)
        mine = [(g.index, g.ranks.index(r)) for r in range(self._size) for g in topo.groups if r in g.ranks]
        if engine_view != mine:
            worker.close()
            raise RuntimeError(
                f"kaitian: rank {self._rank}: the engine grouped the ranks as {engine_view} (group, local rank), "
                f"the Python package as {mine}; both must read the same KAITIAN_DEVICE_KIND and KAITIAN_HOST_ID"
            )

    def take_stage_times(self) -> dict[str, float]:
        """The hybrid collectives' seconds per stage since the last take (the allreduce's stages from the engine)."""
        taken = self.stage_times.take()
        if self._worker is not None:
            for label, seconds in self._worker.take_stage_seconds().items():
                taken[label] = taken.get(label, 0.0) + seconds
        return taken

    # ---- identity ----

    def getBackendName(self) -> str:  # torch's name
        return BACKEND_NAME

    def name(self) -> str:
        return BACKEND_NAME

    @property
    def intra_device(self) -> torch.device:
        """Where this rank's intra-group collectives run (cpu for the engine and gloo)."""
        return self._worker.device if self._worker is not None else torch.device("cpu")

    # ---- dispatch ----

    def _next_call_label(self, name: str) -> str:
        """How errors name a call: this rank, the collective and its number in this group."""
        return f"rank {self._rank}: {name} #{next(self._calls)}"

    def _engine(
        self, name: str, build: Callable[[], EngineCalls], source: Callable[[], int] | None = None
    ) -> _FutureWork:
        """Runs the engine calls `build` makes on the all-ranks communicator: directly when flat, in order
        when hybrid."""
        call = self._next_call_label(name)
        if self._worker is None:
            fut = Future()
            self._world.submit(build(), fut)
            return _work_from_future(fut, call, source)
        issue = lambda fut: self._world.submit(build(), fut)  # noqa: E731
        return _work_from_future(self._worker.submit(issue, name), call, source)

    def _in_place(
        self, name: str, tensors: list[torch.Tensor], call: Callable[[torch.Tensor], _engine.Call]
    ) -> dist.Work:
        """One in-place engine call per tensor (staged through host memory): `call(buffer)`."""

        def build() -> EngineCalls:
            keep: list[object] = []
            pairs = [(t, host(t, keep)) for t in tensors]
            return EngineCalls([call(b) for _, b in pairs], copied_back(pairs, tensors), keep)

        return self._engine(name, build)

    # ---- collectives ----

    def allreduce(self, tensors: list[torch.Tensor], opts: object = None) -> dist.Work:
        op = _reduce_op(opts, tensors)
        for t in tensors:
            _native.datatype(t.dtype)
        if (factor := _premul_factor(opts, "allreduce", tensors)) is not None:
            for t in tensors:  # in place: the result overwrites the input anyway
                t.mul_(factor)
        if self._worker is not None:
            return _work_from_future(self._allreduce_hierarchical(tensors, op), self._next_call_label("allreduce"))
        return self._in_place("allreduce", tensors, lambda b: _engine.all_reduce(b, b, op))

    def allreduce_coalesced(self, tensors: list[torch.Tensor], opts: object = None) -> dist.Work:
        return self.allreduce(tensors, opts)

    def _allreduce_hierarchical(self, tensors: list[torch.Tensor], op: int) -> Future:
        """The engine's hierarchical allreduce of each tensor (docs/HYBRID.md).

        A tensor the group's library cannot work on in place (elsewhere than its device, or not
        contiguous) goes through a contiguous copy there and back. The future is the last
        tensor's: the engine completes calls in order, and a failed one fails every later one.
        """
        device = self.intra_device
        fut: Future | None = None
        for t in tensors:
            direct = t.device == device and t.is_contiguous()
            flat = t.view(-1) if direct else t.detach().reshape(-1).to(device, copy=True)

            def finish(t: torch.Tensor = t, flat: torch.Tensor = flat, direct: bool = direct) -> list[torch.Tensor]:
                if not direct:
                    with self.stage_times.stage("copy back"):
                        t.copy_(flat.view_as(t))
                return tensors

            fut = self._worker.allreduce(flat, op, finish)
        if fut is None:  # nothing to reduce, but the call still completes in order
            fut = self._worker.enqueue([Task((None, None, None), lambda f: f.set_result(tensors))], "allreduce")
        return fut

    def _divide_by_world(self, t: torch.Tensor) -> None:
        """AVG's one division by the world size, after a SUM (truncating for integers, as the engine)."""
        if t.is_floating_point():
            t.div_(self._size)
        else:
            t.div_(self._size, rounding_mode="trunc")

    def _column_collective(
        self,
        call: Callable[[torch.Tensor, torch.Tensor], _engine.Call],
        source: torch.Tensor,
        result: torch.Tensor,
    ) -> None:
        """An engine allgather or reduce-scatter, `call(src, dst)`, on this rank's shard column,
        between the groups through host memory, from `source` into `result`."""
        src, dst = self._staged(source), self._staged(result, copy=False)
        with self.stage_times.stage("relay between groups"):
            self._column.run(EngineCalls([call(src, dst)], lambda: [], [src, dst]))
        if dst is not result:
            with self.stage_times.stage("staging copy"):
                result.copy_(dst)
        for staged, original in ((src, source), (dst, result)):
            if staged is not original:
                self._worker.staging.give(staged.view(-1))

    def _staged(self, t: torch.Tensor, copy: bool = True) -> torch.Tensor:
        """`t` itself in host memory, else a host buffer like it (pinned for CUDA, from the hybrid's
        pool) for the engine, holding a copy of `t` unless `copy` is false (a buffer the engine only writes)."""
        if t.device.type == "cpu":
            return t
        with self.stage_times.stage("staging copy"):
            staged = self._worker.staging.take(t.dtype, t.numel()).view(t.shape)
            if copy:
                staged.copy_(t)
        return staged

    def _hierarchical_collectives(self) -> bool:
        """Whether reduce-scatters and allgathers take the hierarchical path: groups of equal sizes, more than one."""
        return self._worker is not None and len(self.topology.groups) > 1 and self.topology.equal_sizes

    def _column_order(self) -> list[int]:
        """Global ranks in column order: local rank 0 of every group (in group order), then local rank 1, ..."""
        topo = self.topology
        return [grp.ranks[j] for j in range(topo.group.size) for grp in topo.groups]

    def _allgather_task(self, out: torch.Tensor, inp: torch.Tensor) -> Task:
        """Hierarchical allgather of one tensor (groups of equal size L, G groups), as one pipeline task.

        The reverse of _reduce_scatter_task: (2) column j allgathers its G ranks' inputs between
        the groups through host memory; (3) the group allgathers those columns with its own
        library, which leaves every block in column order, and the blocks are put back in rank
        order. Each rank sends its input across groups once, where the flat path would stage the
        whole output through host memory on every rank.
        """
        topo = self.topology
        group_size, groups = topo.group.size, len(topo.groups)
        n = inp.numel()
        stage = self.stage_times.stage
        column = torch.empty(groups * n, dtype=inp.dtype, device=self.intra_device)
        order = self._column_order()

        def relay() -> None:
            self._column_collective(_engine.all_gather, inp.detach().reshape(-1).contiguous(), column)

        def gather() -> None:
            if group_size == 1:
                ordered = column
            else:
                ordered = torch.empty(self._size * n, dtype=inp.dtype, device=self.intra_device)
                with stage("in-group allgather"):
                    self._intra_gather.allgather(ordered, column)
            with stage("rank order copy"):
                target = out if out.is_contiguous() else torch.empty(out.shape, dtype=out.dtype, device=out.device)
                blocks = target.view(self._size, n)
                blocks[torch.tensor(order, device=out.device)] = ordered.view(self._size, n).to(out.device)
                if target is not out:
                    out.copy_(target)

        return Task((None, relay, gather))

    def _reduce_scatter_task(self, out: torch.Tensor, inp: torch.Tensor, op: int) -> Task:
        """Hierarchical reduce-scatter of one tensor (groups of equal size L, G groups), as one pipeline task.

        Global rank (group g, local rank j) gets block r of the reduction. (1) The input's blocks
        are put in column order: for each j, the blocks of local rank j of every group, in group
        order. The group reduce-scatters that with its own library, so local rank j holds the
        group's partial sums of its column's G blocks. (2) Column j reduce-scatters those across
        the groups through host memory (the engine, G ranks, column rank = group index), so each
        rank gets its own block summed over every rank. (3) Copy out, AVG's one division by the
        world size. Each rank sends its column 1/L of the input across groups, where the flat
        path would stage all of it through host memory on every rank.
        """
        topo = self.topology
        group_size, groups = topo.group.size, len(topo.groups)
        n = out.numel()
        step_op = _native.SUM if op == _native.AVG else op
        stage = self.stage_times.stage
        order = self._column_order()
        shard = torch.empty(groups * n, dtype=inp.dtype, device=self.intra_device)
        mine = torch.empty(n, dtype=inp.dtype, device=self.intra_device)

        def reduce() -> None:
            with stage("column order copy"):
                blocks = inp.detach().reshape(self._size, n).to(self.intra_device)
                ordered = blocks[torch.tensor(order, device=blocks.device)].reshape(-1)
            if group_size == 1:
                shard.copy_(ordered)
                return
            with stage("in-group reduce-scatter"):
                self._intra.reduce_scatter(shard, ordered, step_op)

        def relay() -> None:
            self._column_collective(lambda src, dst: _engine.reduce_scatter(src, dst, step_op), shard, mine)

        def gather() -> None:
            with stage("copy back"):
                out.copy_(mine.view_as(out))
            if op == _native.AVG:
                self._divide_by_world(out)

        return Task((reduce, relay, gather))

    def broadcast(self, tensors: list[torch.Tensor], opts: object = None) -> dist.Work:
        root = opts.rootRank if opts is not None else 0
        self._checks.rank_in_group("broadcast", "root", root)
        return self._in_place("broadcast", tensors, lambda b: _engine.broadcast(b, b, root))

    def allgather(
        self, output_tensors: list[list[torch.Tensor]], input_tensors: list[torch.Tensor], opts: object = None
    ) -> dist.Work:
        for outputs, inp in zip(output_tensors, input_tensors, strict=True):
            self._checks.one_per_rank("allgather", "the output list", outputs)
            self._checks.same_dtype("allgather", inp, outputs)
            self._checks.elements("allgather", f"output {self._rank} (this rank's)", outputs[self._rank], inp.numel())

        def build() -> EngineCalls:
            keep: list[object] = []
            calls, finishers = [], []
            for outputs, inp in zip(output_tensors, input_tensors, strict=True):
                src = host(inp, keep)
                counts = [o.numel() for o in outputs]
                flat = torch.empty(sum(counts), dtype=inp.dtype)
                keep.append(flat)
                if len(set(counts)) == 1:
                    calls.append(_engine.all_gather(src, flat))
                else:
                    calls.append(_engine.all_gather_v(src, flat, _size_array(counts, keep)))
                finishers.append((outputs, flat, counts))

            def finish() -> list[torch.Tensor]:
                for outputs, flat, counts in finishers:
                    for out, part in zip(outputs, flat.split(counts), strict=True):
                        out.copy_(part.view_as(out))
                return [o for outputs in output_tensors for o in outputs]

            return EngineCalls(calls, finish, keep)

        return self._engine("allgather", build)

    def _allgather_base(self, output: torch.Tensor, input: torch.Tensor, opts: object = None) -> dist.Work:
        return self.allgather_into_tensor_coalesced([output], [input], opts)

    def allgather_into_tensor_coalesced(
        self, outputs: list[torch.Tensor], inputs: list[torch.Tensor], opts: object = None
    ) -> dist.Work:
        for out, inp in zip(outputs, inputs, strict=True):
            self._checks.same_dtype("allgather_into_tensor", inp, [out])
            self._checks.elements("allgather_into_tensor", "the output", out, inp.numel() * self._size)
        if self._hierarchical_collectives() and outputs:
            tasks = [self._allgather_task(out, inp) for out, inp in zip(outputs, inputs, strict=True)]
            tasks[-1].complete = lambda fut: fut.set_result(outputs)
            fut = self._worker.enqueue(tasks, "allgather_into_tensor")
            return _work_from_future(fut, self._next_call_label("allgather_into_tensor_coalesced"))

        def build() -> EngineCalls:
            keep: list[object] = []
            pairs, calls = [], []
            for out, inp in zip(outputs, inputs, strict=True):
                src, dst = host(inp, keep), host_empty(out, keep)
                pairs.append((out, dst))
                calls.append(_engine.all_gather(src, dst))
            return EngineCalls(calls, copied_back(pairs, outputs), keep)

        return self._engine("allgather_into_tensor_coalesced", build)

    def reduce_scatter(
        self, output_tensors: list[torch.Tensor], input_tensors: list[list[torch.Tensor]], opts: object = None
    ) -> dist.Work:
        op = _reduce_op(opts, [t for ts in input_tensors for t in ts])
        factor = _premul_factor(opts, "reduce_scatter", [t for ts in input_tensors for t in ts])
        for out, inputs in zip(output_tensors, input_tensors, strict=True):
            self._checks.one_per_rank("reduce_scatter", "the input list", inputs)
            self._checks.same_dtype("reduce_scatter", out, inputs)
            self._checks.elements("reduce_scatter", "the output", out, inputs[self._rank].numel())

        def build() -> EngineCalls:
            keep: list[object] = []
            calls, finishers = [], []
            for out, inputs in zip(output_tensors, input_tensors, strict=True):
                counts = [x.numel() for x in inputs]
                flat = torch.cat([x.detach().reshape(-1).cpu() for x in inputs])
                if factor is not None:
                    flat.mul_(factor)
                keep.append(flat)
                if len(set(counts)) == 1:
                    dst = host_empty(out, keep)
                    calls.append(_engine.reduce_scatter(flat, dst, op))
                    finishers.append((out, dst))
                else:
                    # No reduce-scatter-v in the engine: reduce everything, keep this rank's block.
                    calls.append(_engine.all_reduce(flat, flat, op))
                    finishers.append((out, flat.split(counts)[self._rank].view(out.shape)))
            return EngineCalls(calls, copied_back(finishers, output_tensors), keep)

        return self._engine("reduce_scatter", build)

    def _reduce_scatter_base(self, output: torch.Tensor, input: torch.Tensor, opts: object = None) -> dist.Work:
        return self.reduce_scatter_tensor_coalesced([output], [input], opts)

    def reduce_scatter_tensor_coalesced(
        self, outputs: list[torch.Tensor], inputs: list[torch.Tensor], opts: object = None
    ) -> dist.Work:
        op = _reduce_op(opts, inputs)
        if (factor := _premul_factor(opts, "reduce_scatter_tensor", inputs)) is not None:
            inputs = [inp * factor for inp in inputs]  # a scaled copy: the input stays the caller's
        for out, inp in zip(outputs, inputs, strict=True):
            self._checks.same_dtype("reduce_scatter_tensor", inp, [out])
            self._checks.elements("reduce_scatter_tensor", "the input", inp, out.numel() * self._size)
        if self._hierarchical_collectives() and outputs:
            tasks = [self._reduce_scatter_task(out, inp, op) for out, inp in zip(outputs, inputs, strict=True)]
            tasks[-1].complete = lambda fut: fut.set_result(outputs)
            fut = self._worker.enqueue(tasks, "reduce_scatter_tensor")
            return _work_from_future(fut, self._next_call_label("reduce_scatter_tensor_coalesced"))

        def build() -> EngineCalls:
            keep: list[object] = []
            pairs, calls = [], []
            for out, inp in zip(outputs, inputs, strict=True):
                src, dst = host(inp, keep), host_empty(out, keep)
                pairs.append((out, dst))
                calls.append(_engine.reduce_scatter(src, dst, op))
            return EngineCalls(calls, copied_back(pairs, outputs), keep)

        return self._engine("reduce_scatter_tensor_coalesced", build)

    def reduce(self, tensors: list[torch.Tensor], opts: object = None) -> dist.Work:
        if _premul_factor(opts, "reduce", tensors) is not None:
            raise ValueError("kaitian: reduce: reduce op PREMUL_SUM is supported by allreduce and reduce_scatter only")
        op = _reduce_op(opts, tensors)
        root = opts.rootRank if opts is not None else 0
        self._checks.rank_in_group("reduce", "root", root)
        return self._in_place("reduce", tensors, lambda b: _engine.reduce(b, b, op, root))

    def gather(
        self, output_tensors: list[list[torch.Tensor]], input_tensors: list[torch.Tensor], opts: object = None
    ) -> dist.Work:
        root = opts.rootRank if opts is not None else 0
        self._checks.rank_in_group("gather", "root", root)
        if self._rank == root:
            self._checks.one_block_per_rank("gather", "output", output_tensors[0], input_tensors[0])

        def build() -> EngineCalls:
            keep: list[object] = []
            src = host(input_tensors[0], keep)
            flat = torch.empty(src.numel() * self._size, dtype=src.dtype) if self._rank == root else None
            keep.append(flat)
            call = _engine.gather(src, flat, root)

            def finish() -> list[torch.Tensor]:
                if flat is None:
                    return []
                outputs = output_tensors[0]
                for out, part in zip(outputs, flat.chunk(self._size), strict=True):
                    out.copy_(part.view_as(out))
                return outputs

            return EngineCalls([call], finish, keep)

        return self._engine("gather", build)

    def scatter(
        self, output_tensors: list[torch.Tensor], input_tensors: list[list[torch.Tensor]], opts: object = None
    ) -> dist.Work:
        root = opts.rootRank if opts is not None else 0
        self._checks.rank_in_group("scatter", "root", root)
        if self._rank == root:
            self._checks.one_block_per_rank("scatter", "input", input_tensors[0], output_tensors[0])

        def build() -> EngineCalls:
            keep: list[object] = []
            out = output_tensors[0]
            dst = host_empty(out, keep)
            flat = None
            if self._rank == root:
                flat = torch.cat([x.detach().reshape(-1).cpu() for x in input_tensors[0]])
                keep.append(flat)
            call = _engine.scatter(flat, dst, root)
            return EngineCalls([call], copied_back([(out, dst)], output_tensors), keep)

        return self._engine("scatter", build)

    def alltoall_base(
        self,
        output: torch.Tensor,
        input: torch.Tensor,
        output_split_sizes: list[int],
        input_split_sizes: list[int],
        opts: object = None,
    ) -> dist.Work:
        self._checks.same_dtype("alltoall_base", input, [output])
        self._checks.splits("alltoall_base", "the input", input_split_sizes, input)
        self._checks.splits("alltoall_base", "the output", output_split_sizes, output)
        if not input_split_sizes and not output_split_sizes:
            self._checks.elements("alltoall_base", "the output", output, input.numel())

        def build() -> EngineCalls:
            keep: list[object] = []
            src, dst = host(input, keep), host_empty(output, keep)
            if not output_split_sizes and not input_split_sizes:
                call = _engine.all_to_all(src, dst, src.numel() // self._size)
            else:
                send = self._split_counts(input, input_split_sizes)
                recv = self._split_counts(output, output_split_sizes)
                call = _engine.all_to_all_v(src, _size_array(send, keep), dst, _size_array(recv, keep))
            return EngineCalls([call], copied_back([(output, dst)], [output]), keep)

        return self._engine("alltoall_base", build)

    def _split_counts(self, t: torch.Tensor, splits: list[int]) -> list[int]:
        """Element counts per rank for splits along dim 0 (equal rows when splits is empty)."""
        rows = t.shape[0] if t.dim() else 1
        row = t.numel() // rows if rows else 0
        return [s * row for s in splits] if splits else [rows // self._size * row] * self._size

    def alltoall(
        self, output_tensors: list[torch.Tensor], input_tensors: list[torch.Tensor], opts: object = None
    ) -> dist.Work:
        self._checks.one_per_rank("alltoall", "the input list", input_tensors)
        self._checks.one_per_rank("alltoall", "the output list", output_tensors)
        self._checks.same_dtype("alltoall", input_tensors[0], [*input_tensors, *output_tensors])

        def build() -> EngineCalls:
            keep: list[object] = []
            send = [x.numel() for x in input_tensors]
            recv = [x.numel() for x in output_tensors]
            src = torch.cat([x.detach().reshape(-1).cpu() for x in input_tensors])
            dst = torch.empty(sum(recv), dtype=src.dtype)
            keep += [src, dst]
            call = _engine.all_to_all_v(src, _size_array(send, keep), dst, _size_array(recv, keep))

            def finish() -> list[torch.Tensor]:
                for out, part in zip(output_tensors, dst.split(recv), strict=True):
                    out.copy_(part.view_as(out))
                return output_tensors

            return EngineCalls([call], finish, keep)

        return self._engine("alltoall", build)

    def barrier(self, opts: object = None) -> dist.Work:
        return self._engine("barrier", lambda: EngineCalls([_engine.barrier()], lambda: []))

    def send(self, tensors: list[torch.Tensor], dstRank: int, tag: int = 0) -> dist.Work:
        self._checks.rank_in_group("send", "destination", dstRank)
        if self._coalesced is not None:
            return self._coalesce("send", True, tensors, dstRank, tag)

        def build() -> EngineCalls:
            keep: list[object] = []
            bufs = [host(t, keep) for t in tensors]
            calls = [_engine.send(b, dstRank, tag) for b in bufs]
            return EngineCalls(calls, lambda: tensors, keep)

        return self._engine("send", build)

    def recv(self, tensors: list[torch.Tensor], srcRank: int, tag: int = 0) -> dist.Work:
        self._checks.rank_in_group("recv", "source", srcRank)
        if self._coalesced is not None:
            return self._coalesce("recv", False, tensors, srcRank, tag)

        def build() -> EngineCalls:
            keep: list[object] = []
            pairs = [(t, host_empty(t, keep)) for t in tensors]
            calls = [_engine.recv(b, srcRank, tag) for _, b in pairs]
            return EngineCalls(calls, copied_back(pairs, tensors), keep)

        return self._engine("recv", build)

    def recv_anysource(self, tensors: list[torch.Tensor], tag: int = 0) -> dist.Work:
        """torch's dist.recv/irecv without a source: refused up front where torch cannot report the sender.

        Where "kaitian" is a torch Backend (IS_BACKEND), torch wraps the work this returns in its
        PyWorkHolder, which passes on wait() and get_future() but not sourceRank(): dist.recv would
        receive the message and then fail asking for the sender. So nothing is received and the
        error names kaitian.recv_from_any, which returns the sender. On older torch the group is this
        object and torch asks this class's work directly.
        """
        if IS_BACKEND:
            raise NotImplementedError(
                "kaitian: dist.recv/irecv without a source: torch's wrapper of Python backends does not "
                "pass on which rank sent the message, so torch could not return it; call "
                "kaitian.recv_from_any(tensor, tag=..., group=...), which receives from any rank and "
                "returns the sender's global rank"
            )
        return self.receive_from_any(tensors, tag)

    def receive_from_any(self, tensors: list[torch.Tensor], tag: int = 0) -> _FutureWork:
        """Receives into the one tensor from whichever rank first sends this rank a message with `tag`.

        The work's _source_rank() is the sender's rank in this group, once complete. As gloo's, one
        tensor only; other ranks' messages wait for the receives that match them.
        """
        if len(tensors) != 1:
            raise ValueError(f"kaitian: recv from any rank takes exactly one tensor, not {len(tensors)}")
        received: list[int] = []

        def build() -> EngineCalls:
            keep: list[object] = []
            pairs = [(t, host_empty(t, keep)) for t in tensors]
            calls = [_engine.recv_any(b, tag) for _, b in pairs]
            return EngineCalls(calls, copied_back(pairs, tensors), keep, sources=received)

        return self._engine("recv from any rank", build, source=lambda: received[0])

    # ---- batched point-to-point: torch's coalescing manager, as batch_isend_irecv uses it ----

    @property
    def supports_coalescing(self) -> bool:
        return True

    def start_coalescing(self) -> None:
        """From here to end_coalescing, sends and receives are collected, not issued."""
        if self._coalesced is not None:
            raise RuntimeError(f"kaitian: rank {self._rank}: start_coalescing: this group is coalescing already")
        self._coalesced = []
        self._coalesced_done = Future()

    def _coalesce(self, call: str, sending: bool, tensors: list[torch.Tensor], peer: int, tag: int) -> dist.Work:
        """Records a send or receive of the batch; its Work completes with the batch."""
        assert self._coalesced is not None
        self._coalesced += [_Transfer(sending, t, peer, tag) for t in tensors]
        return _work_from_future(self._coalesced_done, self._next_call_label(call))

    def end_coalescing(self) -> dist.Work:
        """Issues the collected sends and receives as one engine batch.

        Why one batch: each rank's engine runs its calls one at a time, so a ring in which every
        rank sends before it receives would stall once a message outgrows the link's buffer; in a
        batch every transfer progresses at once, as in NCCL's grouped send/recv.
        """
        transfers, done = self._coalesced, self._coalesced_done
        if transfers is None:
            raise RuntimeError(f"kaitian: rank {self._rank}: end_coalescing without start_coalescing")
        self._coalesced = None

        def build() -> EngineCalls:
            keep: list[object] = []
            ops = (_native.P2POp * max(len(transfers), 1))()
            keep.append(ops)
            received = []
            for i, x in enumerate(transfers):
                buf = host(x.tensor, keep) if x.sending else host_empty(x.tensor, keep)
                if not x.sending:
                    received.append((x.tensor, buf))
                ops[i] = _native.P2POp(
                    int(x.sending), buf.data_ptr(), buf.numel(), _native.datatype(buf.dtype), x.peer, x.tag
                )
            tensors = [x.tensor for x in transfers]
            calls = [_engine.send_recv_batch(ops, len(transfers))]
            return EngineCalls(calls, copied_back(received, tensors), keep)

        work = self._engine("send/recv batch", build)

        def settle_ops(fut: Future) -> None:
            try:
                fut.value()
            except Exception as error:  # noqa: BLE001 - the batch's error is each op's
                settle_failure(done, error)
            else:
                done.set_result([])

        work._fut.add_done_callback(settle_ops)
        return work

    def allgather_coalesced(
        self, output_lists: list[list[torch.Tensor]], inputs: list[torch.Tensor], opts: object = None
    ) -> dist.Work:
        """all_gather_coalesced: output_lists[r][i] receives rank r's inputs[i], in one engine call.

        Every rank's inputs are laid end to end and gathered once; each rank's block is then cut
        along this rank's own input sizes (torch requires the same shapes on every rank).
        """
        self._checks.one_per_rank("allgather_coalesced", "the output list", output_lists)
        counts = [t.numel() for t in inputs]
        for r, outputs in enumerate(output_lists):
            if (sizes := [t.numel() for t in outputs]) != counts:
                raise ValueError(
                    f"kaitian: rank {self._rank}: allgather_coalesced: output list {r} has tensors of "
                    f"{sizes} elements, the inputs have {counts}"
                )
            for out in outputs:
                self._checks.same_dtype("allgather_coalesced", inputs[0], [out])
        if inputs:
            self._checks.same_dtype("allgather_coalesced", inputs[0], inputs)

        def build() -> EngineCalls:
            keep: list[object] = []
            if not inputs:
                return EngineCalls([_engine.barrier()], lambda: [], keep)
            src = torch.cat([t.detach().reshape(-1).cpu() for t in inputs])
            dst = torch.empty(src.numel() * self._size, dtype=src.dtype)
            keep += [src, dst]
            call = _engine.all_gather(src, dst)

            def finish() -> list[torch.Tensor]:
                for outputs, block in zip(output_lists, dst.chunk(self._size), strict=True):
                    for out, part in zip(outputs, block.split(counts), strict=True):
                        out.copy_(part.view_as(out))
                return [t for outputs in output_lists for t in outputs]

            return EngineCalls([call], finish, keep)

        return self._engine("allgather_coalesced", build)

    def monitored_barrier(self, opts: object = None, wait_all_ranks: bool = False) -> None:
        """A barrier that names the ranks that did not reach it within `opts.timeout`, as gloo's does.

        Through the job's store, not the engine: a rank that is stuck elsewhere cannot answer an
        engine call, and the point is to say which ranks those are. Every rank sets its arrival
        key; rank 0 waits for each (for all of them with `wait_all_ranks`, else up to the first
        missing one) and then releases the others, which wait for its release as long.
        """
        timeout = getattr(opts, "timeout", None) or timedelta(seconds=self._timeout_seconds)
        number = next(self._monitored_barriers)
        prefix = f"kaitian/monitored-barrier/{number}"
        self._store.set(f"{prefix}/{self._rank}", "1")
        if self._rank != 0:
            try:
                self._store.wait([f"{prefix}/release"], timeout)
            except RuntimeError as error:
                raise _native.KaitianTimeoutError(
                    f"kaitian: rank {self._rank}: monitored_barrier #{number}: rank 0 did not release "
                    f"the barrier within {timeout.total_seconds():g} s",
                    _native.TIMEOUT,
                ) from error
            return
        deadline = time.monotonic() + timeout.total_seconds()
        missing = []
        for peer in range(1, self._size):
            key = f"{prefix}/{peer}"
            arrived = self._store.check([key])
            remaining = deadline - time.monotonic()
            if not arrived and remaining > 0:
                try:
                    self._store.wait([key], timedelta(seconds=remaining))
                    arrived = True
                except RuntimeError:
                    arrived = False
            if not arrived:
                missing.append(peer)
                if not wait_all_ranks:
                    break
        if missing:
            ranks = ", ".join(str(r) for r in missing)
            raise _native.KaitianTimeoutError(
                f"kaitian: rank 0: monitored_barrier #{number}: rank{'s' if len(missing) > 1 else ''} "
                f"{ranks} failed to pass monitoredBarrier in {timeout.total_seconds() * 1000:g} ms",
                _native.TIMEOUT,
            )
        self._store.set(f"{prefix}/release", "1")

    # torch >= 2.15 names (Backend's and ProcessGroup's) for the single-tensor and coalesced forms.
    all_gather_single = _allgather_base
    reduce_scatter_single = _reduce_scatter_base
    all_gather_single_coalesced = allgather_into_tensor_coalesced
    reduce_scatter_single_coalesced = reduce_scatter_tensor_coalesced
    all_to_all_single = alltoall_base

    # ---- teardown ----

    def abort(self) -> None:
        """Fails every pending and later collective of this group, on every rank."""
        reason = f"rank {self._rank} aborted the process group"
        if self._worker is not None:
            self._worker.abort(reason)
        else:
            self._world.abort(reason)

    def shutdown(self) -> None:
        """Finishes issued collectives and leaves the communicators (destroy_process_group).

        A hybrid group's engine leaves its own communicators, then the groups this package lent it."""
        if self._worker is not None:
            self._worker.close()
            self._worker = None
        self._world.destroy()
        # Let go of the job's store now, with the vendor groups that hold it too, not when this
        # object is collected: on rank 0 it is torch's store server, and a later
        # init_process_group in this process serves a new one on the same port, which the other
        # ranks must not find the old one answering on.
        self._intra = self._intra_gather = None
        if self._rank != 0 and self._is_default_group():
            self._await_store_server_gone()
        self._store = None

    def _is_default_group(self) -> bool:
        """Whether this is the default group's backend (a subgroup's teardown leaves the store up)."""
        try:
            default = dist.distributed_c10d._get_default_group()
        except (RuntimeError, ValueError):
            return False
        return kaitian_backend(default) is self

    STORE_CLOSE_WAIT_SECONDS = 2.0

    def _await_store_server_gone(self) -> None:
        """Waits (at most STORE_CLOSE_WAIT_SECONDS) until rank 0's torch store server is gone.

        Why: torch's init_process_group after a destroy serves a new store on rank 0 at the
        same address. A rank that leaves destroy first and connects while rank 0 is still
        tearing down reaches the old server, which then closes under it ("Failed to recv, got
        0 bytes"). So every other rank stays until its connection to the old server breaks.
        Only for torch's TCPStore: other stores (a FileStore, a HashStore) have no server.
        """
        base = self._store
        while isinstance(base, dist.PrefixStore):
            base = base.underlying_store
        if not isinstance(base, dist.TCPStore):
            return
        deadline = time.monotonic() + self.STORE_CLOSE_WAIT_SECONDS
        while time.monotonic() < deadline:
            try:
                self._store.check(["kaitian/store-probe"])
            except Exception:  # noqa: BLE001 - any failure means the server is gone
                return
            time.sleep(0.01)


def kaitian_backend(group: dist.ProcessGroup | None = None) -> ProcessGroupKaitian | None:
    """The "kaitian" backend of `group` (default: the world), or None when it has none.

    On torch with a Backend trampoline the group is torch's ProcessGroup and Kaitian's object is
    its backend for the cpu device (or cuda, in "cpu:gloo,cuda:kaitian"); on older torch the
    group is Kaitian's object itself.
    """
    pg = group if group is not None else dist.group.WORLD
    if isinstance(pg, ProcessGroupKaitian):
        return pg
    for device in ("cpu", "cuda"):
        try:
            backend = pg._get_backend(torch.device(device))
        except (RuntimeError, AttributeError):
            continue
        if isinstance(backend, ProcessGroupKaitian):
            return backend
    return None


def recv_from_any(tensor: torch.Tensor, tag: int = 0, group: dist.ProcessGroup | None = None) -> int:
    """dist.recv(tensor, tag=tag, group=group) without a source, on a "kaitian" group: receives from
    whichever rank first sends this rank a message with `tag` and returns that rank (global, as
    dist.recv returns it).

    Why not dist.recv itself: see ProcessGroupKaitian.recv_anysource.
    """
    backend = kaitian_backend(group)
    if backend is None:
        raise ValueError('kaitian.recv_from_any: the group has no "kaitian" backend')
    work = backend.receive_from_any([tensor], tag)
    work.wait()
    source = work._source_rank()
    return source if group is None else dist.get_global_rank(group, source)


def create_process_group(store: dist.Store, rank: int, size: int, timeout: timedelta) -> ProcessGroupKaitian:
    """The creator registered with torch.distributed.Backend (torch's non-extended signature)."""
    if TorchVersion(torch.__version__) < MINIMUM_TORCH:
        raise RuntimeError(
            f"kaitian: torch {torch.__version__} is older than the oldest torch kaitian runs on "
            f"({'.'.join(map(str, MINIMUM_TORCH))}): its DDP cannot wait for a Python backend's work; "
            "upgrade torch (kaitian is tested with 2.15)"
        )
    return ProcessGroupKaitian(store, rank, size, timeout)
