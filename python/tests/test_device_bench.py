"""kaitian.device_bench: the workload behind `kaitian devices --bench`, on this host's CPU."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from kaitian import device_bench


def test_cpu_is_measured() -> None:
    result = device_bench.run("cpu", seconds=0.2, threads=1)
    assert result["device"] == "cpu"
    seconds = float(result["seconds_per_sample"])  # type: ignore[arg-type]
    assert 0 < seconds < 1
    assert abs(float(result["samples_per_second"]) * seconds - 1) < 1e-9  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("spec", "message"),
    [("tpu:0", "unknown device kind 'tpu'"), ("cuda:0", "sees no cuda device"), ("mlu:0", "needs the torch_mlu")],
)
def test_unusable_devices_say_why(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        device_bench.torch_device(spec)


def test_command_line_prints_json_and_fails_cleanly() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "kaitian.device_bench", "--seconds", "0.2", "--json"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["device"] == "cpu"
    bad = subprocess.run(
        [sys.executable, "-m", "kaitian.device_bench", "--device", "tpu"], capture_output=True, text=True
    )
    assert bad.returncode == 2
    assert "unknown device kind 'tpu'" in bad.stderr
    assert "Traceback" not in bad.stderr
