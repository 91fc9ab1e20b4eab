"""Tests of the C ABI (include/kaitian.h) through ctypes, as a foreign binding would use it.

The declarations below are written from the header alone (not taken from the `kaitian`
package), so a drift between header and library shows up here.

Library: $KAITIAN_LIBRARY if set, else .build/debug/libKaitianC.so, else
.build/release/libKaitianC.so. Debug comes first because `swift build` refreshes it during
development, so a stale release build cannot hide a change; set KAITIAN_LIBRARY to test a
release build.

Ranks run in spawned processes (a fresh interpreter each, no forked engine threads); the store
server runs in the pytest process through ktStoreServerStart. Tests/c-abi/run.sh (the C smoke test)
runs from here too, so CI covers it.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import queue
import re
import subprocess
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
TOKEN = b"c-abi-test-token"

# Values from include/kaitian.h.
KT_SUCCESS = 0
KT_INVALID_ARGUMENT = 1
KT_INVALID_USAGE = 2
KT_TIMEOUT = 5
KT_MISMATCH = 6
KT_IN_PROGRESS = 7
KT_NUM_RESULTS = 9
KT_FLOAT32 = 5
KT_SUM = 0
KT_TRANSPORT_DEFAULT = -1
KAITIAN_VERSION_CODE = 0 * 10000 + 1 * 100 + 0

WorkCallback = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int)


class StoreCallbacks(ctypes.Structure):
    """ktStoreCallbacks_t."""

    _fields_ = [
        ("size", ctypes.c_size_t),
        ("userData", ctypes.c_void_p),
        ("set", ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t)),
        (
            "get",
            ctypes.CFUNCTYPE(
                ctypes.c_int,
                ctypes.c_void_p,
                ctypes.c_char_p,
                ctypes.c_void_p,
                ctypes.c_size_t,
                ctypes.POINTER(ctypes.c_size_t),
                ctypes.c_double,
            ),
        ),
        (
            "add",
            ctypes.CFUNCTYPE(
                ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int64, ctypes.POINTER(ctypes.c_int64)
            ),
        ),
        (
            "wait",
            ctypes.CFUNCTYPE(
                ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_char_p), ctypes.c_size_t, ctypes.c_double
            ),
        ),
    ]


class DictStore:
    """A store in a Python dict behind ktStoreCallbacks_t, like a torch.distributed store."""

    def __init__(self) -> None:
        self.values: dict[bytes, bytes] = {}
        self.changed = threading.Condition()
        self.get_capacities: list[int] = []
        fields = dict(StoreCallbacks._fields_)
        # Kept as attributes: ctypes must not free the trampolines while the library holds them.
        self.callbacks = StoreCallbacks(
            ctypes.sizeof(StoreCallbacks),
            None,
            fields["set"](self._set),
            fields["get"](self._get),
            fields["add"](self._add),
            fields["wait"](self._wait),
        )

    def _set(self, _user_data: int | None, key: bytes, value: int | None, length: int) -> int:
        with self.changed:
            self.values[key] = ctypes.string_at(value, length) if length else b""
            self.changed.notify_all()
        return 0

    def _get(
        self, _user_data: int | None, key: bytes, value: int | None, capacity: int, length: Any, timeout: float
    ) -> int:
        self.get_capacities.append(capacity)
        with self.changed:
            if not self.changed.wait_for(lambda: key in self.values, timeout):
                return 1
            data = self.values[key]
        length[0] = len(data)
        if len(data) > capacity:
            return 2
        ctypes.memmove(value, data, len(data))
        return 0

    def _add(self, _user_data: int | None, key: bytes, delta: int, result: Any) -> int:
        with self.changed:
            total = int(self.values.get(key, b"0")) + delta
            self.values[key] = str(total).encode()
            self.changed.notify_all()
        result[0] = total
        return 0

    def _wait(self, _user_data: int | None, keys: Any, count: int, timeout: float) -> int:
        wanted = [keys[index] for index in range(count)]
        with self.changed:
            return 0 if self.changed.wait_for(lambda: all(key in self.values for key in wanted), timeout) else 1


class Config(ctypes.Structure):
    """ktConfig_t."""

    _fields_ = [
        ("size", ctypes.c_size_t),
        ("version", ctypes.c_uint),
        ("token", ctypes.c_char_p),
        ("storePrefix", ctypes.c_char_p),
        ("hostId", ctypes.c_char_p),
        ("socketAddr", ctypes.c_char_p),
        ("transport", ctypes.c_int),
        ("timeoutSeconds", ctypes.c_double),
    ]

    @classmethod
    def make(cls, token: bytes, timeout_seconds: float) -> Config:
        """KT_CONFIG_INITIALIZER with a token and a timeout."""
        return cls(
            ctypes.sizeof(cls), KAITIAN_VERSION_CODE, token, None, None, None, KT_TRANSPORT_DEFAULT, timeout_seconds
        )


def library_path() -> Path:
    """The library to test; see the module docstring for the order."""
    if explicit := os.environ.get("KAITIAN_LIBRARY"):
        return Path(explicit)
    for config in ("debug", "release"):
        candidate = REPO_ROOT / ".build" / config / "libKaitianC.so"
        if candidate.exists():
            return candidate
    pytest.fail("no libKaitianC.so: run `swift build --product KaitianC` or set KAITIAN_LIBRARY")


def load(path: str) -> ctypes.CDLL:
    """Opens the library and declares the signatures the tests use, as in kaitian.h."""
    lib = ctypes.CDLL(path)
    p, i, d, sz = ctypes.c_void_p, ctypes.c_int, ctypes.c_double, ctypes.c_size_t
    pp, ip = ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_int)
    signatures: dict[str, tuple[Any, list[Any]]] = {
        "ktGetVersion": (i, [ip]),
        "ktGetErrorString": (ctypes.c_char_p, [i]),
        "ktGetLastError": (ctypes.c_char_p, []),
        "ktStoreServerStart": (i, [pp, ctypes.c_char_p, i, ctypes.c_char_p, ip]),
        "ktStoreServerStop": (i, [p]),
        "ktStoreConnect": (i, [pp, ctypes.c_char_p, ctypes.c_char_p, d]),
        "ktStoreSet": (i, [p, ctypes.c_char_p, p, sz]),
        "ktStoreGet": (i, [p, ctypes.c_char_p, p, sz, ctypes.POINTER(sz), d]),
        "ktStoreAdd": (i, [p, ctypes.c_char_p, ctypes.c_int64, ctypes.POINTER(ctypes.c_int64)]),
        "ktStoreDeletePrefix": (i, [p, ctypes.c_char_p, ctypes.POINTER(sz)]),
        "ktStoreFromCallbacks": (i, [pp, ctypes.POINTER(StoreCallbacks)]),
        "ktStoreFree": (i, [p]),
        "ktCommInitRank": (i, [pp, p, i, i, ctypes.POINTER(Config)]),
        "ktCommDestroy": (i, [p]),
        "ktCommGetAsyncError": (i, [p, ip]),
        "ktCommGetLastError": (ctypes.c_char_p, [p]),
        "ktAllReduce": (i, [p, p, sz, i, i, p, pp]),
        "ktBarrier": (i, [p, pp]),
        "ktWorkWait": (i, [p, d]),
        "ktWorkTest": (i, [p, ip]),
        "ktWorkSetCallback": (i, [p, WorkCallback, p]),
        "ktWorkGetError": (ctypes.c_char_p, [p]),
        "ktWorkFree": (i, [p]),
    }
    for name, (restype, argtypes) in signatures.items():
        function = getattr(lib, name)
        function.restype = restype
        function.argtypes = argtypes
    return lib


class Rank:
    """One rank's view of the library: checked calls and its store and communicator."""

    def __init__(self, path: str, address: str, nranks: int, rank: int) -> None:
        self.lib = load(path)
        self.address = address.encode()
        self.nranks = nranks
        self.rank = rank
        self.store = ctypes.c_void_p()
        self.check(self.lib.ktStoreConnect(ctypes.byref(self.store), self.address, TOKEN, 10.0), "ktStoreConnect")

    def check(self, result: int, what: str) -> None:
        assert result == KT_SUCCESS, f"rank {self.rank}: {what} -> {result}: {self.last_error()}"

    def last_error(self) -> str:
        return self.lib.ktGetLastError().decode()

    def init(self, token: bytes = TOKEN, timeout_seconds: float = 10.0) -> tuple[int, ctypes.c_void_p]:
        comm = ctypes.c_void_p()
        config = Config.make(token, timeout_seconds)
        return self.lib.ktCommInitRank(ctypes.byref(comm), self.store, self.nranks, self.rank, config), comm

    def allreduce(self, comm: ctypes.c_void_p, send: np.ndarray, recv: np.ndarray) -> ctypes.c_void_p:
        work = ctypes.c_void_p()
        result = self.lib.ktAllReduce(send.ctypes.data, recv.ctypes.data, send.size, KT_FLOAT32, KT_SUM, comm, work)
        self.check(result, "ktAllReduce")
        return work

    def store_set(self, key: bytes, value: bytes) -> None:
        self.check(self.lib.ktStoreSet(self.store, key, value, len(value)), "ktStoreSet")

    def store_get(self, key: bytes, timeout_seconds: float) -> bytes:
        buffer = ctypes.create_string_buffer(64)
        length = ctypes.c_size_t()
        result = self.lib.ktStoreGet(self.store, key, buffer, len(buffer), ctypes.byref(length), timeout_seconds)
        self.check(result, "ktStoreGet")
        return buffer.raw[: length.value]

    def close(self) -> None:
        self.check(self.lib.ktStoreFree(self.store), "ktStoreFree")


