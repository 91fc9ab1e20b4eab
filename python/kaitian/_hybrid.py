"""The hybrid communicator (ktHybrid_t): the engine runs the hierarchical algorithm, Python lends it a library.

The engine owns the algorithm and its three stage threads (reduce in the group, relay between
groups, gather in the group; docs/HYBRID.md). What it cannot do itself is run a vendor's library
on device memory, so this module hands it the rank's group library (`IntraGroup`: torch's
ProcessGroup for gloo, NCCL, CNCL, HCCL, or the engine) as C callbacks, and names tensors by
buffer: host addresses for CPU tensors (the engine then reaches them without calling back), else
ids with staging callbacks (`hostView`/`commit`) that copy a region through host memory for the
relay.

Collectives the engine does not run itself (the hierarchical reduce-scatter and allgather, and
every call over all ranks) are submitted as Python steps with `ktHybridSubmit`, so they keep
their order with the allreduces on the same stage threads.
"""

from __future__ import annotations

import atexit
import ctypes
import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch.futures import Future

from . import _native
from ._engine import Communicator, WorkCompletions, work_error
from ._vendor import EngineIntraGroup

if TYPE_CHECKING:
    from ._vendor import IntraGroup
    from .profile import StageTimes

Job = Callable[[Future], None]
Step = Callable[[], None]


class EngineStage(NamedTuple):
    number: int  # ktHybridStage_t
    label: str  # its name in kaitian.stage_times()


# The stages of a hybrid allreduce the engine times (ktHybridStageSeconds), the in-group ones
# whichever library runs them.
ENGINE_STAGES = {
    "group_reduce_scatter": EngineStage(0, "in-group reduce-scatter"),
    "group_all_reduce": EngineStage(1, "in-group allreduce"),
    "group_all_gather": EngineStage(2, "in-group allgather"),
    "group_broadcast": EngineStage(3, "in-group broadcast"),
    "relay": EngineStage(4, "relay between groups"),
}

# Callbacks reach Python objects through integer keys: ctypes needs its function objects alive
# for as long as C may call them, so there is one of each for the process, routed by key.
_objects: dict[int, object] = {}
_objects_lock = threading.Lock()
_keys = itertools.count(1)


def _register(value: object) -> int:
    key = next(_keys)
    with _objects_lock:
        _objects[key] = value
    return key


def _lookup(key: int | None) -> object:
    with _objects_lock:
        return _objects[key or 0]


def _forget(key: int | None) -> object | None:
    with _objects_lock:
        return _objects.pop(key or 0, None)


def _report(error: BaseException, message: int | None, capacity: int) -> int:
    """Writes `error` into the engine's message buffer; returns the failure status."""
    if message and capacity > 0:
        text = f"{type(error).__name__}: {error}".encode(errors="replace")[: capacity - 1]
        ctypes.memmove(message, text + b"\0", len(text) + 1)
    return 1


@dataclass
class Task:
    """One call of the application's steps: (reduce, relay, gather), each run on that stage's
    thread in the hybrid's order (None: nothing there); `complete` runs after the gather step."""

    steps: tuple[Step | None, Step | None, Step | None]
    complete: Job | None = None


class _Binding:
    """One instance of the group library, as the engine's callbacks see it."""

    def __init__(self, hybrid: HybridEngine, group: IntraGroup, rank: int, size: int) -> None:
        self.hybrid = hybrid
        self.group = group
        self.rank = rank
        self.size = size


def _binding_call(key: int | None, message: int | None, capacity: int, run: Callable[[_Binding], None]) -> int:
    try:
        run(_lookup(key))  # type: ignore[arg-type]
    except BaseException as error:  # noqa: BLE001 - every failure goes back to the engine as a message
        return _report(error, message, capacity)
    return 0


def _all_reduce(key: int | None, region: _native.Region, datatype: int, op: int, message: int | None, cap: int) -> int:
    def run(b: _Binding) -> None:
        b.group.allreduce(b.hybrid.tensor(region, datatype), op)

    return _binding_call(key, message, cap, run)


def _reduce_scatter(
    key: int | None, region: _native.Region, datatype: int, op: int, message: int | None, cap: int
) -> int:
    def run(b: _Binding) -> None:
        t = b.hybrid.tensor(region, datatype)
        width = t.numel() // b.size
        b.group.reduce_scatter(t[b.rank * width : (b.rank + 1) * width], t, op)

    return _binding_call(key, message, cap, run)


