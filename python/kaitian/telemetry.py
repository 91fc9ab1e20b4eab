"""JobTelemetry: what a worker publishes to its job's Kaitian store for `kaitian monitor`.

`kaitian run` gives every worker KAITIAN_STORE (host:port of the job's store) and KAITIAN_TOKEN.
A worker publishes, under relative keys (docs/CLI.md, "kaitian monitor"):

- `monitor/rank/<rank>`: its latest sample (one JSON object, replaced on every publish);
- `monitor/series/<rank>/<n>`: its time series for plots, in chunks of `SERIES_CHUNK_POINTS`
  points; chunk n is stored at slot n % `SERIES_SLOTS`, so appends never rewrite more than one
  small value and a long job keeps only its latest `SERIES_SLOTS` chunks;
- `monitor/plan`: the job's plan changes (written by whoever records them: OnlineBalancer on
  rank 0), the last `MAX_PLAN_CHANGES` of them;
- `monitor/gain`: what the job gained over its fastest group alone (`record_gain`, written once
  by the training script, e.g. examples/train.py's rank 0 at the end).

Publishing is rate-limited (`interval`, 1 s by default) and happens in the caller's thread inside
`record_step`: one store round trip per interval on a local socket. Telemetry must never break
training: a store error is logged once, then this object disables itself and every call is a
no-op. Without KAITIAN_STORE (plain torchrun) `job_telemetry()` is None.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from ._store import StoreConnection, environment_token

log = logging.getLogger("kaitian")

RANK_KEY = "monitor/rank/{rank}"
SERIES_KEY = "monitor/series/{rank}/{slot}"
PLAN_KEY = "monitor/plan"
GAIN_KEY = "monitor/gain"
SERIES_CHUNK_POINTS = 60
SERIES_SLOTS = 64
MAX_PLAN_CHANGES = 100
SERIES_FIELDS = [
    "time",
    "step",
    "epoch",
    "batch",
    "step_seconds",
    "compute_seconds",
    "comm_seconds",
    "samples_per_second",
]


class JobTelemetry:
    """Publishes one rank's training progress to the job's store, at most once per `interval`.

    `record_step` accumulates a window of steps; when `interval` seconds have passed since the
    last publish, the window's means become the rank's sample and one point of its series.
    """

    def __init__(
        self,
        store: StoreConnection,
        rank: int,
        kind: str,
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store: StoreConnection | None = store
        self.rank = rank
        self.kind = kind
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._host = socket.gethostname()
        self._last_publish: float | None = None
        self._steps = 0
        self._epoch = 0
        self._batch = 0
        self._window: list[float] = [0.0, 0.0, 0.0]  # step seconds, compute seconds, samples
        self._window_steps = 0
        self._last_sample: dict[str, Any] | None = None
        self._points: list[list[float]] = []
        self._chunk = 0
        self._plan_changes: list[dict[str, Any]] = []
        self.publishes = 0

    @classmethod
    def from_environment(cls, interval: float = 1.0) -> JobTelemetry | None:
        """The telemetry of a worker started by `kaitian run`; None without KAITIAN_STORE.

        A store that cannot be reached is logged as a warning and gives None: training goes on.
        """
        address = os.environ.get("KAITIAN_STORE")
        if not address:
            return None
        rank = int(os.environ.get("RANK", "0"))
        try:
            store = StoreConnection(address, environment_token() or "", timeout=5.0)
        except Exception as error:  # telemetry must never stop training
            log.warning("kaitian: rank %d: no telemetry for `kaitian monitor`: %s", rank, error)
            return None
        return cls(store, rank, os.environ.get("KAITIAN_DEVICE_KIND", "cpu"), interval)

    @property
    def enabled(self) -> bool:
        """False once a store error disabled publishing, or after `close`."""
        return self._store is not None

    def record_step(
        self, *, batch: int, step_seconds: float, compute_seconds: float | None = None, epoch: int = 0
    ) -> None:
        """Counts one training step of `batch` samples; publishes when the interval has passed.

        `step_seconds` is the step's wall time; `compute_seconds` the part spent computing (the
        rest, step - compute, is reported as time in communication); None means all compute.
        """
        compute = step_seconds if compute_seconds is None else min(compute_seconds, step_seconds)
        with self._lock:
            if self._store is None:
                return
            self._steps += 1
            self._epoch = epoch
            self._batch = batch
            self._window[0] += step_seconds
            self._window[1] += compute
            self._window[2] += batch
            self._window_steps += 1
            now = self._clock()
            if self._last_publish is not None and now - self._last_publish < self.interval:
                return
            self._last_publish = now
            self._publish_window()

    def record_plan_change(
        self,
        *,
        step: int,
        epoch: int,
        iteration: int,
        old: Sequence[int],
        new: Sequence[int],
        seconds_per_sample: Sequence[float],
        time: float | None = None,
    ) -> None:
        """Appends one plan change to `monitor/plan` at once (changes are rare; not rate-limited)."""
        change = {
            "step": step,
            "epoch": epoch,
            "iteration": iteration,
            "old": [int(b) for b in old],
            "new": [int(b) for b in new],
            "seconds_per_sample": [float(s) for s in seconds_per_sample],
            "time": _wall_clock() if time is None else time,
        }
        with self._lock:
            if self._store is None:
                return
            self._plan_changes = (self._plan_changes + [change])[-MAX_PLAN_CHANGES:]
            self._set(PLAN_KEY, self._plan_changes)

    def record_gain(self, *, fastest_group: str, fastest_group_alone: float, ideal: float, achieved: float) -> None:
        """Publishes what the job gained over its fastest group alone (`monitor/gain`), at once.

        Throughputs in samples per second: the fastest group's alone, all groups' together
        (the ideal) and what the job achieved; `kaitian monitor` shows the ratios and plots them.
        """
        gain = {
            "fastest_group": fastest_group,
            "fastest_group_alone": float(fastest_group_alone),
            "ideal": float(ideal),
            "achieved": float(achieved),
        }
        with self._lock:
            if self._store is not None:
                self._set(GAIN_KEY, gain)

    def flush(self) -> None:
        """Publishes the steps recorded since the last publish, if any."""
        with self._lock:
            if self._store is not None and self._window_steps > 0:
                self._last_publish = self._clock()
                self._publish_window()

    def close(self) -> None:
        """Final flush, then releases the connection; later calls do nothing."""
        self.flush()
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None

    def _publish_window(self) -> None:
        """Turns the window into the rank's sample and a series point, and writes both."""
        step_seconds, compute, samples = self._window
        steps = self._window_steps
        self._window = [0.0, 0.0, 0.0]
        self._window_steps = 0
        sample = {
            "rank": self.rank,
            "kind": self.kind,
            "host": self._host,
            "pid": os.getpid(),
            "step": self._steps,
            "epoch": self._epoch,
            "batch": self._batch,
            "step_seconds": step_seconds / steps,
            "compute_seconds": compute / steps,
            "comm_seconds": (step_seconds - compute) / steps,
            "samples_per_second": samples / step_seconds if step_seconds > 0 else 0.0,
            "time": _wall_clock(),
        }
        self._points.append([sample[field] for field in SERIES_FIELDS])
        chunk = {"chunk": self._chunk, "fields": SERIES_FIELDS, "points": self._points}
        if not self._set(RANK_KEY.format(rank=self.rank), sample):
            return
        if not self._set(SERIES_KEY.format(rank=self.rank, slot=self._chunk % SERIES_SLOTS), chunk):
            return
        self.publishes += 1
        if len(self._points) >= SERIES_CHUNK_POINTS:
            self._points = []
            self._chunk += 1

    def _set(self, key: str, value: object) -> bool:
        """Writes `value` as JSON; on failure logs once and disables telemetry. Holds the lock."""
        store = self._store
        if store is None:
            return False
        try:
            store.set(key, json.dumps(value).encode())
            return True
        except Exception as error:  # telemetry must never stop training
            log.warning(
                "kaitian: rank %d: telemetry for `kaitian monitor` stopped (training goes on): %s",
                self.rank,
                error,
            )
            store.close()
            self._store = None
            return False


def _wall_clock() -> float:
    return time.time()


_shared: JobTelemetry | None = None
_shared_made = False
_shared_lock = threading.Lock()


def job_telemetry() -> JobTelemetry | None:
    """This process's JobTelemetry (made on first call from the environment), or None.

    OnlineBalancer records through it, so a script that uses OnlineBalancer must not record the
    same steps again; a script without it calls `record_step` itself. Flushed and closed at exit.
    """
    global _shared, _shared_made
    with _shared_lock:
        if not _shared_made:
            _shared_made = True
            _shared = JobTelemetry.from_environment()
            if _shared is not None:
                atexit.register(_shared.close)
        return _shared
