"""Reference collective benchmark: torch.distributed over gloo on local processes.

Runs ``--ranks`` processes on this machine that join a gloo process group over
127.0.0.1 and time collectives like nccl-tests does. For every size each rank
runs ``--warmup`` untimed calls, then, after one barrier, ``--iters`` calls back
to back (each waited for), timed with ``time.perf_counter``; ``time_us`` is the
mean time per call of the slowest rank, exactly as ``kaitian bench`` measures.
A final untimed call on known inputs checks the result (``wrong`` counts wrong
elements over all ranks).

``--memcpy`` instead measures single-thread memcpy bandwidth (``ctypes.memmove``
of ``--max-bytes`` between two preallocated buffers) as the machine's yardstick.

Output is an nccl-tests-like table, or with ``--json`` one JSON object per line.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from benchlib import COLLECTIVES, bandwidths, free_port, parse_size, size_label, size_range

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "int32": torch.int32,
    "int64": torch.int64,
}
DTYPE_ALIASES = {"float": "float32", "half": "float16", "double": "float64", "int": "int32"}

OPS: dict[str, dist.ReduceOp.RedOpType] = {
    "sum": dist.ReduceOp.SUM,
    "prod": dist.ReduceOp.PRODUCT,
    "min": dist.ReduceOp.MIN,
    "max": dist.ReduceOp.MAX,
    "avg": dist.ReduceOp.AVG,
}
REDUCING = ("allreduce", "reduce", "reduce_scatter")
SPLITTING = ("allgather", "reduce_scatter", "alltoall")


@dataclass(frozen=True)
class Config:
    """Everything a rank needs to run the benchmark."""

    ranks: int
    collectives: tuple[str, ...]
    sizes: tuple[int, ...]
    dtype: str
    op: str
    root: int
    warmup: int
    iters: int
    as_json: bool
    port: int
    timeout_s: float


@dataclass(frozen=True)
class Case:
    """One collective on preallocated buffers: ``run`` it, or ``check`` a run on fresh inputs."""

    run: Callable[[], None]
    check: Callable[[], int]


def canonical_dtype(name: str) -> str:
    """Map a dtype name or alias (``float``, ``half``...) to a key of :data:`DTYPES`."""
    key = DTYPE_ALIASES.get(name.lower(), name.lower())
    if key not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose from {', '.join(DTYPES)}")
    return key


def reduced_value(op: str, ranks: int) -> float:
    """Result of reducing the inputs ``1, 2, ..., ranks`` with ``op``."""
    values = range(1, ranks + 1)
    if op == "sum":
        return float(sum(values))
    if op == "prod":
        return float(math.prod(values))
    if op == "min":
        return 1.0
    if op == "max":
        return float(ranks)
    if op == "avg":
        return (ranks + 1) / 2
    raise ValueError(f"unknown op {op!r}")


def element_count(collective: str, size_bytes: int, itemsize: int, ranks: int) -> int:
    """Total elements of the buffer ``size_bytes`` describes (0 when it cannot hold one).

    Collectives that split the buffer over ranks need a multiple of ``ranks``.
    """
    count = size_bytes // itemsize
    if collective in SPLITTING:
        count -= count % ranks
    return count


def build_case(collective: str, count: int, cfg: Config, rank: int) -> Case:
    """Allocate buffers for ``collective`` on ``count`` elements; inputs of rank r are r+1."""
    dtype = DTYPES[cfg.dtype]
    op = OPS[cfg.op]
    n = cfg.ranks
    expected = reduced_value(cfg.op, n)
    per_rank = count // n

    def wrong(tensor: torch.Tensor, value: float | torch.Tensor) -> int:
        return int(torch.ne(tensor, value).sum().item())

    if collective in ("allreduce", "broadcast", "reduce"):
        buf = torch.full((count,), rank + 1, dtype=dtype)
        if collective == "allreduce":

            def run() -> None:
                dist.all_reduce(buf, op=op)

            def check() -> int:
                buf.fill_(rank + 1)
                run()
                return wrong(buf, expected)

        elif collective == "broadcast":

            def run() -> None:
                dist.broadcast(buf, src=cfg.root)

            def check() -> int:
                buf.fill_(rank + 1)
                run()
                return wrong(buf, cfg.root + 1)

        else:

            def run() -> None:
                dist.reduce(buf, dst=cfg.root, op=op)

            def check() -> int:
                buf.fill_(rank + 1)
                run()
                return wrong(buf, expected) if rank == cfg.root else 0

        return Case(run, check)

    if collective == "allgather":
        chunk = torch.full((per_rank,), rank + 1, dtype=dtype)
        gathered = torch.zeros((count,), dtype=dtype)
        sources = torch.arange(1, n + 1, dtype=dtype).repeat_interleave(per_rank)

        def run() -> None:
            dist.all_gather_into_tensor(gathered, chunk)

        def check() -> int:
            gathered.zero_()
            run()
            return wrong(gathered, sources)

        return Case(run, check)

    if collective == "reduce_scatter":
        full = torch.full((count,), rank + 1, dtype=dtype)
        part = torch.zeros((per_rank,), dtype=dtype)

        def run() -> None:
            dist.reduce_scatter_tensor(part, full, op=op)

        def check() -> int:
            full.fill_(rank + 1)
            part.zero_()
            run()
            return wrong(part, expected)

        return Case(run, check)

    if collective == "alltoall":
        # Rank r sends chunk j (value r*n + j + 1) to rank j, so it receives j*n + r + 1 from j.
        send = (rank * n + torch.arange(1, n + 1, dtype=dtype)).repeat_interleave(per_rank)
        received = torch.zeros((count,), dtype=dtype)
        sources = (torch.arange(n, dtype=dtype) * n + rank + 1).repeat_interleave(per_rank)

        def run() -> None:
            dist.all_to_all_single(received, send)

        def check() -> int:
            received.zero_()
            run()
            return wrong(received, sources)

        return Case(run, check)

    raise ValueError(f"unknown collective {collective!r}")


def unsupported_reason(collective: str, cfg: Config, rank: int) -> str | None:
    """Try ``collective`` once on a tiny buffer; the error text if gloo refuses it."""
    try:
        build_case(collective, cfg.ranks, cfg, rank).run()
    except (RuntimeError, NotImplementedError, ValueError) as error:
        return str(error).splitlines()[0] if str(error) else type(error).__name__
    return None


def time_case(case: Case, cfg: Config) -> tuple[float, int]:
    """The slowest rank's mean time per call (seconds) over back-to-back calls, and wrong elements."""
    for _ in range(cfg.warmup):
        case.run()
    dist.barrier()
    start = time.perf_counter()
    for _ in range(cfg.iters):
        case.run()
    elapsed = torch.tensor([(time.perf_counter() - start) / cfg.iters], dtype=torch.float64)
    dist.barrier()
    errors = torch.tensor([case.check()], dtype=torch.int64)
    dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
    dist.all_reduce(errors, op=dist.ReduceOp.SUM)
    return float(elapsed.item()), int(errors.item())


