"""The parts of the package that need no engine: mappings, errors, topology, registration."""

from __future__ import annotations

import re
from pathlib import Path

import kaitian
import pytest
import torch
import torch.distributed as dist
from kaitian import _native
from kaitian.topology import DEVICE_KINDS, ENGINE, Topology, intra_backends


def test_import_registers_the_backend() -> None:
    assert "KAITIAN" in dist.Backend._plugins
    assert dist.Backend("kaitian") == "kaitian"


def test_dtype_mapping_matches_the_header() -> None:
    expected = {
        torch.int8: 0,
        torch.uint8: 1,
        torch.int32: 2,
        torch.int64: 3,
        torch.float16: 4,
        torch.float32: 5,
        torch.float64: 6,
        torch.bfloat16: 7,
    }
    for dtype, code in expected.items():
        assert _native.datatype(dtype) == code
    assert _native.datatype(torch.bool) == 1, "bool travels as its bytes (uint8)"
    for dtype in (torch.complex64, torch.int16):
        with pytest.raises(TypeError, match="kaitian: dtype"):
            _native.datatype(dtype)


def test_bool_reductions_are_or_and_and() -> None:
    ops = (dist.ReduceOp.SUM, dist.ReduceOp.PRODUCT, dist.ReduceOp.MAX, dist.ReduceOp.MIN)
    assert [_native.reduce_op_for(op, [torch.bool]) for op in ops] == [
        _native.MAX,
        _native.MIN,
        _native.MAX,
        _native.MIN,
    ]
    assert [_native.reduce_op_for(op, [torch.int8]) for op in ops] == [
        _native.SUM,
        _native.PROD,
        _native.MAX,
        _native.MIN,
    ]
    with pytest.raises(ValueError, match="AVG is not defined for bool"):
        _native.reduce_op_for(dist.ReduceOp.AVG, [torch.float32, torch.bool])


def test_reduce_op_mapping() -> None:
    assert [_native.reduce_op(op) for op in (dist.ReduceOp.SUM, dist.ReduceOp.PRODUCT)] == [0, 1]
    assert [_native.reduce_op(op) for op in (dist.ReduceOp.MAX, dist.ReduceOp.MIN, dist.ReduceOp.AVG)] == [2, 3, 4]
    opts = dist.AllreduceOptions()
    opts.reduceOp = dist.ReduceOp.MIN
    assert _native.reduce_op(opts.reduceOp) == _native.MIN
    for op in (dist.ReduceOp.BAND, dist.ReduceOp.BOR, dist.ReduceOp.BXOR):
        with pytest.raises(ValueError, match="not supported"):
            _native.reduce_op(op)


def test_errors_keep_the_engine_message() -> None:
    error = _native.error_for(_native.REMOTE_ERROR, "rank 2: allreduce #7: connection reset")
    assert isinstance(error, kaitian.KaitianRemoteError) and isinstance(error, RuntimeError)
    assert str(error) == "rank 2: allreduce #7: connection reset"
    assert isinstance(_native.error_for(_native.TIMEOUT, "x"), kaitian.KaitianTimeoutError)
    assert isinstance(_native.error_for(_native.MISMATCH, "x"), kaitian.KaitianMismatchError)


def test_library_discovery(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KAITIAN_LIBRARY", str(tmp_path / "x.so"))
    assert _native.library_candidates() == [tmp_path / "x.so"]
    monkeypatch.delenv("KAITIAN_LIBRARY")
    found = _native.library_candidates()
    assert found[0].parent == Path(_native.__file__).resolve().parent
    assert [p.parent.name for p in found[1:]] == ["release", "debug"]


def test_intra_backend_spec() -> None:
    mapping = intra_backends("cpu-a=gloo, cpu-b=kaitian,cuda=GLOO")
    assert mapping["cpu-a"] == "gloo" and mapping["cpu-b"] == ENGINE and mapping["cuda"] == "gloo"
    assert mapping["mlu"] == "cncl" and mapping["cpu"] == ENGINE
    with pytest.raises(ValueError, match="kind=backend"):
        intra_backends("cuda")


def test_device_kinds_agree_with_the_launcher() -> None:
    """Python's device-kind table names the kinds of Swift's (`kaitian run --group KIND`), no more, no fewer."""
    swift = (Path(__file__).resolve().parents[2] / "Sources" / "KaitianLaunch" / "DeviceKind.swift").read_text()
    launcher_kinds = re.findall(r'DeviceKind\(name: "(\w+)"', swift)
    assert launcher_kinds, "DeviceKind.swift no longer parses"
    assert sorted(launcher_kinds) == sorted(DEVICE_KINDS)


def test_topology_groups_are_deterministic() -> None:
    backends = intra_backends("")
    declared = [("cuda", "h1"), ("mlu", "h1"), ("cuda", "h1"), ("cuda", "h2"), ("mlu", "h1")]
    topo = Topology.build(4, declared, backends)
    assert [(g.kind, g.host, g.ranks, g.backend) for g in topo.groups] == [
        ("cuda", "h1", (0, 2), "nccl"),
        ("mlu", "h1", (1, 4), "cncl"),
        ("cuda", "h2", (3,), "nccl"),
    ]
    assert topo.group.index == 1 and topo.local_rank == 1
    assert not topo.equal_sizes and topo.columns == 1 and topo.column_ranks(0) == [0, 1, 3]
    assert not topo.is_flat
    assert Topology.build(1, [("cpu", "h")] * 3, backends).is_flat
    assert not Topology.build(1, [("cpu", "h")] * 3, intra_backends("cpu=gloo")).is_flat


def test_process_age_and_thread_cpu_come_from_proc() -> None:
    age = kaitian.process_age_seconds()
    assert 0 < age < 24 * 3600
    threads = kaitian.thread_cpu_seconds()
    assert threads and all(seconds >= 0 for seconds in threads.values())
