"""An engine communicator and the plumbing from its work handles to torch futures.

A torch collective becomes EngineCalls: host buffers (the user's tensors when they already are
contiguous CPU tensors, temporaries otherwise), the engine calls over them, and a finish step that
copies temporaries back and names the future's value. The engine runs the calls on its own
thread; the last completion callback finishes them and completes the future, so the Python
caller returns at once and DDP overlaps communication with backward.
"""

from __future__ import annotations

import ctypes
import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from . import _native


@dataclass(frozen=True)
class Call:
    """One engine call: its C function and the arguments before the trailing (comm, &work).

    Built only by the functions below, so the C ABI's names stay in this module. Buffers are host
    tensors the engine reads or writes in place (the caller keeps them alive); counts and the
    datatype come from the tensors, as in the C signatures.
    """

    function: str
    args: tuple[object, ...]


def _address(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


def all_reduce(src: torch.Tensor, dst: torch.Tensor, op: int) -> Call:
    return Call("ktAllReduce", (src.data_ptr(), dst.data_ptr(), dst.numel(), _native.datatype(dst.dtype), op))


def reduce(src: torch.Tensor, dst: torch.Tensor, op: int, root: int) -> Call:
    return Call("ktReduce", (src.data_ptr(), dst.data_ptr(), dst.numel(), _native.datatype(dst.dtype), op, root))


def broadcast(src: torch.Tensor, dst: torch.Tensor, root: int) -> Call:
    return Call("ktBroadcast", (src.data_ptr(), dst.data_ptr(), dst.numel(), _native.datatype(dst.dtype), root))


def reduce_scatter(src: torch.Tensor, dst: torch.Tensor, op: int) -> Call:
    """`dst.numel()` elements per rank, from `src` of that times the ranks."""
    return Call("ktReduceScatter", (src.data_ptr(), dst.data_ptr(), dst.numel(), _native.datatype(dst.dtype), op))


def all_gather(src: torch.Tensor, dst: torch.Tensor) -> Call:
    """`src.numel()` elements per rank, into `dst` of that times the ranks."""
    return Call("ktAllGather", (src.data_ptr(), dst.data_ptr(), src.numel(), _native.datatype(src.dtype)))


def all_gather_v(src: torch.Tensor, dst: torch.Tensor, counts: ctypes.Array) -> Call:
    """Rank r's `counts[r]` elements, in rank order, into `dst`."""
    return Call("ktAllGatherV", (src.data_ptr(), dst.data_ptr(), counts, _native.datatype(src.dtype)))


def gather(src: torch.Tensor, dst: torch.Tensor | None, root: int) -> Call:
    """`dst` only on the root (None elsewhere)."""
    return Call("ktGather", (src.data_ptr(), _address(dst), src.numel(), _native.datatype(src.dtype), root))


def scatter(src: torch.Tensor | None, dst: torch.Tensor, root: int) -> Call:
    """`src` only on the root (None elsewhere)."""
    return Call("ktScatter", (_address(src), dst.data_ptr(), dst.numel(), _native.datatype(dst.dtype), root))


def all_to_all(src: torch.Tensor, dst: torch.Tensor, count: int) -> Call:
    """`count` elements to and from every rank."""
    return Call("ktAllToAll", (src.data_ptr(), dst.data_ptr(), count, _native.datatype(src.dtype)))


def all_to_all_v(src: torch.Tensor, send_counts: ctypes.Array, dst: torch.Tensor, recv_counts: ctypes.Array) -> Call:
    return Call("ktAllToAllV", (src.data_ptr(), send_counts, dst.data_ptr(), recv_counts, _native.datatype(src.dtype)))


def barrier() -> Call:
    return Call("ktBarrier", ())


def send(buf: torch.Tensor, peer: int, tag: int) -> Call:
    return Call("ktSend", (buf.data_ptr(), buf.numel(), _native.datatype(buf.dtype), peer, tag))


def recv(buf: torch.Tensor, peer: int, tag: int) -> Call:
    return Call("ktRecv", (buf.data_ptr(), buf.numel(), _native.datatype(buf.dtype), peer, tag))


def recv_any(buf: torch.Tensor, tag: int) -> Call:
    """A receive from whichever rank sends first; the work names the source."""
    return Call("ktRecvAny", (buf.data_ptr(), buf.numel(), _native.datatype(buf.dtype), tag))


def send_recv_batch(ops: ctypes.Array, count: int) -> Call:
    """`count` point-to-point transfers (`_native.P2POp`s) that progress together, as NCCL's grouped send/recv."""
    return Call("ktSendRecvBatch", (ops, count))


@dataclass
class EngineCalls:
    """Engine calls over host buffers plus the step that publishes their result.

    `keep` holds every tensor whose memory the engine borrows, so none is freed (or reused by
    torch's caching allocator) before the engine is done with it. Calls that ask for `sources`
    (a list, for receives from any rank) get it filled before `finish` runs: per call, the rank a
    receive took its message from (-1 for other calls), which a receive from any rank learns only
    when it completes. Others leave it None and cost no query.
    """

    calls: list[Call]
    finish: Callable[[], list[torch.Tensor]]
    keep: list[object] = field(default_factory=list)
    sources: list[int] | None = None


def host(t: torch.Tensor, keep: list[object]) -> torch.Tensor:
    """`t` itself when the engine can read and write it in place, else a contiguous CPU copy."""
    buf = t if t.device.type == "cpu" and t.is_contiguous() else t.detach().contiguous().cpu()
    keep.append(buf)
    return buf


def host_empty(t: torch.Tensor, keep: list[object]) -> torch.Tensor:
    """`t` itself when the engine can write it in place, else an uninitialised CPU buffer."""
    buf = t if t.device.type == "cpu" and t.is_contiguous() else torch.empty(t.shape, dtype=t.dtype)
    keep.append(buf)
    return buf


def copied_back(
    pairs: list[tuple[torch.Tensor, torch.Tensor]], value: list[torch.Tensor]
) -> Callable[[], list[torch.Tensor]]:
    """A finish step: copy host temporaries into the user's tensors they stand for, then `value`."""

    def finish() -> list[torch.Tensor]:
        for target, buf in pairs:
            if buf is not target:
                target.copy_(buf)
        return value

    return finish


# Completion callbacks: one CFUNCTYPE for the life of the process (ctypes must keep it alive),
# routed by an integer key to the pending calls.
_pending: dict[int, Callable[[int], None]] = {}
_pending_lock = threading.Lock()
_keys = itertools.count(1)


def _on_complete(user_data: int | None, result: int) -> None:
    with _pending_lock:
        done = _pending.pop(user_data or 0, None)
    if done is not None:
        done(result)


_ON_COMPLETE = _native.WorkCallbackFn(_on_complete)


def work_error(api: ctypes.CDLL, work: int, result: int) -> _native.KaitianError:
    """The exception for a finished work's result, with the engine's message."""
    raw = api.ktWorkGetError(work)
    return _native.error_for(result, raw.decode(errors="replace") if raw else "")


class WorkCompletions:
    """Work handles whose completion runs Python, freed later by the issuing thread.

    Why later: the completion callback runs on an engine thread, inside the work's completion,
    and must not call back into the library; the next issue (or `free_finished`) frees them.
    """

    def __init__(self, api: ctypes.CDLL) -> None:
        self._api = api
        self._finished: list[int] = []
        self._lock = threading.Lock()

    def when_done(self, work: int, done: Callable[[int], None]) -> None:
        """Calls done(result) once `work` ends (at once if it has), then frees it later."""
        key = next(_keys)

        def complete(result: int) -> None:
            try:
                done(result)
            finally:
                with self._lock:
                    self._finished.append(work)

        with _pending_lock:
            _pending[key] = complete
        _native.check(self._api.ktWorkSetCallback(work, _ON_COMPLETE, key))

    def free_finished(self) -> None:
        with self._lock:
            finished, self._finished = self._finished, []
        for work in finished:
            self._api.ktWorkFree(work)


class Communicator:
    """One ktComm_t. Calls are issued in program order from whichever thread runs the collective."""

    def __init__(
        self,
        store_handle: int,
        nranks: int,
        rank: int,
        prefix: str,
        token: str,
        host_id: str,
        timeout_seconds: float,
    ) -> None:
        self.rank = rank
        self.nranks = nranks
        self.timeout_seconds = timeout_seconds
        self._api = _native.lib()
        self._strings = [s.encode() for s in (token, prefix, host_id)]
        config = _native.config(*self._strings, timeout_seconds)
        handle = ctypes.c_void_p()
        _native.check(self._api.ktCommInitRank(ctypes.byref(handle), store_handle, nranks, rank, ctypes.byref(config)))
        self.handle: int | None = handle.value
        self._owned = True
        self._works = WorkCompletions(self._api)

    @classmethod
    def borrowed(cls, handle: int, timeout_seconds: float) -> Communicator:
        """A communicator another object owns (a hybrid communicator's): `destroy` only lets go of it.
        Its rank and size are the engine's."""
        comm = cls.__new__(cls)
        comm._api = _native.lib()
        size, rank = ctypes.c_int(), ctypes.c_int()
        _native.check(comm._api.ktCommCount(handle, ctypes.byref(size)))
        _native.check(comm._api.ktCommUserRank(handle, ctypes.byref(rank)))
        comm.rank, comm.nranks, comm.timeout_seconds = rank.value, size.value, timeout_seconds
        comm._strings = []
        comm.handle = handle
        comm._owned = False
        comm._works = WorkCompletions(comm._api)
        return comm

    def _issue(self, call: Call) -> int:
        if self.handle is None:
            raise _native.KaitianInvalidUsageError("kaitian: the communicator was destroyed", _native.INVALID_USAGE)
        work = ctypes.c_void_p()
        _native.check(getattr(self._api, call.function)(*call.args, self.handle, ctypes.byref(work)), self.handle)
        return work.value

    def _source(self, work: int) -> int:
        source = ctypes.c_int(-1)
        _native.check(self._api.ktWorkGetSource(work, ctypes.byref(source)))
        return source.value

    def submit(self, batch: EngineCalls, future: torch.futures.Future) -> None:
        """Issues the calls and completes `future` from the engine thread when all end.

        Work handles are freed later by the issuing thread, not inside the callback, because the
        callback runs on the engine thread and must not call back into the communicator.
        """
        self._works.free_finished()
        state = {"left": len(batch.calls), "error": None}
        lock = threading.Lock()
        if batch.sources is not None:
            batch.sources[:] = [-1] * len(batch.calls)

        def settle() -> None:
            if state["error"] is not None:
                future.set_exception(state["error"])
                return
            try:
                future.set_result(batch.finish())
            except Exception as error:  # the copy back failed; the caller must see it from wait()
                future.set_exception(error)

        if not batch.calls:
            settle()
            return
        for index, call in enumerate(batch.calls):
            work = self._issue(call)

            def done(result: int, work: int = work, index: int = index) -> None:
                with lock:
                    if result != _native.SUCCESS and state["error"] is None:
                        state["error"] = work_error(self._api, work, result)
                    if batch.sources is not None:
                        batch.sources[index] = self._source(work)
                    state["left"] -= 1
                    last = state["left"] == 0
                if last:
                    batch.keep.clear()
                    settle()

            self._works.when_done(work, done)

    def run(self, batch: EngineCalls) -> list[torch.Tensor]:
        """Issues the calls, waits for all of them and returns the finished value."""
        self._works.free_finished()
        works = [self._issue(call) for call in batch.calls]
        error: _native.KaitianError | None = None
        if batch.sources is not None:
            batch.sources.clear()
        for work in works:
            result = self._api.ktWorkWait(work, -1.0)
            if result != _native.SUCCESS and error is None:
                error = work_error(self._api, work, result)
            if batch.sources is not None:
                batch.sources.append(self._source(work))
            self._api.ktWorkFree(work)
        if error is not None:
            raise error
        return batch.finish()

    def abort(self, reason: str) -> None:
        """Fails pending and later calls on every rank with `reason`."""
        if self.handle is not None:
            self._api.ktCommAbort(self.handle, reason.encode())

    def destroy(self) -> None:
        """Finishes issued calls, tells the peers this rank leaves, and frees the communicator.

        A borrowed communicator is only let go of: its owner destroys it."""
        if self.handle is not None:
            handle, self.handle = self.handle, None
            if self._owned:
                self._api.ktCommDestroy(handle)
            self._works.free_finished()
