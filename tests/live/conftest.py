"""Live sessions over a real gateway (uvicorn on loopback) and a real worker live server (websockets on
loopback), with the real Redis and the local store; clients are real WebSocket clients.

Most tests run the worker on bench.standin's STAND-IN MODEL (same shapes as LivePortrait, no network:
each frame is flat, its source's colour, brighter as the driving motion moves away from the
reference); the face detection, crops, JPEG, relay and protocol are the real ones. test_real_model
runs the real networks (synthetic weights) on a few frames.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from bench.standin import stand_in_engine
from engines.demo import head_motion_frames, portrait
from engines.engine import Engine
from service.client import Client
from service.live_client import LiveConnection, LiveFrame, Received
from service.settings import Settings
from tests.waiting import wait_until
from tests.worker.doubles import write_png
from worker.live import LiveServer


def jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    """RGB (H, W, 3) uint8 as JPEG bytes."""
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    return cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()


def decoded(data: bytes) -> np.ndarray:
    """JPEG bytes -> RGB (H, W, 3) uint8."""
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert bgr is not None, "not a JPEG"
    return bgr[..., ::-1]


def driving_frames(n: int) -> list[bytes]:
    """`n` 512 x 512 camera frames of the portrait's head swaying, as JPEG."""
    return [jpeg(f) for f in head_motion_frames(portrait(), n, size=512)]


def brightened(data: bytes, factor: float) -> bytes:
    """A JPEG frame made brighter (the stand-in's M sees the change as an expression)."""
    return jpeg(np.clip(decoded(data).astype(np.float32) * factor, 0, 255).astype(np.uint8))


def next_frame(live: LiveConnection, timeout: float = 60) -> LiveFrame:
    """The next animated frame (failing on any event before it)."""
    item = live.receive(timeout=timeout)
    assert isinstance(item, LiveFrame), item
    return item


def next_event(live: LiveConnection, timeout: float = 60) -> Received:
    """The next item that is not an animated frame."""
    while isinstance(item := live.receive(timeout=timeout), LiveFrame):
        pass
    return item


@dataclass
class LiveStack:
    """A gateway and a live worker on loopback for one test."""

    settings: Settings
    url: str
    worker: LiveServer
    folder: Path

    def client(self) -> Client:
        return Client(self.url)

    def source(self, tint: tuple[float, float, float] = (1.0, 1.0, 1.0), name: str = "face.png") -> Path:
        """The portrait, its channels scaled by `tint`, as a PNG."""
        rgb = np.clip(portrait().astype(np.float32) * np.array(tint), 0, 255).astype(np.uint8)
        return write_png(self.folder / name, rgb)

    def connect(self, source: Path | None = None, **options: Any) -> LiveConnection:
        with self.client() as client:
            grant = client.open_live(source or self.source(), options=options)
        return LiveConnection(grant.websocket_url)

    def active(self) -> int:
        """Sessions holding a slot of the worker now."""
        return int(self.worker.redis.zcard(self.worker.registry.slots_key(self.worker.name)))


@pytest.fixture(scope="session")
def standin_engine() -> Engine:
    return stand_in_engine()


@pytest.fixture
def live_settings(make_settings: Callable[..., Settings]) -> Callable[..., Settings]:
    """Settings of a live test: any free port for the worker, fast heartbeats, two slots."""

    def build(**overrides: Any) -> Settings:
        values: dict[str, Any] = {"live_port": 0, "live_heartbeat_s": 0.2, "live_slots": 2}
        return make_settings(**{**values, **overrides})

    return build


@pytest.fixture
def live_worker() -> Iterator[Callable[..., LiveServer]]:
    """Start live servers for this test: `live_worker(settings, engine, name=...)`; all stop at teardown."""
    with ExitStack() as stack:

        def start(settings: Settings, engine: Engine, name: str = "live-1", **kwargs: Any) -> LiveServer:
            server = LiveServer(settings, engine, name=name, **kwargs)
            server.start()
            stack.callback(server.stop)
            return server

        yield start


@pytest.fixture
def live_stack(
    live_settings: Callable[..., Settings],
    gateway_server: Callable[[Settings], str],
    live_worker: Callable[..., LiveServer],
    standin_engine: Engine,
    tmp_path: Path,
) -> Callable[..., LiveStack]:
    """`live_stack(**settings)`: a gateway and a stand-in live worker on those settings."""

    def start(**overrides: Any) -> LiveStack:
        settings = live_settings(**overrides)
        url = gateway_server(settings)
        return LiveStack(settings, url, live_worker(settings, standin_engine), tmp_path)

    return start


def wait_for_slots(stack: LiveStack, active: int) -> None:
    """Wait until the worker's sessions holding a slot are `active`."""
    wait_until(lambda: stack.active() == active, 30, f"{active} sessions holding a slot")