class CallbackRecorder:
    """A ktWorkCallback_t that records each call's result and thread."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []
        self.fired = threading.Event()
        # Kept as an attribute: ctypes must not free the trampoline before the engine calls it.
        self.function = WorkCallback(self._called)

    def _called(self, _user_data: int | None, result: int) -> None:
        self.calls.append((result, threading.get_ident()))
        self.fired.set()

    def wait(self) -> list[tuple[int, int]]:
        """The calls, after the first (the callback may run just after ktWorkWait returns)."""
        assert self.fired.wait(10), "the work callback never fired"
        time.sleep(0.05)  # room for a wrong second call to show up
        return self.calls


def collectives(r: Rank) -> dict[str, Any]:
    """Allreduce, callbacks, waits with timeouts, then a count mismatch that fails every rank."""
    result, comm = r.init()
    r.check(result, "ktCommInitRank")
    lib, n = r.lib, r.nranks

    send = np.arange(1000, dtype=np.float32) + r.rank
    recv = np.zeros_like(send)
    work = r.allreduce(comm, send, recv)
    recorder = CallbackRecorder()
    r.check(lib.ktWorkSetCallback(work, recorder.function, None), "ktWorkSetCallback")
    r.check(lib.ktWorkWait(work, 10.0), "ktWorkWait")
    assert recorder.wait() == [(KT_SUCCESS, recorder.calls[0][1])], recorder.calls
    assert lib.ktWorkGetError(work) is None
    r.check(lib.ktWorkFree(work), "ktWorkFree")
    np.testing.assert_array_equal(recv, n * np.arange(1000, dtype=np.float32) + n * (n - 1) / 2)

    # Rank 0's barrier cannot finish until the others issue theirs, which they do only after
    # rank 0 has seen ktInProgress: so the callback is registered while the call is pending,
    # and must fire on the engine thread.
    work = ctypes.c_void_p()
    if r.rank == 0:
        r.check(lib.ktBarrier(comm, ctypes.byref(work)), "ktBarrier")
        pending = CallbackRecorder()
        r.check(lib.ktWorkSetCallback(work, pending.function, None), "ktWorkSetCallback")
        started = time.monotonic()
        assert lib.ktWorkWait(work, 0.2) == KT_IN_PROGRESS
        assert 0.15 < time.monotonic() - started < 5
        done = ctypes.c_int(-1)
        r.check(lib.ktWorkTest(work, ctypes.byref(done)), "ktWorkTest")
        assert done.value == 0 and lib.ktWorkGetError(work) is None
        r.store_set(b"test/go", b"1")
        r.check(lib.ktWorkWait(work, -1.0), "ktWorkWait without limit")
        calls = pending.wait()
        assert [result for result, _ in calls] == [KT_SUCCESS], calls
        assert calls[0][1] != threading.get_ident(), "the callback ran on the caller's thread"
    else:
        assert r.store_get(b"test/go", 10.0) == b"1"
        r.check(lib.ktBarrier(comm, ctypes.byref(work)), "ktBarrier")
        r.check(lib.ktWorkWait(work, 10.0), "ktWorkWait")
    r.check(lib.ktWorkFree(work), "ktWorkFree")

    # Different counts on every rank: a mismatch, reported on every rank.
    send = np.ones(4 + r.rank, dtype=np.float32)
    work = r.allreduce(comm, send, np.zeros_like(send))
    wait_result = lib.ktWorkWait(work, 10.0)
    message = (lib.ktWorkGetError(work) or b"").decode()
    r.check(lib.ktWorkFree(work), "ktWorkFree")
    async_error = ctypes.c_int(-1)
    r.check(lib.ktCommGetAsyncError(comm, ctypes.byref(async_error)), "ktCommGetAsyncError")
    comm_message = lib.ktCommGetLastError(comm).decode()
    r.check(lib.ktCommDestroy(comm), "ktCommDestroy")
    r.close()
    return {"wait": wait_result, "message": message, "async": async_error.value, "comm_message": comm_message}


def wrong_token(r: Rank) -> dict[str, Any]:
    """The last rank joins with another token; every rank must fail within the timeout."""
    token = b"not-the-job-token" if r.rank == r.nranks - 1 else TOKEN
    started = time.monotonic()
    result, comm = r.init(token, timeout_seconds=5.0)
    elapsed = time.monotonic() - started
    message = r.last_error()
    if result == KT_SUCCESS:
        r.lib.ktCommDestroy(comm)
    r.close()
    return {"result": result, "elapsed": elapsed, "message": message}


SCENARIOS: dict[str, Callable[[Rank], dict[str, Any]]] = {"collectives": collectives, "wrong_token": wrong_token}


def _rank_main(path: str, address: str, nranks: int, rank: int, scenario: str, results: Any) -> None:
    try:
        results.put((rank, "ok", SCENARIOS[scenario](Rank(path, address, nranks, rank))))
    except BaseException:
        results.put((rank, "error", traceback.format_exc()))


@pytest.fixture(scope="module")
def lib() -> ctypes.CDLL:
    return load(str(library_path()))


@pytest.fixture
def store_address(lib: ctypes.CDLL, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A store server in this process; the ranks inherit a short KAITIAN_TIMEOUT."""
    monkeypatch.setenv("KAITIAN_TIMEOUT", "10")
    server = ctypes.c_void_p()
    port = ctypes.c_int()
    result = lib.ktStoreServerStart(ctypes.byref(server), b"127.0.0.1", 0, TOKEN, ctypes.byref(port))
    assert result == KT_SUCCESS, lib.ktGetLastError()
    yield f"127.0.0.1:{port.value}"
    assert lib.ktStoreServerStop(server) == KT_SUCCESS


