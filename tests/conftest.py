"""Shared pytest fixtures."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.golden import load_golden


@pytest.fixture(scope="session")
def golden_crop() -> dict[str, np.ndarray]:
    """Arrays of the crop/ratio/paste-back golden file (``LIVEPORTRAIT_GOLDEN_CROP`` overrides the path)."""
    return load_golden("LIVEPORTRAIT_GOLDEN_CROP", "golden_crop_seed0.npz")


@pytest.fixture(scope="session", autouse=True)
def c2pa_dev_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Where this session's development signing credentials go (never the user's cache directory)."""
    folder = tmp_path_factory.mktemp("c2pa-dev")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LIVEPORTRAIT_C2PA_DEV_DIR", str(folder))
        yield folder


# --- service and worker: real Redis, moto S3 and uvicorn on loopback ---------------------------

TEST_REDIS_URL = os.environ.get("LIVEPORTRAIT_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The test Redis (db 15 by default); tests are skipped when it does not answer."""
    import redis

    client = redis.Redis.from_url(TEST_REDIS_URL, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.exceptions.RedisError as exc:
        if os.environ.get("CI"):  # CI machines run Redis: a missing one is a failure, not a skip
            pytest.fail(f"no Redis at {TEST_REDIS_URL}: {exc}")
        pytest.skip(f"no Redis at {TEST_REDIS_URL}: {exc}")
    finally:
        client.close()
    return TEST_REDIS_URL


@pytest.fixture
def queue_prefix(redis_url: str) -> Iterator[str]:
    """A queue prefix of this test alone; its keys (ours and RQ's) are deleted afterwards."""
    import uuid

    from tests.redis_keys import purge_prefix

    prefix = f"lptest-{uuid.uuid4().hex[:10]}"
    yield prefix
    purge_prefix(redis_url, prefix)


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """An S3 endpoint (moto in server mode) on a free loopback port."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(moto_endpoint: str) -> str:
    """A fresh bucket on the moto endpoint."""
    import uuid

    import boto3

    name = f"lp-{uuid.uuid4().hex[:12]}"
    boto3.client(
        "s3",
        endpoint_url=moto_endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    ).create_bucket(Bucket=name)
    return name


@pytest.fixture
def make_settings(
    redis_url: str, queue_prefix: str, tmp_path: Path, moto_endpoint: str
) -> Callable[..., Any]:
    """Build a Settings for this test: its own queue prefix and directories; S3 on moto if asked."""
    from service.settings import Settings

    def build(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "redis_url": redis_url,
            "queue_prefix": queue_prefix,
            "local_storage_dir": tmp_path / "store",
            "work_dir": tmp_path / "work",
            "s3_endpoint_url": moto_endpoint,
            "s3_access_key_id": "testing",
            "s3_secret_access_key": "testing",
            "job_retries": 0,
            "worker_heartbeat_s": 1,
            "log_json": False,
        }
        values.update(overrides)
        return Settings(**values)

    return build


@contextmanager
def serve_app(app: Any) -> Iterator[str]:
    """Serve an ASGI app with uvicorn in a thread on a free loopback port; yields its base URL."""
    import socket
    import threading

    import uvicorn

    from tests.waiting import wait_until

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=2)
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()

    def started() -> bool:
        if not server.started and not thread.is_alive():
            raise RuntimeError("uvicorn exited before it started")
        return server.started

    wait_until(started, 10, "uvicorn to start")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture
def gateway_server() -> Iterator[Callable[[Any], str]]:
    """Start gateways for this test: `url = gateway_server(settings)`; all stop at teardown."""
    from contextlib import ExitStack

    from service.gateway import create_app

    with ExitStack() as stack:
        yield lambda settings: stack.enter_context(serve_app(create_app(settings)))