def result_record(collective: str, count: int, cfg: Config, seconds: float, errors: int) -> dict[str, Any]:
    """One JSON result line in the shared benchmark format."""
    size_bytes = count * DTYPES[cfg.dtype].itemsize
    time_us = seconds * 1e6
    algbw, busbw = bandwidths(collective, size_bytes, cfg.ranks, time_us)
    return {
        "collective": collective,
        "size_bytes": size_bytes,
        "count": count,
        "dtype": cfg.dtype,
        "op": cfg.op if collective in REDUCING else "none",
        "root": cfg.root if collective in ("broadcast", "reduce") else -1,
        "ranks": cfg.ranks,
        "backend": "gloo",
        "time_us": round(time_us, 3),
        "algbw_gbps": round(algbw, 4),
        "busbw_gbps": round(busbw, 4),
        "wrong": errors,
    }


def unsupported_record(collective: str, cfg: Config, reason: str) -> dict[str, Any]:
    """The JSON line reporting that gloo refused ``collective`` (it has no ``time_us``)."""
    return {
        "collective": collective,
        "dtype": cfg.dtype,
        "op": cfg.op,
        "ranks": cfg.ranks,
        "backend": "gloo",
        "unsupported": reason,
    }


def table_header(collective: str, cfg: Config) -> str:
    """nccl-tests-style header for one collective's table."""
    return "\n".join(
        [
            f"# {collective}: backend gloo, {cfg.ranks} ranks, warmup {cfg.warmup}, iters {cfg.iters}",
            f"#{'size':>11} {'count':>12} {'type':>9} {'redop':>6} {'root':>5}"
            f" {'time':>10} {'algbw':>8} {'busbw':>8} {'#wrong':>7}",
            f"#{'(B)':>11} {'(elements)':>12} {'':>9} {'':>6} {'':>5} {'(us)':>10} {'(GB/s)':>8} {'(GB/s)':>8} {'':>7}",
        ]
    )


def table_row(record: dict[str, Any]) -> str:
    """One nccl-tests-style row for a result record."""
    return (
        f"{record['size_bytes']:>12} {record['count']:>12} {record['dtype']:>9} {record['op']:>6}"
        f" {record['root']:>5} {record['time_us']:>10.2f} {record['algbw_gbps']:>8.3f}"
        f" {record['busbw_gbps']:>8.3f} {record['wrong']:>7}"
    )


def emit(line: str) -> None:
    print(line, flush=True)


