"""Property-based API testing: schemathesis with every check against the gateway's own OpenAPI spec.

The gateway runs as `liveportrait gateway` does (uvicorn in its own process, on a free loopback
port) with the real Redis and the local store, with or without an API key, and a generous rate
limit. schemathesis's CLI runs every phase (examples, coverage, fuzzing, and stateful, which chains
create -> get/cancel/result by the spec's links) with `--checks all`: no 5xx, every status and
header documented, every body of its documented schema and content type, schema-valid requests
accepted and schema-invalid ones refused. Seeded, and bounded: at most 20 cases per operation and
phase, the run stopped after RUN_TIMEOUT_S. tests/service/schemathesis.toml says where a content
check may refuse a schema-valid file.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from service.settings import Settings
from tests.service.test_auth_rate_limit import gateway_process

pytest.importorskip("schemathesis")

KEY = "schemathesis-key"
CONFIG = Path(__file__).with_name("schemathesis.toml")
RUN_TIMEOUT_S = 150


@pytest.mark.slow
@pytest.mark.parametrize("auth", ["api-key", "open"])
def test_every_check_passes(auth: str, make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    keys = [hashlib.sha256(KEY.encode()).hexdigest()] if auth == "api-key" else []
    settings = make_settings(api_keys=keys, rate_limit_per_minute=1_000_000)
    with gateway_process(settings, tmp_path / "gateway.log") as url:
        run = _schemathesis(url, KEY if keys else None, tmp_path)
    summary = run.stdout.split("SUMMARY", 1)[-1]
    assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-2000:]
    assert "Stateful" in summary and not re.search(r"❌|\b\d+ (failed|errors?)\b", summary), run.stdout


def _schemathesis(url: str, key: str | None, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """schemathesis's CLI against the gateway at `url`: all checks and phases, seeded and bounded."""
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(CONFIG),
        "run",
        f"{url}/openapi.json",
        "--checks",
        "all",
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--max-examples",
        "20",
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
    return subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, cwd=tmp_path)
