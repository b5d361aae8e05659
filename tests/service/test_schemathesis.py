"""Property-based API testing: schemathesis against the gateway's own OpenAPI spec, zero 5xx allowed.

The gateway runs as `liveportrait gateway` does (uvicorn in its own process, on a free loopback
port) with the real Redis and the local store, with or without an API key, and a generous rate
limit; schemathesis's CLI generates up to 50 cases per operation in each of its
coverage, fuzzing and stateful phases (which chain create -> get/cancel/result by the spec's links)
and fails on any 5xx answer.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from service.settings import Settings
from tests.service.test_auth_rate_limit import gateway_process

pytest.importorskip("schemathesis")

KEY = "schemathesis-key"


@pytest.mark.slow
@pytest.mark.parametrize("auth", ["api-key", "open"])
def test_no_server_errors(auth: str, make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    keys = [hashlib.sha256(KEY.encode()).hexdigest()] if auth == "api-key" else []
    settings = make_settings(api_keys=keys, rate_limit_per_minute=1_000_000)
    with gateway_process(settings, tmp_path / "gateway.log") as url:
        run = _schemathesis(url, KEY if keys else None, tmp_path)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "failed" not in run.stdout.split("SUMMARY", 1)[-1], run.stdout


def _schemathesis(url: str, key: str | None, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """schemathesis's CLI against the gateway at `url`: at most 50 cases per operation and phase."""
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        f"{url}/openapi.json",
        "--checks",
        "not_a_server_error",
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--max-examples",
        "50",
        "--seed",
        "20260101",
        "--request-timeout",
        "10",
        "--report",
        "junit",
        "--report-dir",
        str(tmp_path),
    ]
    if key:
        command += ["--header", f"Authorization: Bearer {key}"]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp_path)
