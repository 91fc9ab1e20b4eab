"""An engine communicator and the plumbing from its work handles to torch futures.

A torch collective becomes a Plan: host buffers (the user's tensors when they already are
contiguous CPU tensors, temporaries otherwise), the engine calls over them, and a finish step that
copies temporaries back and names the future's value. The engine runs the calls on its own
thread; the last completion callback finishes the plan and completes the future, so the Python
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

Call = tuple[str, tuple[object, ...]]
"""An engine function name and its arguments before the trailing (comm, &work)."""


@dataclass
class Plan:
    """Engine calls over host buffers plus the step that publishes their result.

    `keep` holds every tensor whose memory the engine borrows, so none is freed (or reused by
    torch's caching allocator) before the engine is done with it. A plan that asks for `sources`
    (a list, for receives from any rank) gets it filled before `finish` runs: per call, the rank a
    receive took its message from (-1 for other calls), which a receive from any rank learns only
    when it completes. Other plans leave it None and cost no query.
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
# routed by an integer key to the pending plan.
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
        name, args = call
        work = ctypes.c_void_p()
        _native.check(getattr(self._api, name)(*args, self.handle, ctypes.byref(work)), self.handle)
        return work.value

    def _source(self, work: int) -> int:
        source = ctypes.c_int(-1)
        _native.check(self._api.ktWorkGetSource(work, ctypes.byref(source)))
        return source.value

    def submit(self, plan: Plan, future: torch.futures.Future) -> None:
        """Issues the plan's calls and completes `future` from the engine thread when all end.

        Work handles are freed later by the issuing thread, not inside the callback, because the
        callback runs on the engine thread and must not call back into the communicator.
        """
        self._works.free_finished()
        state = {"left": len(plan.calls), "error": None}
        lock = threading.Lock()
        if plan.sources is not None:
            plan.sources[:] = [-1] * len(plan.calls)

        def settle() -> None:
            if state["error"] is not None:
                future.set_exception(state["error"])
                return
            try:
                future.set_result(plan.finish())
            except Exception as error:  # the copy back failed; the caller must see it from wait()
                future.set_exception(error)

        if not plan.calls:
            settle()
            return
        for index, call in enumerate(plan.calls):
            work = self._issue(call)

            def done(result: int, work: int = work, index: int = index) -> None:
                with lock:
                    if result != _native.SUCCESS and state["error"] is None:
                        state["error"] = work_error(self._api, work, result)
                    if plan.sources is not None:
                        plan.sources[index] = self._source(work)
                    state["left"] -= 1
                    last = state["left"] == 0
                if last:
                    plan.keep.clear()
                    settle()

            self._works.when_done(work, done)

    def run(self, plan: Plan) -> list[torch.Tensor]:
        """Issues the plan's calls, waits for all of them and returns the finished value."""
        self._works.free_finished()
        works = [self._issue(call) for call in plan.calls]
        error: _native.KaitianError | None = None
        if plan.sources is not None:
            plan.sources.clear()
        for work in works:
            result = self._api.ktWorkWait(work, -1.0)
            if result != _native.SUCCESS and error is None:
                error = work_error(self._api, work, result)
            if plan.sources is not None:
                plan.sources.append(self._source(work))
            self._api.ktWorkFree(work)
        if error is not None:
            raise error
        return plan.finish()

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
