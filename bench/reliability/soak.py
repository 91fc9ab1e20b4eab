"""Soak: thousands of random collectives across heterogeneous groups, every result checked.

Every rank draws the same sequence of calls from one seeded generator (op, dtype, element
count, reduce op, root), builds its input from (rank, call index), and checks the result
against a reference it computes from every rank's input. Inputs are small integers, so sums,
products, minima and maxima are exact in every dtype: results are compared bitwise; only `avg`
of floats is compared with a tolerance. Open file descriptors and resident memory are sampled
after a warm-up that runs every kind of call once, and again at the end.

    .venv/bin/python bench/reliability/soak.py --calls 3000 [--json]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[2]
for _path in (ROOT / "python", ROOT / "python" / "tests", Path(__file__).resolve().parent):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from workloads import DTYPES, OPS, reference, value  # noqa: E402

KINDS = [
    "all_reduce",
    "reduce",
    "broadcast",
    "all_gather",
    "reduce_scatter",
    "all_to_all",
    "gather",
    "scatter",
    "barrier",
]
REDUCING = {"all_reduce", "reduce", "reduce_scatter"}
SMALL_COUNTS = [0, 1, 2, 3, 7, 13, 31, 97, 257, 1009]
LARGE_COUNTS = [4099, 16411, 65537]
# Two CPU device kinds, one reduced inside by gloo and one by the engine, joined by the engine.
HYBRID_KINDS = ["cpu-a", "cpu-a", "cpu-b", "cpu-b", "cpu-b"]
HYBRID_INTRA = "cpu-a=gloo,cpu-b=kaitian"


def hybrid_env(rank: int) -> dict[str, str]:
    """The environment of rank `rank` of the 2 + 3 heterogeneous soak job."""
    return {"KAITIAN_DEVICE_KIND": HYBRID_KINDS[rank], "KAITIAN_INTRA_BACKEND": HYBRID_INTRA}


def plan(seed: int, calls: int, size: int, large: bool) -> list[dict[str, Any]]:
    """The random calls every rank makes, in order: the same list on every rank."""
    rng = random.Random(seed)
    counts = SMALL_COUNTS + (LARGE_COUNTS if large else [])
    warm_up = [{"kind": kind, "dtype": torch.float32, "op": "sum", "count": 5, "root": 0} for kind in KINDS]
    drawn = []
    for _ in range(calls):
        kind = rng.choice(KINDS)
        drawn.append(
            {
                "kind": kind,
                "dtype": rng.choice(DTYPES),
                "op": rng.choice(list(OPS)) if kind in REDUCING else "sum",
                "count": rng.choice(counts),
                "root": rng.randrange(size),
            }
        )
    return warm_up + drawn


def _wrong(got: torch.Tensor, want: torch.Tensor, avg: bool) -> int:
    """How many elements of `got` differ from the reference (bitwise but for avg of floats)."""
    if got.numel() != want.numel():
        return max(got.numel(), want.numel())
    if got.numel() == 0:
        return 0
    if avg and got.dtype.is_floating_point:
        tol = 1e-2 if got.element_size() == 2 else 1e-6
        close = torch.isclose(got.double(), want.double(), rtol=tol, atol=tol)
        return int((~close).sum())
    if avg:
        # Integer avg: the engine truncates the exact mean; allow either neighbour of it.
        return int(((got.double() - want.double().trunc()).abs() > 1).sum())
    return int((got != want.to(got.dtype)).sum())


def _run_call(rank: int, size: int, index: int, call: dict[str, Any]) -> int:
    """Runs one call and returns how many result elements are wrong on this rank."""
    kind, dtype, op, n, root = call["kind"], call["dtype"], call["op"], call["count"], call["root"]

    def inp(r: int, length: int = n) -> torch.Tensor:
        return value(r, index, length, dtype, op)

    def ref(length: int) -> torch.Tensor:
        want = reference(op, [inp(r, length) for r in range(size)])
        return want if op == "avg" else want.to(dtype)

    if kind == "barrier":
        dist.barrier()
        return 0
    if kind == "all_reduce":
        t = inp(rank)
        dist.all_reduce(t, op=OPS[op])
        return _wrong(t, ref(n), op == "avg")
    if kind == "reduce":
        t = inp(rank)
        dist.reduce(t, dst=root, op=OPS[op])
        return _wrong(t, ref(n), op == "avg") if rank == root else 0
    if kind == "broadcast":
        t = inp(rank)
        dist.broadcast(t, src=root)
        return _wrong(t, inp(root), False)
    if kind == "all_gather":
        out = torch.empty(n * size, dtype=dtype)
        dist.all_gather_into_tensor(out, inp(rank))
        return _wrong(out, torch.cat([inp(r) for r in range(size)]), False)
    if kind == "reduce_scatter":
        out = torch.empty(n, dtype=dtype)
        dist.reduce_scatter_tensor(out, inp(rank, n * size), op=OPS[op])
        return _wrong(out, ref(n * size)[rank * n : (rank + 1) * n], op == "avg")
    if kind == "all_to_all":
        out = torch.empty(n * size, dtype=dtype)
        dist.all_to_all_single(out, inp(rank, n * size))
        want = torch.cat([inp(p, n * size)[rank * n : (rank + 1) * n] for p in range(size)])
        return _wrong(out, want, False)
    if kind == "gather":
        gathered = [torch.empty(n, dtype=dtype) for _ in range(size)] if rank == root else None
        dist.gather(inp(rank), gathered, dst=root)
        if rank != root or gathered is None:
            return 0
        return sum(_wrong(gathered[r], inp(r), False) for r in range(size))
    out = torch.empty(n, dtype=dtype)
    dist.scatter(out, [inp(r) for r in range(size)] if rank == root else None, src=root)
    return _wrong(out, inp(rank), False)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _rss_bytes() -> int:
    """Resident memory after glibc returns its free pages, so freed buffers do not count."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def soak_rank(rank: int, size: int, seed: int, calls: int, large: bool) -> dict[str, Any]:
    """One rank's soak (run under ranks.run_ranks): counts, wrong values and resource samples."""
    calls_plan = plan(seed, calls, size, large)
    warm_up = len(KINDS)
    wrong = 0
    first_wrong: list[str] = []
    kinds: dict[str, int] = {}
    fds_start = rss_start = rss_middle = 0
    middle = warm_up + (len(calls_plan) - warm_up) // 2
    started = time.monotonic()
    for index, call in enumerate(calls_plan):
        if index == warm_up:
            fds_start, rss_start = _open_fds(), _rss_bytes()
        if index == middle:
            rss_middle = _rss_bytes()
        bad = _run_call(rank, size, index, call)
        kinds[call["kind"]] = kinds.get(call["kind"], 0) + 1
        if bad:
            wrong += bad
            if len(first_wrong) < 5:
                first_wrong.append(
                    f"call {index} {call['kind']} {call['dtype']} {call['op']} n={call['count']} root={call['root']}"
                )
    dist.barrier()
    return {
        "calls": len(calls_plan),
        "kinds": kinds,
        "wrong_values": wrong,
        "first_wrong": first_wrong,
        "fds_after_warm_up": fds_start,
        "fds_end": _open_fds(),
        "rss_after_warm_up": rss_start,
        "rss_middle": rss_middle,
        "rss_end": _rss_bytes(),
        "seconds": time.monotonic() - started,
    }


