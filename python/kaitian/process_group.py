"""The torch.distributed process group "kaitian".

Two ways to run, chosen from the topology at construction:

Flat: every rank is in one group served by the engine (the default for CPU ranks on one host).
Each collective becomes engine calls issued from the calling thread; the future completes from the
engine thread, so DDP's allreduce of one bucket overlaps the backward pass of the next.

Hybrid: several groups, or a group served by a vendor library. Collectives run in issue order on
one worker thread per process group, so that a collective's steps (vendor library inside the
group, engine between groups) never interleave with the next collective's. Allreduce is
hierarchical (see `_allreduce_hybrid`); every other collective is staged through host memory and
run by the engine over all ranks, which is exact for every op and dtype and keeps the vendor
libraries to the four collectives every one of them has.
"""

from __future__ import annotations

import atexit
import ctypes
import itertools
import os
import queue
import threading
import time
from collections.abc import Callable
from datetime import timedelta

import torch
import torch.distributed as dist

from . import _native
from ._engine import Communicator, Plan, copied_back, host, host_empty
from ._store import TorchStoreAdapter, job_token
from ._vendor import EngineIntraGroup, IntraGroup, create_torch_intra_group
from .topology import ENGINE, Topology, local_host_id

BACKEND_NAME = "kaitian"

Future = torch.futures.Future
Job = Callable[[Future], None]


def _unwrap(fut: Future) -> list[torch.Tensor]:
    return fut.value()


def _work_from_future(fut: Future, call: str) -> dist.Work:
    """The Work of one collective, completed by `fut`; `call` names it in errors ("rank 0: allreduce #7").

    Python's Future.set_exception stores the exception as the future's *value*, which only Python
    callers unwrap; C++ callers such as DDP's reducer would read it as a tensor list and crash.
    Chaining through `then` turns it into a real error of the C++ future: wait() raises it (with
    the engine's message) in C++ and Python alike.
    """
    return _FutureWork(fut.then(_unwrap), call)


class _FutureWork(torch._C._distributed_c10d.Work):
    """A Work over a future whose wait honours its timeout.

    A Python Work rather than torch's `_create_work_from_future`, whose wait ignores the timeout.
    torch calls this class's wait and get_future from C++ too (DDP's reducer takes the future) and
    keeps the Python object alive while C++ holds the Work, in every version from 1.13 on.
    """

    def __init__(self, fut: Future, call: str) -> None:
        super().__init__()
        self._fut = fut
        self._call = call

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

    def get_future(self) -> Future:
        return self._fut


def _reduce_op(opts: object) -> int:
    """ktRedOp_t from an options object with reduceOp, or from a bare ReduceOp."""
    return _native.reduce_op(getattr(opts, "reduceOp", opts) if opts is not None else dist.ReduceOp.SUM)


def _size_array(values: list[int], keep: list[object]) -> ctypes.Array:
    array = (ctypes.c_size_t * len(values))(*values)
    keep.append(array)
    return array


def _settle(fut: Future, error: Exception) -> None:
    """Fails `fut` unless it completed meanwhile (a torch Future completes once)."""
    try:
        fut.set_exception(error)
    except RuntimeError:
        pass


