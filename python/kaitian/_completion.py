"""Where the futures users see complete: off the engine's threads, one at a time, in order.

A torch Future runs its callbacks (`then`, `add_done_callback`) on the thread that completes it. If
that were the engine's completion thread (flat groups) or a hybrid pipeline's stage thread, a
callback that issues another collective and waits for it (DDP's PowerSGD hook, `.then()` chains)
would block the very thread that must finish that collective: a silent hang.

So the futures that `Work.get_future()` hands out complete on one `CompletionThread` per process.
One, not a pool: callbacks that issue collectives must issue them in the same order on every rank,
and callbacks running side by side would race. A collective issued *from* that thread hands out a
future completed directly by the engine's thread instead, so a callback waiting for its own
collective never waits for itself.

What no backend can order: a callback's collectives against the training thread's, when both
run at once. PowerSGD with several DDP buckets is such a case: bucket 2's allreduce (training
thread) races bucket 1's callback's (here, or under gloo a worker thread). gloo then aborts the
process ("Received data size doesn't match expected size"); Kaitian's engine fails the call on
every rank with "collectives differ across ranks". With one bucket the steps depend on each
other and the order is the same everywhere.
"""

from __future__ import annotations

import queue
import threading
import traceback
from collections.abc import Callable

from .profile import name_os_thread


class CompletionThread:
    """Runs posted jobs in arrival order on one daemon thread, started on the first post."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def post(self, job: Callable[[], None]) -> None:
        """Runs `job` after every job posted before it; never waits."""
        self._jobs.put(job)
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="kt-completion", daemon=True)
                self._thread.start()

    def is_current(self) -> bool:
        """Whether the caller runs on this thread (inside a posted job)."""
        return self._thread is threading.current_thread()

    def _serve(self) -> None:
        name_os_thread("kt-completion")
        while True:
            job = self._jobs.get()
            try:
                job()
            except Exception:  # a job's failure must not stop the completions behind it
                traceback.print_exc()


_thread = CompletionThread()


def completion_thread() -> CompletionThread:
    """The process's thread (one for every group: a callback may wait on any group's collective)."""
    return _thread
