"""Where a rank's time goes: hybrid allreduce stages and per-thread CPU time.

Stage times are wall seconds spent in each stage of the hierarchical allreduce on the process
group's worker thread (padding copy, in-group reduce-scatter or allreduce, staging copies, the
relay between groups, in-group allgather or broadcast, copy back), added up until taken. Thread
CPU times come from /proc/self/task/*/stat (utime + stime), summed by thread name, so a run can
show which threads (the training loop, the engine's, gloo's, the hybrid worker) used the CPU.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch.distributed as dist


class StageTimes:
    """Wall seconds per stage name, accumulated from any thread until `take` resets them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - started)

    def add(self, name: str, seconds: float) -> None:
        with self._lock:
            self._seconds[name] = self._seconds.get(name, 0.0) + seconds

    def take(self) -> dict[str, float]:
        """The seconds accumulated since the last take, and a fresh start."""
        with self._lock:
            taken, self._seconds = self._seconds, {}
        return taken


def stage_times(group: dist.ProcessGroup | None = None) -> dict[str, float]:
    """Takes the hybrid allreduce's stage seconds of `group` (default: the world) since the last call.

    Empty when the group's backend is not "kaitian" or runs flat (one group on the engine alone).
    """
    from .process_group import kaitian_backend  # process_group imports this module

    backend = kaitian_backend(group)
    return backend.take_stage_times() if backend is not None else {}


def name_os_thread(name: str) -> None:
    """Names the calling thread for the OS (top -H, /proc/PID/task/TID/comm), cut to 15 bytes.

    Python's thread names stay inside Python; per-thread CPU time reads the OS's. Best effort.
    """
    try:
        with open("/proc/thread-self/comm", "wb") as comm:
            comm.write(name.encode()[:15])
    except OSError:
        pass


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(path: Path) -> tuple[str, list[str]]:
    """A /proc stat file's name and the fields after it, numbered from field 3 (proc(5)).

    The name sits in parentheses and may hold spaces, so the fields start after the last ')'.
    """
    stat = path.read_text()
    opening, closing = stat.find("("), stat.rfind(")")
    return stat[opening + 1 : closing], stat[closing + 2 :].split()


def thread_cpu_seconds(pid: int | str = "self") -> dict[str, float]:
    """CPU seconds (user + system) of every live thread of `pid`, summed by thread name.

    Empty where /proc is not Linux's. Threads that already ended are not counted.
    """
    totals: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            name, fields = _stat(task / "stat")
        except OSError:  # the thread ended while we looked
            continue
        seconds = (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime, stime: fields 14, 15
        totals[name] = totals.get(name, 0.0) + seconds
    return totals


def process_age_seconds() -> float:
    """Seconds since this process started, imports included; NaN where /proc is not Linux's."""
    try:
        started = int(_stat(Path("/proc/self/stat"))[1][19]) / _CLOCK_TICKS  # starttime: field 22
        return float(Path("/proc/uptime").read_text().split()[0]) - started
    except (OSError, ValueError, IndexError):
        return float("nan")
