"""ctypes bindings for Kaitian's C ABI (include/kaitian.h).

The package talks to the Swift engine only through this module, so it has no compiled torch
extension and the same wheel works with every vendor's PyTorch build. The library is loaded on
first use, not at import: `import kaitian` must work (and register the backend) on a machine where
the library has not been built yet, and fail with a clear message only when a communicator is
actually needed.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Iterable
from pathlib import Path

import torch
import torch.distributed as dist

LIBRARY_NAME = "libKaitianC.so"
VERSION_CODE = 100  # KAITIAN_VERSION(0, 1, 0)

# ktResult_t
SUCCESS = 0
INVALID_ARGUMENT = 1
INVALID_USAGE = 2
SYSTEM_ERROR = 3
REMOTE_ERROR = 4
TIMEOUT = 5
MISMATCH = 6
IN_PROGRESS = 7
INTERNAL_ERROR = 8

# ktTransport_t
TRANSPORT_DEFAULT = -1


class KaitianError(RuntimeError):
    """An engine call failed; the message is the engine's own (it names rank, call and cause)."""

    def __init__(self, message: str, code: int = INTERNAL_ERROR) -> None:
        super().__init__(message)
        self.code = code


class KaitianInvalidArgumentError(KaitianError):
    """The caller passed a bad argument."""


class KaitianInvalidUsageError(KaitianError):
    """A valid argument at the wrong time, for example a call on a destroyed communicator."""


class KaitianSystemError(KaitianError):
    """The operating system refused (sockets, shared memory, threads)."""


class KaitianRemoteError(KaitianError):
    """A peer failed, left, or its connection broke."""


class KaitianTimeoutError(KaitianError):
    """A call or a wait passed its deadline."""


class KaitianMismatchError(KaitianError):
    """Ranks issued different collectives (kind, dtype, count, root or order)."""


class KaitianInternalError(KaitianError):
    """A bug in Kaitian."""


_ERROR_CLASSES: dict[int, type[KaitianError]] = {
    INVALID_ARGUMENT: KaitianInvalidArgumentError,
    INVALID_USAGE: KaitianInvalidUsageError,
    SYSTEM_ERROR: KaitianSystemError,
    REMOTE_ERROR: KaitianRemoteError,
    TIMEOUT: KaitianTimeoutError,
    MISMATCH: KaitianMismatchError,
    INTERNAL_ERROR: KaitianInternalError,
}


def error_for(code: int, message: str) -> KaitianError:
    """The exception for a result code; falls back to the code's static description."""
    if not message:
        message = f"kaitian: {error_string(code)}"
    return _ERROR_CLASSES.get(code, KaitianError)(message, code)


class Config(ctypes.Structure):
    """ktConfig_t. Starts with its size and version so the engine can tell which layout it got."""

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


def config(token: bytes, prefix: bytes, host_id: bytes, timeout_seconds: float) -> Config:
    """A ktConfig_t with these fields, the transport from the environment and no socket address.

    The caller keeps the bytes alive until the engine has read them (the init call returns)."""
    return Config(ctypes.sizeof(Config), VERSION_CODE, token, prefix, host_id, None, TRANSPORT_DEFAULT, timeout_seconds)


StoreSetFn = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t)
StoreGetFn = ctypes.CFUNCTYPE(
    ctypes.c_int,
    ctypes.c_void_p,
    ctypes.c_char_p,
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.POINTER(ctypes.c_size_t),
    ctypes.c_double,
)
StoreAddFn = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int64, ctypes.POINTER(ctypes.c_int64)
)
StoreWaitFn = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_char_p), ctypes.c_size_t, ctypes.c_double
)


class StoreCallbacks(ctypes.Structure):
    """ktStoreCallbacks_t."""

    _fields_ = [
        ("size", ctypes.c_size_t),
        ("userData", ctypes.c_void_p),
        ("set", StoreSetFn),
        ("get", StoreGetFn),
        ("add", StoreAddFn),
        ("wait", StoreWaitFn),
    ]


WorkCallbackFn = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int)


