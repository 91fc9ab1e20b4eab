"""The thread that completes the futures users see (kaitian._completion), without ranks."""

from __future__ import annotations

import threading

from kaitian._completion import CompletionThread


def test_jobs_run_one_at_a_time_in_order_and_survive_a_failure() -> None:
    thread = CompletionThread()
    ran: list[int] = []
    done = threading.Event()
    inside: list[bool] = []

    def failing() -> None:
        raise RuntimeError("a callback failed")

    thread.post(lambda: ran.append(1))
    thread.post(failing)
    thread.post(lambda: inside.append(thread.is_current()))
    thread.post(lambda: ran.append(2))
    thread.post(done.set)
    assert done.wait(5.0), "a failing job stopped the jobs behind it"
    assert ran == [1, 2] and inside == [True]
    assert not thread.is_current()
