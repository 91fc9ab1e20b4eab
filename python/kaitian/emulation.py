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
import hashlib
import json
import os
import time

import torch
import torch.nn as nn

SPEED_VARIABLE = "KAITIAN_EMULATED_SPEED"
"""Set by `kaitian run --group KIND:N:speed=F` for the group's workers."""


class EmulatedDevice:
    """Paces one model's forward and backward to a device `speed` times as fast as a host core.

    The device's time for a step is a function of the work, not of the host's load: the host's CPU
    seconds per sample for this model's forward and backward (a shared calibration, below) times
    the batch, divided by `speed`. Not the current step's CPU time, because four ranks sharing two
    cores slow each other's CPU work (caches, memory, the scheduler) in ways a real device's
    kernels never see, and because pacing itself inflates it (a thread that sleeps wakes to cold
    caches and a slower clock: a MobileNetV2 backward paced at 0.25 took a third more CPU time).

    Inside backward the gradients come out in proportion: the hook of a parameter waits until
    the device would have reached the same fraction of its backward as the host has of its own
    (CPU time so far over the calibrated backward); the last gradient waits for the whole backward.

    Calibration: steps run unpaced, at host speed, one rank at a time (CalibrationLock), until
    CALIBRATION_STEPS of them, from any ranks, are in the host's SharedCalibration of this model;
    the lowest cost wins. Every rank, and every job for an hour, then paces to the same costs: the
    fast and the slow emulated devices of a job differ exactly by their speeds, and a job with
    both groups runs the same devices as the jobs with one group alone. examples/train.py makes
    the calibration steps measure_speed's warm-up.
    """

    CALIBRATION_STEPS = 5

    SHORTEST_WAIT = 0.002
    """Seconds: a shorter wait in backward is put off to a later gradient. Many short sleeps
    (one per parameter) cost more than they emulate: each wakes the thread to cold caches."""

    def __init__(self, model: nn.Module, speed: float) -> None:
        if not 0 < speed <= 1:
            raise ValueError(f"kaitian: an emulated device speed must be in (0, 1], not {speed}")
        self.speed = speed
        self.waited_seconds = 0.0  # time spent waiting for the emulated device, over the run
        self.late_seconds = 0.0  # time the host ran past the device's finish (forward, backward ends)
        self.forward_cost = 0.0  # host CPU seconds per sample, forward (0 until calibrated)
        self.backward_cost = 0.0  # and backward
        self._batch = 0
        self._cpu_start = 0.0  # thread CPU time when the current phase began
        self._wall_start = 0.0  # and wall time
        self._forward_cpu = 0.0  # CPU seconds of the current step's forward
        self._in_backward = False
        self._calibrating = False  # this step runs unpaced and holds the lock
        self._hooks_seen = 0  # gradients of the current backward so far
        # How much more CPU time a paced backward takes than the calibrated one (see _gradient_ready).
        self.backward_inflation = 1.0
        self._lock = CalibrationLock()
        self._shared = SharedCalibration(model)
        self._handles = [
            model.register_forward_pre_hook(self._forward_started),
            model.register_forward_hook(self._forward_finished),
        ]
        self._handles += [p.register_hook(self._gradient_ready) for p in model.parameters() if p.requires_grad]
        self._parameters = len(self._handles) - 2  # gradients a backward that uses every parameter makes

    @property
    def calibrated(self) -> bool:
        """Whether the costs are known and steps are paced."""
        return self.forward_cost > 0

    def warmup_steps(self) -> int:
        """Untimed steps to run before timing this device: enough to complete the host's
        calibration, or one (as any device needs) once it is complete, by this job or an earlier
        one. Why not always CALIBRATION_STEPS: once calibrated, every step is paced, and five
        paced steps of a slow emulated device added seconds to a job's start-up."""
        return 1 if self.calibrated or self._load() else self.CALIBRATION_STEPS

    def _begin(self) -> None:
        self._wall_start = time.perf_counter()
        self._cpu_start = time.thread_time()

    def _wait_until(self, due: float, least: float = 0.0) -> None:
        wait = due - time.perf_counter()
        if wait >= least:
            time.sleep(wait)
            self.waited_seconds += wait
        elif least == 0.0:  # an end of a phase: how far the host fell behind the device
            self.late_seconds -= wait

    def _load(self) -> bool:
        """Takes the shared costs once enough calibration steps are in; whether they are."""
        shared = self._shared.read()
        if shared is None or shared[2] < self.CALIBRATION_STEPS:
            return False
        self.forward_cost, self.backward_cost = shared[0], shared[1]
        return True

    def _end_calibration_step(self) -> None:
        if self._calibrating:
            self._calibrating = False
            backward = time.thread_time() - self._cpu_start
            if self._batch > 0 and self._hooks_seen >= self._parameters:
                self._shared.merge(self._forward_cpu / self._batch, backward / self._batch)
            self._lock.release()

    def _forward_started(self, _module: nn.Module, inputs: tuple[object, ...]) -> None:
        self._end_calibration_step()  # a step whose backward skipped parameters ends here
        self._in_backward = False
        self._hooks_seen = 0
        first = inputs[0] if inputs else None
        self._batch = int(first.shape[0]) if isinstance(first, torch.Tensor) and first.dim() > 0 else 1
        if not self.calibrated and not self._load():
            self._lock.acquire()
            self._calibrating = not self._load()
            if not self._calibrating:
                self._lock.release()
        self._begin()

    def _forward_finished(self, _module: nn.Module, _inputs: object, _output: object) -> None:
        self._forward_cpu = time.thread_time() - self._cpu_start
        if self.calibrated:
            self._wait_until(self._wall_start + self.forward_cost * self._batch / self.speed)
        self._begin()  # the backward (and the loss before it) starts now
        self._in_backward = True

    def _gradient_ready(self, grad: torch.Tensor) -> torch.Tensor:
        if not self._in_backward:
            return grad
        self._hooks_seen += 1
        last = self._hooks_seen >= self._parameters
        if self._calibrating:
            if last:  # the step's work is done: record it and let the next rank calibrate
                self._end_calibration_step()
            return grad
        if not self.calibrated:
            return grad
        unpaced = self.backward_cost * self._batch  # host CPU seconds of this backward, calibrated
        device = unpaced / self.speed
        host = time.thread_time() - self._cpu_start
        if not last:
            device *= min(1.0, host / (unpaced * self.backward_inflation))
        else:
            # A paced backward takes more CPU than the calibrated one (it wakes to cold caches, and
            # shares the cores with other ranks), and progress is judged by CPU time: with the
            # calibrated figure, the waits reached the device's end while a tenth to a third of
            # the host's work was left, which then ran late (25-160 ms a MobileNetV2 step). So
            # the waits expect the CPU time that recent backwards really took: the most of it at
            # once, decaying slowly (a backward whose waits end earlier wakes less often, and
            # takes less CPU, so following the latest figure alone oscillates).
            ratio = max(1.0, host / unpaced)
            self.backward_inflation = max(ratio, 0.9 * self.backward_inflation + 0.1 * ratio)
        self._wait_until(self._wall_start + device, least=0.0 if last else self.SHORTEST_WAIT)
        return grad

    def report(self) -> dict[str, float | str]:
        """The device model and how the run kept to it, for traces and reports."""
        return {
            "speed": self.speed,
            "forward_seconds_per_sample": self.forward_cost / self.speed,
            "backward_seconds_per_sample": self.backward_cost / self.speed,
            "waited_seconds": self.waited_seconds,
            "late_seconds": self.late_seconds,
            "calibration": self._shared.path,
        }

    def remove(self) -> None:
        """Stops pacing: the model computes at host speed again."""
        self._calibrating = False
        self._lock.release()
        for handle in self._handles:
            handle.remove()
        self._handles = []


