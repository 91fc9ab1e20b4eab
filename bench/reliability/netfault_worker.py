"""One rank of the network-fault job: allreduce in a loop, every result checked.

Prints JSON lines on stdout: {"event": "ready"} after the first checked call, {"event":
"progress", "step": N, "wrong": W} every 200 calls, {"event": "done",
...} at the end, or {"event": "error", "time": wall clock, "message": ...} when a call fails
(then exits 3). Reads RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT and KAITIAN_* from the
environment, as under torchrun.

    python netfault_worker.py ITERATIONS ELEMENTS
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "python"))

import kaitian  # noqa: E402,F401 (registers the backend)
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

PROGRESS_EVERY = 200


def emit(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, "time": time.time(), **fields}), flush=True)


def main() -> None:
    iterations, elements = int(sys.argv[1]), int(sys.argv[2])
    torch.set_num_threads(1)
    dist.init_process_group("kaitian", timeout=timedelta(seconds=60))
    rank, size = dist.get_rank(), dist.get_world_size()
    wrong = 0
    started = time.monotonic()
    try:
        for step in range(iterations):
            t = torch.full((elements,), float(rank + 1 + step))
            dist.all_reduce(t)
            want = float(sum(r + 1 + step for r in range(size)))
            wrong += int((t != want).sum())
            if step == 0:
                emit("ready")
            elif step % PROGRESS_EVERY == 0:
                emit("progress", step=step, wrong=wrong)
    except RuntimeError as error:
        emit("error", message=str(error), step=step)
        # The process group cannot be destroyed cleanly after a failure; leave at once.
        os._exit(3)
    emit("done", wrong=wrong, iterations=iterations, seconds=time.monotonic() - started)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
