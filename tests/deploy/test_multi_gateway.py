"""Two gateways, one worker, one Redis, one S3 (`pytest -k e2e`): the deployment's scale-out shape.

The gateways are separate processes (`python -m liveportrait.cli gateway`, uvicorn on two free
loopback ports, JSON logs); the worker is a thread running the engine's test double
(tests/worker/doubles.FakeAnimator: it decodes the inputs and writes a real H.264 MP4 with PyAV,
standing in for the GPU model); S3 is moto in server mode. Submissions and polls alternate between
the gateways. Every job must finish exactly once: one attempt, one result object, one render, and
the same status, ETag and metrics from either gateway.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import av
import boto3
import httpx
import pytest

from service.client import Client
from service.settings import Settings
from tests.conftest import free_port
from tests.service.test_metrics import scrape, value
from tests.waiting import wait_until
from tests.worker.doubles import FakeAnimator, fake_engine, running_worker, write_inputs

REPO = Path(__file__).resolve().parents[2]
API_KEY = "multi-gateway-key"
PUBLIC_URL = "http://liveportrait.test"
FRAMES = 8
ORDER = {"queued": 0, "running": 1, "succeeded": 2}


@dataclass
class GatewayProcess:
    """A gateway subprocess and where it logs."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def log_lines(self) -> list[dict]:
        """Its log so far, one JSON object per line (fails on a line that is not JSON)."""
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]


