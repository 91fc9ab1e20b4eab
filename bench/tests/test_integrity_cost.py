"""bench/integrity_cost.py: its summary and report from a fake `kaitian` (no measurement, no thresholds)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import integrity_cost

BENCH_DIR = Path(__file__).resolve().parent.parent

# Prints allreduce records up to --max-bytes; with KAITIAN_INTEGRITY=1 every time is 3x.
FAKE_KAITIAN = """
import json, os, sys
args = dict(zip(sys.argv[3::2], sys.argv[4::2]))
assert sys.argv[1:3] == ["bench", "allreduce"] and args["--transport"] == "tcp", sys.argv
if os.environ.get("FAKE_FAIL"):
    sys.exit(1)
factor = 3.0 if os.environ["KAITIAN_INTEGRITY"] == "1" else 1.0
size = int(args["--min-bytes"])
while size <= 1024:
    time_us = factor * (5.0 + size / 100)
    print(json.dumps({"collective": "allreduce", "size_bytes": size, "time_us": time_us,
        "busbw_gbps": size / time_us / 1e3}))
    size *= 2
"""


def fake(tmp_path: Path) -> Path:
    path = tmp_path / "kaitian"
    path.write_text(f"#!{sys.executable}\n{FAKE_KAITIAN}", encoding="utf-8")
    path.chmod(0o755)
    return path


def run(tmp_path: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(BENCH_DIR / "integrity_cost.py"), "--kaitian", str(fake(tmp_path))]
    command += ["--rounds", "2", "--max-bytes", "1024", *extra]
    return subprocess.run(command, capture_output=True, text=True, env=env, check=False)


def test_rounds_alternate_and_give_the_ratio_per_size(tmp_path: Path) -> None:
    done = run(tmp_path, "--json")
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert [row["size_bytes"] for row in document["rows"]] == [8, 16, 32, 64, 128, 256, 512, 1024]
    assert document["openssl_sha256_gbps"] > 0
    for row in document["rows"]:
        assert [round(ratio, 9) for ratio in row["on_over_off"]] == [3.0, 3.0]
        assert len(row["off_time_us"]) == len(row["on_time_us"]) == 2
    # off, on, off, on: the runs alternate.
    modes = [line.split()[1] for line in done.stderr.splitlines() if line.startswith("==> KAITIAN_INTEGRITY")]
    assert modes == ["KAITIAN_INTEGRITY=0", "KAITIAN_INTEGRITY=1"] * 2


def test_report_is_markdown_with_one_row_per_size(tmp_path: Path) -> None:
    out = tmp_path / "report.md"
    done = run(tmp_path, "--out", str(out))
    assert done.returncode == 0, done.stderr
    text = out.read_text(encoding="utf-8")
    assert text == done.stdout
    assert "| 8 B | 5.1 us | 15.2 us | 3 (3-3) |" in text


def test_a_failed_run_is_an_error(tmp_path: Path) -> None:
    done = run(tmp_path, env=dict(os.environ, FAKE_FAIL="1"))
    assert done.returncode == 1
    assert "kaitian bench exited with status 1" in done.stderr


def test_summary_keeps_only_sizes_every_run_measured() -> None:
    def records(sizes: list[int], time_us: float) -> list[dict[str, object]]:
        return [{"collective": "allreduce", "size_bytes": s, "time_us": time_us, "busbw_gbps": 1.0} for s in sizes]

    rounds = [
        {"off": records([8, 16], 2.0), "on": records([8, 16], 5.0)},
        {"off": records([8], 4.0), "on": records([8, 16], 6.0)},
    ]
    (row,) = integrity_cost.summarize(rounds)
    assert row["size_bytes"] == 8
    assert row["on_over_off"] == [2.5, 1.5]