def summarize(per_rank: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals over ranks: what the report and the tests check."""
    return {
        "ranks": len(per_rank),
        "calls_per_rank": per_rank[0]["calls"],
        "kinds": per_rank[0]["kinds"],
        "wrong_values": sum(r["wrong_values"] for r in per_rank),
        "first_wrong": [w for r in per_rank for w in r["first_wrong"]][:5],
        "fd_growth_max": max(r["fds_end"] - r["fds_after_warm_up"] for r in per_rank),
        "rss_growth_max_bytes": max(r["rss_end"] - r["rss_after_warm_up"] for r in per_rank),
        # A leak keeps growing; buffers that reached their high-water mark early do not.
        "rss_growth_second_half_max_bytes": max(r["rss_end"] - r["rss_middle"] for r in per_rank),
        "seconds": max(r["seconds"] for r in per_rank),
    }


def run(calls: int, seed: int, large: bool, timeout: float) -> dict[str, Any]:
    """Runs the soak on 2 + 3 heterogeneous ranks; raises with every rank's error on failure."""
    from ranks import assert_all_ok, run_ranks

    size = len(HYBRID_KINDS)
    out = run_ranks(soak_rank, size, env=hybrid_env, args=(seed, calls, large), timeout=timeout)
    return summarize(assert_all_ok(out, size))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000, help="random calls per rank (default 3000)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-large", action="store_true", help="skip element counts above 1009")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds before giving up")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    if args.calls < 1:
        parser.error("--calls must be at least 1")
    if not args.json:
        print(f"soak: {args.calls} random calls on 2 + 3 heterogeneous ranks (seed {args.seed})...", flush=True)
    result = run(args.calls, args.seed, not args.no_large, args.timeout)
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"{result['calls_per_rank']} calls per rank in {result['seconds']:.1f} s: "
        f"{result['wrong_values']} wrong values, fd growth {result['fd_growth_max']}, "
        f"RSS growth {result['rss_growth_max_bytes'] / 2**20:.1f} MiB after warm-up, "
        f"{result['rss_growth_second_half_max_bytes'] / 2**20:.1f} MiB over the second half (largest over ranks)"
    )
    sys.exit(1 if result["wrong_values"] or result["fd_growth_max"] else 0)


if __name__ == "__main__":
    main()