def _all_gather(key: int | None, region: _native.Region, datatype: int, message: int | None, cap: int) -> int:
    def run(b: _Binding) -> None:
        t = b.hybrid.tensor(region, datatype)
        width = t.numel() // b.size
        b.group.allgather(t, t[b.rank * width : (b.rank + 1) * width])

    return _binding_call(key, message, cap, run)


def _broadcast(key: int | None, region: _native.Region, datatype: int, root: int, message: int | None, cap: int) -> int:
    def run(b: _Binding) -> None:
        b.group.broadcast(b.hybrid.tensor(region, datatype), root)

    return _binding_call(key, message, cap, run)


def _destroy_binding(key: int | None) -> None:
    _forget(key)


def _join_group(
    key: int | None,
    info: ctypes._Pointer,  # type: ignore[type-arg]
    library: ctypes._Pointer,  # type: ignore[type-arg]
    message: int | None,
    cap: int,
) -> int:
    """Lends the engine this rank's group library, or returns 1 for the engine's own (no library
    lent: the engine then runs the group's steps without calling into Python). A lent library
    has no abort: torch's process groups cannot be aborted, so a rank blocked in one waits for
    that library's own timeout (the group's)."""
    try:
        hybrid: HybridEngine = _lookup(key)  # type: ignore[assignment]
        fields = info.contents
        group = hybrid.join(fields.storePrefix.decode(), int(fields.instance))
        if group is None:
            return 1
        binding = _register(_Binding(hybrid, group, int(fields.localRank), int(fields.groupSize)))
        out = library.contents
        out.userData = binding
        out.allReduce = _ALL_REDUCE
        out.reduceScatter = _REDUCE_SCATTER
        out.allGather = _ALL_GATHER
        out.broadcast = _BROADCAST
        out.destroy = _DESTROY_BINDING
    except BaseException as error:  # noqa: BLE001
        return _report(error, message, cap)
    return 0


def _host_view(
    key: int | None, region: _native.Region, datatype: int, view: ctypes._Pointer, message: int | None, cap: int
) -> int:  # type: ignore[type-arg]
    try:
        hybrid: HybridEngine = _lookup(key)  # type: ignore[assignment]
        view[0] = hybrid.stage_in(region, datatype)
    except BaseException as error:  # noqa: BLE001
        return _report(error, message, cap)
    return 0


def _commit(
    key: int | None, region: _native.Region, datatype: int, view: int | None, message: int | None, cap: int
) -> int:
    try:
        hybrid: HybridEngine = _lookup(key)  # type: ignore[assignment]
        hybrid.stage_out(region, datatype, view or 0)
    except BaseException as error:  # noqa: BLE001
        return _report(error, message, cap)
    return 0


def _step(index: int) -> Callable[[int | None, int | None, int], int]:
    def run(key: int | None, message: int | None, cap: int) -> int:
        try:
            steps: tuple[Step | None, ...] = _lookup(key)  # type: ignore[assignment]
            step = steps[index]
            if step is not None:
                step()
        except BaseException as error:  # noqa: BLE001
            return _report(error, message, cap)
        return 0

    return run


_ALL_REDUCE = _native.GroupReduceFn(_all_reduce)
_REDUCE_SCATTER = _native.GroupReduceFn(_reduce_scatter)
_ALL_GATHER = _native.GroupAllGatherFn(_all_gather)
_BROADCAST = _native.GroupBroadcastFn(_broadcast)
_DESTROY_BINDING = _native.GroupDestroyFn(_destroy_binding)
_JOIN_GROUP = _native.JoinGroupFn(_join_group)
_HOST_VIEW = _native.HostViewFn(_host_view)
_COMMIT = _native.CommitFn(_commit)
_STEPS = [_native.StepFn(_step(index)) for index in range(3)]
_RELEASE_STEPS = _native.ReleaseFn(_destroy_binding)


