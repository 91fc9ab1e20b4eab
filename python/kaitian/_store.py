"""Where the engine's communicators meet: the job's Kaitian store, or torch's own store.

Under `kaitian run` (KAITIAN_STORE set) the communicators meet in the job's Kaitian store, which
admits only holders of the job token. Elsewhere (torchrun, or init_process_group with any init
method) they reuse the torch.distributed Store of the process group under their own key
prefixes, so no second rendezvous service is needed. Either way the engine MACs what it publishes
with the job token and checks what it reads back (AuthenticatedRendezvous on the Swift side).
"""

from __future__ import annotations

import ctypes
import hashlib
import hmac
import logging
import os
import secrets
import threading
import time
import weakref
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Protocol

import torch.distributed as dist

from . import _native

log = logging.getLogger("kaitian")

_OK, _TIMED_OUT, _FAILED, _TOO_SMALL = 0, 1, -1, 2


def _is_timeout(error: Exception) -> bool:
    """torch stores report a timeout as a RuntimeError subclass whose text says so."""
    text = str(error).lower()
    return "timeout" in text or "timed out" in text


def _weakly(ref: weakref.ref, method: Callable[..., int]) -> Callable[..., int]:
    """`method` called on the object behind `ref`; a failure once that object is gone."""

    def call(*args: object) -> int:
        target = ref()
        return method(target, *args) if target is not None else _FAILED

    return call


class TorchStoreAdapter:
    """A ktStore_t whose set/get/add/wait call a torch.distributed.Store.

    The engine may call back from any of its threads; ctypes takes the GIL for each call. The
    CFUNCTYPE objects and the callbacks struct live as long as this object: the engine holds raw
    pointers to them. A value too large for the engine's buffer is kept until the engine asks
    again with a larger one (the "2 = buffer too small" protocol), so the key is fetched once.
    """

    def __init__(self, store: dist.Store) -> None:
        self._store = store
        self._pending: dict[bytes, bytes] = {}
        self._lock = threading.Lock()
        # Through a weak reference: callbacks bound to this object would make a cycle (object ->
        # callbacks -> object) that holds torch's store until the garbage collector runs. On rank
        # 0 that store is the job's store server, and a second init_process_group in the same
        # process must find the first one's closed, not still answering on its port.
        me = weakref.ref(self)
        self._fns = (
            _native.StoreSetFn(_weakly(me, TorchStoreAdapter._set)),
            _native.StoreGetFn(_weakly(me, TorchStoreAdapter._get)),
            _native.StoreAddFn(_weakly(me, TorchStoreAdapter._add)),
            _native.StoreWaitFn(_weakly(me, TorchStoreAdapter._wait)),
        )
        self._callbacks = _native.StoreCallbacks(ctypes.sizeof(_native.StoreCallbacks), None, *self._fns)
        handle = ctypes.c_void_p()
        api = _native.lib()
        _native.check(api.ktStoreFromCallbacks(ctypes.byref(handle), ctypes.byref(self._callbacks)))
        self.handle = handle.value

    def free(self) -> None:
        """Releases the engine's store; call once no communicator init is running on it."""
        if self.handle:
            _native.lib().ktStoreFree(self.handle)
            self.handle = None

    def _set(self, _user: int, key: bytes, value: int, length: int) -> int:
        try:
            self._store.set(key.decode(), ctypes.string_at(value, length))
            return _OK
        except Exception as error:  # an exception must not cross into Swift
            log.warning("kaitian store set %r failed: %s", key, error)
            return _TIMED_OUT if _is_timeout(error) else _FAILED

    def _get(self, _user: int, key: bytes, buffer: int, capacity: int, length: ctypes.c_void_p, timeout: float) -> int:
        try:
            with self._lock:
                data = self._pending.pop(key, None)
            if data is None:
                name = key.decode()
                if timeout > 0:
                    self._store.wait([name], timedelta(seconds=timeout))
                data = self._store.get(name)
            length[0] = len(data)
            if len(data) > capacity:
                with self._lock:
                    self._pending[key] = data
                return _TOO_SMALL
            ctypes.memmove(buffer, data, len(data))
            return _OK
        except Exception as error:
            if _is_timeout(error):
                return _TIMED_OUT
            log.warning("kaitian store get %r failed: %s", key, error)
            return _FAILED

    def _add(self, _user: int, key: bytes, delta: int, result: ctypes.c_void_p) -> int:
        try:
            result[0] = self._store.add(key.decode(), delta)
            return _OK
        except Exception as error:
            log.warning("kaitian store add %r failed: %s", key, error)
            return _TIMED_OUT if _is_timeout(error) else _FAILED

    def _wait(self, _user: int, keys: ctypes.c_void_p, count: int, timeout: float) -> int:
        try:
            names = [keys[i].decode() for i in range(count)]
            if timeout > 0:
                self._store.wait(names, timedelta(seconds=timeout))
            else:
                self._store.wait(names)
            return _OK
        except Exception as error:
            if _is_timeout(error):
                return _TIMED_OUT
            log.warning("kaitian store wait failed: %s", error)
            return _FAILED


