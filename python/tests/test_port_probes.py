"""Bad input against a running job's Kaitian ports: every probe refused, the job unharmed."""

from __future__ import annotations

import kill_random
import probe
import pytest


def test_every_probe_is_refused_while_the_job_keeps_working() -> None:
    try:
        kill_random.launcher()
    except FileNotFoundError as error:
        pytest.skip(str(error))
    result = probe.run()
    assert result["job_error"] is None
    assert result["job_wrong_values"] == 0
    assert {row["probe"] for row in result["rows"]} == set(probe.PROBES)
    for row in result["rows"]:
        assert row["refused"], row
        assert row["job_kept_working"], row
