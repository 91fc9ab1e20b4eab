"""Random kills: SIGKILL a random worker of `kaitian run ... examples/train.py` at a random time.

Each trial records the launcher's exit status and the rank it names, each survivor's error
naming the dead rank (from the per-rank logs), the time from the kill to the launcher's exit,
processes left behind (any process whose environment holds the job's KAITIAN_JOB_ID), whether
the last checkpoint loads, and whether resuming from it ends with parameters bitwise equal to
an uninterrupted run's (train.py's final parameters sha256). Every run has a hard timeout.

    .venv/bin/python bench/reliability/kill_random.py --kills 20 [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[2]
PYTHON = ROOT / ".venv" / "bin" / "python"
GROUPS = ("cpu:2", "cpu-b:1")  # heterogeneous: two device kinds, three ranks
WORLD = 3
TRAIN_ARGS = ("--adaptive", "off", "--data", "digits", "--model", "cnn")
RUN_TIMEOUT = 300.0  # hard limit on any one launcher run, seconds


def job_environment() -> dict[str, str]:
    """This checkout's python/ first on the workers' path, whatever the venv has installed."""
    paths = [str(ROOT / "python"), *filter(None, os.environ.get("PYTHONPATH", "").split(":"))]
    return {**os.environ, "PYTHONPATH": ":".join(paths)}


def launcher() -> Path:
    """The `kaitian` binary: release if built, else debug."""
    for build in ("release", "debug"):
        path = ROOT / ".build" / build / "kaitian"
        if path.is_file():
            return path
    raise FileNotFoundError("no .build/{release,debug}/kaitian: run `swift build --product kaitian`")


def job_processes(job_id: str) -> list[int]:
    """Pids of live processes whose environment has KAITIAN_JOB_ID=job_id."""
    needle = f"KAITIAN_JOB_ID={job_id}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                if needle in handle.read().split(b"\0"):
                    found.append(int(entry))
        except OSError:
            continue
    return found


def rank_pid(job_id: str, rank: int) -> int | None:
    """The worker process of `rank` in the job (the one whose environment says RANK=rank)."""
    for pid in job_processes(job_id):
        try:
            with open(f"/proc/{pid}/environ", "rb") as handle:
                if f"RANK={rank}".encode() in handle.read().split(b"\0"):
                    return pid
        except OSError:
            continue
    return None


@dataclass
class Run:
    """One launcher run: exit status, output, and when the first epoch line appeared."""

    exit_code: int | None
    stdout: str
    stderr: str
    first_epoch_at: float | None
    ended_at: float
    timed_out: bool


def run_job(
    job_id: str,
    directory: Path,
    epochs: int,
    resume: bool,
    on_first_epoch: Callable[[], None] | None = None,
) -> Run:
    """Runs the training job under `kaitian run`; `on_first_epoch` runs when epoch 1 is printed."""
    command = [str(launcher()), "run"]
    for group in GROUPS:
        command += ["--group", group]
    command += ["--log-dir", str(directory / f"logs-{job_id}"), "--job-id", job_id, "--"]
    command += [str(PYTHON), str(ROOT / "examples" / "train.py"), *TRAIN_ARGS, "--epochs", str(epochs)]
    command += ["--checkpoint-dir", str(directory / "checkpoint"), "--result-json", str(directory / f"{job_id}.json")]
    if resume:
        command.append("--resume")
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=job_environment()
    )
    first_epoch: list[float] = []
    lines: list[str] = []

    def read_stdout() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if not first_epoch and re.search(r"epoch \d+/\d+", line):
                first_epoch.append(time.monotonic())
                if on_first_epoch is not None:
                    threading.Thread(target=on_first_epoch, daemon=True).start()

    reader = threading.Thread(target=read_stdout, daemon=True)
    reader.start()
    errors: list[str] = []
    error_reader = threading.Thread(target=lambda: errors.append(proc.stderr.read() if proc.stderr else ""))
    error_reader.start()
    timed_out = False
    try:
        proc.wait(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        timed_out = True
        proc.kill()
        proc.wait()
    ended = time.monotonic()
    reader.join(timeout=5)
    error_reader.join(timeout=5)
    first = first_epoch[0] if first_epoch else None
    return Run(proc.returncode, "".join(lines), "".join(errors), first, ended, timed_out)


def final_digest(directory: Path, job_id: str) -> str | None:
    path = directory / f"{job_id}.json"
    return json.loads(path.read_text())["parameters_sha256"] if path.is_file() else None


@dataclass
class Trial:
    """What one random kill showed."""

    killed_rank: int
    kill_after_first_epoch: float  # seconds, drawn in the first 60% of the baseline's training
    launcher_exit: int | None = None
    launcher_names_rank: bool = False
    survivors_naming_rank: int = 0
    survivors: int = WORLD - 1
    detect_seconds: float | None = None  # kill to launcher exit
    leftovers: int = 0
    checkpoint: str = "none"  # "intact", "none" (killed before the first save), "unreadable"
    resumed_equal: bool | None = None  # None when there was no checkpoint to resume from
    hang: bool = False
    # The job had run its last collective (rank 0 printed its summary) before the kill.
    finished_before_kill: bool = False
    survivor_errors: list[str] = field(default_factory=list)


def checkpoint_state(directory: Path) -> str:
    path = directory / "checkpoint" / "checkpoint.pt"
    if not path.is_file():
        return "none"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        return "intact" if {"epoch", "model", "optimizer"} <= set(state) else "unreadable"
    except Exception:  # noqa: BLE001 (any failure to load means the file is not intact)
        return "unreadable"


def survivor_lines(log: Path, killed: int) -> str | None:
    """The survivor's log line that names the dead rank, if any."""
    if not log.is_file():
        return None
    for line in log.read_text(errors="replace").splitlines():
        if f"rank {killed}" in line and ("lost" in line or "Error" in line or "error" in line):
            return line.strip()
    return None