class P2POp(ctypes.Structure):
    """ktP2POp_t: one send or receive of ktSendRecvBatch."""

    _fields_ = [
        ("isSend", ctypes.c_int),
        ("buff", ctypes.c_void_p),
        ("count", ctypes.c_size_t),
        ("datatype", ctypes.c_int),
        ("peer", ctypes.c_int),
        ("tag", ctypes.c_int),
    ]


class Region(ctypes.Structure):
    """ktRegion_t: count elements from element offset of a buffer (an address, or an id of ours)."""

    _fields_ = [("buffer", ctypes.c_uint64), ("offset", ctypes.c_size_t), ("count", ctypes.c_size_t)]


# ktGroupLibrary_t's functions: (userData, region, datatype[, op | root], error, errorCapacity).
GroupReduceFn = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.c_void_p, Region, ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t
)
GroupAllGatherFn = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.c_void_p, Region, ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t
)
GroupBroadcastFn = GroupReduceFn  # (..., datatype, root, ...): the same C signature
GroupAbortFn = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_char_p)
GroupDestroyFn = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


class GroupLibrary(ctypes.Structure):
    """ktGroupLibrary_t: one instance of a group's library, as callbacks."""

    _fields_ = [
        ("userData", ctypes.c_void_p),
        ("allReduce", GroupReduceFn),
        ("reduceScatter", GroupReduceFn),
        ("allGather", GroupAllGatherFn),
        ("broadcast", GroupBroadcastFn),
        ("abort", GroupAbortFn),
        ("destroy", GroupDestroyFn),
    ]


class GroupInfo(ctypes.Structure):
    """ktGroupInfo_t: the group a rank joins."""

    _fields_ = [
        ("groupIndex", ctypes.c_int),
        ("groupCount", ctypes.c_int),
        ("localRank", ctypes.c_int),
        ("groupSize", ctypes.c_int),
        ("globalRanks", ctypes.POINTER(ctypes.c_int)),
        ("deviceKind", ctypes.c_char_p),
        ("hostId", ctypes.c_char_p),
        ("storePrefix", ctypes.c_char_p),
        ("instance", ctypes.c_int),
    ]


JoinGroupFn = ctypes.CFUNCTYPE(
    ctypes.c_int,
    ctypes.c_void_p,
    ctypes.POINTER(GroupInfo),
    ctypes.POINTER(GroupLibrary),
    ctypes.c_void_p,
    ctypes.c_size_t,
)
HostViewFn = ctypes.CFUNCTYPE(
    ctypes.c_int,
    ctypes.c_void_p,
    Region,
    ctypes.c_int,
    ctypes.POINTER(ctypes.c_void_p),
    ctypes.c_void_p,
    ctypes.c_size_t,
)
CommitFn = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.c_void_p, Region, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t
)


class HybridCallbacks(ctypes.Structure):
    """ktHybridCallbacks_t."""

    _fields_ = [
        ("size", ctypes.c_size_t),
        ("userData", ctypes.c_void_p),
        ("joinGroup", JoinGroupFn),
        ("hostView", HostViewFn),
        ("commit", CommitFn),
    ]


StepFn = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
ReleaseFn = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


class HybridSteps(ctypes.Structure):
    """ktHybridSteps_t: the application's steps of one hybrid call."""

    _fields_ = [
        ("userData", ctypes.c_void_p),
        ("reduce", StepFn),
        ("relay", StepFn),
        ("gather", StepFn),
        ("release", ReleaseFn),
    ]


_p = ctypes.c_void_p
_pp = ctypes.POINTER(ctypes.c_void_p)
_size = ctypes.c_size_t
_psize = ctypes.POINTER(ctypes.c_size_t)
_int = ctypes.c_int
_str = ctypes.c_char_p

