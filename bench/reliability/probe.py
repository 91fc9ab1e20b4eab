"""Bad input against a running job's ports: each probe must be refused while the job keeps working.

Starts `kaitian run --group cpu:2` with a checked allreduce loop (netfault_worker.py), finds the
Kaitian ports the job listens on (its embedded store, KAITIAN_STORE, and any engine port still
open after set-up; torch's own TCPStore on MASTER_PORT is not Kaitian's and is left alone), and
sends each one: no token, a wrong token, garbage, an oversized length, a slow-loris trickle and
a burst of port-scan connects. A probe counts as refused when the server closes the connection
or answers with a refusal verdict; after every probe the job must have made progress with zero
wrong values.

    .venv/bin/python bench/reliability/probe.py [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kill_random import job_environment, job_processes, launcher

ROOT = Path(__file__).resolve().parents[2]
PYTHON = ROOT / ".venv" / "bin" / "python"
WORKER = Path(__file__).resolve().parent / "netfault_worker.py"
MAGIC = b"KTAU"
PURPOSES = {"store": b"kaitian-store", "engine": b"kaitian-peer"}
VERDICTS = {1: "token mismatch", 2: "missing token", 3: "version mismatch", 4: "purpose mismatch", 5: "malformed"}
REFUSAL_WAIT = 30.0  # seconds a probe waits for the server to close or refuse


def _closed(sock: socket.socket, seconds: float = REFUSAL_WAIT) -> str | None:
    """Reads until the server closes; returns how it refused, or None when it kept the line open."""
    sock.settimeout(seconds)
    received = b""
    try:
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                break
            received += chunk
    except ConnectionResetError:
        return "reset"
    except TimeoutError:
        return None
    if received.startswith(b"KTNO"):
        return "refusal notice"
    if received.startswith(MAGIC):  # a challenge the probe had not read yet
        received = received[38:]
    # A single verdict byte says why the response was refused.
    if received and received[0] in VERDICTS:
        return f"verdict: {VERDICTS[received[0]]}"
    return "closed"


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def _response(challenge: bytes, purpose: bytes, mac: bytes | None) -> bytes:
    """A client response; `mac` None sends no token, else the given 32 bytes."""
    version = challenge[4:6]
    hello = b"probe"
    body = MAGIC + version + secrets.token_bytes(32)
    body += bytes([0]) if mac is None else bytes([32]) + mac
    return body + bytes([len(purpose)]) + purpose + struct.pack(">I", len(hello)) + hello


def probe_no_token(port: int, purpose: bytes) -> str | None:
    with _connect(port) as sock:
        challenge = sock.recv(38)
        sock.sendall(_response(challenge, purpose, None))
        return _closed(sock)


def probe_wrong_token(port: int, purpose: bytes) -> str | None:
    with _connect(port) as sock:
        challenge = sock.recv(38)
        sock.sendall(_response(challenge, purpose, secrets.token_bytes(32)))
        return _closed(sock)


def probe_garbage(port: int, _purpose: bytes) -> str | None:
    with _connect(port) as sock:
        sock.sendall(secrets.token_bytes(4096))
        return _closed(sock)


def probe_oversized(port: int, purpose: bytes) -> str | None:
    """A well-formed start whose hello claims 2 GiB: must be refused before reading it."""
    with _connect(port) as sock:
        challenge = sock.recv(38)
        start = MAGIC + challenge[4:6] + secrets.token_bytes(32) + bytes([32]) + secrets.token_bytes(32)
        sock.sendall(start + bytes([len(purpose)]) + purpose + struct.pack(">I", 2**31))
        return _closed(sock)


def probe_slow_loris(port: int, _purpose: bytes) -> str | None:
    """One byte of a valid-looking response every half second: the handshake deadline must end it."""
    with _connect(port) as sock:
        sock.recv(38)
        deadline = time.monotonic() + REFUSAL_WAIT
        for byte in MAGIC + bytes(200):
            if time.monotonic() > deadline:
                return None
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                return "closed"
            sock.settimeout(0.5)
            try:
                if sock.recv(4096) == b"":
                    return "closed"
            except TimeoutError:
                continue
            except ConnectionResetError:
                return "reset"
        return None


def probe_port_scan(port: int, _purpose: bytes) -> str | None:
    """200 connects closed at once, as a scanner does; then a fresh connect still gets a challenge.

    The store refuses connections beyond its cap on unauthenticated ones (per source address)
    until the scan's connections have been dropped; its clients retry, and so does this probe,
    for up to 5 s.
    """
    for _ in range(200):
        with _connect(port):
            pass
    deadline = time.monotonic() + 5
    while True:
        with _connect(port) as sock:
            sock.settimeout(5)
            if sock.recv(4).startswith(MAGIC):
                return "served, scan ignored"
        if time.monotonic() > deadline:
            return None
        time.sleep(0.05)


PROBES: dict[str, Callable[[int, bytes], str | None]] = {
    "no token": probe_no_token,
    "wrong token": probe_wrong_token,
    "garbage": probe_garbage,
    "oversized length": probe_oversized,
    "slow-loris": probe_slow_loris,
    "port scan": probe_port_scan,
}


def _listening_ports(pids: list[int]) -> set[int]:
    """TCP ports in LISTEN state whose sockets belong to `pids`."""
    inodes = set()
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as handle:
            for line in handle.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def _environment(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/environ", "rb") as handle:
        pairs = [item.split(b"=", 1) for item in handle.read().split(b"\0") if b"=" in item]
    return {key.decode(): value.decode(errors="replace") for key, value in pairs}


class Job:
    """A `kaitian run` allreduce loop whose latest progress (step, wrong values) is tracked."""

    def __init__(self) -> None:
        self.job_id = f"probe{secrets.token_hex(4)}"
        command = [str(launcher()), "run", "--group", "cpu:2", "--job-id", self.job_id]
        command += [
            "--log-dir",
            f"/tmp/kaitian-probe-{self.job_id}",
            "--",
            str(PYTHON),
            str(WORKER),
            "1000000000",
            "4096",
        ]
        self.proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=job_environment()
        )
        self.step = -1
        self.wrong = 0
        self.failed: str | None = None
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            text = line.split("] ", 1)[-1]
            try:
                event = json.loads(text)
            except json.JSONDecodeError:
                continue
            if event["event"] == "ready":
                self.step = max(self.step, 0)
            elif event["event"] == "progress":
                self.step = max(self.step, event["step"])
                self.wrong = max(self.wrong, event["wrong"])
            elif event["event"] == "error":
                self.failed = event["message"][:500]

    def wait_for_progress(self, after: int, seconds: float = 60.0) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and self.failed is None and self.proc.poll() is None:
            if self.step > after:
                return True
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        subprocess.run(["rm", "-rf", f"/tmp/kaitian-probe-{self.job_id}"], check=False)


def run(progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Every probe against every Kaitian port of a running job; returns one row per probe."""
    say = progress or (lambda _text: None)
    job = Job()
    rows: list[dict[str, Any]] = []
    try:
        if not job.wait_for_progress(-1, seconds=120):
            raise RuntimeError(f"the probe job did not start: {job.failed}")
        workers = [pid for pid in job_processes(job.job_id)]
        environment = _environment(workers[0])
        store_port = int(environment["KAITIAN_STORE"].rsplit(":", 1)[1])
        torch_port = int(environment["MASTER_PORT"])
        engine_ports = _listening_ports(workers) - {store_port, torch_port}
        targets = [("store", store_port)] + [("engine", port) for port in sorted(engine_ports)]
        say(f"job {job.job_id}: store port {store_port}, engine ports open after set-up: {sorted(engine_ports)}")
        for kind, port in targets:
            for name, probe in PROBES.items():
                before = job.step
                started = time.monotonic()
                try:
                    how = probe(port, PURPOSES[kind])
                except OSError as error:
                    how = f"connection failed: {error}"
                seconds = time.monotonic() - started
                working = job.wait_for_progress(before)
                rows.append(
                    {
                        "port": kind,
                        "probe": name,
                        "refused": how is not None,
                        "how": how or "kept open",
                        "seconds": seconds,
                        "job_kept_working": working and job.wrong == 0,
                    }
                )
                say(f"  {kind} port, {name}: {how or 'NOT refused'} in {seconds:.1f} s; job working: {working}")
        return {
            "engine_ports_after_setup": len(engine_ports),
            "rows": rows,
            "job_wrong_values": job.wrong,
            "job_error": job.failed,
        }
    finally:
        job.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    result = run(progress=None if args.json else print)
    if args.json:
        print(json.dumps(result))
        return
    refused = sum(row["refused"] for row in result["rows"])
    working = sum(row["job_kept_working"] for row in result["rows"])
    print(f"{refused}/{len(result['rows'])} probes refused; job kept working after {working}")
    sys.exit(0 if refused == working == len(result["rows"]) else 1)


if __name__ == "__main__":
    main()
