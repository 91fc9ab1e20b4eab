"""An emulated accelerator: a CPU rank that computes as slowly as a given device, with its host free.

Why this stand-in exists: a cgroup CPU quota slows a rank's whole process, its communication
threads included (the engine's, gloo's, the hybrid worker's). An accelerator does not: it computes
on the device while the host threads that drive communication run at full speed. A quota
therefore overstates the communication cost of a slow device. This emulation keeps the host
free: the forward and backward run on the CPU as usual (the gradients are real), and the rank then
waits until a device of the given speed would have finished: the CPU time the work took on this
thread, divided by the speed. While it waits the CPU is free for the engine and the other threads,
as it is beside a real accelerator.

Where it waits: once after the model's forward, and in backward before each parameter's gradient
is accumulated (a tensor hook), so a gradient becomes ready, and DDP's bucket is launched, when an
emulated device would have produced it; communication then overlaps the emulated compute as it
overlaps kernels on a GPU. The optimizer step, data loading and loss computed outside the model's
forward run at host speed (on an accelerator they are device work too; they are small next to
MobileNetV2's forward and backward).

`speed` is relative to one core of this host running the same work: 0.25 means four times slower
than the core. It is emulation, not a device: every report that uses it says so.
"""

from __future__ import annotations

import fcntl
import os
import time

import torch
import torch.nn as nn

SPEED_VARIABLE = "KAITIAN_EMULATED_SPEED"
"""Set by `kaitian run --group KIND:N:speed=F` for the group's workers."""


class EmulatedDevice:
    """Paces one model's forward and backward to a device `speed` times as fast as a host core.

    The device's time for a step is a function of the work, not of the host's load: the best
    (lowest) CPU seconds per sample this thread has spent so far on a forward, and on a backward,
    times the batch, divided by `speed`. The best figure, not the current one, because four ranks
    sharing two cores slow each other's CPU work (caches, memory, the scheduler) in ways a real
    device's kernels never see; the work itself is measured in thread CPU time, so time spent
    descheduled while the engine's threads run is not counted as work at all.

    Inside backward the gradients come out in proportion: the hook of a parameter waits until
    the device would have reached the same fraction of its backward as the host has of its own
    (CPU time so far over the previous backward's CPU time up to its last gradient); the last
    gradient (as many as the previous backward produced) waits for the whole backward.

    The first CALIBRATION_STEPS steps run unpaced, at host speed, to learn the costs: pacing
    itself inflates the host's CPU time (a thread that sleeps wakes to cold caches and a slower
    clock: a MobileNetV2 backward paced at 0.25 took a third more CPU time), and the device
    model must not grow slower by being emulated. measure_speed's warm-up steps are these steps.
    Each calibration step holds a lock shared by every emulated rank of this user on the host
    (CalibrationLock), so ranks that start together do not calibrate against each other's load:
    a device's speed does not depend on how many others share its host.
    """

    CALIBRATION_STEPS = 3

    SHORTEST_WAIT = 0.002
    """Seconds: a shorter wait in backward is put off to a later gradient. Many short sleeps
    (one per parameter) cost more than they emulate: each wakes the thread to cold caches."""

    def __init__(self, model: nn.Module, speed: float) -> None:
        if not 0 < speed <= 1:
            raise ValueError(f"kaitian: an emulated device speed must be in (0, 1], not {speed}")
        self.speed = speed
        self.waited_seconds = 0.0  # time spent waiting for the emulated device, over the run
        self.best_forward = float("inf")  # lowest CPU seconds per sample seen, forward
        self.best_backward = float("inf")  # and backward
        self._batch = 0
        self._cpu_start = 0.0  # thread CPU time when the current phase began
        self._wall_start = 0.0  # and wall time
        self._last_backward_cpu = 0.0  # CPU seconds of the previous full backward, per sample
        self._in_backward = False
        self._hooks_seen = 0  # gradients of the current backward so far
        self._hooks_expected = 0  # gradients the previous backward produced
        self._backward_cpu_seen = 0.0  # CPU seconds of the current backward up to its latest gradient
        self._steps = 0  # forwards seen; pacing starts after CALIBRATION_STEPS
        self._lock = CalibrationLock()
        self._handles = [
            model.register_forward_pre_hook(self._forward_started),
            model.register_forward_hook(self._forward_finished),
        ]
        self._handles += [p.register_hook(self._gradient_ready) for p in model.parameters() if p.requires_grad]

    def _begin(self) -> None:
        self._wall_start = time.perf_counter()
        self._cpu_start = time.thread_time()

    def _wait_until(self, due: float, least: float = 0.0) -> None:
        wait = due - time.perf_counter()
        if wait >= least:
            time.sleep(wait)
            self.waited_seconds += wait

    def _close_backward(self) -> None:
        """Learns from the backward that just ended (the next forward starts)."""
        if self._in_backward and self._batch > 0 and self._hooks_seen > 0:
            per_sample = self._backward_cpu_seen / self._batch
            self._last_backward_cpu = per_sample
            self._hooks_expected = self._hooks_seen
            self.best_backward = min(self.best_backward, per_sample)
        self._in_backward = False
        self._hooks_seen = 0

    def _forward_started(self, _module: nn.Module, inputs: tuple[object, ...]) -> None:
        self._close_backward()
        first = inputs[0] if inputs else None
        self._batch = int(first.shape[0]) if isinstance(first, torch.Tensor) and first.dim() > 0 else 1
        self._steps += 1
        self._lock.release()
        if self._steps <= self.CALIBRATION_STEPS:
            self._lock.acquire()
        self._begin()

    def _forward_finished(self, _module: nn.Module, _inputs: object, _output: object) -> None:
        cpu = time.thread_time() - self._cpu_start
        self.best_forward = min(self.best_forward, cpu / max(self._batch, 1))
        if self.calibrated:
            self._wait_until(self._wall_start + self.best_forward * self._batch / self.speed)
        self._begin()  # the backward (and the loss before it) starts now
        self._in_backward = True

    def _gradient_ready(self, grad: torch.Tensor) -> torch.Tensor:
        if not self._in_backward:
            return grad
        self._hooks_seen += 1
        self._backward_cpu_seen = time.thread_time() - self._cpu_start
        if not self.calibrated:
            return grad
        last = self._hooks_seen >= self._hooks_expected
        fraction = 1.0 if last else min(1.0, self._backward_cpu_seen / (self._last_backward_cpu * self._batch))
        device = fraction * self.best_backward * self._batch / self.speed
        self._wait_until(self._wall_start + device, least=0.0 if last else self.SHORTEST_WAIT)
        return grad

    @property
    def calibrated(self) -> bool:
        """Whether the costs are known and steps are paced (after CALIBRATION_STEPS steps)."""
        return self._steps > self.CALIBRATION_STEPS and self._last_backward_cpu > 0

    def remove(self) -> None:
        """Stops pacing: the model computes at host speed again."""
        self._lock.release()
        for handle in self._handles:
            handle.remove()
        self._handles = []