# name -> (restype, argtypes); every function of kaitian.h.
_SIGNATURES: dict[str, tuple[object, list[object]]] = {
    "ktGetVersion": (_int, [ctypes.POINTER(_int)]),
    "ktGetErrorString": (_str, [_int]),
    "ktGetLastError": (_str, []),
    "ktStoreServerStart": (_int, [_pp, _str, _int, _str, ctypes.POINTER(_int)]),
    "ktStoreServerStop": (_int, [_p]),
    "ktStoreConnect": (_int, [_pp, _str, _str, ctypes.c_double]),
    "ktStoreFromCallbacks": (_int, [_pp, ctypes.POINTER(StoreCallbacks)]),
    "ktStoreSet": (_int, [_p, _str, _p, _size]),
    "ktStoreGet": (_int, [_p, _str, _p, _size, _psize, ctypes.c_double]),
    "ktStoreAdd": (_int, [_p, _str, ctypes.c_int64, ctypes.POINTER(ctypes.c_int64)]),
    "ktStoreDeletePrefix": (_int, [_p, _str, ctypes.POINTER(_size)]),
    "ktStoreFree": (_int, [_p]),
    "ktCommInitRank": (_int, [_pp, _p, _int, _int, ctypes.POINTER(Config)]),
    "ktCommDestroy": (_int, [_p]),
    "ktCommAbort": (_int, [_p, _str]),
    "ktCommCount": (_int, [_p, ctypes.POINTER(_int)]),
    "ktCommUserRank": (_int, [_p, ctypes.POINTER(_int)]),
    "ktCommGetAsyncError": (_int, [_p, ctypes.POINTER(_int)]),
    "ktCommGetLastError": (_str, [_p]),
    "ktAllReduce": (_int, [_p, _p, _size, _int, _int, _p, _pp]),
    "ktReduce": (_int, [_p, _p, _size, _int, _int, _int, _p, _pp]),
    "ktBroadcast": (_int, [_p, _p, _size, _int, _int, _p, _pp]),
    "ktAllGather": (_int, [_p, _p, _size, _int, _p, _pp]),
    "ktAllGatherV": (_int, [_p, _p, _psize, _int, _p, _pp]),
    "ktReduceScatter": (_int, [_p, _p, _size, _int, _int, _p, _pp]),
    "ktGather": (_int, [_p, _p, _size, _int, _int, _p, _pp]),
    "ktScatter": (_int, [_p, _p, _size, _int, _int, _p, _pp]),
    "ktAllToAll": (_int, [_p, _p, _size, _int, _p, _pp]),
    "ktAllToAllV": (_int, [_p, _psize, _p, _psize, _int, _p, _pp]),
    "ktBarrier": (_int, [_p, _pp]),
    "ktSend": (_int, [_p, _size, _int, _int, _int, _p, _pp]),
    "ktRecv": (_int, [_p, _size, _int, _int, _int, _p, _pp]),
    "ktRecvAny": (_int, [_p, _size, _int, _int, _p, _pp]),
    "ktSendRecvBatch": (_int, [ctypes.POINTER(P2POp), _int, _p, _pp]),
    "ktWorkWait": (_int, [_p, ctypes.c_double]),
    "ktWorkTest": (_int, [_p, ctypes.POINTER(_int)]),
    "ktWorkSetCallback": (_int, [_p, WorkCallbackFn, _p]),
    "ktWorkGetSource": (_int, [_p, ctypes.POINTER(_int)]),
    "ktWorkGetError": (_str, [_p]),
    "ktWorkFree": (_int, [_p]),
    "ktHybridInitRank": (
        _int,
        [_pp, _p, _int, _int, _str, ctypes.POINTER(Config), ctypes.POINTER(HybridCallbacks)],
    ),
    "ktHybridDestroy": (_int, [_p]),
    "ktHybridAbort": (_int, [_p, _str]),
    "ktHybridGetAsyncError": (_int, [_p, ctypes.POINTER(_int)]),
    "ktHybridGetLastError": (_str, [_p]),
    "ktHybridTopology": (_int, [_p, ctypes.POINTER(_int), ctypes.POINTER(_int)]),
    "ktHybridWorld": (_int, [_p, _pp]),
    "ktHybridColumn": (_int, [_p, _pp]),
    "ktHybridGroupComm": (_int, [_p, _int, _pp]),
    "ktHybridStageSeconds": (_int, [_p, _int, ctypes.POINTER(ctypes.c_double)]),
    "ktHybridAllReduce": (_int, [Region, _int, _int, _p, _pp]),
    "ktHybridSubmit": (_int, [ctypes.POINTER(HybridSteps), _str, _int, _p, _pp]),
}


