"""examples/train.py under `kaitian run`: checkpoints survive a killed rank and resume exactly.

The resumed run must end with the same parameters, bit for bit, as a run that was never
interrupted: the example reseeds every epoch and saves model, optimizer and plan atomically.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
LAUNCHER = REPO / ".build" / "release" / "kaitian"
TRAIN = REPO / "examples" / "train.py"
EPOCHS = 6


def launcher() -> Path:
    if not LAUNCHER.is_file():
        pytest.fail(f"{LAUNCHER} is missing: run scripts/setup.sh (it builds the release launcher)")
    return LAUNCHER


def train_command(tmp: Path, name: str, *extra: str, epochs: int = EPOCHS) -> list[str]:
    return [
        str(launcher()),
        "run",
        "--log-dir",
        str(tmp / f"logs-{name}"),
        "--grace-seconds",
        "2",
        "--group",
        "cpu:2",
        "--",
        sys.executable,
        str(TRAIN),
        "--data",
        "digits",
        "--adaptive",
        "off",
        "--batch-size",
        "16",
        "--epochs",
        str(epochs),
        "--result-json",
        str(tmp / f"{name}.json"),
        *extra,
    ]


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO / "python") + os.pathsep + env.get("PYTHONPATH", "")
    env["KAITIAN_TIMEOUT"] = "60"
    return env


def run_to_end(command: list[str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment(), cwd=REPO)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done


def checkpoint_epoch(path: Path) -> int:
    """The epoch count in a checkpoint, 0 when there is none yet (the rename is atomic)."""
    if not path.is_file():
        return 0
    return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])


def test_resume_after_a_killed_rank_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    run_to_end(train_command(tmp_path, "whole"))
    whole = json.loads((tmp_path / "whole.json").read_text())
    # The script reports its steps to the job's store: the monitor shows both ranks afterwards.
    shown = subprocess.run(
        [str(launcher()), "monitor", str(tmp_path / "logs-whole"), "--once", "--json"], capture_output=True, text=True
    )
    assert shown.returncode == 0, shown.stderr
    view = json.loads(shown.stdout)
    assert view["job"]["state"] == "succeeded"
    assert [r["rank"] for r in view["ranks"]] == [0, 1] and all(r["step"] > 0 for r in view["ranks"])

    checkpoints = tmp_path / "checkpoints"
    job = subprocess.Popen(
        train_command(tmp_path, "killed", "--checkpoint-dir", str(checkpoints)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=environment(),
        cwd=REPO,
    )
    pids: dict[int, int] = {}
    launcher_lines: list[str] = []

    def read_launcher() -> None:
        assert job.stderr is not None
        for line in job.stderr:
            launcher_lines.append(line)
            started = re.search(r"rank (\d+) \S+ started \(pid (\d+)", line)
            if started:
                pids[int(started.group(1))] = int(started.group(2))

    reader = threading.Thread(target=read_launcher, daemon=True)
    reader.start()
    deadline = time.monotonic() + 120
    while checkpoint_epoch(checkpoints / "checkpoint.pt") < 2:
        assert job.poll() is None, "the job ended before its second checkpoint:\n" + "".join(launcher_lines)
        assert time.monotonic() < deadline, "no second checkpoint within 120 s"
        time.sleep(0.05)
    os.kill(pids[1], signal.SIGKILL)
    assert job.wait(timeout=120) != 0
    reader.join(timeout=10)
    text = "".join(launcher_lines)
    assert "rank 1" in text and "SIGKILL" in text, text

    saved = checkpoint_epoch(checkpoints / "checkpoint.pt")
    assert 2 <= saved < EPOCHS, f"checkpoint at epoch {saved}"
    assert not list(checkpoints.glob(".*partial")), "a partial checkpoint was left behind"

    resumed = run_to_end(train_command(tmp_path, "resumed", "--checkpoint-dir", str(checkpoints), "--resume"))
    assert f"resumed from {checkpoints / 'checkpoint.pt'}: {saved} epochs done" in resumed.stdout
    after = json.loads((tmp_path / "resumed.json").read_text())
    assert after["parameters_sha256"] == whole["parameters_sha256"]
    assert after["loss"] == whole["loss"]


def test_resume_without_a_checkpoint_starts_from_scratch(tmp_path: Path) -> None:
    done = run_to_end(
        train_command(tmp_path, "fresh", "--checkpoint-dir", str(tmp_path / "empty"), "--resume", epochs=1)
    )
    assert "no checkpoint in" in done.stdout
    assert checkpoint_epoch(tmp_path / "empty" / "checkpoint.pt") == 1


def load_example() -> object:
    """examples/train.py as a module (it is a script, not part of the package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_example", TRAIN)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_example"] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def test_cifar10_is_read_from_the_standard_archive_files(tmp_path: Path) -> None:
    """The python-version archive: data_batch_1..5 and test_batch, pickled dicts of uint8 rows."""
    import pickle

    import numpy as np

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(4, 3072), dtype=np.uint8)
        labels = [int(x) for x in rng.integers(0, 10, size=4)]
        batches[name] = (data, labels)
        with open(folder / name, "wb") as handle:
            pickle.dump({b"data": data, b"labels": labels, b"batch_label": name.encode()}, handle)
    example = load_example()
    dataset = example.load_data(f"cifar10:{tmp_path}", 0)  # type: ignore[attr-defined]
    assert dataset.real
    images, labels = dataset.train.tensors
    assert images.shape == (20, 3, 32, 32) and labels.tolist() == sum(
        (batches[f"data_batch_{i}"][1] for i in range(1, 6)), []
    )
    first = torch.tensor(batches["data_batch_1"][0][0], dtype=torch.float32).reshape(3, 32, 32) / 255
    assert torch.equal(images[0], first)
    assert dataset.test.tensors[0].shape == (4, 3, 32, 32)