def _cache_folder() -> str:
    """$XDG_CACHE_HOME/kaitian (~/.cache/kaitian by default), made private to this user if it is new."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):  # the XDG rule: a relative value is ignored
        base = os.path.join(os.path.expanduser("~"), ".cache")
    folder = os.path.join(base, "kaitian")
    os.makedirs(folder, mode=0o700, exist_ok=True)
    return folder


class SharedCalibration:
    """The host's CPU cost per sample of one model (forward, backward), shared by this user's ranks.

    A JSON file in $XDG_CACHE_HOME/kaitian (~/.cache/kaitian) named by the model's parameter
    shapes, written atomically and only under the CalibrationLock; it holds the lowest costs seen
    and how many calibration steps they come from. A file older than LIFETIME_SECONDS is ignored:
    the host may have changed.
    """

    LIFETIME_SECONDS = 3600.0

    def __init__(self, model: nn.Module) -> None:
        shapes = ";".join(f"{name}:{tuple(p.shape)}" for name, p in model.named_parameters())
        key = hashlib.sha256(f"{type(model).__name__}|{shapes}".encode()).hexdigest()[:16]
        self.path = os.path.join(_cache_folder(), f"emulation-{key}.json")

    def read(self) -> tuple[float, float, int] | None:
        """(forward, backward, steps), or None when there is no fresh, well-formed file."""
        try:
            if time.time() - os.stat(self.path).st_mtime > self.LIFETIME_SECONDS:
                return None
            with open(self.path) as handle:
                data = json.load(handle)
            forward, backward, steps = float(data["forward"]), float(data["backward"]), int(data["steps"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not (forward > 0 and backward > 0 and steps > 0):
            return None
        return forward, backward, steps

    def merge(self, forward: float, backward: float) -> None:
        """Adds one calibration step's costs (call with the CalibrationLock held)."""
        known = self.read()
        if known is not None:
            forward, backward = min(forward, known[0]), min(backward, known[1])
        steps = (known[2] if known is not None else 0) + 1
        partial = f"{self.path}.{os.getpid()}.partial"
        with open(partial, "w") as handle:
            json.dump({"forward": forward, "backward": backward, "steps": steps}, handle)
        os.replace(partial, self.path)


class CalibrationLock:
    """An exclusive lock over one calibration step of one emulated rank, among this user's ranks.

    flock on a file in the user's own cache folder (not a shared /tmp name another user could
    plant). It is held from a calibration step's forward to its last gradient, before DDP's end of
    backward waits for the other ranks, or else (a parameter without a gradient) to the next
    forward. A rank waits at most WAIT_SECONDS for it and then calibrates without it, so a holder
    stuck in a collective can delay the others but never deadlock them.
    """

    WAIT_SECONDS = 30.0

    def __init__(self) -> None:
        self._fd: int | None = None

    def acquire(self) -> bool:
        """Whether the lock is now held (False: waited WAIT_SECONDS, or the file cannot be opened)."""
        try:
            path = os.path.join(_cache_folder(), "emulation.lock")
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
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