def trial(rng: random.Random, epochs: int, window: float, baseline: str) -> Trial:
    """One kill at a random time within `window` seconds after epoch 1, then a resume."""
    killed = rng.randrange(WORLD)
    delay = rng.uniform(0.0, window)
    result = Trial(killed_rank=killed, kill_after_first_epoch=delay)
    job_id = f"rel{secrets.token_hex(4)}"
    killed_at: list[float] = []

    def kill() -> None:
        time.sleep(delay)
        pid = rank_pid(job_id, killed)
        if pid is not None:
            killed_at.append(time.monotonic())
            os.kill(pid, signal.SIGKILL)

    with tempfile.TemporaryDirectory(prefix="kaitian-kill-") as temp:
        directory = Path(temp)
        run = run_job(job_id, directory, epochs, resume=False, on_first_epoch=kill)
        time.sleep(0.5)
        result.leftovers = len(job_processes(job_id))
        for pid in job_processes(job_id):
            os.kill(pid, signal.SIGKILL)
        result.hang = run.timed_out
        result.launcher_exit = run.exit_code
        if not killed_at:
            result.checkpoint = checkpoint_state(directory)
            result.survivor_errors = ["the job ended before the kill"]
            return result
        result.detect_seconds = run.ended_at - killed_at[0]
        # Rank 0 prints its summary after the last collective (an all_gather of every rank's
        # stats): when it did, the killed rank had already sent all it ever would.
        result.finished_before_kill = "summary:" in run.stdout
        result.launcher_names_rank = bool(re.search(rf"rank {killed} \S+ was killed by signal 9", run.stderr))
        for rank in range(WORLD):
            if rank == killed:
                continue
            log = directory / f"logs-{job_id}" / f"rank-{rank}.log"
            line = survivor_lines(log, killed)
            if line is not None:
                result.survivors_naming_rank += 1
                result.survivor_errors.append(f"rank {rank}: {line[:300]}")
            else:
                tail = log.read_text(errors="replace")[-600:] if log.is_file() else "(no log)"
                result.survivor_errors.append(f"rank {rank}: no error naming rank {killed}; log ends: {tail}")
        result.checkpoint = checkpoint_state(directory)
        if result.checkpoint == "intact":
            resume_id = f"{job_id}r"
            resumed = run_job(resume_id, directory, epochs, resume=True)
            result.resumed_equal = resumed.exit_code == 0 and final_digest(directory, resume_id) == baseline
    return result


