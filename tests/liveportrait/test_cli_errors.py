"""The command's failures: one line with the code and what to do, an exit status per class, the
traceback only with --verbose. `liveportrait` runs as a user runs it (a subprocess) against a real
gateway on loopback (real Redis, local store)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from liveportrait.failures import EXIT_AUTH, EXIT_INPUT, EXIT_NOT_FOUND, EXIT_UNAVAILABLE, EXIT_USAGE
from service.settings import Settings
from tests.conftest import free_port
from tests.worker.doubles import face_image, write_png

KEY = "cli-key"
REPO = Path(__file__).resolve().parents[2]


def liveportrait(*args: str) -> subprocess.CompletedProcess[str]:
    """`liveportrait ARGS` in a subprocess (no API key from this environment)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVEPORTRAIT_")}
    env["PYTHONPATH"] = str(REPO)
    command = [sys.executable, "-m", "liveportrait.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=env, cwd=REPO)


def assert_one_line(run: subprocess.CompletedProcess[str], status: int, code: str) -> str:
    """The run failed with `status`, saying `error [code]: ...; advice` on one line and nothing else."""
    assert run.returncode == status, (run.returncode, run.stdout, run.stderr)
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in run.stderr, run.stderr
    assert lines[0].startswith(f"error [{code}]: ") and "; " in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def gateway(make_settings: Callable[..., Settings], gateway_server: Callable[[Settings], str]) -> str:
    return gateway_server(make_settings(api_keys=[hashlib.sha256(KEY.encode()).hexdigest()]))


def test_client_failures_are_one_line_with_a_status_per_class(gateway: str, tmp_path: Path) -> None:
    job_id = "0" * 32
    line = assert_one_line(liveportrait("status", job_id, "--url", gateway), EXIT_AUTH, "unauthorized")
    assert "--api-key" in line and "HTTP 401" in line
    missing = liveportrait("status", job_id, "--url", gateway, "--api-key", KEY)
    assert "no such job" in assert_one_line(missing, EXIT_NOT_FOUND, "not_found")

    face = write_png(tmp_path / "face.png", face_image())
    text = tmp_path / "driving.mp4"
    text.write_text("not a video at all")
    refused = liveportrait("submit", str(face), str(text), "--url", gateway, "--api-key", KEY)
    line = assert_one_line(refused, EXIT_INPUT, "unsupported_media")
    assert "'driving' is not an image or video" in line and "motion template" in line

    pickled = tmp_path / "motion.npz"
    pickled.write_bytes(b"\x80\x04\x95" + b"\0" * 64)
    refused = liveportrait("submit", str(face), str(pickled), "--url", gateway, "--api-key", KEY)
    assert "pickle" in assert_one_line(refused, EXIT_INPUT, "bad_template")

    down = f"http://127.0.0.1:{free_port()}"
    line = assert_one_line(
        liveportrait("status", job_id, "--url", down), EXIT_UNAVAILABLE, "service_unavailable"
    )
    assert down in line


def test_usage_and_local_failures(tmp_path: Path) -> None:
    nan = liveportrait("submit", "a.png", "b.mp4", "--driving-multiplier", "nan")
    assert "finite" in assert_one_line(nan, EXIT_USAGE, "invalid_options")
    absent = liveportrait("submit", str(tmp_path / "absent.png"), "b.mp4", "--url", "http://127.0.0.1:9")
    assert "absent.png" in assert_one_line(absent, EXIT_NOT_FOUND, "input_missing")
    assert liveportrait("submit").returncode == EXIT_USAGE  # argparse's own usage error

    verbose = liveportrait("--verbose", "status", "0" * 32, "--url", f"http://127.0.0.1:{free_port()}")
    assert verbose.returncode == EXIT_UNAVAILABLE
    assert "Traceback" in verbose.stderr and verbose.stderr.strip().splitlines()[-1].startswith(
        "error [service_unavailable]: "
    )
