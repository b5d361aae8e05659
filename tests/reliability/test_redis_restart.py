"""Redis restarts under a running gateway (uvicorn on loopback) and worker (a real process running
the engine double FakeAnimator). The test's own redis-server keeps an AOF fsynced on every write
(appendfsync always, no RDB); "restart" is SHUTDOWN NOSAVE or SIGKILL, then a new server on the
same port and directory."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from service.client import Client
from service.queue import JobQueue, connect
from service.settings import Settings
from tests.reliability.harness import RedisServer, WorkerProcess, redis_server, worker_processes
from tests.waiting import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

FRAME_DELAY_S = 0.1
"""Per-frame delay of the worker: a 16-frame job renders in about 1.6 s."""


def status_code(http: httpx.Client, path: str) -> int:
    """The status code of a GET."""
    return http.get(path).status_code


OUTAGE_SEEN = (
    "could not connect to Redis",  # RQ's work loop
    "worker.redis_unavailable",
    "worker.heartbeat_failed",
    "worker.scheduler_error",
    "job.progress_not_recorded",
    "job.cancel_check_failed",
)
"""Log lines by which a worker shows that it met the outage (and, being alive, rode it out)."""


def restart(server: RedisServer, http: httpx.Client) -> None:
    """Start the server again and wait until the gateway is ready again."""
    server.start()
    wait_until(lambda: status_code(http, "/readyz") == 200, 15, "the gateway to be ready again")


def outage_under(worker: WorkerProcess, server: RedisServer, http: httpx.Client) -> None:
    """Kill Redis, wait until `worker` has met the outage (its log says so), then restart Redis."""
    logged = len(worker.log())
    server.kill()

    def met() -> bool:
        since = worker.log()[logged:]
        return any(line in since for line in OUTAGE_SEEN)

    wait_until(met, 15, "the worker to meet the outage")
    assert worker.alive
    restart(server, http)


def test_e2e_redis_restart_keeps_accepted_jobs_and_services_reconnect(
    make_settings: Callable[..., Settings],
    gateway_server: Callable[[Settings], str],
    media: dict[str, Path],
    tmp_path: Path,
) -> None:
    with redis_server(tmp_path / "redis") as server:
        settings = make_settings(redis_url=server.url, worker_heartbeat_s=1)
        url = gateway_server(settings)
        queue = JobQueue(connect(settings), settings)
        with httpx.Client(base_url=url, timeout=10) as http, Client(url, timeout=10) as client:
            first = client.submit(media["face"], media["driving"], idempotency_key="order-1")
            accepted = [first.id] + [client.submit(media["face"], media["driving"]).id for _ in range(2)]
            assert status_code(http, "/readyz") == 200

            server.shutdown_nosave()
            assert status_code(http, "/readyz") == 503
            assert status_code(http, f"/v1/jobs/{first.id}") == 503
            with media["face"].open("rb") as face, media["driving"].open("rb") as driving:
                refused = http.post("/v1/jobs", files={"source": face, "driving": driving})
            assert refused.status_code == 503, "no job is accepted while Redis is away"
            restart(server, http)

            assert [client.status(job_id).status for job_id in accepted] == ["queued"] * 3
            assert queue.depths()["default"] == 3
            again = client.submit(media["face"], media["driving"], idempotency_key="order-1")
            assert again.id == first.id, "an Idempotency-Key survives the restart"

            with worker_processes(settings, tmp_path) as spawn:
                worker = spawn("worker", frame_delay=FRAME_DELAY_S)
                finals = [client.wait(job_id, timeout=30, poll_s=0.1) for job_id in accepted]
                assert [(job.status, job.attempts) for job in finals] == [("succeeded", 1)] * 3

                outage_under(worker, server, http)  # the idle worker rides out an outage
                idle = client.submit(media["face"], media["driving"])
                idle_job = client.wait(idle.id, timeout=30, poll_s=0.1)

                busy = client.submit(media["face"], media["driving"])  # ... and a busy one too
                wait_until(lambda: client.status(busy.id).progress.frames_done >= 2, 15, "the job to start")
                outage_under(worker, server, http)
                busy_job = client.wait(busy.id, timeout=30, poll_s=0.1)
                assert worker.alive
    assert idle_job.status == "succeeded" and idle_job.started_at is not None
    assert busy_job.status == "succeeded" and busy_job.result is not None and busy_job.result.frames == 16
