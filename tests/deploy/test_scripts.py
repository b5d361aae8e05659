"""The small programs the images and docker compose run: the container health probe and the bucket init."""

import importlib.util
import json
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

from service.live import SESSION_SOURCES
from service.settings import Settings, get_settings
from worker.motion import CACHE_PREFIX as MOTION_CACHE

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


# --------------------------------------------------------------------------------------------------
# the bucket's lifecycle rules (deploy/s3/lifecycle.json), applied by the bucket init

LIFECYCLE = DEPLOY / "s3" / "lifecycle.json"


def s3_environment(monkeypatch: pytest.MonkeyPatch, endpoint: str, bucket: str, **more: str) -> None:
    for name, value in {
        "STORAGE_BACKEND": "s3",
        "S3_ENDPOINT_URL": endpoint,
        "S3_BUCKET": bucket,
        "S3_REGION": "us-east-1",
        "S3_ACCESS_KEY_ID": "testing",
        "S3_SECRET_ACCESS_KEY": "testing",
        **more,
    }.items():
        monkeypatch.setenv(f"LIVEPORTRAIT_{name}", value)


def bucket_rules(endpoint: str, bucket: str) -> dict[str, dict]:
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    return {rule["ID"]: rule for rule in client.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]}


def test_lifecycle_file_expires_every_object_prefix_the_service_writes():
    rules = create_bucket.lifecycle_rules(LIFECYCLE, "")
    expiring = {
        rule["Filter"]["Prefix"]: rule["Expiration"]["Days"] for rule in rules if "Expiration" in rule
    }
    assert set(expiring) == {"results/", "inputs/", "uploads/", SESSION_SOURCES, MOTION_CACHE}
    (multipart,) = [rule for rule in rules if "AbortIncompleteMultipartUpload" in rule]
    assert multipart["Filter"]["Prefix"] == ""
    assert multipart["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"] >= 1
    assert expiring["results/"] * create_bucket.DAY_S >= Settings.model_fields["result_ttl_s"].default
    assert expiring[MOTION_CACHE] * create_bucket.DAY_S >= Settings.model_fields["motion_cache_ttl_s"].default


@pytest.mark.parametrize(("prefix", "key_prefix"), [("", ""), ("/tenant-a/", "tenant-a/")])
def test_bucket_init_puts_the_lifecycle_rules_under_the_store_prefix(
    clean_settings: pytest.MonkeyPatch, moto_endpoint: str, prefix: str, key_prefix: str
):
    bucket = f"lp-{uuid.uuid4().hex[:12]}"
    s3_environment(clean_settings, moto_endpoint, bucket, S3_PREFIX=prefix)
    assert create_bucket.main(LIFECYCLE, attempts=1) == 0
    assert create_bucket.main(LIFECYCLE, attempts=1) == 0
    rules = bucket_rules(moto_endpoint, bucket)
    shipped = json.loads(LIFECYCLE.read_text())["Rules"]
    assert sorted(rules) == sorted(rule["ID"] for rule in shipped)
    for rule in shipped:
        applied = rules[rule["ID"]]
        assert applied["Filter"]["Prefix"] == key_prefix + rule["Filter"]["Prefix"]
        assert applied["Status"] == "Enabled"
        for action in ("Expiration", "AbortIncompleteMultipartUpload"):
            assert applied.get(action) == rule.get(action), (rule["ID"], action)


def test_bucket_init_refuses_rules_that_drop_results_of_remembered_jobs(
    clean_settings: pytest.MonkeyPatch, moto_endpoint: str, capsys
):
    bucket = f"lp-{uuid.uuid4().hex[:12]}"
    s3_environment(clean_settings, moto_endpoint, bucket, RESULT_TTL_S=str(30 * create_bucket.DAY_S))
    assert create_bucket.main(LIFECYCLE, attempts=1) == 1
    assert "LIVEPORTRAIT_RESULT_TTL_S" in capsys.readouterr().err