def job_token(store: dist.Store, rank: int, timeout: timedelta) -> str:
    """The token that authenticates the engine's peer connections.

    KAITIAN_TOKEN or KAITIAN_TOKEN_FILE when the operator set one (needed when the store itself is
    reachable by others than the job). Otherwise rank 0 draws one and publishes it through the torch
    store. Trust model: whoever can reach the torch store can already read every rendezvous key and
    disrupt the job, so the generated token protects the engine's data sockets from everyone else on
    the network (port scanners, other jobs), not from the store's own users.
    """
    token = environment_token()
    if token:
        return token
    key = "kaitian/token"
    if rank == 0:
        store.set(key, secrets.token_hex(32))
    store.wait([key], timeout)
    return store.get(key).decode()


class StoreConnection:
    """A connection to a Kaitian store server through the C ABI (ktStoreConnect)."""

    def __init__(self, address: str, token: str, timeout: float = 10.0) -> None:
        self.address = address
        handle = ctypes.c_void_p()
        _native.check(_native.lib().ktStoreConnect(ctypes.byref(handle), address.encode(), token.encode(), timeout))
        self._handle: int | None = handle.value

    def set(self, key: str, value: bytes) -> None:
        """Stores `value` under `key`; raises KaitianError (naming the store) when it fails."""
        _native.check(_native.lib().ktStoreSet(self.handle, key.encode(), value, len(value)))

    def add(self, key: str, delta: int) -> int:
        """Adds `delta` to the counter at `key` (absent counts as 0); returns the new value."""
        total = ctypes.c_int64()
        _native.check(_native.lib().ktStoreAdd(self.handle, key.encode(), delta, ctypes.byref(total)))
        return total.value

    def delete_prefix(self, prefix: str) -> int:
        """Removes every key that starts with `prefix`; returns how many there were."""
        removed = ctypes.c_size_t()
        _native.check(_native.lib().ktStoreDeletePrefix(self.handle, prefix.encode(), ctypes.byref(removed)))
        return removed.value

    def get(self, key: str, timeout: float = 0.0) -> bytes:
        """The value of `key`, waiting up to `timeout` seconds for it to appear."""
        handle, api = self.handle, _native.lib()
        capacity = 4096
        while True:
            buffer = ctypes.create_string_buffer(capacity)
            length = ctypes.c_size_t()
            code = api.ktStoreGet(handle, key.encode(), buffer, capacity, ctypes.byref(length), timeout)
            if code == _native.INVALID_ARGUMENT and length.value > capacity:
                capacity = length.value
                continue
            _native.check(code)
            return buffer.raw[: length.value]

    @property
    def handle(self) -> int:
        """The ktStore_t, for ktCommInitRank; raises once closed."""
        if self._handle is None:
            raise _native.KaitianInvalidUsageError(f"kaitian: the connection to {self.address} is closed")
        return self._handle

    def close(self) -> None:
        if self._handle is not None:
            _native.lib().ktStoreFree(self._handle)
            self._handle = None


def environment_token() -> str | None:
    """The job token the operator gave: KAITIAN_TOKEN, else the contents of KAITIAN_TOKEN_FILE."""
    token = os.environ.get("KAITIAN_TOKEN")
    if token:
        return token
    path = os.environ.get("KAITIAN_TOKEN_FILE")
    if path:
        return Path(path).read_text().strip()
    return None