class StagingPool:
    """Host buffers for the relay's staging copies, kept for reuse (pinned for CUDA).

    Why: pinning host memory (cudaHostAlloc) costs far more than the copy it serves, and a
    pinned buffer freed on every relay would be pinned again for the next chunk. Buffers are
    kept per (dtype, element count), which repeat from step to step (DDP's buckets, the engine's
    chunks); at most `idle_limit` idle ones per kind, so an odd size does not pile up.
    """

    def __init__(self, pinned: bool, idle_limit: int = 8) -> None:
        self.pinned = pinned
        self._idle_limit = idle_limit
        self._idle: dict[tuple[torch.dtype, int], list[torch.Tensor]] = {}
        self._lock = threading.Lock()

    def take(self, dtype: torch.dtype, count: int) -> torch.Tensor:
        """A host buffer of `count` elements (contents undefined), reused when one is idle."""
        with self._lock:
            idle = self._idle.get((dtype, count))
            if idle:
                return idle.pop()
        return torch.empty(count, dtype=dtype, pin_memory=self.pinned)

    def give(self, buffer: torch.Tensor) -> None:
        """Returns a buffer from `take` for reuse."""
        with self._lock:
            idle = self._idle.setdefault((buffer.dtype, buffer.numel()), [])
            if len(idle) < self._idle_limit:
                idle.append(buffer)