class CalibrationLock:
    """An exclusive lock over one calibration step of one emulated rank, among this user's ranks.

    flock on a file in the user's own cache folder (not a shared /tmp name another user could
    plant). A rank waits at most WAIT_SECONDS for it and then calibrates without it: a step that
    holds it may be inside DDP's backward, whose end waits for the other ranks, so waiting without
    a limit could deadlock. The lock is released at the next forward at the latest.
    """

    WAIT_SECONDS = 2.0

    def __init__(self) -> None:
        self._fd: int | None = None

    def acquire(self) -> bool:
        folder = os.path.join(os.path.expanduser("~"), ".cache", "kaitian")
        try:
            os.makedirs(folder, mode=0o700, exist_ok=True)
            fd = os.open(os.path.join(folder, "emulation.lock"), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except OSError:
            return False
        deadline = time.monotonic() + self.WAIT_SECONDS
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._fd = fd
                return True
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    return False
                time.sleep(0.005)

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def emulated_speed() -> float | None:
    """KAITIAN_EMULATED_SPEED as a number in (0, 1], or None when unset or empty."""
    text = os.environ.get(SPEED_VARIABLE, "").strip()
    if not text:
        return None
    try:
        speed = float(text)
    except ValueError:
        raise ValueError(f"kaitian: {SPEED_VARIABLE}={text!r} is not a number; use e.g. 0.25") from None
    if not 0 < speed <= 1:
        raise ValueError(f"kaitian: {SPEED_VARIABLE}={text} must be in (0, 1]: a device's speed relative to one core")
    return speed


def emulate_device(model: nn.Module) -> EmulatedDevice | None:
    """Paces `model` as KAITIAN_EMULATED_SPEED asks; None (and no hooks) when it is unset.

    Call it on the plain module before measuring its speed or wrapping it in DDP.
    """
    speed = emulated_speed()
    return EmulatedDevice(model, speed) if speed is not None else None
