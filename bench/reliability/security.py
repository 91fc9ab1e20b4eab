"""Tries each attack of the security review against the code and reports what happened.

    .venv/bin/python bench/reliability/security.py [--json]

Every attack is carried out by a test that performs it for real (an impostor server on a socket,
a forged value in a store, a segment of the wrong mode in /dev/shm, a SIGKILLed launcher, ...)
and asserts the defence's exact outcome. This script runs those tests, each by name, and turns
their verdicts into the security table of docs/RELIABILITY.md (report.py calls `run`).
A row says "held" only when its test ran and passed in this run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Attack:
    """One attack, the defence expected, and the test that tries it (Swift test function or pytest node)."""

    attack: str
    defence: str
    swift_test: str | None = None
    pytest_node: str | None = None


ATTACKS = [
    Attack(
        "impostor server: speaks the handshake without the job token and accepts the client",
        "the client refuses it: the server's MAC is wrong (serverNotAuthenticated)",
        swift_test="clientRejectsAnImpostorServer",
    ),
    Attack(
        "replayed handshake: a genuine client's response, recorded, sent to the real server",
        "the server refuses it: the response answers another nonce (tokenMismatch)",
        swift_test="aReplayedResponseIsRejected",
    ),
    Attack(
        "reflected MAC: the client's own MAC sent back as the server's proof",
        "the client refuses it: client and server MACs differ in label and nonce order",
        swift_test="clientRejectsItsOwnMACReflected",
    ),
    Attack(
        "forged store value: a peer endpoint or segment name written without the token's MAC, "
        "MAC'd under another token, or a genuine value moved to another key",
        "the read fails its job-token check, naming the key; a communicator refuses it at once",
        swift_test="aForgedValueIsRefusedNamingTheKey|aGenuineValueMovedToAnotherKeyIsRefused"
        "|aForgedEndpointInTheStoreIsRefused",
    ),
    Attack(
        "rendezvous through a store others can write: ranks under `kaitian run` with a wrong token",
        "the engine meets in the job's Kaitian store, which refuses the token; init fails on every rank",
        pytest_node="python/tests/test_rendezvous_store.py",
    ),
    Attack(
        "foreign or world-writable shared-memory segment named in the store",
        "refused before mapping (owner and mode 0600 checked with fstat)",
        swift_test="segmentsOfOthersAreRefused",
    ),
    Attack(
        "connection flood: idle unauthenticated connections to the store, then a real client",
        "unauthenticated connections have their own cap; the real client gets in",
        swift_test="unauthenticatedConnectionsHaveTheirOwnCap",
    ),
    Attack(
        "idle connections to a rank's peer port during set-up (a port scan, a stalled client), "
        "more of them than handshake slots",
        "each handshakes on a thread of its own with a 2 s deadline; the ranks' own connections "
        "are accepted meanwhile, or right after the first slots time out",
        swift_test="idleConnectionsDoNotDelayTheRanks|moreIdleConnectionsThanHandshakeSlotsCostOneHandshakeTimeout",
    ),
    Attack(
        "a connection to a rank's peer port at an address it does not advertise",
        "refused: the port is bound to the advertised address only",
        swift_test="theListenerTakesConnectionsAtTheAdvertisedAddressOnly",
    ),
    Attack(
        "a router on the path changes a byte of a data frame, with KAITIAN_INTEGRITY=1 (and without it, for contrast)",
        "the receiving rank's call fails, naming the sender, and the other rank's with it; "
        "without frame MACs the allreduce succeeds with the changed sum",
        swift_test="aChangedFrameFailsTheCallOnTheRankThatReceivedIt|withoutFrameMACsTheChangeGoesUnnoticed",
    ),
    Attack(
        "a rank with KAITIAN_INTEGRITY set differently from its peers",
        "the connecting rank is refused at once, told to set it alike; the accepting rank names "
        "the refused connection at its timeout",
        swift_test="ranksThatDisagreeAboutFrameMACsAreToldWhy",
    ),
    Attack(
        "short or empty job token",
        "refused with advice on how to make a good one",
        swift_test="shortTokenIsRejectedWithAdvice|emptyTokenIsRejected",
    ),
    Attack(
        "token file readable by group or others",
        "warned, naming the file",
        swift_test="tokenFilesOthersCanReadAreNamed",
    ),
    Attack(
        "launcher SIGKILLed while its workers run",
        "every worker ends (the guard holding the lifeline pipe kills them)",
        swift_test="workersEndWhenTheLauncherIsKilled",
    ),
    Attack(
        "stale shared-memory segments left by a killed process",
        "swept when a job starts: only this user's segments of dead pids",
        swift_test="sweepRemovesOnlyDeadProcessesSegments",
    ),
    Attack(
        "bad input from Python: wrong output-list length, split sizes that do not add up",
        "ValueError naming the argument, before anything reaches the C side",
        pytest_node="python/tests/test_checks.py",
    ),
]

SWIFT_RESULT = re.compile(r"Test (\w+)\([^)]*\)(?: with \d+ test cases?)? (passed|failed) after")


def run_swift(names: list[str]) -> dict[str, bool]:
    """{test function: passed} from one `swift test --filter` run of `names`."""
    pattern = "|".join(f"/{name}\\(" for name in names)  # test ids read Module.Suite/name(...)
    done = subprocess.run(
        ["swift", "test", "--filter", pattern],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=dict(os.environ, PATH=f"/opt/swift/usr/bin:{os.environ.get('PATH', '')}"),
    )
    verdicts: dict[str, bool] = {}
    for name, outcome in SWIFT_RESULT.findall(done.stdout + done.stderr):
        verdicts[name] = outcome == "passed" and verdicts.get(name, True)
    return verdicts


def run_pytest(node: str) -> bool:
    """Whether one pytest node passed."""
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", node],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    return done.returncode == 0


def run() -> list[dict[str, object]]:
    """Every attack with its verdict: held when its tests ran and passed."""
    names = [n for a in ATTACKS if a.swift_test for n in a.swift_test.split("|")]
    swift = run_swift(names)
    rows: list[dict[str, object]] = []
    for attack in ATTACKS:
        if attack.swift_test is not None:
            parts = attack.swift_test.split("|")
            held = all(swift.get(n, False) for n in parts)  # a test that did not run did not hold
            test = ", ".join(f"`{n}`" for n in parts)
        else:
            assert attack.pytest_node is not None
            held = run_pytest(attack.pytest_node)
            test = f"`{attack.pytest_node}`"
        rows.append({**asdict(attack), "held": held, "test": test})
    return rows


def table(rows: list[dict[str, object]]) -> list[str]:
    lines = ["| attack | defence | held | tried by |", "|---|---|---|---|"]
    for row in rows:
        verdict = "yes" if row["held"] else "**NO**"
        lines.append(f"| {row['attack']} | {row['defence']} | {verdict} | {row['test']} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args()
    rows = run()
    print(json.dumps(rows, indent=1) if args.json else "\n".join(table(rows)))
    if not all(row["held"] for row in rows):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
