"""A live worker process killed mid-session: the client sees `closing` worker_lost and close code 4004,
and the dead worker leaves routing (a new session answers 503 once its heartbeat is stale)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from common.live import CLOSE_CODES, Closing
from service.live import LiveRegistry
from service.live_client import Closed
from service.queue import connect
from service.settings import Settings
from tests.live.conftest import LiveStack, driving_frames, next_event, next_frame
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def worker_process(tmp_path: Path) -> Iterator[Callable[[Settings], subprocess.Popen[bytes]]]:
    """Start tests.live.worker_entry processes on the settings given; all are killed at teardown."""
    processes: list[subprocess.Popen[bytes]] = []
    logs = ExitStack()

    def start(settings: Settings) -> subprocess.Popen[bytes]:
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "LIVEPORTRAIT_REDIS_URL": settings.redis_url,
            "LIVEPORTRAIT_QUEUE_PREFIX": settings.queue_prefix,
            "LIVEPORTRAIT_LOCAL_STORAGE_DIR": str(settings.local_storage_dir),
            "LIVEPORTRAIT_LIVE_PORT": "0",
            "LIVEPORTRAIT_LIVE_HEARTBEAT_S": str(settings.live_heartbeat_s),
            "LIVEPORTRAIT_LOG_JSON": "false",
        }
        log = logs.enter_context((tmp_path / "worker.log").open("wb"))
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.live.worker_entry", "doomed"],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=log,
        )
        processes.append(process)
        return process

    yield start
    for process in processes:
        process.kill()
        process.wait(timeout=30)
    logs.close()


def test_the_worker_killed_mid_session_closes_it_with_worker_lost(
    live_settings: Callable[..., Settings],
    gateway_server: Callable[[Settings], str],
    worker_process: Callable[[Settings], subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    settings = live_settings()
    url = gateway_server(settings)
    process = worker_process(settings)
    registry = LiveRegistry(connect(settings), settings)

    def advertised() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"the worker exited: {(tmp_path / 'worker.log').read_text()}")
        return registry.capacity().workers == 1

    wait_until(advertised, 120, "the live worker's advertisement")
    stack = LiveStack(settings, url, None, tmp_path)  # type: ignore[arg-type]
    with stack.connect() as live:
        live.send_frame(driving_frames(1)[0])
        next_frame(live)
        process.kill()
        closing = next_event(live)
        closed = next_event(live)
    assert isinstance(closing, Closing) and closing.reason == "worker_lost", closing
    assert closed == Closed(CLOSE_CODES["worker_lost"], "worker_lost"), closed
    wait_until(lambda: registry.capacity().workers == 0, 30, "the dead worker out of routing")
    with stack.source().open("rb") as file:
        answer = httpx.post(f"{url}/v1/live/sessions", files={"source": file})
    assert answer.status_code == 503, answer.text
