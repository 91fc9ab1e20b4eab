"""The ABI's tables are written in four places; this test ties them to include/kaitian.h.

- The ctypes signatures of kaitian._native (engine and planner) against the header's prototypes:
  every function of the header is declared, with as many parameters, each of a matching type.
- The numbering of result codes, data types, reduce ops and hybrid stages in the header, the C shim's header
  (Sources/CKaitianShim/include/kt_reduce.h), Swift's DataType.swift and kaitian._native.

Parsing C with regular expressions is enough for this header, which keeps one declaration per
statement and no macros in prototypes; a header that stops parsing fails the test loudly.
"""

from __future__ import annotations

import ctypes
import re
from pathlib import Path

import torch
from kaitian import _hybrid, _native

ROOT = Path(__file__).resolve().parents[2]
HEADER = (ROOT / "include" / "kaitian.h").read_text()
SHIM = (ROOT / "Sources" / "CKaitianShim" / "include" / "kt_reduce.h").read_text()
SWIFT = (ROOT / "Sources" / "Kaitian" / "Core" / "DataType.swift").read_text()

POINTER = ctypes.POINTER(ctypes.c_void_p).__mro__[1]  # ctypes' _Pointer base class


def _without_comments(text: str) -> str:
    return re.sub(r"/\*.*?\*/|//[^\n]*", "", text, flags=re.S)


def prototypes() -> dict[str, list[str]]:
    """{function name: its parameters' C types} for every kt* function of the header."""
    found: dict[str, list[str]] = {}
    for match in re.finditer(r"^[A-Za-z_][\w \*]*?\b(kt[A-Z]\w*)\(([^;{]*?)\);", _without_comments(HEADER), re.M):
        name, params = match.group(1), " ".join(match.group(2).split())
        if params in ("", "void"):
            found[name] = []
            continue
        # Drop each parameter's name: the last word, unless the parameter is a bare type.
        found[name] = [re.sub(r"\s*\b\w+$", "", p.strip()) or p.strip() for p in params.split(",")]
    return found


def compatible(c_type: str, declared: object) -> bool:
    """Whether a ctypes argtype can carry the header's parameter type."""
    c_type = c_type.replace("const ", "").strip()
    if c_type.endswith("*"):
        if c_type == "char *":
            return declared is ctypes.c_char_p
        return declared is ctypes.c_void_p or (isinstance(declared, type) and issubclass(declared, POINTER))
    handles = {"ktComm_t", "ktStore_t", "ktStoreServer_t", "ktWork_t", "ktRebalancer_t", "ktHybrid_t"}
    if c_type in handles:
        return declared is ctypes.c_void_p
    if c_type == "ktWorkCallback_t":
        return declared is _native.WorkCallbackFn
    if c_type == "ktRegion_t":
        return declared is _native.Region
    scalars = {
        "int": ctypes.c_int,
        "size_t": ctypes.c_size_t,
        "double": ctypes.c_double,
        "int64_t": ctypes.c_int64,
        "ktResult_t": ctypes.c_int,
        "ktDataType_t": ctypes.c_int,
        "ktRedOp_t": ctypes.c_int,
        "ktPlanMode_t": ctypes.c_int,
        "ktHybridStage_t": ctypes.c_int,
    }
    return scalars.get(c_type) is declared


def test_the_header_parses() -> None:
    found = prototypes()
    assert len(found) >= 40, sorted(found)
    assert found["ktGetLastError"] == []
    assert found["ktStoreSet"] == ["ktStore_t", "const char *", "const void *", "size_t"]


def test_every_function_of_the_header_has_a_matching_ctypes_signature() -> None:
    declared = {**_native._SIGNATURES, **_native._PLANNER_SIGNATURES}
    problems = []
    for name, params in prototypes().items():
        if name not in declared:
            problems.append(f"{name}: in kaitian.h, not in kaitian._native")
            continue
        argtypes = declared[name][1]
        if len(argtypes) != len(params):
            problems.append(f"{name}: {len(params)} parameters in kaitian.h, {len(argtypes)} in ctypes")
            continue
        for index, (c_type, argtype) in enumerate(zip(params, argtypes, strict=True)):
            if not compatible(c_type, argtype):
                problems.append(f"{name}: parameter {index} is {c_type!r} in kaitian.h, {argtype} in ctypes")
    extra = set(declared) - set(prototypes())
    problems += [f"{name}: in kaitian._native, not in kaitian.h" for name in sorted(extra)]
    assert not problems, "\n".join(problems)


def enum_values(text: str, prefix: str) -> dict[str, int]:
    """{member without prefix, lower case: value} of the enum members named prefix*."""
    return {m.group(1).lower(): int(m.group(2)) for m in re.finditer(rf"\b{prefix}(\w+)\s*=\s*(\d+)", text)}