def run_ranks(address: str, nranks: int, scenario: str) -> list[dict[str, Any]]:
    """Runs `scenario` as nranks spawned processes; returns each rank's result in rank order."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    args = (str(library_path()), address, nranks)
    processes = [
        context.Process(target=_rank_main, args=(*args, rank, scenario, results), daemon=True) for rank in range(nranks)
    ]
    for process in processes:
        process.start()
    outcomes: dict[int, tuple[str, Any]] = {}
    try:
        for _ in range(nranks):
            rank, status, value = results.get(timeout=40)
            outcomes[rank] = (status, value)
    except queue.Empty:
        pass
    finally:
        for process in processes:
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
    failures = {rank: value for rank, (status, value) in outcomes.items() if status != "ok"}
    assert not failures, "\n".join(f"rank {rank}:\n{text}" for rank, text in failures.items())
    assert sorted(outcomes) == list(range(nranks)), f"ranks {sorted(outcomes)} reported, of {nranks}"
    return [outcomes[rank][1] for rank in range(nranks)]


def test_version_and_error_strings(lib: ctypes.CDLL) -> None:
    version = ctypes.c_int()
    assert lib.ktGetVersion(ctypes.byref(version)) == KT_SUCCESS
    assert version.value == KAITIAN_VERSION_CODE
    assert all(lib.ktGetErrorString(code) for code in range(KT_NUM_RESULTS))
    assert lib.ktGetErrorString(1000)


def test_null_handles_are_invalid_arguments(lib: ctypes.CDLL) -> None:
    work = ctypes.c_void_p(1)
    data = np.zeros(1, dtype=np.float32)
    assert lib.ktAllReduce(data.ctypes.data, data.ctypes.data, 1, KT_FLOAT32, KT_SUM, None, work) == KT_INVALID_ARGUMENT
    assert work.value is None
    assert "comm is NULL" in lib.ktGetLastError().decode()
    assert lib.ktWorkWait(None, 1.0) == KT_INVALID_ARGUMENT
    assert lib.ktWorkGetError(None) is None
    assert lib.ktCommGetLastError(None) == b""
    assert lib.ktGetVersion(None) == KT_INVALID_ARGUMENT


def test_last_error_is_per_thread(lib: ctypes.CDLL) -> None:
    assert lib.ktWorkFree(None) == KT_INVALID_ARGUMENT
    seen: list[bytes] = []
    thread = threading.Thread(target=lambda: seen.append(lib.ktGetLastError()))
    thread.start()
    thread.join()
    assert seen == [b""]
    assert b"ktWorkFree" in lib.ktGetLastError()


def test_callback_store(lib: ctypes.CDLL) -> None:
    """A store of Python callbacks: values larger than the first buffer, timeouts, and a
    one-rank communicator that rendezvouses through it."""
    backing = DictStore()
    store = ctypes.c_void_p()
    assert lib.ktStoreFromCallbacks(ctypes.byref(store), backing.callbacks) == KT_SUCCESS, lib.ktGetLastError()
    large = bytes(range(256)) * 40  # 10 KiB: more than the library's first 4 KiB try
    assert lib.ktStoreSet(store, b"large", large, len(large)) == KT_SUCCESS
    buffer = ctypes.create_string_buffer(len(large))
    length = ctypes.c_size_t()
    assert lib.ktStoreGet(store, b"large", buffer, len(large), ctypes.byref(length), 1.0) == KT_SUCCESS
    assert buffer.raw[: length.value] == large
    assert backing.get_capacities == [4096, len(large)]

    assert lib.ktStoreGet(store, b"large", buffer, 10, ctypes.byref(length), 1.0) == KT_INVALID_ARGUMENT
    assert length.value == len(large)
    assert lib.ktStoreGet(store, b"missing", buffer, 10, ctypes.byref(length), 0.1) == KT_TIMEOUT
    assert b"missing" in lib.ktGetLastError()
    total = ctypes.c_int64()
    assert lib.ktStoreAdd(store, b"counter", 5, ctypes.byref(total)) == KT_SUCCESS and total.value == 5

    removed = ctypes.c_size_t()
    assert lib.ktStoreDeletePrefix(store, b"large", ctypes.byref(removed)) == KT_INVALID_USAGE
    assert b"cannot list or remove keys" in lib.ktGetLastError()

    comm = ctypes.c_void_p()
    config = Config.make(TOKEN, 5.0)
    assert lib.ktCommInitRank(ctypes.byref(comm), store, 1, 0, config) == KT_SUCCESS, lib.ktGetLastError()
    assert lib.ktCommDestroy(comm) == KT_SUCCESS
    assert lib.ktStoreFree(store) == KT_SUCCESS

    incomplete = StoreCallbacks(ctypes.sizeof(StoreCallbacks))
    assert lib.ktStoreFromCallbacks(ctypes.byref(store), incomplete) == KT_INVALID_ARGUMENT
    assert store.value is None


def test_delete_prefix_removes_only_the_keys_under_it(lib: ctypes.CDLL, store_address: str) -> None:
    """What a group uses to leave nothing behind in the job's store once every rank has joined."""
    store = ctypes.c_void_p()
    assert lib.ktStoreConnect(ctypes.byref(store), store_address.encode(), TOKEN, 5.0) == KT_SUCCESS
    for key in (b"group/a/x", b"group/a/y", b"group/ab", b"other"):
        assert lib.ktStoreSet(store, key, b"v", 1) == KT_SUCCESS
    removed = ctypes.c_size_t()
    assert lib.ktStoreDeletePrefix(store, b"group/a/", ctypes.byref(removed)) == KT_SUCCESS
    assert removed.value == 2
    buffer, length = ctypes.create_string_buffer(4), ctypes.c_size_t()
    for kept in (b"group/ab", b"other"):
        assert lib.ktStoreGet(store, kept, buffer, 4, ctypes.byref(length), 0.1) == KT_SUCCESS
    assert lib.ktStoreGet(store, b"group/a/x", buffer, 4, ctypes.byref(length), 0.1) == KT_TIMEOUT
    assert lib.ktStoreDeletePrefix(store, b"group/a/", None) == KT_SUCCESS
    assert lib.ktStoreDeletePrefix(store, b"", None) == KT_INVALID_ARGUMENT
    assert b"every key" in lib.ktGetLastError()
    assert lib.ktStoreFree(store) == KT_SUCCESS