def test_missing_cifar10_files_name_the_file(tmp_path: Path) -> None:
    example = load_example()
    with pytest.raises(FileNotFoundError, match="data_batch_1"):
        example.load_data(f"cifar10:{tmp_path}", 0)  # type: ignore[attr-defined]


def test_generated_data_says_so() -> None:
    example = load_example()
    dataset = example.load_data("synthetic", 100)  # type: ignore[attr-defined]
    assert not dataset.real and "GENERATED" in dataset.description
    assert dataset.train.tensors[0].shape == (80, 3, 32, 32)


def test_digits32_are_the_digits_as_cifar_shaped_images() -> None:
    example = load_example()
    small, large = example.load_data("digits", 0), example.load_data("digits32", 0)  # type: ignore[attr-defined]
    assert large.real and large.train.tensors[0].shape[1:] == (3, 32, 32)
    assert torch.equal(small.train.tensors[1], large.train.tensors[1])
    assert torch.equal(large.train.tensors[0][:, 0], large.train.tensors[0][:, 2])


def test_gain_is_measured_against_the_fastest_group_and_the_sum() -> None:
    example = load_example()
    # Two fast ranks at 10 ms per sample (200 samples/s together), two slow at 40 ms (50).
    kinds = ["fast", "fast", "slow", "slow"]
    gain = example.group_gain(kinds, [0.01, 0.01, 0.04, 0.04], 225.0, None, 64)  # type: ignore[attr-defined]
    assert gain["fastest_group"] == "fast"
    assert gain["fastest_group_alone"] == pytest.approx(200.0) and gain["ideal"] == pytest.approx(250.0)
    assert gain["over_fastest_group"] == pytest.approx(1.125) and gain["of_ideal"] == pytest.approx(0.9)
    assert "ceiling" not in gain
    assert example.group_gain(["a", "b"], [], 1.0, None, 2) is None  # type: ignore[attr-defined]


def test_ceilings_split_the_global_batch_by_step_costs() -> None:
    example = load_example()
    # Steps of 0.1 s + 0.01 s per sample (fast) and 0.2 s + 0.03 s per sample (slow), 64 samples:
    # the fast pair alone takes [32, 32] in 0.42 s; all four [27, 27, 5, 5] in 0.37 s.
    fast, slow = example.kaitian.StepCost(0.1, 0.01), example.kaitian.StepCost(0.2, 0.03)  # type: ignore[attr-defined]
    gain = example.group_gain(
        ["fast", "fast", "slow", "slow"], [0.0131, 0.0131, 0.05, 0.05], 160.0, [fast, fast, slow, slow], 64
    )  # type: ignore[attr-defined]
    assert gain["fastest_group_ceiling"] == pytest.approx(64 / 0.42)
    assert gain["ceiling"] == pytest.approx(64 / 0.37)