def library_candidates() -> list[Path]:
    """Where the library is looked for, in order.

    KAITIAN_LIBRARY wins; then a copy bundled next to this file (a wheel); then the Swift build
    directories of the repository this package sits in (an editable install, or a venv inside
    the repository), release before debug because release is what setup builds.
    """
    explicit = os.environ.get("KAITIAN_LIBRARY")
    if explicit:
        return [Path(explicit)]
    here = Path(__file__).resolve().parent
    found = [here / LIBRARY_NAME]
    for parent in here.parents:
        if (parent / "Package.swift").is_file():
            found += [parent / ".build" / "release" / LIBRARY_NAME, parent / ".build" / "debug" / LIBRARY_NAME]
            break
    return found


_lib: ctypes.CDLL | None = None
_lib_lock = threading.Lock()


def lib() -> ctypes.CDLL:
    """The loaded library with every function's argtypes and restype set."""
    global _lib
    with _lib_lock:
        if _lib is None:
            candidates = library_candidates()
            path = next((p for p in candidates if p.is_file()), None)
            if path is None:
                tried = ", ".join(str(p) for p in candidates)
                raise OSError(
                    f"kaitian: {LIBRARY_NAME} not found (tried {tried}); build it with "
                    "`swift build -c release` in the repository or set KAITIAN_LIBRARY"
                )
            loaded = ctypes.CDLL(str(path))
            for name, (restype, argtypes) in _SIGNATURES.items():
                try:
                    fn = getattr(loaded, name)
                except AttributeError:
                    raise OSError(
                        f"kaitian: {path} has no {name}: an old build? rebuild it or set KAITIAN_LIBRARY"
                    ) from None
                fn.restype = restype
                fn.argtypes = argtypes
            _lib = loaded
        return _lib


def error_string(code: int) -> str:
    """The engine's static description of a result code (or a local one if it is not loaded)."""
    if _lib is None:
        return f"result {code}"
    text = _lib.ktGetErrorString(code)
    return text.decode(errors="replace") if text else f"result {code}"


def check(code: int, comm: int | None = None) -> None:
    """Raises the KaitianError for a failed call, with the thread's (or communicator's) message."""
    if code == SUCCESS:
        return
    api = lib()
    raw = api.ktGetLastError() or (api.ktCommGetLastError(comm) if comm else None)
    raise error_for(code, raw.decode(errors="replace") if raw else "")


def version() -> int:
    """KAITIAN_VERSION_CODE of the loaded library."""
    out = ctypes.c_int()
    check(lib().ktGetVersion(ctypes.byref(out)))
    return out.value


_DTYPES: dict[torch.dtype, int] = {
    torch.int8: 0,
    torch.uint8: 1,
    torch.int32: 2,
    torch.int64: 3,
    torch.float16: 4,
    torch.float32: 5,
    torch.float64: 6,
    torch.bfloat16: 7,
}


def datatype(dtype: torch.dtype) -> int:
    """ktDataType_t for a torch dtype; TypeError names the dtypes the engine has.

    bool travels as its bytes (uint8, one byte per element in torch, 0 or 1); reductions on it
    take the bool ops of `reduce_op_for`, which keep every byte 0 or 1.
    """
    try:
        return _DTYPES[torch.uint8 if dtype == torch.bool else dtype]
    except KeyError:
        names = ", ".join(str(d).removeprefix("torch.") for d in (*_DTYPES, torch.bool))
        raise TypeError(f"kaitian: dtype {dtype} is not supported (supported: {names})") from None


# ktRedOp_t; torch's ReduceOp compares by value but does not hash like its enum, so a list.
SUM, PROD, MAX, MIN, AVG = 0, 1, 2, 3, 4
_OPS: list[tuple[object, int]] = [
    (dist.ReduceOp.SUM, SUM),
    (dist.ReduceOp.PRODUCT, PROD),
    (dist.ReduceOp.MAX, MAX),
    (dist.ReduceOp.MIN, MIN),
    (dist.ReduceOp.AVG, AVG),
]


