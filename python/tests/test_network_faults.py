"""Link cuts and a degraded link between two network namespaces (two "hosts"), as root.

A cut link closes no socket: only heartbeats find it. Both ranks must fail naming the other
within about the heartbeat timeout (2 s here; the call timeout is 60 s). A slow, lossy link
must only slow the job down: every allreduce result stays exact.
"""

from __future__ import annotations

import os

import netfaults
import pytest
from kaitian import _native

pytestmark = [
    pytest.mark.skipif(
        not any(p.is_file() for p in _native.library_candidates()), reason="libKaitianC.so is not built"
    ),
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
]

HEARTBEAT_TIMEOUT = 2.0
CALL_TIMEOUT = 60.0


def _pair_or_skip() -> None:
    try:
        with netfaults.namespace_pair():
            pass
    except netfaults.NamespaceUnavailable as error:
        pytest.skip(str(error))


@pytest.mark.parametrize("how", list(netfaults.CUTS))
def test_cut_link_is_reported_by_both_ranks_within_the_heartbeat_timeout(how: str) -> None:
    _pair_or_skip()
    try:
        result = netfaults.cut_link(how, heartbeat_timeout=HEARTBEAT_TIMEOUT, call_timeout=CALL_TIMEOUT)
    except netfaults.QdiscUnavailable as error:
        pytest.skip(f"this kernel cannot apply the fault: {error}")
    print(f"{result['fault']}: detected after {result['detect_seconds']} s")
    assert result["exit_codes"] == [3, 3], result
    assert result["names_peer"] == [True, True], result["messages"]
    for message in result["messages"]:
        assert "no heartbeat for" in message, message
    # Found by heartbeats, well before the call timeout would have fired.
    assert all(s is not None and s < CALL_TIMEOUT / 2 for s in result["detect_seconds"]), result


@pytest.mark.parametrize("spec", netfaults.DEGRADED, ids=lambda spec: spec[0])
def test_degraded_link_slows_the_job_but_every_result_is_exact(spec: tuple[str, ...]) -> None:
    _pair_or_skip()
    try:
        slow = netfaults.degraded(spec, iterations=40, elements=16384)
    except netfaults.QdiscUnavailable as error:
        pytest.skip(f"this kernel cannot apply the fault: {error}")
    clean = netfaults.degraded((), iterations=40, elements=16384)
    print(f"clean {clean['seconds']:.2f} s, {' '.join(spec)} {slow['seconds']:.2f} s")
    assert clean["wrong_values"] == 0
    assert slow["wrong_values"] == 0


def test_namespaces_are_removed() -> None:
    _pair_or_skip()
    with netfaults.namespace_pair() as pair:
        names = pair.names
    listed = os.popen("ip netns list").read()
    assert not any(name in listed for name in names)