def worker(rank: int, cfg: Config) -> None:
    """Body of one rank (run by ``torch.multiprocessing.spawn``); rank 0 prints."""
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{cfg.port}",
        rank=rank,
        world_size=cfg.ranks,
        timeout=timedelta(seconds=cfg.timeout_s),
    )
    try:
        itemsize = DTYPES[cfg.dtype].itemsize
        for collective in cfg.collectives:
            reason = unsupported_reason(collective, cfg, rank)
            if reason is not None:
                if rank == 0 and cfg.as_json:
                    emit(json.dumps(unsupported_record(collective, cfg, reason)))
                elif rank == 0:
                    emit(f"# {collective}: unsupported by gloo ({cfg.dtype}, {cfg.op}): {reason}\n")
                continue
            if rank == 0 and not cfg.as_json:
                emit(table_header(collective, cfg))
            for size in cfg.sizes:
                count = element_count(collective, size, itemsize, cfg.ranks)
                if count == 0:
                    continue
                seconds, errors = time_case(build_case(collective, count, cfg, rank), cfg)
                if rank == 0:
                    record = result_record(collective, count, cfg, seconds, errors)
                    emit(json.dumps(record) if cfg.as_json else table_row(record))
            if rank == 0 and not cfg.as_json:
                emit("")
    finally:
        dist.destroy_process_group()


def measure_memcpy(nbytes: int, runs: int) -> dict[str, Any]:
    """Bandwidth (bytes copied per second, in GB/s) of ``ctypes.memmove`` of ``nbytes``."""
    src = np.full(nbytes, 0x5A, dtype=np.uint8)
    dst = np.zeros(nbytes, dtype=np.uint8)
    ctypes.memmove(dst.ctypes.data, src.ctypes.data, nbytes)
    rates = []
    for _ in range(runs):
        start = time.perf_counter()
        ctypes.memmove(dst.ctypes.data, src.ctypes.data, nbytes)
        rates.append(nbytes / (time.perf_counter() - start) / 1e9)
    return {
        "benchmark": "memcpy",
        "size_bytes": nbytes,
        "runs": runs,
        "best_gbps": round(max(rates), 4),
        "mean_gbps": round(statistics.fmean(rates), 4),
    }


def parse_collectives(text: str) -> tuple[str, ...]:
    """``all`` or a comma-separated list of collective names."""
    if text == "all":
        return COLLECTIVES
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in COLLECTIVES]
    if unknown or not names:
        raise ValueError(f"unknown collective(s) {unknown}; choose from all, {', '.join(COLLECTIVES)}")
    return names


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", "-n", type=int, default=2, help="processes (default 2)")
    parser.add_argument(
        "--collectives",
        "-c",
        default="allreduce",
        help=f"comma-separated from {', '.join(COLLECTIVES)}, or all (default allreduce)",
    )
    parser.add_argument("--min-bytes", "-b", type=parse_size, default=parse_size("8"), help="default 8")
    parser.add_argument("--max-bytes", "-e", type=parse_size, default=parse_size("64M"), help="default 64M")
    parser.add_argument("--dtype", "-d", default="float32", help=f"one of {', '.join(DTYPES)}")
    parser.add_argument("--op", "-o", choices=tuple(OPS), default="sum")
    parser.add_argument("--root", "-r", type=int, default=0, help="root of broadcast and reduce")
    parser.add_argument("--warmup", "-w", type=int, default=5)
    parser.add_argument("--iters", "-i", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=300.0, help="gloo timeout in seconds")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--memcpy", action="store_true", help="measure memcpy of --max-bytes instead")
    parser.add_argument("--memcpy-runs", type=int, default=20)
    args = parser.parse_args(argv)
    try:
        args.dtype = canonical_dtype(args.dtype)
        args.collectives = parse_collectives(args.collectives)
        args.sizes = tuple(size_range(args.min_bytes, args.max_bytes))
    except ValueError as error:
        parser.error(str(error))
    if args.ranks < 1 or not 0 <= args.root < args.ranks:
        parser.error("need --ranks >= 1 and 0 <= --root < --ranks")
    if args.iters < 1 or args.warmup < 0 or args.memcpy_runs < 1:
        parser.error("need --iters >= 1, --warmup >= 0, --memcpy-runs >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.memcpy:
        result = measure_memcpy(args.max_bytes, args.memcpy_runs)
        if args.json:
            emit(json.dumps(result))
        else:
            emit(
                f"memcpy of {size_label(result['size_bytes'])}, "
                f"{result['runs']} runs: "
                f"best {result['best_gbps']:.2f} GB/s, mean {result['mean_gbps']:.2f} GB/s"
            )
        return 0
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    cfg = Config(
        ranks=args.ranks,
        collectives=args.collectives,
        sizes=args.sizes,
        dtype=args.dtype,
        op=args.op,
        root=args.root,
        warmup=args.warmup,
        iters=args.iters,
        as_json=args.json,
        port=free_port(),
        timeout_s=args.timeout,
    )
    mp.spawn(worker, args=(cfg,), nprocs=cfg.ranks, join=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