def swift_cases(enum: str, source: str = SWIFT) -> dict[str, int]:
    body = re.search(rf"enum {enum}\b[^{{]*\{{(.*?)\n\}}", source, re.S)
    assert body is not None, enum
    return {m.group(1).lower(): int(m.group(2)) for m in re.finditer(r"case (\w+) = (\d+)", body.group(1))}


def test_data_type_numbering_agrees_everywhere() -> None:
    header = {k: v for k, v in enum_values(HEADER, "kt").items() if k in swift_cases("DataType")}
    assert header == swift_cases("DataType") == {k: v for k, v in enum_values(SHIM, "KT_DTYPE_").items()}
    by_name = {
        "int8": torch.int8,
        "uint8": torch.uint8,
        "int32": torch.int32,
        "int64": torch.int64,
        "float16": torch.float16,
        "float32": torch.float32,
        "float64": torch.float64,
        "bfloat16": torch.bfloat16,
    }
    assert {name: _native.datatype(dtype) for name, dtype in by_name.items()} == header


def test_reduce_op_numbering_agrees_everywhere() -> None:
    ops = ("sum", "prod", "max", "min", "avg")
    header = {k: v for k, v in enum_values(HEADER, "kt").items() if k in ops}
    assert header == swift_cases("ReduceOp")
    shim = enum_values(SHIM, "KT_REDOP_")
    assert {k: v for k, v in header.items() if k in shim} == shim and len(shim) >= 4
    assert dict(zip(ops, (_native.SUM, _native.PROD, _native.MAX, _native.MIN, _native.AVG), strict=True)) == header


def test_hybrid_stage_numbering_agrees_everywhere() -> None:
    header = enum_values(HEADER, "ktHybridStage")
    swift = swift_cases("HybridStage", (ROOT / "Sources" / "Kaitian" / "Hybrid" / "HybridLayers.swift").read_text())
    assert header == swift and len(header) == 5
    python = {name.replace("_", ""): stage.number for name, stage in _hybrid.ENGINE_STAGES.items()}
    assert python == header


def test_result_codes_agree() -> None:
    header = enum_values(HEADER, "kt")
    python = {
        "success": _native.SUCCESS,
        "invalidargument": _native.INVALID_ARGUMENT,
        "invalidusage": _native.INVALID_USAGE,
        "systemerror": _native.SYSTEM_ERROR,
        "remoteerror": _native.REMOTE_ERROR,
        "timeout": _native.TIMEOUT,
        "mismatch": _native.MISMATCH,
        "inprogress": _native.IN_PROGRESS,
        "internalerror": _native.INTERNAL_ERROR,
    }
    assert {k: header[k] for k in python} == python


BINDING_MODULES = {"_native.py", "_engine.py", "_hybrid.py", "_store.py", "_planning.py"}
"""The package's binding layer: the only modules that name the C ABI's functions and types."""


def test_the_c_abi_is_named_only_in_the_binding_layer() -> None:
    """Other modules call the binding's typed functions, so a change to the ABI touches these five."""
    package = ROOT / "python" / "kaitian"
    outside = {
        f"{path.name}:{number}: {line.strip()}"
        for path in sorted(package.glob("*.py"))
        if path.name not in BINDING_MODULES
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"\bkt[A-Z]\w*", line)
    }
    assert not outside, "C ABI names outside the binding layer:\n" + "\n".join(sorted(outside))
    assert {p.name for p in package.glob("_*.py")} >= BINDING_MODULES


def test_every_engine_call_builder_names_a_declared_function() -> None:
    """The typed call builders of kaitian._engine name functions the header declares, with their
    arguments before the trailing (comm, &work)."""
    from kaitian import _engine

    t = torch.zeros(4)
    counts = (ctypes.c_size_t * 2)(2, 2)
    calls = [
        _engine.all_reduce(t, t, _native.SUM),
        _engine.reduce(t, t, _native.SUM, 0),
        _engine.broadcast(t, t, 0),
        _engine.reduce_scatter(t, t[:2], _native.SUM),
        _engine.all_gather(t[:2], t),
        _engine.all_gather_v(t[:2], t, counts),
        _engine.gather(t[:2], None, 0),
        _engine.scatter(None, t[:2], 0),
        _engine.all_to_all(t, t, 2),
        _engine.all_to_all_v(t, counts, t, counts),
        _engine.barrier(),
        _engine.send(t, 1, 0),
        _engine.recv(t, 1, 0),
        _engine.recv_any(t, 0),
        _engine.send_recv_batch((_native.P2POp * 1)(), 1),
    ]
    declared = prototypes()
    for call in calls:
        params = declared[call.function]
        assert params[-2:] == ["ktComm_t", "ktWork_t *"], call.function
        assert len(call.args) == len(params) - 2, call.function