class RendezvousValues(Protocol):
    """The part of a store that Python's own rendezvous values (the topology) go through."""

    def set(self, key: str, value: str | bytes) -> None: ...

    def wait(self, keys: list[str], timeout: timedelta) -> None: ...

    def get(self, key: str) -> bytes: ...


class SignedValues:
    """Values in the job's Kaitian store under a namespace, each MAC'd with the job token.

    Why the MAC when the embedded store already admits only holders of the token: KAITIAN_STORE
    may be a Redis, which anyone with its password can write. A value that does not carry the
    token's MAC over its key and bytes is refused, so such a writer cannot rewrite the topology
    (which rank is in which group, with which library) behind the job's back.
    """

    _MAC_BYTES = 64  # hex of HMAC-SHA256

    def __init__(self, connection: StoreConnection, namespace: str, token: str) -> None:
        self._connection = connection
        self._namespace = namespace
        self._key = token.encode()

    def _mac(self, key: str, payload: bytes) -> bytes:
        return hmac.new(self._key, key.encode() + b"\0" + payload, hashlib.sha256).hexdigest().encode()

    def set(self, key: str, value: str | bytes) -> None:
        payload = value.encode() if isinstance(value, str) else value
        self._connection.set(self._namespace + key, self._mac(key, payload) + payload)

    def wait(self, keys: list[str], timeout: timedelta) -> None:
        deadline = time.monotonic() + timeout.total_seconds()
        for key in keys:
            self._connection.get(self._namespace + key, max(0.0, deadline - time.monotonic()))

    def get(self, key: str) -> bytes:
        raw = self._connection.get(self._namespace + key)
        mac, payload = raw[: self._MAC_BYTES], raw[self._MAC_BYTES :]
        if not hmac.compare_digest(mac, self._mac(key, payload)):
            raise ValueError(
                f"kaitian: the value of {key!r} in the job's store ({self._connection.address}) does not carry "
                "the job token's MAC: something without the token wrote it; refusing it"
            )
        return payload


class EngineRendezvous:
    """The store handle a group's communicators are created on, and their key namespace.

    With KAITIAN_STORE, the job's Kaitian store: the values the engine trusts (peer endpoints,
    shared-memory segment names) then sit where only holders of the job token can write. Why not
    always torch's store: it has no authentication, so anyone who reaches it could publish them,
    and without KAITIAN_TOKEN the token itself is published there. The Kaitian store outlives
    process groups and holds every group of the job, so each construction of a group takes a
    namespace of its own, drawn by its rank 0 and shared through torch's store (a forged one can
    only make the ranks miss each other and time out, which a writer of that store can do anyway).
    The topology goes the same way (`values`), MAC'd with the job token (see SignedValues).
    Close it once the communicators are created: the engine needs the store only to join. Closing
    after a construction that succeeded counts this rank out; the last rank to do so removes the
    namespace's keys, for by then every rank has read all it ever will. Without that, a job that
    makes many groups (new_subgroups, re-init) would fill the store's quota.
    """

    def __init__(self, store: dist.Store, rank: int, token: str, timeout: timedelta) -> None:
        address = os.environ.get("KAITIAN_STORE")
        self._adapter: TorchStoreAdapter | None = None
        self._connection: StoreConnection | None = None
        self.values: RendezvousValues
        if address:
            self._connection = StoreConnection(address, token, timeout.total_seconds())
            handle = self._connection.handle
            key = "kaitian/namespace"
            if rank == 0:
                store.set(key, secrets.token_hex(16))
            store.wait([key], timeout)
            self.namespace = f"group/{store.get(key).decode()}/"
            self.values = SignedValues(self._connection, self.namespace + "kaitian/", token)
        else:
            self._adapter = TorchStoreAdapter(store)
            handle = self._adapter.handle
            self.namespace = ""
            self.values = store
        self.handle: int = handle

    def close(self, joined: int = 0) -> None:
        """Frees the connection; `joined` is the group's size once this rank's construction succeeded."""
        if self._adapter is not None:
            self._adapter.free()
        if self._connection is not None:
            try:
                if joined and self._connection.add(self.namespace + "joined", 1) == joined:
                    self._connection.delete_prefix(self.namespace)
            finally:
                self._connection.close()