def gateway_env(settings: Settings, port: int) -> dict[str, str]:
    """The environment of a gateway process with these settings on `port`."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("LIVEPORTRAIT_")}
    assert settings.s3_access_key_id and settings.s3_secret_access_key and settings.s3_endpoint_url
    env.update(
        {
            "LIVEPORTRAIT_REDIS_URL": settings.redis_url,
            "LIVEPORTRAIT_QUEUE_PREFIX": settings.queue_prefix,
            "LIVEPORTRAIT_JOB_RETRIES": str(settings.job_retries),
            "LIVEPORTRAIT_STORAGE_BACKEND": "s3",
            "LIVEPORTRAIT_S3_BUCKET": settings.s3_bucket,
            "LIVEPORTRAIT_S3_ENDPOINT_URL": settings.s3_endpoint_url,
            "LIVEPORTRAIT_S3_ACCESS_KEY_ID": settings.s3_access_key_id.get_secret_value(),
            "LIVEPORTRAIT_S3_SECRET_ACCESS_KEY": settings.s3_secret_access_key.get_secret_value(),
            "LIVEPORTRAIT_API_KEYS": json.dumps(settings.api_keys),
            "LIVEPORTRAIT_HOST": "127.0.0.1",
            "LIVEPORTRAIT_PORT": str(port),
            "LIVEPORTRAIT_PUBLIC_BASE_URL": PUBLIC_URL,
            "LIVEPORTRAIT_LOG_JSON": "true",
            "LIVEPORTRAIT_LOG_LEVEL": "INFO",
        }
    )
    return env


@contextmanager
def gateway_processes(settings: Settings, logs: list[Path]) -> Iterator[list[GatewayProcess]]:
    """`liveportrait gateway` subprocesses (one per log file), started together and ready
    (GET /readyz 200) when yielded; SIGTERM at exit."""
    gateways: list[GatewayProcess] = []
    try:
        for log in logs:
            port = free_port()
            with log.open("wb") as sink:
                process = subprocess.Popen(
                    [sys.executable, "-m", "liveportrait.cli", "gateway"],
                    cwd=REPO,
                    env=gateway_env(settings, port),
                    stdout=sink,
                    stderr=subprocess.STDOUT,
                )
            gateways.append(GatewayProcess(f"http://127.0.0.1:{port}", process, log))
        for gateway in gateways:
            wait_until(partial(_ready, gateway), 30, f"{gateway.url}/readyz to answer 200")
        yield gateways
    finally:
        for gateway in gateways:
            gateway.process.terminate()
        for gateway in gateways:
            try:
                gateway.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                gateway.process.kill()
                gateway.process.wait(timeout=5)


def _ready(gateway: GatewayProcess) -> bool:
    assert gateway.process.poll() is None, f"the gateway exited:\n{gateway.log.read_text()}"
    try:
        return httpx.get(f"{gateway.url}/readyz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def frame_count(data: bytes, path: Path) -> int:
    """Frames in an MP4 given as bytes."""
    path.write_bytes(data)
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


@pytest.mark.e2e
def test_e2e_two_gateways_one_worker_every_job_once(
    make_settings: Callable[..., Settings], s3_bucket: str, tmp_path: Path
) -> None:
    settings = make_settings(
        storage_backend="s3",
        s3_bucket=s3_bucket,
        api_keys=[hashlib.sha256(API_KEY.encode()).hexdigest()],
    )
    assert settings.s3_endpoint_url
    source, driving = write_inputs(tmp_path, FRAMES)
    files = {"source": ("face.png", source.read_bytes()), "driving": ("driving.mp4", driving.read_bytes())}
    auth = {"Authorization": f"Bearer {API_KEY}"}
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    animator = FakeAnimator(frame_delay=0.01)
    with ExitStack() as stack:
        logs = [tmp_path / "gateway-a.log", tmp_path / "gateway-b.log"]
        gateways = stack.enter_context(gateway_processes(settings, logs))
        worker = stack.enter_context(running_worker(settings, fake_engine(animator)))
        clients = [stack.enter_context(Client(gateway.url, API_KEY)) for gateway in gateways]
        http = [
            stack.enter_context(httpx.Client(base_url=gateway.url, headers=auth, timeout=30))
            for gateway in gateways
        ]
        submitted: list[tuple[str, int]] = []  # (job id, index of the gateway that took it)
        for i in range(4):  # multipart and direct upload (presigned POST to S3), alternating gateways
            job = clients[i % 2].submit(source, driving, direct_upload=i >= 2)
            submitted.append((job.id, i % 2))
        first = http[0].post(
            "/v1/jobs", files=files, headers={"Idempotency-Key": "once", "traceparent": traceparent}
        )
        replay = http[1].post("/v1/jobs", files=files, headers={"Idempotency-Key": "once"})
        assert (first.status_code, replay.status_code) == (202, 200), (first.text, replay.text)
        assert replay.json()["id"] == first.json()["id"] and replay.headers["location"] == (
            f"/v1/jobs/{first.json()['id']}"
        )
        submitted.append((first.json()["id"], 0))
        high = http[1].post("/v1/jobs", files=files, data={"priority": "high"})
        assert high.status_code == 202, high.text
        submitted.append((high.json()["id"], 1))
        ids = [job_id for job_id, _ in submitted]
        assert len(set(ids)) == len(ids) == 6

        seen: dict[str, list[str]] = {job_id: [] for job_id in ids}
        etags: dict[str, str] = {}
        pending, turn = set(ids), 0

        def poll_round() -> bool:
            """Ask for every pending job once, alternating gateways; True once none is pending."""
            nonlocal turn
            for job_id in sorted(pending):
                headers = {"If-None-Match": etags[job_id]} if job_id in etags else {}
                response = http[turn % 2].get(f"/v1/jobs/{job_id}", headers=headers)
                turn += 1
                if response.status_code == 304:  # unchanged since the other gateway answered
                    continue
                assert response.status_code == 200, response.text
                etags[job_id] = response.headers["etag"]
                seen[job_id].append(response.json()["status"])
                if response.json()["status"] not in ("queued", "running"):
                    pending.discard(job_id)
            return not pending

        wait_until(poll_round, 60, "every job to finish")

        finals: dict[str, dict] = {}
        for job_id in ids:
            from_a, from_b = (client.get(f"/v1/jobs/{job_id}") for client in http)
            assert from_a.content == from_b.content and from_a.headers["etag"] == from_b.headers["etag"]
            etag = from_a.headers["etag"]
            conditional = http[1].get(f"/v1/jobs/{job_id}", headers={"If-None-Match": etag})
            assert conditional.status_code == 304
            finals[job_id] = from_a.json()
        downloads = {}
        for job_id, taken_by in submitted:  # the result through the other gateway: a redirect to S3
            redirect = http[1 - taken_by].get(f"/v1/jobs/{job_id}/result")
            assert redirect.status_code == 302 and redirect.headers["location"].startswith(
                settings.s3_endpoint_url
            )
            downloads[job_id] = httpx.get(redirect.headers["location"], timeout=30).content
        totals = [scrape(gateway.url)[0] for gateway in gateways]
        stack.close()

    for job_id in ids:
        final = finals[job_id]
        assert final["status"] == "succeeded" and final["attempts"] == 1, final
        assert final["progress"]["frames_done"] == FRAMES and final["result"]["frames"] == FRAMES
        assert final["result"]["url"] == f"{PUBLIC_URL}/v1/jobs/{job_id}/result"
        statuses = [ORDER[status] for status in seen[job_id]]
        assert statuses == sorted(statuses), f"status went back: {seen[job_id]}"
        assert frame_count(downloads[job_id], tmp_path / f"{job_id}.mp4") == FRAMES
    assert finals[first.json()["id"]]["trace_id"] == traceparent.split("-")[1]
    assert animator.calls == len(ids), "each job rendered exactly once"

    s3 = boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    listed = s3.list_objects_v2(Bucket=s3_bucket, Prefix="results/").get("Contents", [])
    results: dict[str, list[str]] = {}
    for item in listed:  # results/{job id}/...
        results.setdefault(item["Key"].split("/")[1], []).append(item["Key"])
    assert sorted(results) == sorted(ids) and all(len(keys) == 1 for keys in results.values()), results
    for job_id, (key,) in results.items():
        assert s3.get_object(Bucket=s3_bucket, Key=key)["Body"].read() == downloads[job_id]
    assert s3.list_objects_v2(Bucket=s3_bucket, Prefix="inputs/").get("KeyCount") == 0, "inputs cleaned"

    a, b = totals
    assert a == b, "every gateway reports the same totals (they are kept in Redis)"
    for status, count in (("queued", 6), ("running", 6), ("succeeded", 6), ("failed", 0), ("canceled", 0)):
        assert value(a, "liveportrait_jobs_total", status=status) == count, status
    assert value(a, "liveportrait_job_run_seconds_count") == 6
    assert value(a, "liveportrait_frames_processed_total") == 6 * FRAMES
    assert value(a, "liveportrait_workers") == 1
    assert value(a, "liveportrait_worker_render_frames_per_second", worker=worker.name) > 0
    for priority in ("high", "default", "low"):
        assert value(a, "liveportrait_queue_depth", priority=priority) == 0

    for index, gateway in enumerate(gateways):
        lines = gateway.log_lines()  # every line is JSON
        created = [line for line in lines if line["event"] == "job.submitted"]
        assert sorted(line["job_id"] for line in created) == sorted(i for i, by in submitted if by == index)
        assert all(line["trace_id"] == finals[line["job_id"]]["trace_id"] for line in created)
        assert any(line["logger"] == "uvicorn.access" and "trace_id" in line for line in lines)