@pytest.mark.parametrize("nranks", [2, 3])
def test_collectives_callbacks_and_mismatch(store_address: str, nranks: int) -> None:
    for rank, outcome in enumerate(run_ranks(store_address, nranks, "collectives")):
        assert outcome["wait"] == KT_MISMATCH, outcome
        assert outcome["async"] == KT_MISMATCH, outcome
        assert outcome["comm_message"], outcome
        message = outcome["message"]
        assert "count" in message, message
        named = set(re.findall(r"rank (\d+)", message))
        assert len(named) >= 2, f"rank {rank}: the mismatch message names ranks {named}: {message}"


def test_wrong_token_fails_within_the_timeout(store_address: str) -> None:
    outcomes = run_ranks(store_address, 2, "wrong_token")
    for outcome in outcomes:
        assert outcome["result"] != KT_SUCCESS, outcome
        assert outcome["elapsed"] < 5 + 3, outcome
    assert any("token" in outcome["message"] for outcome in outcomes), outcomes


def test_c_smoke_program() -> None:
    env = {**os.environ, "KAITIAN_LIBRARY": str(library_path())}
    completed = subprocess.run(
        [str(REPO_ROOT / "Tests" / "c-abi" / "run.sh")], env=env, capture_output=True, text=True, timeout=60
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