def reduce_op(op: object) -> int:
    """ktRedOp_t for a torch ReduceOp; bitwise ops are refused (PREMUL_SUM is the process group's: it
    scales the inputs and sums)."""
    for torch_op, code in _OPS:
        if op == torch_op:
            return code
    raise ValueError(f"kaitian: reduce op {op} is not supported (supported: SUM, PRODUCT, MIN, MAX, AVG)")


def reduce_op_for(op: object, dtypes: Iterable[torch.dtype]) -> int:
    """ktRedOp_t for a torch ReduceOp over tensors of `dtypes`, with bool meaning what torch means.

    On bool, SUM is logical or and PRODUCT logical and, as in gloo (C++ bool arithmetic) and NCCL
    (which maps them to max and min on bytes): so the engine runs MAX and MIN on the 0/1 bytes.
    AVG has no bool meaning and is refused, as NCCL refuses it.
    """
    code = reduce_op(op)
    if not any(dtype == torch.bool for dtype in dtypes):
        return code
    if code == AVG:
        raise ValueError("kaitian: reduce op AVG is not defined for bool tensors (use SUM, PRODUCT, MIN or MAX)")
    return {SUM: MAX, PROD: MIN}.get(code, code)


def torch_reduce_op(code: int) -> object:
    """The torch ReduceOp for a ktRedOp_t (for vendor process groups inside a group)."""
    return next(torch_op for torch_op, c in _OPS if c == code)


# ---- Load-adaptive planning (kaitian.h) ----
# Bound on first use, not through _SIGNATURES: a library built before the planner existed still
# serves every collective, and only planning fails, with a message saying to rebuild.

# ktPlanMode_t
PLAN_FIXED_GLOBAL = 0
PLAN_PAPER = 1

_i64 = ctypes.c_int64
_pi64 = ctypes.POINTER(ctypes.c_int64)
_PLANNER_SIGNATURES: dict[str, tuple[object, list[object]]] = {
    "ktPlanBatches": (_int, [_int, ctypes.POINTER(ctypes.c_double), _pi64, _i64, _int, _pi64]),
    "ktPlanBatchesWithOverhead": (
        _int,
        [_int, ctypes.POINTER(ctypes.c_double), ctypes.POINTER(ctypes.c_double), _pi64, _i64, _int, _pi64],
    ),
    "ktRebalancerCreate": (_int, [_pp, _int, _i64, _int, _pi64, ctypes.c_double, ctypes.c_double]),
    "ktRebalancerObserve": (_int, [_p, _int, ctypes.c_double, _i64]),
    "ktRebalancerObserveSteps": (_int, [_p, _int, ctypes.c_double, _i64, _i64]),
    "ktRebalancerSetStepCosts": (_int, [_p, ctypes.POINTER(ctypes.c_double), ctypes.POINTER(ctypes.c_double)]),
    "ktRebalancerAdopt": (_int, [_p, _pi64]),
    "ktRebalancerPropose": (_int, [_p, _pi64, ctypes.POINTER(_int)]),
    "ktRebalancerFree": (_int, [_p]),
}
_planner_bound = False


def planner_lib() -> ctypes.CDLL:
    """The library with the planner's functions bound; OSError names a build without them."""
    global _planner_bound
    api = lib()
    with _lib_lock:
        if not _planner_bound:
            for name, (restype, argtypes) in _PLANNER_SIGNATURES.items():
                try:
                    fn = getattr(api, name)
                except AttributeError:
                    raise OSError(
                        f"kaitian: the loaded {LIBRARY_NAME} has no {name} (built before the planner?): "
                        "rebuild it with `swift build -c release` or set KAITIAN_LIBRARY"
                    ) from None
                fn.restype = restype
                fn.argtypes = argtypes
            _planner_bound = True
    return api


def has_planner() -> bool:
    """Whether the loadable library exports the planner (tests skip the native parts otherwise)."""
    try:
        planner_lib()
    except OSError:
        return False
    return True
