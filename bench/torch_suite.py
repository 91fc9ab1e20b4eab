"""PyTorch's own distributed tests (torch.testing._internal.distributed.distributed_test, the
DistributedTest suite) on "kaitian", with gloo as the reference, 3 ranks as spawned processes.

Runs a fixed selection of the suite's tests once per backend, each backend in its own
interpreter (the suite reads BACKEND when it is imported), and prints one row per test: passed,
failed, or skipped by the suite itself (it gates some tests on backend names). Each test's
outcome is printed as it finishes. Exits 1 when a test that passes on gloo fails on kaitian.

By default a quick selection of one or two tests per family (every test spawns its ranks, which
import torch, so each takes seconds); --all runs every test of the families below that is not
for CUDA or NCCL (121 tests, over 16 minutes for gloo alone on this 2-core machine).

    .venv/bin/python bench/torch_suite.py                  # both backends, the quick selection
    .venv/bin/python bench/torch_suite.py --all            # the whole selection
    .venv/bin/python bench/torch_suite.py --all -k gather  # tests whose name contains a word
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FAMILIES = re.compile(
    r"^test_(get_rank|get_backend|destroy|barrier|new_subgroups|batch_isend_irecv|send_recv|isend|irecv|broadcast"
    r"|reduce_(sum|product|min|max|group|full_group)|all_reduce|scatter|gather|all_gather|all_to_all|monitored_barrier)"
)
EXCLUDED = re.compile(r"cuda|nccl|_timeout")
"""CUDA and NCCL tests need a GPU; the barrier-timeout tests wait out long timeouts on purpose."""


QUICK = (
    "test_all_gather",
    "test_all_gather_coalesced_simple",
    "test_all_gather_coalesced_with_empty",
    "test_all_gather_object_default_pg",
    "test_all_reduce_coalesced_sum",
    "test_all_reduce_group_max",
    "test_all_reduce_sum",
    "test_all_reduce_sum_async",
    "test_all_to_all_single_unequal_split",
    "test_barrier",
    "test_batch_isend_irecv_gloo",
    "test_broadcast",
    "test_broadcast_object_list",
    "test_destroy_group",
    "test_gather",
    "test_irecv",
    "test_isend",
    "test_monitored_barrier_gloo",
    "test_new_subgroups",
    "test_reduce_sum",
    "test_scatter",
    "test_send_recv",
    "test_send_recv_any_source",
    "test_send_recv_with_tag",
)
"""One or two tests per family, and the ones issue reports named (coalesced allgather, batched
and any-source point-to-point, monitored_barrier, destroying a group)."""


def selection(word: str | None, everything: bool) -> list[str]:
    """The suite's test names in the selection (imports the suite, so BACKEND must be set)."""
    from torch.testing._internal.distributed.distributed_test import DistributedTest

    names = sorted(n for n in dir(DistributedTest._DistTestBase) if FAMILIES.match(n) and not EXCLUDED.search(n))
    if not everything:
        names = [n for n in names if n in QUICK]
    return [n for n in names if word is None or word in n]


CHILD_VARIABLE = "KAITIAN_TORCH_SUITE_BACKEND"
"""Set in the process that runs one backend's tests, and so in the ranks the suite spawns from
it: they import this module again (as __mp_main__) and must find the test class at its top."""


def suite_class() -> type:
    """The suite's tests as a unittest class whose ranks are spawned processes."""
    import kaitian  # noqa: F401  (registers the backend)
    from torch.testing._internal.distributed.distributed_test import DistributedTest, TestDistBackend

    class TestWithSpawn(TestDistBackend, DistributedTest._DistTestBase):
        def setUp(self) -> None:
            super().setUp()
            self._spawn_processes()

    TestWithSpawn.__qualname__ = "TestWithSpawn"  # found by name at the top of this module
    TestWithSpawn.__module__ = __name__
    return TestWithSpawn


if os.environ.get(CHILD_VARIABLE):
    TestWithSpawn = suite_class()


def run_one_backend(backend: str, names: list[str]) -> dict[str, str]:
    """In the child process (BACKEND set before the suite is imported): each test's outcome."""
    outcomes: dict[str, str] = {}
    for index, name in enumerate(names, 1):
        result = unittest.TestResult()
        started = time.monotonic()
        TestWithSpawn(name).run(result)
        if result.errors or result.failures:
            lines = (result.errors or result.failures)[0][1].strip().splitlines()
            # The suite appends advice after the error ("This message can be suppressed ..."): the
            # detail is the last line that names an error.
            named = [line for line in lines if re.search(r"\w(Error|Exception)\b", line)]
            detail = (named or lines)[-1].strip()[:200]
            outcomes[name] = f"failed: {detail}"
        elif result.skipped:
            outcomes[name] = f"skipped: {result.skipped[0][1][:120]}"
        else:
            outcomes[name] = "passed"
        took = time.monotonic() - started
        print(
            f"  [{index}/{len(names)}] {backend:8s} {name:55s} {outcomes[name][:90]} ({took:.1f} s)",
            file=sys.stderr,
            flush=True,
        )
    return outcomes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default="gloo,kaitian")
    parser.add_argument("-k", dest="word", help="only tests whose name contains this")
    parser.add_argument("--all", dest="everything", action="store_true", help="the whole selection, not the quick one")
    parser.add_argument("--world-size", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print the outcomes as JSON")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:  # one backend, in a fresh interpreter
        names = selection(args.word, args.everything)
        print(json.dumps(run_one_backend(args.child, names)))
        return

    results: dict[str, dict[str, str]] = {}
    for backend in args.backends.split(","):
        with tempfile.TemporaryDirectory(prefix="kaitian-torch-suite-") as temp:
            env = dict(
                os.environ,
                BACKEND=backend,
                WORLD_SIZE=str(args.world_size),
                TEMP_DIR=temp,
                **{CHILD_VARIABLE: backend},
                PYTHONPATH=os.pathsep.join([str(REPO / "python"), str(REPO / "bench")]),
            )
            print(f"{backend}: running the selection ...", file=sys.stderr)
            command = [sys.executable, str(Path(__file__).resolve()), "--child", backend]
            if args.word:
                command += ["-k", args.word]
            if args.everything:
                command.append("--all")
            # The child's progress (stderr) goes straight to the terminal; its outcomes come back as
            # JSON on stdout's last line.
            done = subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True, cwd=REPO)
            if done.returncode != 0:
                raise SystemExit(f"{backend}: the suite did not run ({done.returncode}); its output is above")
            results[backend] = json.loads(done.stdout.strip().splitlines()[-1])
    backends = list(results)
    names = sorted({n for r in results.values() for n in r})
    if args.json:  # for machines: the outcomes alone
        print(json.dumps(results, indent=1))
    else:
        print("| test | " + " | ".join(backends) + " |")
        print("|---|" + "---|" * len(backends))
        for name in names:
            print(f"| {name} | " + " | ".join(results[b].get(name, "-").split(":")[0] for b in backends) + " |")
        for backend in backends:
            counts = {
                k: sum(v.startswith(k) for v in results[backend].values()) for k in ("passed", "failed", "skipped")
            }
            print(f"{backend}: {counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped")
    if "gloo" in results and "kaitian" in results:
        # A test the suite skips for kaitian (it gates some on backend names) is not a failure.
        regressions = [
            n
            for n in names
            if results["gloo"].get(n) == "passed" and results["kaitian"].get(n, "").startswith("failed")
        ]
        for name in regressions:
            print(f"kaitian fails where gloo passes: {name}: {results['kaitian'].get(name)}")
        if regressions:
            raise SystemExit(1)


if __name__ == "__main__":
    main()
