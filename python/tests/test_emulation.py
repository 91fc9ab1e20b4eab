"""The emulated accelerator (kaitian.emulate_device): pacing, exact gradients, the variable."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from kaitian.emulation import SPEED_VARIABLE, EmulatedDevice, SharedCalibration, emulate_device, emulated_speed


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))


def step(net: nn.Module, seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(64, 256, generator=generator)
    targets = torch.randint(0, 10, (64,), generator=generator)
    net.zero_grad()
    F.cross_entropy(net(inputs), targets).backward()
    return [p.grad.clone() for p in net.parameters()]


def test_paced_steps_take_the_device_time_and_give_the_same_gradients(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # a fresh shared calibration
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    plain, paced = model(), model()
    device = EmulatedDevice(paced, speed=0.2)
    assert device.warmup_steps() == EmulatedDevice.CALIBRATION_STEPS, "uncalibrated: warm up through calibration"
    for seed in range(EmulatedDevice.CALIBRATION_STEPS):
        assert not device.calibrated
        assert all(torch.equal(a, b) for a, b in zip(step(plain, seed), step(paced, seed), strict=True))
    assert device.waited_seconds == 0.0, "calibration steps run at host speed"
    for seed in range(3):
        started = time.perf_counter()
        got = step(paced, 100 + seed)
        elapsed = time.perf_counter() - started
        assert device.calibrated
        assert all(torch.equal(a, b) for a, b in zip(step(plain, 100 + seed), got, strict=True))
        # A lower bound the pacing guarantees whatever the machine's load: the device's time for
        # the forward and the whole backward (the last gradient waits for all of it).
        device_seconds = (device.forward_cost + device.backward_cost) * 64 / device.speed
        assert elapsed >= device_seconds
    assert device.waited_seconds > 0
    device.remove()
    waited = device.waited_seconds
    step(paced, 7)
    assert device.waited_seconds == waited, "removed: no more pacing"

    # Another rank with the same model on this host: the same costs, paced from its first step.
    net = model()
    other = EmulatedDevice(net, speed=0.1)
    assert other.warmup_steps() == 1, "the host is calibrated already: one warm-up step, as any device"
    step(net, 0)
    assert other.calibrated and other.waited_seconds > 0
    assert (other.forward_cost, other.backward_cost) == (device.forward_cost, device.backward_cost)
    assert other.report()["forward_seconds_per_sample"] == pytest.approx(
        2 * device.report()["forward_seconds_per_sample"]
    )
    other.remove()


def test_the_calibration_lives_in_the_users_cache_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = Path(SharedCalibration(model()).path)
    assert path.parent == tmp_path / "cache" / "kaitian"
    assert path.parent.stat().st_mode & 0o777 == 0o700
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # ignored, as the XDG rules say
    assert Path(SharedCalibration(model()).path).parent == tmp_path / "home" / ".cache" / "kaitian"


def test_the_variable_selects_the_speed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SPEED_VARIABLE, raising=False)
    assert emulated_speed() is None and emulate_device(model()) is None
    monkeypatch.setenv(SPEED_VARIABLE, "0.25")
    device = emulate_device(model())
    assert device is not None and device.speed == 0.25
    device.remove()
    for bad in ("fast", "0", "1.5", "-1"):
        monkeypatch.setenv(SPEED_VARIABLE, bad)
        with pytest.raises(ValueError, match=SPEED_VARIABLE):
            emulated_speed()
