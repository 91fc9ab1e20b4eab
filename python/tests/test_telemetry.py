"""JobTelemetry against a real Kaitian store server (ktStoreServerStart in this process)."""

from __future__ import annotations

import ctypes
import json
import logging
from collections.abc import Iterator

import pytest
import torch
from kaitian import _native
from kaitian.telemetry import (
    MAX_PLAN_CHANGES,
    SERIES_CHUNK_POINTS,
    SERIES_FIELDS,
    SERIES_SLOTS,
    JobTelemetry,
    StoreConnection,
)

TOKEN = "telemetry-test-token"


class FakeClock:
    """A monotonic clock the test moves by hand, so rate limiting is checked exactly."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Server:
    """A Kaitian store server in this process."""

    def __init__(self) -> None:
        self._handle: int | None = None
        server = ctypes.c_void_p()
        port = ctypes.c_int()
        _native.check(
            _native.lib().ktStoreServerStart(ctypes.byref(server), b"127.0.0.1", 0, TOKEN.encode(), ctypes.byref(port))
        )
        self._handle = server.value
        self.address = f"127.0.0.1:{port.value}"

    def stop(self) -> None:
        if self._handle is not None:
            _native.check(_native.lib().ktStoreServerStop(self._handle))
            self._handle = None


@pytest.fixture
def server() -> Iterator[Server]:
    started = Server()
    yield started
    started.stop()


@pytest.fixture
def reader(server: Server) -> Iterator[StoreConnection]:
    connection = StoreConnection(server.address, TOKEN)
    yield connection
    connection.close()


def read_json(reader: StoreConnection, key: str) -> object:
    return json.loads(reader.get(key, timeout=5.0))


def telemetry(server: Server, clock: FakeClock, rank: int = 1) -> JobTelemetry:
    return JobTelemetry(StoreConnection(server.address, TOKEN), rank, "cpu-slow", interval=1.0, clock=clock)


def test_first_step_publishes_the_sample_and_a_series_point(server: Server, reader: StoreConnection) -> None:
    clock = FakeClock()
    t = telemetry(server, clock)
    t.record_step(batch=8, step_seconds=0.5, compute_seconds=0.4, epoch=2)
    sample = read_json(reader, "monitor/rank/1")
    assert isinstance(sample, dict)
    assert sample["rank"] == 1 and sample["kind"] == "cpu-slow" and sample["batch"] == 8
    assert sample["step"] == 1 and sample["epoch"] == 2
    assert sample["step_seconds"] == pytest.approx(0.5)
    assert sample["compute_seconds"] == pytest.approx(0.4)
    assert sample["comm_seconds"] == pytest.approx(0.1)
    assert sample["samples_per_second"] == pytest.approx(16.0)
    chunk = read_json(reader, "monitor/series/1/0")
    assert isinstance(chunk, dict)
    assert chunk["chunk"] == 0 and chunk["fields"] == SERIES_FIELDS and len(chunk["points"]) == 1
    t.close()


def test_publishing_is_rate_limited_and_averages_the_window(server: Server, reader: StoreConnection) -> None:
    clock = FakeClock()
    t = telemetry(server, clock)
    t.record_step(batch=4, step_seconds=0.1)
    for _ in range(5):
        clock.now += 0.1
        t.record_step(batch=4, step_seconds=0.2, compute_seconds=0.1)
    assert t.publishes == 1, "steps inside the interval are not published"
    assert read_json(reader, "monitor/rank/1")["step"] == 1  # type: ignore[index]
    clock.now += 0.6
    t.record_step(batch=6, step_seconds=0.2, compute_seconds=0.1)
    assert t.publishes == 2
    sample = read_json(reader, "monitor/rank/1")
    assert isinstance(sample, dict)
    assert sample["step"] == 7 and sample["batch"] == 6
    assert sample["step_seconds"] == pytest.approx(0.2), "the mean of the 6 steps of the window"
    assert sample["comm_seconds"] == pytest.approx(0.1)
    assert sample["samples_per_second"] == pytest.approx(26 / 1.2)
    t.close()


def test_close_flushes_the_last_window(server: Server, reader: StoreConnection) -> None:
    clock = FakeClock()
    t = telemetry(server, clock)
    t.record_step(batch=4, step_seconds=0.1)
    t.record_step(batch=4, step_seconds=0.1)
    t.close()
    assert read_json(reader, "monitor/rank/1")["step"] == 2  # type: ignore[index]
    assert not t.enabled
    t.record_step(batch=4, step_seconds=0.1)  # a no-op after close


def test_series_fills_chunks_and_wraps_around_its_slots(server: Server, reader: StoreConnection) -> None:
    clock = FakeClock()
    t = telemetry(server, clock)
    points = SERIES_CHUNK_POINTS * (SERIES_SLOTS + 1) + 3
    for _ in range(points):
        clock.now += 1.0
        t.record_step(batch=2, step_seconds=0.01)
    newest = read_json(reader, "monitor/series/1/1")
    assert isinstance(newest, dict)
    assert newest["chunk"] == SERIES_SLOTS + 1 and len(newest["points"]) == 3, "slot 1 was reused"
    full = read_json(reader, "monitor/series/1/2")
    assert isinstance(full, dict)
    assert full["chunk"] == 2 and len(full["points"]) == SERIES_CHUNK_POINTS
    t.close()


def test_plan_changes_are_appended_and_capped(server: Server, reader: StoreConnection) -> None:
    t = telemetry(server, FakeClock(), rank=0)
    for step in range(MAX_PLAN_CHANGES + 5):
        t.record_plan_change(
            step=step, epoch=0, iteration=step, old=[8, 8], new=[10, 6], seconds_per_sample=[0.1, 0.2], time=1.5
        )
    changes = read_json(reader, "monitor/plan")
    assert isinstance(changes, list) and len(changes) == MAX_PLAN_CHANGES
    assert changes[-1] == {
        "step": MAX_PLAN_CHANGES + 4,
        "epoch": 0,
        "iteration": MAX_PLAN_CHANGES + 4,
        "old": [8, 8],
        "new": [10, 6],
        "seconds_per_sample": [0.1, 0.2],
        "time": 1.5,
    }
    t.close()


def test_the_gain_is_published_at_once(server: Server, reader: StoreConnection) -> None:
    t = telemetry(server, FakeClock(), rank=0)
    t.record_gain(fastest_group="cpu-fast", fastest_group_alone=100, ideal=150.5, achieved=130)
    assert read_json(reader, "monitor/gain") == {
        "fastest_group": "cpu-fast",
        "fastest_group_alone": 100.0,
        "ideal": 150.5,
        "achieved": 130.0,
    }
    t.close()
    t.record_gain(fastest_group="x", fastest_group_alone=1, ideal=1, achieved=1)  # a no-op after close


def test_a_store_that_goes_away_disables_telemetry_with_one_warning(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    t = telemetry(server, clock)
    t.record_step(batch=4, step_seconds=0.1)
    server.stop()
    with caplog.at_level(logging.WARNING, logger="kaitian"):
        for _ in range(5):
            clock.now += 2.0
            t.record_step(batch=4, step_seconds=0.1)
        t.record_plan_change(step=1, epoch=0, iteration=1, old=[1], new=[2], seconds_per_sample=[0.1])
        t.close()
    warnings = [r for r in caplog.records if "telemetry" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
    assert "rank 1" in warnings[0].getMessage() and "training goes on" in warnings[0].getMessage()
    assert not t.enabled


def test_from_environment_is_none_without_a_store(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KAITIAN_STORE", raising=False)
    assert JobTelemetry.from_environment() is None


def test_from_environment_with_a_wrong_token_warns_and_gives_none(
    server: Server, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("KAITIAN_STORE", server.address)
    monkeypatch.setenv("KAITIAN_TOKEN", "not-the-telemetry-token")
    monkeypatch.setenv("RANK", "3")
    with caplog.at_level(logging.WARNING, logger="kaitian"):
        assert JobTelemetry.from_environment() is None
    assert any("rank 3" in r.getMessage() for r in caplog.records)


def test_from_environment_reads_rank_and_kind(
    server: Server, reader: StoreConnection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KAITIAN_STORE", server.address)
    monkeypatch.setenv("KAITIAN_TOKEN", TOKEN)
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("KAITIAN_DEVICE_KIND", "mlu")
    t = JobTelemetry.from_environment()
    assert t is not None
    t.record_step(batch=3, step_seconds=0.3)
    t.close()
    sample = read_json(reader, "monitor/rank/2")
    assert isinstance(sample, dict) and sample["kind"] == "mlu" and sample["rank"] == 2


BALANCED_STEPS = 30


def balanced_scenario(rank: int, size: int) -> list[dict[str, object]]:
    """OnlineBalancer training where rank 1 is 4x slower; telemetry comes from the environment."""
    import time

    import kaitian
    import torch.nn.functional as F
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data import DataLoader, TensorDataset

    data = TensorDataset(torch.randn(16 * BALANCED_STEPS, 4), torch.randn(16 * BALANCED_STEPS, 1))
    sampler = kaitian.AdaptiveSampler(data, size, rank, batch_sizes=[8, 8])
    loader = DataLoader(data, batch_sampler=sampler.batch_sampler())
    torch.manual_seed(0)
    model = DistributedDataParallel(nn.Linear(4, 1))
    balancer = kaitian.OnlineBalancer(model, sampler, interval=5, smoothing=0.7, hysteresis=0.25)
    assert balancer.telemetry is not None and balancer.telemetry is kaitian.job_telemetry()
    for x, y in loader:
        with balancer.step():
            time.sleep((0.004 if rank == 1 else 0.001) * len(x))
            F.mse_loss(model(x), y).backward()
    balancer.close()
    return [{"new": c.new, "step": c.step} for c in balancer.history]


@pytest.mark.skipif(not _native.has_planner(), reason="libKaitianC.so built without the planner")
def test_online_balancer_publishes_steps_and_plan_changes(server: Server, reader: StoreConnection) -> None:
    from ranks import assert_all_ok, run_ranks

    env = {"KAITIAN_STORE": server.address, "KAITIAN_TOKEN": TOKEN, "KAITIAN_DEVICE_KIND": "cpu"}
    results = assert_all_ok(run_ranks(balanced_scenario, 2, env=lambda _rank: env, timeout=90.0), 2)
    for rank in (0, 1):
        sample = read_json(reader, f"monitor/rank/{rank}")
        assert isinstance(sample, dict)
        assert sample["step"] == BALANCED_STEPS, "close() flushed every step"
        assert 0 <= sample["comm_seconds"] <= sample["step_seconds"]
    history = results[0]
    assert history, "rank 1 is 4x slower: the plan must change"
    assert [c["new"] for c in read_json(reader, "monitor/plan")] == [c["new"] for c in history]  # type: ignore[union-attr]


def test_from_environment_with_a_missing_token_file_warns_and_gives_none(
    server: Server, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("KAITIAN_STORE", server.address)
    monkeypatch.delenv("KAITIAN_TOKEN", raising=False)
    monkeypatch.setenv("KAITIAN_TOKEN_FILE", "/nonexistent/kaitian-token")
    with caplog.at_level(logging.WARNING, logger="kaitian"):
        assert JobTelemetry.from_environment() is None
    assert any("kaitian-token" in r.getMessage() for r in caplog.records)