class _Worker:
    """One thread running a process group's hybrid collectives in issue order, and a watch on the job.

    Why the watch: a rank blocked in a vendor library's collective (gloo's cannot be aborted)
    would wait for that library's own timeout and then report a broken connection, not which rank
    was lost; a column communicator's errors use its own rank numbers, not the global ones. The
    all-ranks engine communicator notices a dead or failed peer within milliseconds, whatever this
    rank is doing, and names it by global rank. So `health` (that communicator's state) is polled;
    once it reports an error, every pending and later collective fails with it at once, and
    `on_failure` aborts the group's engine communicators so this thread is released as soon as it
    can be (a call inside gloo still ends only at gloo's timeout, which is the group's timeout).
    A collective that fails on this thread fails the whole group the same way, because a half-done
    hierarchical collective leaves the ranks out of step.

    After a failure this thread may still be inside gloo, released by gloo's timeout (the group's)
    or as soon as the gloo peers exit. Closing the group, and the interpreter's exit, wait for it
    that long at most: a daemon thread that comes back from C++ while Python finalizes is killed
    by the interpreter inside torch's C++ frames, and the process aborts ("terminate called
    without an active exception") instead of exiting.
    """

    POLL_SECONDS = 0.02

    def __init__(
        self,
        name: str,
        health: Callable[[], Exception | None],
        on_failure: Callable[[Exception], None],
        timeout_seconds: float,
    ) -> None:
        self._health = health
        self._on_failure = on_failure
        self._timeout_seconds = timeout_seconds
        self._grace_seconds = min(1.0, timeout_seconds)
        self._lock = threading.Lock()
        self._pending: set[Future] = set()
        self._failure: Exception | None = None
        self._stop = threading.Event()
        self._jobs: queue.SimpleQueue[tuple[Job, Future] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._watch = threading.Thread(target=self._watch_health, name=f"{name}-watch", daemon=True)
        self._thread.start()
        self._watch.start()

    def enqueue(self, job: Job) -> Future:
        fut = Future()
        with self._lock:
            failure = self._failure
            if failure is None:
                self._pending.add(fut)
        if failure is not None:
            fut.set_exception(failure)
            return fut
        fut.add_done_callback(self._discard)
        self._jobs.put((job, fut))
        return fut

    def _discard(self, fut: Future) -> None:
        with self._lock:
            self._pending.discard(fut)

    def _loop(self) -> None:
        while (item := self._jobs.get()) is not None:
            job, fut = item
            if fut.done():  # already failed with the group
                continue
            try:
                job(fut)
            except Exception as error:  # every failure belongs to the collective's future
                if self._failure is None:  # else the group failed already; its communicators may be gone
                    self._fail(self._explain(error))

    def _explain(self, error: Exception) -> Exception:
        """The all-ranks communicator's error when it reports one soon, for it names the lost rank."""
        deadline = time.monotonic() + self._grace_seconds
        while (cause := self._health()) is None and time.monotonic() < deadline:
            time.sleep(self.POLL_SECONDS)
        if cause is None:
            return error
        cause.__cause__ = error
        return cause

    def _watch_health(self) -> None:
        while not self._stop.wait(self.POLL_SECONDS):
            if (error := self._health()) is not None:
                self._fail(error)
                return

    def _fail(self, error: Exception) -> None:
        with self._lock:
            if self._failure is not None:
                return
            self._failure = error
            pending, self._pending = self._pending, set()
        for fut in pending:
            _settle(fut, error)
        self._on_failure(error)
        atexit.register(self._thread.join, self._timeout_seconds)

    def close(self) -> None:
        """Stops the watch, then lets issued collectives finish (at most the timeout after a failure)."""
        self._stop.set()
        self._watch.join()
        self._jobs.put(None)
        self._thread.join(timeout=self._timeout_seconds if self._failure is not None else None)


class ProcessGroupKaitian(dist.ProcessGroup):
    """torch.distributed backend over Kaitian's engine and, inside groups, the vendors' libraries.

    Created by torch's init_process_group / new_group through the registered creator; every rank
    of the group must construct it (the constructor joins communicators and vendor groups).

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
        self.topology = Topology.exchange(store, rank, size, timeout)
        token = job_token(store, rank, timeout)
        adapter = TorchStoreAdapter(store)
        host_id = local_host_id()

        def communicator(nranks: int, comm_rank: int, prefix: str) -> Communicator:
            return Communicator(adapter.handle, nranks, comm_rank, prefix, token, host_id, self._timeout_seconds)

        # Communicators are joined in one global order (world, intra, columns) so that no two
        # ranks wait on each other's joins in opposite orders.
        try:
            self._world = communicator(size, rank, "kaitian/world")
            self._intra: IntraGroup | None = None
            self._column: Communicator | None = None
            self._worker: _Worker | None = None
            if not self.topology.is_flat:
                self._set_up_hybrid(store, communicator)
        finally:
            adapter.free()

    def _set_up_hybrid(self, store: dist.Store, communicator: Callable[[int, int, str], Communicator]) -> None:
        topo = self.topology
        group, local = topo.group, topo.local_rank
        if group.size > 1:
            prefix = f"kaitian/intra/{group.index}"
            if group.backend == ENGINE:
                self._intra = EngineIntraGroup(communicator(group.size, local, prefix))
            else:
                self._intra = create_torch_intra_group(
                    group.backend,
                    dist.PrefixStore(prefix + "/", store),
                    local,
                    group.size,
                    timedelta(seconds=self._timeout_seconds),
                    list(group.ranks),
                )
        if len(topo.groups) > 1 and local < topo.columns:
            self._column = communicator(len(topo.groups), group.index, f"kaitian/column/{local}")
        self._worker = _Worker(f"kaitian-pg{self._rank}", self._world_error, self._abort_engine, self._timeout_seconds)

    def _world_error(self) -> _native.KaitianError | None:
        """The all-ranks communicator's first fatal error (a lost or aborted peer), if any."""
        handle = self._world.handle
        if handle is None:
            return None
        api = _native.lib()
        code = ctypes.c_int(_native.SUCCESS)
        api.ktCommGetAsyncError(handle, ctypes.byref(code))
        if code.value == _native.SUCCESS:
            return None
        raw = api.ktCommGetLastError(handle)
        return _native.error_for(code.value, raw.decode(errors="replace") if raw else "")

    def _abort_engine(self, error: Exception) -> None:
        """Fails this group's engine communicators on every rank with `error`'s message."""
        for comm in self._communicators():
            comm.abort(str(error))

    # ---- identity ----

    def getBackendName(self) -> str:  # torch's name
        return BACKEND_NAME

    def name(self) -> str:
        return BACKEND_NAME

    @property
    def intra_device(self) -> torch.device:
        """Where this rank's intra-group collectives run (cpu for the engine and gloo)."""
        return self._intra.device if self._intra is not None else torch.device("cpu")

    # ---- dispatch ----

    def _call(self, name: str) -> str:
        """How errors name a call: this rank, the collective and its number in this group."""
        return f"rank {self._rank}: {name} #{next(self._calls)}"

    def _engine(self, name: str, build: Callable[[], Plan]) -> dist.Work:
        """Runs a plan on the all-ranks communicator: directly when flat, in order when hybrid."""
        call = self._call(name)
        if self._worker is None:
            fut = Future()
            self._world.submit(build(), fut)
            return _work_from_future(fut, call)
        return _work_from_future(self._worker.enqueue(lambda fut: self._world.submit(build(), fut)), call)

    def _in_place(self, name: str, tensors: list[torch.Tensor], function: str, *extra: object) -> dist.Work:
        """One in-place engine call per tensor (staged through host memory), e.g. ktAllReduce."""

        def build() -> Plan:
            keep: list[object] = []
            pairs = [(t, host(t, keep)) for t in tensors]
            calls = [
                (function, (b.data_ptr(), b.data_ptr(), b.numel(), _native.datatype(b.dtype), *extra)) for _, b in pairs
            ]
            return Plan(calls, copied_back(pairs, tensors), keep)

        return self._engine(name, build)

    # ---- collectives ----

    def allreduce(self, tensors: list[torch.Tensor], opts: object = None) -> dist.Work:
        op = _reduce_op(opts)
        for t in tensors:
            _native.datatype(t.dtype)
        if self._worker is not None:

            def job(fut: Future) -> None:
                for t in tensors:
                    self._allreduce_hybrid(t, op)
                fut.set_result(tensors)

            return _work_from_future(self._worker.enqueue(job), self._call("allreduce"))
        return self._in_place("allreduce", tensors, "ktAllReduce", op)

    def allreduce_coalesced(self, tensors: list[torch.Tensor], opts: object = None) -> dist.Work:
        return self.allreduce(tensors, opts)

    def _allreduce_hybrid(self, t: torch.Tensor, op: int) -> None:
        """Hierarchical allreduce of one tensor, on the worker thread.

        Equal group sizes L: each group reduce-scatters the flattened tensor (padded to a multiple
        of L) into L shards with its own library; local rank j copies shard j to host memory
        (pinned for CUDA) and allreduces it with local rank j of every other group on column
        communicator j, all L columns in parallel; the shard is copied back and the group
        allgathers the shards.

        Unequal sizes (shards of different groups would not line up): S = the smallest group's
        size. Each group allreduces the whole tensor with its own library; the tensor is cut into
        S shards and local ranks 0..S-1 of every group allreduce shard j across groups, in
        parallel; then each group broadcasts shard j from local rank j. With S = 1 this is the
        per-group-leader scheme; with more, the first S ranks of each group share the host work.

        AVG is a SUM everywhere and one division by the world size at the end (never by the
        number of groups), so groups of different sizes weigh each rank equally. Every element's
        final value is computed once, by one column allreduce, and copied everywhere, so all ranks
        end bitwise identical.
        """
        topo = self.topology
        group_size, groups = topo.group.size, len(topo.groups)
        step_op = _native.SUM if op == _native.AVG else op
        device = self.intra_device
        n = t.numel()
        shards = group_size if topo.equal_sizes else topo.columns
        chunk = -(-n // shards)
        in_place = t.device == device and t.is_contiguous() and chunk * shards == n
        if in_place:
            buf = t.view(-1)
        else:
            buf = torch.empty(chunk * shards, dtype=t.dtype, device=device)
            buf[:n].copy_(t.reshape(-1))
            buf[n:].zero_()
        local = topo.local_rank
        if groups == 1:
            if group_size > 1:
                self._intra.allreduce(buf, step_op)
        elif topo.equal_sizes:
            shard = buf[local * chunk : (local + 1) * chunk]
            if group_size > 1:
                shard = torch.empty(chunk, dtype=t.dtype, device=device)
                self._intra.reduce_scatter(shard, buf, step_op)
            self._column_allreduce(shard, step_op)
            if group_size > 1:
                self._intra.allgather(buf, shard)
        else:
            if group_size > 1:
                self._intra.allreduce(buf, step_op)
            if local < shards:
                self._column_allreduce(buf[local * chunk : (local + 1) * chunk], step_op)
            if group_size > 1:
                for j in range(shards):
                    self._intra.broadcast(buf[j * chunk : (j + 1) * chunk], j)
        if not in_place:
            t.copy_(buf[:n].view_as(t))
        if op == _native.AVG:
            if t.is_floating_point():
                t.div_(self._size)
            else:
                t.div_(self._size, rounding_mode="trunc")

    def _column_allreduce(self, shard: torch.Tensor, op: int) -> None:
        """Allreduces a contiguous shard between groups through host memory."""
        if shard.device.type == "cpu":
            staged = shard
        else:
            staged = torch.empty(shard.shape, dtype=shard.dtype, pin_memory=shard.device.type == "cuda")
            staged.copy_(shard)
        ptr = staged.data_ptr()
        call = ("ktAllReduce", (ptr, ptr, staged.numel(), _native.datatype(staged.dtype), op))
        self._column.run(Plan([call], lambda: [], [staged]))
        if staged is not shard:
            shard.copy_(staged)

    def broadcast(self, tensors: list[torch.Tensor], opts: object = None) -> dist.Work:
        root = opts.rootRank if opts is not None else 0
        return self._in_place("broadcast", tensors, "ktBroadcast", root)

    def allgather(
        self, output_tensors: list[list[torch.Tensor]], input_tensors: list[torch.Tensor], opts: object = None
    ) -> dist.Work:
        def build() -> Plan:
            keep: list[object] = []
            calls, finishers = [], []
            for outputs, inp in zip(output_tensors, input_tensors, strict=True):
                src = host(inp, keep)
                counts = [o.numel() for o in outputs]
                flat = torch.empty(sum(counts), dtype=inp.dtype)
                keep.append(flat)
                dt = _native.datatype(inp.dtype)
                if len(set(counts)) == 1:
                    calls.append(("ktAllGather", (src.data_ptr(), flat.data_ptr(), src.numel(), dt)))
                else:
                    sizes = _size_array(counts, keep)
                    calls.append(("ktAllGatherV", (src.data_ptr(), flat.data_ptr(), sizes, dt)))
                finishers.append((outputs, flat, counts))

            def finish() -> list[torch.Tensor]:
                for outputs, flat, counts in finishers:
                    for out, part in zip(outputs, flat.split(counts), strict=True):
                        out.copy_(part.view_as(out))
                return [o for outputs in output_tensors for o in outputs]

            return Plan(calls, finish, keep)

        return self._engine("allgather", build)

    def _allgather_base(self, output: torch.Tensor, input: torch.Tensor, opts: object = None) -> dist.Work:
        return self.allgather_into_tensor_coalesced([output], [input], opts)

    def allgather_into_tensor_coalesced(
        self, outputs: list[torch.Tensor], inputs: list[torch.Tensor], opts: object = None
    ) -> dist.Work:
        def build() -> Plan:
            keep: list[object] = []
            pairs, calls = [], []
            for out, inp in zip(outputs, inputs, strict=True):
                src, dst = host(inp, keep), host_empty(out, keep)
                pairs.append((out, dst))
                calls.append(
                    ("ktAllGather", (src.data_ptr(), dst.data_ptr(), src.numel(), _native.datatype(src.dtype)))
                )
            return Plan(calls, copied_back(pairs, outputs), keep)

        return self._engine("allgather_into_tensor_coalesced", build)

    def reduce_scatter(
        self, output_tensors: list[torch.Tensor], input_tensors: list[list[torch.Tensor]], opts: object = None
    ) -> dist.Work:
        op = _reduce_op(opts)

        def build() -> Plan:
            keep: list[object] = []
            calls, finishers = [], []
            for out, inputs in zip(output_tensors, input_tensors, strict=True):
                counts = [x.numel() for x in inputs]
                flat = torch.cat([x.detach().reshape(-1).cpu() for x in inputs])
                keep.append(flat)
                dt = _native.datatype(flat.dtype)
                if len(set(counts)) == 1:
                    dst = host_empty(out, keep)
                    calls.append(("ktReduceScatter", (flat.data_ptr(), dst.data_ptr(), out.numel(), dt, op)))
                    finishers.append((out, dst))
                else:
                    # No reduce-scatter-v in the engine: reduce everything, keep this rank's block.
                    calls.append(("ktAllReduce", (flat.data_ptr(), flat.data_ptr(), flat.numel(), dt, op)))
                    finishers.append((out, flat.split(counts)[self._rank].view(out.shape)))
            return Plan(calls, copied_back(finishers, output_tensors), keep)

        return self._engine("reduce_scatter", build)

    def _reduce_scatter_base(self, output: torch.Tensor, input: torch.Tensor, opts: object = None) -> dist.Work:
        return self.reduce_scatter_tensor_coalesced([output], [input], opts)

    def reduce_scatter_tensor_coalesced(
        self, outputs: list[torch.Tensor], inputs: list[torch.Tensor], opts: object = None
    ) -> dist.Work:
        op = _reduce_op(opts)

        def build() -> Plan:
            keep: list[object] = []
            pairs, calls = [], []
            for out, inp in zip(outputs, inputs, strict=True):
                src, dst = host(inp, keep), host_empty(out, keep)
                pairs.append((out, dst))
                dt = _native.datatype(src.dtype)
                calls.append(("ktReduceScatter", (src.data_ptr(), dst.data_ptr(), dst.numel(), dt, op)))
            return Plan(calls, copied_back(pairs, outputs), keep)

        return self._engine("reduce_scatter_tensor_coalesced", build)

    def reduce(self, tensors: list[torch.Tensor], opts: object = None) -> dist.Work:
        op = _reduce_op(opts)
        root = opts.rootRank if opts is not None else 0
        return self._in_place("reduce", tensors, "ktReduce", op, root)

    def gather(
        self, output_tensors: list[list[torch.Tensor]], input_tensors: list[torch.Tensor], opts: object = None
    ) -> dist.Work:
        root = opts.rootRank if opts is not None else 0

        def build() -> Plan:
            keep: list[object] = []
            src = host(input_tensors[0], keep)
            flat = torch.empty(src.numel() * self._size, dtype=src.dtype) if self._rank == root else None
            keep.append(flat)
            recv = flat.data_ptr() if flat is not None else None
            call = ("ktGather", (src.data_ptr(), recv, src.numel(), _native.datatype(src.dtype), root))

            def finish() -> list[torch.Tensor]:
                if flat is None:
                    return []
                outputs = output_tensors[0]
                for out, part in zip(outputs, flat.chunk(self._size), strict=True):
                    out.copy_(part.view_as(out))
                return outputs

            return Plan([call], finish, keep)

        return self._engine("gather", build)

    def scatter(
        self, output_tensors: list[torch.Tensor], input_tensors: list[list[torch.Tensor]], opts: object = None
    ) -> dist.Work:
        root = opts.rootRank if opts is not None else 0

        def build() -> Plan:
            keep: list[object] = []
            out = output_tensors[0]
            dst = host_empty(out, keep)
            flat = None
            if self._rank == root:
                flat = torch.cat([x.detach().reshape(-1).cpu() for x in input_tensors[0]])
                keep.append(flat)
            send = flat.data_ptr() if flat is not None else None
            call = ("ktScatter", (send, dst.data_ptr(), dst.numel(), _native.datatype(dst.dtype), root))
            return Plan([call], copied_back([(out, dst)], output_tensors), keep)

        return self._engine("scatter", build)

    def alltoall_base(
        self,
        output: torch.Tensor,
        input: torch.Tensor,
        output_split_sizes: list[int],
        input_split_sizes: list[int],
        opts: object = None,
    ) -> dist.Work:
        def build() -> Plan:
            keep: list[object] = []
            src, dst = host(input, keep), host_empty(output, keep)
            dt = _native.datatype(src.dtype)
            if not output_split_sizes and not input_split_sizes:
                call = ("ktAllToAll", (src.data_ptr(), dst.data_ptr(), src.numel() // self._size, dt))
            else:
                send = self._split_counts(input, input_split_sizes)
                recv = self._split_counts(output, output_split_sizes)
                call = (
                    "ktAllToAllV",
                    (src.data_ptr(), _size_array(send, keep), dst.data_ptr(), _size_array(recv, keep), dt),
                )
            return Plan([call], copied_back([(output, dst)], [output]), keep)

        return self._engine("alltoall_base", build)

    def _split_counts(self, t: torch.Tensor, splits: list[int]) -> list[int]:
        """Element counts per rank for splits along dim 0 (equal rows when splits is empty)."""
        rows = t.shape[0] if t.dim() else 1
        row = t.numel() // rows if rows else 0
        return [s * row for s in splits] if splits else [rows // self._size * row] * self._size

    def alltoall(
        self, output_tensors: list[torch.Tensor], input_tensors: list[torch.Tensor], opts: object = None
    ) -> dist.Work:
        def build() -> Plan:
            keep: list[object] = []
            send = [x.numel() for x in input_tensors]
            recv = [x.numel() for x in output_tensors]
            src = torch.cat([x.detach().reshape(-1).cpu() for x in input_tensors])
            dst = torch.empty(sum(recv), dtype=src.dtype)
            keep += [src, dst]
            dt = _native.datatype(src.dtype)
            call = (
                "ktAllToAllV",
                (src.data_ptr(), _size_array(send, keep), dst.data_ptr(), _size_array(recv, keep), dt),
            )

            def finish() -> list[torch.Tensor]:
                for out, part in zip(output_tensors, dst.split(recv), strict=True):
                    out.copy_(part.view_as(out))
                return output_tensors

            return Plan([call], finish, keep)

        return self._engine("alltoall", build)

    def barrier(self, opts: object = None) -> dist.Work:
        return self._engine("barrier", lambda: Plan([("ktBarrier", ())], lambda: []))

    def send(self, tensors: list[torch.Tensor], dstRank: int, tag: int = 0) -> dist.Work:
        def build() -> Plan:
            keep: list[object] = []
            bufs = [host(t, keep) for t in tensors]
            calls = [("ktSend", (b.data_ptr(), b.numel(), _native.datatype(b.dtype), dstRank, tag)) for b in bufs]
            return Plan(calls, lambda: tensors, keep)

        return self._engine("send", build)

    def recv(self, tensors: list[torch.Tensor], srcRank: int, tag: int = 0) -> dist.Work:
        def build() -> Plan:
            keep: list[object] = []
            pairs = [(t, host_empty(t, keep)) for t in tensors]
            calls = [("ktRecv", (b.data_ptr(), b.numel(), _native.datatype(b.dtype), srcRank, tag)) for _, b in pairs]
            return Plan(calls, copied_back(pairs, tensors), keep)

        return self._engine("recv", build)

    # torch >= 2.15 names for the single-tensor forms.
    all_gather_single = _allgather_base
    reduce_scatter_single = _reduce_scatter_base

    # ---- teardown ----

    def _communicators(self) -> list[Communicator]:
        intra = self._intra.comm if isinstance(self._intra, EngineIntraGroup) else None
        return [c for c in (self._column, intra, self._world) if c is not None]

    def abort(self) -> None:
        """Fails every pending and later collective of this group, on every rank."""
        for comm in self._communicators():
            comm.abort(f"rank {self._rank} aborted the process group")

    def shutdown(self) -> None:
        """Finishes issued collectives and leaves the communicators (destroy_process_group)."""
        if self._worker is not None:
            self._worker.close()
            self._worker = None
        for comm in self._communicators():
            comm.destroy()


def create_process_group(store: dist.Store, rank: int, size: int, timeout: timedelta) -> ProcessGroupKaitian:
    """The creator registered with torch.distributed.Backend (torch's non-extended signature)."""
    return ProcessGroupKaitian(store, rank, size, timeout)
