"""Fixtures of the reliability tests: media files and settings with short, test-sized timings."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from service.settings import Settings
from tests.worker.doubles import write_inputs

FAST_RECOVERY: dict[str, Any] = {
    "worker_heartbeat_s": 1,
    "job_abandoned_after_s": 3,
    "reaper_interval_s": 1,
    "scheduler_interval_s": 1,
    "retry_backoff_s": [1],
}
"""Timings that let a test watch an abandoned job come back within seconds (defaults: minutes)."""


@pytest.fixture
def media(tmp_path: Path) -> dict[str, Path]:
    """A face photo and a 16-frame 25 fps driving video."""
    folder = tmp_path / "media"
    folder.mkdir()
    face, driving = write_inputs(folder, 16)
    return {"face": face, "driving": driving}


@pytest.fixture
def fast_settings(make_settings: Callable[..., Settings]) -> Callable[..., Settings]:
    """`make_settings` with FAST_RECOVERY timings."""
    return lambda **overrides: make_settings(**{**FAST_RECOVERY, **overrides})
