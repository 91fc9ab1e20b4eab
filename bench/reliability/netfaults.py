"""Network faults between two "hosts": two network namespaces joined by a veth pair.

Rank 0 runs in one namespace, rank 1 in the other (distinct KAITIAN_HOST_ID, so TCP), both doing
checked allreduce loops (netfault_worker.py). Faults: the link set down, netem loss 100% (both
ways), and netem delay + loss that should only slow the job. Needs root and `ip netns`.

    .venv/bin/python bench/reliability/netfaults.py [--json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).resolve().parent / "netfault_worker.py"
PYTHON = ROOT / ".venv" / "bin" / "python"
ADDRESSES = ("10.231.0.1", "10.231.0.2")
PORT = 29531
_counter = itertools.count()


class NamespaceUnavailable(RuntimeError):
    """`ip netns add` failed: not root, or no network namespaces in this container."""


class QdiscUnavailable(RuntimeError):
    """The kernel lacks a queueing discipline (netem is a module many kernels leave out)."""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@dataclass
class NamespacePair:
    """Two namespaces and the veth link between them; `links[i]` lives in `names[i]`."""

    names: tuple[str, str]
    links: tuple[str, str]

    def run(self, index: int, *command: str) -> None:
        subprocess.run(["ip", "netns", "exec", self.names[index], *command], check=True, capture_output=True)

    def set_link_down(self) -> None:
        self.run(0, "ip", "link", "set", self.links[0], "down")

    def add_qdisc(self, *spec: str) -> None:
        """Applies the qdisc spec (e.g. "netem", "loss", "100%") to both directions of the link."""
        for index in (0, 1):
            command = ["ip", "netns", "exec", self.names[index], "tc", "qdisc", "replace", "dev", self.links[index]]
            done = subprocess.run([*command, "root", *spec], capture_output=True, text=True)
            if done.returncode != 0:
                raise QdiscUnavailable(f"tc qdisc {' '.join(spec)}: {done.stderr.strip()}")


@contextmanager
def namespace_pair() -> Iterator[NamespacePair]:
    """A fresh pair with unique names, always deleted (which also deletes the veth pair)."""
    tag = f"kt{os.getpid() % 100000}x{next(_counter)}"
    names = (f"{tag}a", f"{tag}b")
    links = (f"{tag}va", f"{tag}vb")
    try:
        _ip("netns", "add", names[0])
    except (subprocess.CalledProcessError, FileNotFoundError) as error:
        detail = getattr(error, "stderr", "") or str(error)
        raise NamespaceUnavailable(f"ip netns add failed: {detail.strip()}") from error
    try:
        _ip("netns", "add", names[1])
        _ip("link", "add", links[0], "netns", names[0], "type", "veth", "peer", "name", links[1], "netns", names[1])
        pair = NamespacePair(names, links)
        for index in (0, 1):
            pair.run(index, "ip", "addr", "add", f"{ADDRESSES[index]}/24", "dev", links[index])
            pair.run(index, "ip", "link", "set", links[index], "up")
            pair.run(index, "ip", "link", "set", "lo", "up")
        yield pair
    finally:
        for name in names:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


@dataclass
class RankRun:
    """What one rank printed (its JSON events), its exit status, and its stderr."""

    events: list[dict[str, Any]] = field(default_factory=list)
    exit_code: int | None = None
    stderr: str = ""

    def event(self, name: str) -> dict[str, Any] | None:
        return next((e for e in self.events if e["event"] == name), None)


def _start_ranks(
    pair: NamespacePair, iterations: int, elements: int, env: dict[str, str]
) -> list[subprocess.Popen[str]]:
    procs = []
    for rank in (0, 1):
        variables = {
            **os.environ,
            "RANK": str(rank),
            "WORLD_SIZE": "2",
            "MASTER_ADDR": ADDRESSES[0],
            "MASTER_PORT": str(PORT),
            "KAITIAN_HOST_ID": f"host-{rank}",
            "KAITIAN_SOCKET_ADDR": ADDRESSES[rank],
            **env,
        }
        command = ["ip", "netns", "exec", pair.names[rank], str(PYTHON), str(WORKER), str(iterations), str(elements)]
        procs.append(
            subprocess.Popen(
                command,
                env=variables,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,
            )
        )
    return procs


def _read_events(proc: subprocess.Popen[str], until: str, deadline: float) -> list[dict[str, Any]]:
    """Reads JSON lines until an event named `until`, end of output, or the deadline."""
    events: list[dict[str, Any]] = []
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
        if events[-1]["event"] == until:
            break
    return events


def _finish(procs: list[subprocess.Popen[str]], seconds: float) -> list[RankRun]:
    """Waits up to `seconds` for every rank, kills what is left, and collects the output."""
    runs = []
    deadline = time.monotonic() + seconds
    for proc in procs:
        try:
            stdout, stderr = proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            stdout, stderr = proc.communicate()
        run = RankRun(exit_code=proc.returncode, stderr=stderr)
        for line in stdout.splitlines():
            try:
                run.events.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        runs.append(run)
    return runs


# How a link is cut: "down" sets the veth down, "loss" applies netem loss 100% both ways, and
# "drop" a pfifo of length 0 both ways (every packet dropped; for kernels without netem).
CUTS = {
    "down": "ip link set down (one end of the veth)",
    "loss": "tc netem loss 100%",
    "drop": "tc pfifo limit 0 (drops every packet)",
}


def cut_link(how: str, heartbeat_timeout: float = 2.0, call_timeout: float = 60.0) -> dict[str, Any]:
    """Cuts the link mid-run (`how`: a key of CUTS); returns what each rank reported, when.

    Result: "detect_seconds" per rank (cut to the rank's error, wall clock, None when the rank
    reported no error), "messages", "names_peer" (each error names the other rank), "exit_codes".
    """
    with namespace_pair() as pair:
        if how == "loss":  # fail before starting ranks when the kernel has no netem
            pair.add_qdisc("netem", "loss", "0%")
        env = {"KAITIAN_HEARTBEAT_TIMEOUT": str(heartbeat_timeout), "KAITIAN_TIMEOUT": str(call_timeout)}
        procs = _start_ranks(pair, iterations=10**9, elements=1024, env=env)
        try:
            ready = [_read_events(p, "ready", time.monotonic() + 60) for p in procs]
            if not all(any(e["event"] == "ready" for e in r) for r in ready):
                runs = _finish(procs, 1)
                raise RuntimeError(f"the ranks did not start: {[r.stderr[-2000:] for r in runs]}")
            time.sleep(0.5)
            cut_at = time.time()
            if how == "down":
                pair.set_link_down()
            elif how == "loss":
                pair.add_qdisc("netem", "loss", "100%")
            else:
                pair.add_qdisc("pfifo", "limit", "0")
            runs = _finish(procs, call_timeout + 30)
        finally:
            for proc in procs:
                if proc.poll() is None:
                    os.killpg(proc.pid, 9)
                    proc.wait()
    errors = [run.event("error") for run in runs]
    return {
        "fault": CUTS[how],
        "heartbeat_timeout": heartbeat_timeout,
        "detect_seconds": [None if e is None else e["time"] - cut_at for e in errors],
        "messages": [None if e is None else e["message"] for e in errors],
        "names_peer": [e is not None and f"rank {1 - r}" in e["message"] for r, e in enumerate(errors)],
        "exit_codes": [run.exit_code for run in runs],
    }


def degraded(spec: tuple[str, ...], iterations: int = 200, elements: int = 16384) -> dict[str, Any]:
    """A fixed allreduce loop with qdisc `spec` on both sides (empty: a clean link), for example
    ("netem", "delay", "20ms", "loss", "2%") or a slow link ("tbf", "rate", "20mbit", ...).

    Returns the wrong values seen by both ranks and the seconds rank 0 took.
    """
    with namespace_pair() as pair:
        if spec:
            pair.add_qdisc(*spec)
        procs = _start_ranks(pair, iterations, elements, env={})
        runs = _finish(procs, 600)
    done = [run.event("done") for run in runs]
    if not all(done):
        raise RuntimeError(f"qdisc {' '.join(spec)}: a rank failed: {[r.stderr[-2000:] for r in runs]}")
    return {
        "qdisc": " ".join(spec) or "none",
        "iterations": iterations,
        "elements": elements,
        "wrong_values": sum(d["wrong"] for d in done if d),
        "seconds": max(d["seconds"] for d in done if d),
    }


DEGRADED = (("netem", "delay", "20ms", "loss", "2%"), ("tbf", "rate", "20mbit", "burst", "32kb", "latency", "50ms"))


def run_all(repeat: int, progress: Callable[[str], None] | None) -> dict[str, Any]:
    """Every cut `repeat` times and every degraded link once; what the kernel lacks is skipped."""
    say = progress or (lambda _text: None)
    results: dict[str, Any] = {"cuts": [], "degraded": [], "skipped": []}
    try:
        with namespace_pair():
            pass
    except NamespaceUnavailable as error:
        results["skipped"].append(str(error))
        return results
    for how in CUTS:
        for attempt in range(repeat):
            say(f"cut link ({CUTS[how]}) {attempt + 1}/{repeat}...")
            try:
                results["cuts"].append(cut_link(how))
            except QdiscUnavailable as error:
                results["skipped"].append(f"link cut by {CUTS[how]}: this kernel lacks the qdisc ({error})")
                break
    for spec in ((), *DEGRADED):
        say(f"allreduce loop with qdisc {' '.join(spec) or 'none'}...")
        try:
            results["degraded"].append(degraded(spec))
        except QdiscUnavailable as error:
            results["skipped"].append(f"degraded link {' '.join(spec)}: this kernel lacks the qdisc ({error})")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--repeat", type=int, default=1, help="cuts of each kind (default 1)")
    args = parser.parse_args()
    results = run_all(args.repeat, progress=None if args.json else print)
    if args.json:
        print(json.dumps(results))
        return
    for cut in results["cuts"]:
        seconds = ", ".join("-" if s is None else f"{s:.1f} s" for s in cut["detect_seconds"])
        print(f"{cut['fault']}: detected by ranks 0, 1 after {seconds}; names the peer: {cut['names_peer']}")
    for run in results["degraded"]:
        print(f"qdisc {run['qdisc']}: {run['wrong_values']} wrong values, {run['seconds']:.2f} s")
    for reason in results["skipped"]:
        print(f"skipped: {reason}")


if __name__ == "__main__":
    main()