class HybridEngine:
    """One ktHybrid_t, with the torch futures of its calls.

    `make_group(prefix, instance)` creates one instance of this rank's group library when the
    engine asks (twice, on every rank of a group of two or more), or returns None to have the
    engine run its own inside the group. `groups` are then the libraries of the reduce stage and
    the gather stage, for the application's own steps: the lent ones, or the engine's
    communicators wrapped (owned by the hybrid). `device` is where that library
    works: buffers on the CPU are passed as addresses; any other device's go by id and are staged
    through host memory (pinned for CUDA) for the relay. `staged=True` stages CPU buffers too, so
    tests run that path here.
    """

    def __init__(
        self,
        store_handle: int,
        nranks: int,
        rank: int,
        device_kind: str,
        config: tuple[str, str, str, float],
        make_group: Callable[[str, int], IntraGroup | None],
        device: torch.device,
        stage_times: StageTimes,
        staged: bool = False,
    ) -> None:
        token, prefix, host_id, timeout_seconds = config
        self.rank = rank
        self.stage_times = stage_times
        self.device = device
        self.groups: list[IntraGroup] = []  # instance 0 (reduce stage), then 1 (gather stage)
        self._make_group = make_group
        self._staged = staged or device.type != "cpu"
        self._buffers: dict[int, list[object]] = {}  # buffer -> [flat tensor, uses]
        self._buffer_ids = itertools.count(1)
        self._views: dict[int, torch.Tensor] = {}  # staging copies by address, until commit
        self.staging = StagingPool(pinned=device.type == "cuda")  # host buffers for the relay, reused
        self._lock = threading.Lock()
        self._api = _native.lib()
        self._works = WorkCompletions(self._api)
        self._key = _register(self)
        self._strings = [s.encode() for s in (token, prefix, host_id, device_kind)]
        config_struct = _native.config(*self._strings[:3], timeout_seconds)
        callbacks = _native.HybridCallbacks(
            ctypes.sizeof(_native.HybridCallbacks),
            self._key,
            _JOIN_GROUP,
            _HOST_VIEW if self._staged else _native.HostViewFn(),
            _COMMIT if self._staged else _native.CommitFn(),
        )
        handle = ctypes.c_void_p()
        try:
            _native.check(
                self._api.ktHybridInitRank(
                    ctypes.byref(handle),
                    store_handle,
                    nranks,
                    rank,
                    self._strings[3],
                    ctypes.byref(config_struct),
                    ctypes.byref(callbacks),
                )
            )
        except BaseException:
            self._destroy_groups()
            _forget(self._key)
            raise
        self.handle: int | None = handle.value
        world, column = self._borrowed("ktHybridWorld"), self._borrowed("ktHybridColumn")
        if world is None:  # the header promises every hybrid its all-ranks communicator
            raise _native.KaitianInternalError("kaitian: ktHybridWorld gave no communicator", _native.INTERNAL_ERROR)
        self.world = Communicator.borrowed(world, timeout_seconds)
        self.column = Communicator.borrowed(column, timeout_seconds) if column else None
        self._stage_seconds_taken: dict[str, float] = {}
        if not self.groups:  # the engine inside the group (or a group of one rank): borrow its communicators
            self.groups = [EngineIntraGroup(Communicator.borrowed(c, timeout_seconds)) for c in self._group_comms()]
        atexit.register(self.close)  # stage threads must not call back into a finalizing interpreter

    def _group_comms(self) -> list[int]:
        """The engine's communicators inside this rank's group (reduce stage's, gather stage's), if it runs them."""
        return [comm for instance in (0, 1) if (comm := self._borrowed("ktHybridGroupComm", instance))]

    def _borrowed(self, function: str, *arguments: int) -> int | None:
        """A communicator the hybrid owns, from `function(hybrid, *arguments, &comm)`; None when it has none."""
        comm = ctypes.c_void_p()
        _native.check(getattr(self._api, function)(self.handle, *arguments, ctypes.byref(comm)))
        return comm.value

    def topology(self, nranks: int) -> list[tuple[int, int]]:
        """(group index, local rank) of every global rank, as the engine grouped them."""
        groups, locals_ = (ctypes.c_int * nranks)(), (ctypes.c_int * nranks)()
        _native.check(self._api.ktHybridTopology(self.handle, groups, locals_))
        return list(zip(groups, locals_, strict=True))

    # ---- the engine's callbacks ----

    def join(self, prefix: str, instance: int) -> IntraGroup | None:
        """The application's library for one instance of this rank's group; None: the engine's own."""
        group = self._make_group(prefix, instance)
        if group is not None:
            self.groups.append(group)
        return group

    def tensor(self, region: _native.Region, datatype: int) -> torch.Tensor:
        """The elements of `region` in a buffer this rank passed to `allreduce`."""
        with self._lock:
            entry = self._buffers.get(int(region.buffer))
        if entry is None:
            raise ValueError(f"kaitian: the engine named buffer {region.buffer}, which no pending allreduce passed")
        flat: torch.Tensor = entry[0]  # type: ignore[assignment]
        if _native.datatype(flat.dtype) != datatype or region.offset + region.count > flat.numel():
            raise ValueError(
                f"kaitian: the engine asked for {region.count} elements at {region.offset} of dtype {datatype} "
                f"in a {flat.dtype} buffer of {flat.numel()}"
            )
        return flat[region.offset : region.offset + region.count]

    def stage_in(self, region: _native.Region, datatype: int) -> int:
        """Host memory holding `region` (pinned for CUDA, from the pool), until `stage_out`."""
        source = self.tensor(region, datatype)
        with self.stage_times.stage("staging copy"):
            view = self.staging.take(source.dtype, source.numel())
            view.copy_(source)
        address = view.data_ptr() if view.numel() else 0
        if address:
            with self._lock:
                self._views[address] = view
        return address

    def stage_out(self, region: _native.Region, datatype: int, address: int) -> None:
        with self._lock:
            view = self._views.pop(address, None)
        if view is None:
            if region.count:
                raise ValueError(f"kaitian: the engine committed memory at {address:#x} that hostView did not give")
            return
        with self.stage_times.stage("staging copy"):
            self.tensor(region, datatype).copy_(view)
        self.staging.give(view)

    # ---- calls ----

    def allreduce(self, flat: torch.Tensor, op: int, finish: Callable[[], list[torch.Tensor]]) -> Future:
        """Hierarchical allreduce of a contiguous tensor on `device`, in place; the future gets `finish()`."""
        if self.handle is None:
            raise _native.KaitianInvalidUsageError(
                "kaitian: the hybrid communicator was destroyed", _native.INVALID_USAGE
            )
        with self._lock:
            buffer = flat.data_ptr() if not self._staged else next(self._buffer_ids)
            if not self._staged and buffer == 0:  # an empty tensor has no address; any unused id will do
                buffer = 1
            entry = self._buffers.setdefault(buffer, [flat, 0])
            entry[1] = int(entry[1]) + 1  # type: ignore[call-overload]
        self._works.free_finished()
        region = _native.Region(buffer, 0, flat.numel())
        work = ctypes.c_void_p()
        fut = Future()

        def release() -> None:
            with self._lock:
                entry[1] = int(entry[1]) - 1  # type: ignore[call-overload]
                if entry[1] == 0 and self._buffers.get(buffer) is entry:
                    del self._buffers[buffer]

        try:
            _native.check(
                self._api.ktHybridAllReduce(region, _native.datatype(flat.dtype), op, self.handle, ctypes.byref(work)),
                None,
            )
        except BaseException:
            release()
            raise

        def done(result: int) -> None:
            release()
            if result != _native.SUCCESS:
                fut.set_exception(work_error(self._api, work_value, result))
                return
            try:
                fut.set_result(finish())
            except Exception as failure:  # the copy back failed; the caller must see it from wait()
                fut.set_exception(failure)

        work_value = work.value
        self._works.when_done(work_value, done)
        return fut

    def enqueue(self, tasks: list[Task], name: str) -> Future:
        """The tasks as calls in the hybrid's order; the future completes when the last task's
        `complete` (run at the gather stage after its steps) does, or with the first failure."""
        fut = Future()
        tasks = tasks or [Task((None, None, None))]
        for index, task in enumerate(tasks):
            reduce, relay, gather = task.steps
            if task.complete is not None:
                gather = self._completing(gather, task.complete, fut)
            last = index == len(tasks) - 1
            self._submit((reduce, relay, gather), name, direct=False, fut=fut, settle=last and task.complete is None)
        return fut

    def submit(self, job: Job, name: str) -> Future:
        """A call that is one quick job issuing engine work that completes `fut` itself: run on this
        thread when no call is inside the stages, else queued at the gather stage."""
        fut = Future()
        self._submit((None, None, lambda: job(fut)), name, direct=True, fut=fut, settle=False)
        return fut

    @staticmethod
    def _completing(gather: Step | None, complete: Job, fut: Future) -> Step:
        def run() -> None:
            if gather is not None:
                gather()
            complete(fut)

        return run

    def _submit(
        self, steps: tuple[Step | None, Step | None, Step | None], name: str, direct: bool, fut: Future, settle: bool
    ) -> None:
        if self.handle is None:
            raise _native.KaitianInvalidUsageError(
                "kaitian: the hybrid communicator was destroyed", _native.INVALID_USAGE
            )
        self._works.free_finished()
        key = _register(steps)
        functions = [_STEPS[index] if step is not None else _native.StepFn() for index, step in enumerate(steps)]
        struct = _native.HybridSteps(key, *functions, _RELEASE_STEPS)
        work = ctypes.c_void_p()
        try:
            _native.check(
                self._api.ktHybridSubmit(
                    ctypes.byref(struct), name.encode(), int(direct), self.handle, ctypes.byref(work)
                )
            )
        except BaseException:
            _forget(key)
            raise

        work_value = work.value

        def done(result: int) -> None:
            if result != _native.SUCCESS:
                settle_failure(fut, work_error(self._api, work_value, result))
            elif settle:
                fut.set_result([])

        self._works.when_done(work_value, done)

    # ---- state ----

    def take_stage_seconds(self) -> dict[str, float]:
        """Seconds per stage of the engine's hybrid allreduces since the last take, by label."""
        if self.handle is None:
            return {}
        taken: dict[str, float] = {}
        for stage in ENGINE_STAGES.values():
            seconds = ctypes.c_double()
            _native.check(self._api.ktHybridStageSeconds(self.handle, stage.number, ctypes.byref(seconds)))
            if (delta := seconds.value - self._stage_seconds_taken.get(stage.label, 0.0)) > 0:
                taken[stage.label] = delta
            self._stage_seconds_taken[stage.label] = seconds.value
        return taken

    def abort(self, reason: str) -> None:
        if self.handle is not None:
            self._api.ktHybridAbort(self.handle, reason.encode())

    def close(self) -> None:
        """Finishes issued calls, then leaves every communicator (ktHybridDestroy)."""
        handle, self.handle = self.handle, None
        if handle is None:
            return
        atexit.unregister(self.close)
        self._api.ktHybridDestroy(handle)
        self._works.free_finished()
        self._destroy_groups()
        _forget(self._key)

    def _destroy_groups(self) -> None:
        """Forgets the group libraries: the engine's went with the hybrid, torch's go with their store."""
        self.groups = []


def settle_failure(fut: Future, error: Exception) -> None:
    """Fails `fut` unless it completed meanwhile (a torch Future completes once)."""
    try:
        fut.set_exception(error)
    except RuntimeError:
        pass
