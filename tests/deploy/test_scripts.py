"""The small programs the images and docker compose run: the container health probe and the bucket init."""

import importlib.util
import socket
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType

import boto3
import pytest
from moto import mock_aws
from redis import Redis
from redis.exceptions import RedisError
from rq import Worker

from service.settings import get_settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
REDIS_URL = "redis://127.0.0.1:6379/15"


def load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"deploy_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


healthcheck = load(DEPLOY / "docker" / "healthcheck.py")
create_bucket = load(DEPLOY / "compose" / "create_bucket.py")


@pytest.fixture
def clean_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


def serve(status: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status if self.path == "/healthz" else 404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("0.0.0.0", "http://127.0.0.1:8000/healthz"),
        ("::", "http://127.0.0.1:8000/healthz"),
        ("127.0.0.1", "http://127.0.0.1:8000/healthz"),
        ("::1", "http://[::1]:8000/healthz"),
    ],
)
def test_gateway_url_reaches_the_gateway_from_inside_its_container(host: str, url: str):
    assert healthcheck.gateway_url(host, 8000) == url


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False)])
def test_gateway_probe_follows_the_healthz_status(status: int, healthy: bool):
    server = serve(status)
    try:
        url = healthcheck.gateway_url("0.0.0.0", server.server_address[1])
        assert healthcheck.gateway_healthy(url) is healthy
    finally:
        server.shutdown()
        server.server_close()


def test_gateway_probe_fails_when_nothing_listens():
    assert not healthcheck.gateway_healthy(f"http://127.0.0.1:{free_port()}/healthz", timeout_s=1)


def test_probe_main_reads_the_settings(clean_settings: pytest.MonkeyPatch):
    server = serve(200)
    try:
        clean_settings.setenv("LIVEPORTRAIT_HOST", "0.0.0.0")
        clean_settings.setenv("LIVEPORTRAIT_PORT", str(server.server_address[1]))
        assert healthcheck.main(["gateway"]) == 0
    finally:
        server.shutdown()
        server.server_close()
    assert healthcheck.main([]) == 1
    assert healthcheck.main(["scheduler"]) == 1


def test_worker_probe_fails_without_redis():
    assert not healthcheck.worker_healthy(f"redis://127.0.0.1:{free_port()}/0", socket.gethostname())


@pytest.mark.e2e
def test_worker_probe_finds_a_registered_worker_of_this_host():
    connection = Redis.from_url(REDIS_URL)
    try:
        connection.ping()
    except RedisError:
        pytest.skip(f"no Redis at {REDIS_URL}")
    worker = Worker([f"healthcheck-{uuid.uuid4().hex}"], connection=connection, name=uuid.uuid4().hex)
    hostname = socket.gethostname()
    worker.register_birth()
    try:
        assert healthcheck.worker_healthy(REDIS_URL, hostname)
        assert not healthcheck.worker_healthy(REDIS_URL, f"not-{hostname}")
    finally:
        worker.register_death()
        connection.close()


@pytest.mark.parametrize("region", ["us-east-1", "eu-west-1"])
def test_ensure_bucket_creates_once(region: str):
    with mock_aws():
        client = boto3.client("s3", region_name=region)
        assert create_bucket.ensure_bucket(client, "liveportrait", region) is True
        assert create_bucket.ensure_bucket(client, "liveportrait", region) is False
        assert [b["Name"] for b in client.list_buckets()["Buckets"]] == ["liveportrait"]


def test_bucket_init_uses_the_service_settings(clean_settings: pytest.MonkeyPatch, capsys):
    clean_settings.setenv("LIVEPORTRAIT_STORAGE_BACKEND", "s3")
    clean_settings.setenv("LIVEPORTRAIT_S3_BUCKET", "jobs-bucket")
    clean_settings.setenv("LIVEPORTRAIT_S3_REGION", "us-east-1")
    clean_settings.setenv("LIVEPORTRAIT_S3_ACCESS_KEY_ID", "testing")
    clean_settings.setenv("LIVEPORTRAIT_S3_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        assert create_bucket.main(attempts=1) == 0
        assert create_bucket.main(attempts=1) == 0
        names = [b["Name"] for b in boto3.client("s3", region_name="us-east-1").list_buckets()["Buckets"]]
    assert names == ["jobs-bucket"]
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["bucket jobs-bucket: created", "bucket jobs-bucket: already exists"]


def test_bucket_init_gives_up_when_the_store_stays_down(clean_settings: pytest.MonkeyPatch):
    clean_settings.setenv("LIVEPORTRAIT_S3_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    clean_settings.setenv("LIVEPORTRAIT_S3_ACCESS_KEY_ID", "testing")
    clean_settings.setenv("LIVEPORTRAIT_S3_SECRET_ACCESS_KEY", "testing")
    assert create_bucket.main(attempts=1, delay_s=0) == 1
