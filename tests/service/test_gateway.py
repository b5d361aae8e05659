"""The gateway under uvicorn on loopback, with the real Redis and the local store; httpx as client."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from service.queue import JobQueue, connect
from service.settings import Settings
from tests.conftest import free_port
from tests.worker.doubles import write_inputs

KEY, OTHER_KEY = "test-key-one", "test-key-two"
LIMIT = 2 * 1024 * 1024


def digest(key: str) -> str:
    """The sha256 hex digest the settings hold for an API key."""
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass
class Gw:
    """A running gateway for one test."""

    url: str
    settings: Settings
    queue: JobQueue
    face: bytes
    driving: bytes

    def client(self, key: str | None = KEY) -> httpx.Client:
        """An httpx client authenticated with `key` (Bearer)."""
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=10)

    def files(
        self, source: bytes | None = None, driving: bytes | None = None
    ) -> dict[str, tuple[str, bytes]]:
        """Multipart files for a job."""
        return {
            "source": ("face.png", source or self.face),
            "driving": ("driving.mp4", driving or self.driving),
        }


@pytest.fixture
def gw(
    make_settings: Callable[..., Settings], gateway_server: Callable[[Settings], str], tmp_path: Path
) -> Gw:
    """A gateway with two API keys, a 2 MiB request limit and the local store."""
    settings = make_settings(
        api_keys=[digest(KEY), digest(OTHER_KEY)], max_request_bytes=LIMIT, max_input_bytes=LIMIT // 2
    )
    face, driving = (path.read_bytes() for path in write_inputs(tmp_path))
    return Gw(gateway_server(settings), settings, JobQueue(connect(settings), settings), face, driving)


def test_openapi_operation_ids(gw: Gw) -> None:
    spec = httpx.get(f"{gw.url}/openapi.json").json()
    ids = {op["operationId"] for path in spec["paths"].values() for op in path.values()}
    assert {"create_job", "get_job", "cancel_job", "get_job_result", "create_upload"} <= ids
    assert {"healthz", "readyz", "metrics", "send_upload"} <= ids
    assert set(spec["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]) == {
        "application/json",
        "multipart/form-data",
    }


def test_gateway_never_imports_torch_engines_or_worker() -> None:
    code = (
        "import sys\n"
        "from service.gateway import create_app\n"
        "from service.client import Client\n"
        "from service.settings import Settings\n"
        "create_app(Settings())\n"
        "bad = [m for m in ('torch', 'engines', 'worker') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])


def test_api_keys(gw: Gw) -> None:
    unknown = "/v1/jobs/" + "0" * 32
    for client in (gw.client(None), gw.client("wrong-key")):
        with client:
            response = client.get(unknown)
            assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
            assert client.post("/v1/jobs", files=gw.files()).status_code == 401
    assert httpx.get(gw.url + unknown, headers={"X-API-Key": OTHER_KEY}).status_code == 404
    with gw.client() as client:
        assert client.get(unknown).status_code == 404
        assert client.get("/v1/jobs/not-an-id").status_code == 404
    assert httpx.get(f"{gw.url}/healthz").json() == {"status": "ok"}


def test_submit_multipart_then_etag_and_304(gw: Gw) -> None:
    with gw.client() as client:
        response = client.post(
            "/v1/jobs", files=gw.files(), data={"options": '{"crf": 20}', "priority": "high"}
        )
        assert response.status_code == 202, response.text
        job = response.json()
        assert response.headers["location"] == f"/v1/jobs/{job['id']}"
        assert (job["status"], job["priority"], job["progress"]["frames_done"]) == ("queued", "high", 0)
        assert gw.queue.depths()["high"] == 1
        record = gw.queue.get(job["id"])
        assert record is not None and record.payload["options"]["crf"] == 20
        assert record.payload["source"]["content_type"] == "image/png"

        first = client.get(response.headers["location"])
        etag = first.headers["etag"]
        assert first.status_code == 200 and first.json() == job
        again = client.get(f"/v1/jobs/{job['id']}", headers={"If-None-Match": etag})
        assert again.status_code == 304 and again.headers["etag"] == etag and again.content == b""

        gw.queue.claim(job["id"], "w")
        gw.queue.progress(job["id"], 2, 8)
        changed = client.get(f"/v1/jobs/{job['id']}", headers={"If-None-Match": etag})
        assert changed.status_code == 200 and changed.headers["etag"] != etag
        body = changed.json()
        assert body["status"] == "running" and body["progress"]["fraction"] == 0.25
        assert body["progress"]["eta_s"] is not None and body["started_at"] is not None


def test_idempotency_key(gw: Gw) -> None:
    with gw.client() as client:
        headers = {"Idempotency-Key": "order-42"}
        first = client.post("/v1/jobs", files=gw.files(), headers=headers)
        replay = client.post("/v1/jobs", files=gw.files(), headers=headers)
        assert (first.status_code, replay.status_code) == (202, 200)
        assert first.json()["id"] == replay.json()["id"]
        assert replay.headers["location"] == first.headers["location"]
        different = client.post(
            "/v1/jobs", files=gw.files(), data={"options": '{"crf": 30}'}, headers=headers
        )
        assert different.status_code == 422 and "Idempotency-Key" in different.json()["detail"]
        other_file = client.post("/v1/jobs", files=gw.files(source=gw.face + b"\0"), headers=headers)
        assert other_file.status_code == 422
        fresh = client.post("/v1/jobs", files=gw.files(), headers={"Idempotency-Key": "order-43"})
        assert fresh.status_code == 202 and fresh.json()["id"] != first.json()["id"]
    assert gw.queue.depths()["default"] == 2


def test_cancel(gw: Gw) -> None:
    store_dir = Path(gw.settings.local_storage_dir)
    with gw.client() as client:
        queued = client.post("/v1/jobs", files=gw.files()).json()["id"]
        assert any((store_dir / "inputs" / queued).iterdir())
        response = client.post(f"/v1/jobs/{queued}/cancel")
        assert response.status_code == 200 and response.json()["status"] == "canceled"
        assert response.json()["finished_at"] is not None
        assert client.post(f"/v1/jobs/{queued}/cancel").status_code == 200
        assert not (store_dir / "inputs" / queued).exists(), "a canceled job's inputs are deleted"
        assert gw.queue.depths()["default"] == 0
        assert client.get(f"/v1/jobs/{queued}/result").status_code == 409

        running = client.post("/v1/jobs", files=gw.files()).json()["id"]
        gw.queue.claim(running, "w")
        response = client.post(f"/v1/jobs/{running}/cancel")
        assert response.status_code == 202
        assert (response.json()["status"], response.json()["cancel_requested"]) == ("running", True)
        gw.queue.fail(running, "no_face", "no face found")
        assert client.post(f"/v1/jobs/{running}/cancel").status_code == 409
        failed = client.get(f"/v1/jobs/{running}").json()
        assert failed["error"] == {"code": "no_face", "message": "no face found"}


def test_other_callers_jobs_are_invisible(gw: Gw) -> None:
    with gw.client() as mine, gw.client(OTHER_KEY) as theirs:
        job_id = mine.post("/v1/jobs", files=gw.files()).json()["id"]
        assert theirs.get(f"/v1/jobs/{job_id}").status_code == 404
        assert theirs.post(f"/v1/jobs/{job_id}/cancel").status_code == 404
        assert mine.get(f"/v1/jobs/{job_id}").status_code == 200


@pytest.mark.parametrize(
    ("data", "loc", "fragment"),
    [
        ({"options": '{"crf": 99}'}, ["body", "options", "crf"], "less than or equal to 51"),
        ({"options": '{"no_such_option": 1}'}, ["body", "options", "no_such_option"], "Extra inputs"),
        ({"options": "{not json"}, ["body", "options"], "Invalid JSON"),
        ({"priority": "urgent"}, ["body", "priority"], "priority must be one of"),
        ({"output": '{"filename": "../x"}'}, ["body", "output", "filename"], "should match pattern"),
        ({"colour": "red"}, ["body"], "unknown form fields"),
    ],
)
def test_invalid_multipart_fields_are_422(
    gw: Gw, data: dict[str, str], loc: list[str], fragment: str
) -> None:
    with gw.client() as client:
        response = client.post("/v1/jobs", files=gw.files(), data=data)
    assert response.status_code == 422, response.text
    error = response.json()["errors"][0]
    assert error["loc"] == loc and fragment in error["msg"], error


def test_bad_inputs_are_4xx(gw: Gw) -> None:
    with gw.client() as client:
        not_media = client.post("/v1/jobs", files=gw.files(driving=b"print('hello')\n" * 10))
        assert not_media.status_code == 415 and "driving" in not_media.json()["detail"]
        only_source = client.post("/v1/jobs", files={"source": ("face.png", gw.face)})
        assert only_source.status_code == 422
        too_big = client.post("/v1/jobs", files=gw.files(driving=gw.driving + b"\0" * (LIMIT // 2)))
        assert too_big.status_code == 413
        wrong_type = client.post("/v1/jobs", content=b"source=x", headers={"Content-Type": "text/plain"})
        assert wrong_type.status_code == 415
        bad_json = client.post("/v1/jobs", content=b"{", headers={"Content-Type": "application/json"})
        assert bad_json.status_code == 422
        for source, fragment in (
            ({"url": "ftp://example.com/a.png"}, "scheme"),
            ({"url": "http://127.0.0.1:1/a.png"}, "loopback"),
            ({"url": "s3://somebody-elses-bucket/a.png"}, "not an allowed input bucket"),
            ({"upload_id": "0" * 32}, "not found"),
            ({"upload_id": "../../etc"}, "pattern"),
            ({"url": "https://93.184.216.34/a.png", "upload_id": "0" * 32}, "exactly one"),
        ):
            body = {"source": source, "driving": {"url": "https://93.184.216.34/d.mp4"}}
            response = client.post("/v1/jobs", json=body)
            assert response.status_code == 422, (source, response.text)
            assert fragment in json.dumps(response.json()), (source, response.json())
        assert client.get("/v1/jobs/" + "0" * 32 + "/result").status_code == 404


def test_declared_oversized_body_is_413(gw: Gw) -> None:
    with gw.client() as client:
        response = client.post(
            "/v1/jobs",
            content=b"\0" * (LIMIT + 1),
            headers={"Content-Type": "multipart/form-data; boundary=x"},
        )
    assert response.status_code == 413 and "larger than" in response.json()["detail"]


def test_local_uploads(gw: Gw) -> None:
    with gw.client() as client:
        announced = client.post("/v1/uploads", json={"size_bytes": LIMIT})
        assert announced.status_code == 422 and announced.json()["code"] == "too_large", announced.text
        assert announced.json()["errors"][0]["loc"] == ["body", "size_bytes"]
        grants = [client.post("/v1/uploads").json() for _ in range(3)]
    for grant in grants:
        assert grant["url"].startswith(gw.url + "/v1/uploads/") and grant["max_bytes"] == LIMIT // 2
    source, driving, spare = grants
    assert (
        httpx.post(source["url"], data=source["fields"], files={"file": ("f.png", gw.face)}).status_code
        == 204
    )
    assert (
        httpx.post(driving["url"], data=driving["fields"], files={"file": ("d", gw.driving)}).status_code
        == 204
    )
    forged = {**spare["fields"], "max_bytes": str(10 * LIMIT)}
    assert httpx.post(spare["url"], data=forged, files={"file": ("f.png", gw.face)}).status_code == 403
    wrong_id = httpx.post(spare["url"].replace(spare["upload_id"], source["upload_id"]), data=spare["fields"])
    assert wrong_id.status_code == 403
    not_media = httpx.post(spare["url"], data=spare["fields"], files={"file": ("x.png", b"MZ" * 100)})
    assert not_media.status_code == 415
    body = {"source": {"upload_id": source["upload_id"]}, "driving": {"upload_id": driving["upload_id"]}}
    with gw.client() as client:
        response = client.post("/v1/jobs", json=body)
        assert response.status_code == 202, response.text
        missing = client.post("/v1/jobs", json={**body, "driving": {"upload_id": spare["upload_id"]}})
        assert missing.status_code == 422 and "not found" in missing.text
    record = gw.queue.get(response.json()["id"])
    assert record is not None and record.payload["driving"] == {
        "key": f"uploads/{driving['upload_id']}",
        "url": None,
        "content_type": "video/mp4",
    }


def test_readyz_and_metrics(gw: Gw, make_settings: Callable[..., Settings], gateway_server: Callable) -> None:
    ready = httpx.get(f"{gw.url}/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"redis": "ok", "storage": "ok"}
    metrics = httpx.get(f"{gw.url}/metrics")
    assert metrics.status_code == 200 and 'liveportrait_queue_depth{priority="high"} 0.0' in metrics.text

    down = gateway_server(make_settings(redis_url=f"redis://127.0.0.1:{free_port()}/0"))
    started = time.monotonic()
    response = httpx.get(f"{down}/readyz")
    assert response.status_code == 503 and response.json()["checks"]["redis"].startswith("error")
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "service_unavailable" and "redis error" in response.json()["detail"]
    assert response.json()["checks"]["storage"] == "ok" and time.monotonic() - started < 5
    assert httpx.get(f"{down}/healthz").status_code == 200
    job = httpx.post(f"{down}/v1/jobs", files=gw.files())
    assert job.status_code == 503 and "unavailable" in job.json()["detail"]
    assert httpx.get(f"{down}/metrics").status_code == 200