def run(kills: int, epochs: int, seed: int, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """An uninterrupted baseline, then `kills` trials; returns the baseline and every trial."""
    say = progress or (lambda _text: None)
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="kaitian-kill-") as temp:
        say(f"baseline: uninterrupted run of {epochs} epochs...")
        job_id = f"rel{secrets.token_hex(4)}"
        base = run_job(job_id, Path(temp), epochs, resume=False)
        baseline = final_digest(Path(temp), job_id)
        if base.exit_code != 0 or baseline is None or base.first_epoch_at is None:
            raise RuntimeError(f"the uninterrupted run failed (exit {base.exit_code}):\n{base.stderr[-3000:]}")
        training = base.ended_at - base.first_epoch_at
    trials = []
    for index in range(kills):
        one = trial(rng, epochs, window=training * 0.6, baseline=baseline)
        trials.append(one)
        say(
            f"kill {index + 1}/{kills}: rank {one.killed_rank} after {one.kill_after_first_epoch:.1f} s; "
            f"launcher exit {one.launcher_exit}, survivors naming it {one.survivors_naming_rank}/{one.survivors}, "
            f"checkpoint {one.checkpoint}, resumed equal {one.resumed_equal}, leftovers {one.leftovers}"
        )
    return {"baseline_sha256": baseline, "training_seconds": training, "trials": [asdict(t) for t in trials]}


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    """The figures the report shows."""
    # A kill that lands after the last collective (a late draw on a loaded machine) finds nothing
    # to fail: survivors have nothing to report. Counted apart, not hidden.
    late = [
        t
        for t in result["trials"]
        if t["finished_before_kill"] or (t["launcher_exit"] == 0 and not t["launcher_names_rank"])
    ]
    trials = [t for t in result["trials"] if t["detect_seconds"] is not None and t not in late]
    times = sorted(t["detect_seconds"] for t in trials)
    return {
        "kills": len(trials),
        "kills_after_the_rank_finished": len(late),
        "launcher_nonzero": sum(1 for t in trials if t["launcher_exit"] not in (0, None)),
        "launcher_named_rank": sum(1 for t in trials if t["launcher_names_rank"]),
        "survivor_errors_naming_rank": sum(t["survivors_naming_rank"] for t in trials),
        "survivors": sum(t["survivors"] for t in trials),
        "detect_seconds": (times[0], statistics.median(times), times[-1]) if times else None,
        "hangs": sum(1 for t in result["trials"] if t["hang"]),
        "leftovers": sum(t["leftovers"] for t in result["trials"]),
        "checkpoints_intact": sum(1 for t in trials if t["checkpoint"] == "intact"),
        "checkpoints_unreadable": sum(1 for t in trials if t["checkpoint"] == "unreadable"),
        "resumed_equal": sum(1 for t in trials if t["resumed_equal"]),
        "resumed": sum(1 for t in trials if t["resumed_equal"] is not None),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=30, help="epochs per run (more: a longer kill window)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    if args.kills < 1 or args.epochs < 2:
        parser.error("--kills must be at least 1 and --epochs at least 2")
    result = run(args.kills, args.epochs, args.seed, progress=None if args.json else print)
    summary = summarize(result)
    if args.json:
        print(json.dumps({**result, "summary": summary}))
        return
    print(json.dumps(summary, indent=1))
    bad = summary["hangs"] or summary["leftovers"] or summary["checkpoints_unreadable"]
    sys.exit(1 if bad or summary["resumed_equal"] != summary["resumed"] else 0)


if __name__ == "__main__":
    main()
