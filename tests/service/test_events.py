"""Job events over HTTP: progress in phases from the first second, GET /v1/jobs/{id}/events read through
two gateways, resumed by Last-Event-ID, and the Python client following it.

Real Redis, two uvicorn gateways on loopback and a worker thread running the engine's test double
(tests/worker/doubles.FakeAnimator: real media, the engine's phase events); a doubles.Hold keeps a
render at a known frame while the test looks.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from common.progress import PHASES
from service.client import Client, Event
from service.contract import Job
from service.settings import Settings
from tests.waiting import wait_until
from tests.worker.doubles import FakeAnimator, Hold, fake_engine, running_worker, write_inputs

FRAMES = 8


def sse(url: str, job_id: str, headers: dict[str, str] | None = None) -> list[tuple[str, Job]]:
    """Every (id, job) event of a job's stream, read to its end with plain httpx."""
    events, event_id, data = [], "", []
    with httpx.stream("GET", f"{url}/v1/jobs/{job_id}/events", headers=headers or {}, timeout=30) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("id: "):
                event_id = line[4:]
            elif line.startswith("data: "):
                data.append(line[6:])
            elif not line and data:
                events.append((event_id, Job.model_validate_json("\n".join(data))))
                data = []
    return events


@pytest.fixture
def media(tmp_path: Path) -> tuple[Path, Path]:
    return write_inputs(tmp_path, FRAMES)


def test_phases_advance_from_the_first_second_and_two_gateways_stream_the_same_events(
    make_settings: Callable[..., Settings],
    gateway_server: Callable[[Settings], str],
    media: tuple[Path, Path],
) -> None:
    settings = make_settings(public_base_url="http://liveportrait.test")  # the same result URL from both
    urls = [gateway_server(settings), gateway_server(settings)]
    hold = Hold(frames=4)
    with running_worker(settings, fake_engine(FakeAnimator(hold=hold))), Client(urls[0]) as client, hold:
        job = client.submit(*media)

        def at_the_hold() -> Job | None:
            status = client.status(job.id)
            return status if status.progress.frames_done == 4 else None

        held = wait_until(at_the_hold, 20, "the render to be held")
        assert held.progress.phase == "rendering" and held.progress.phase_total == FRAMES
        assert 0 < held.progress.fraction < 1 and held.progress.eta_s is not None
        hold.release()
        final = client.wait(job.id, timeout=30)
    assert final.status == "succeeded"
    first, second = (sse(url, job.id, {"Last-Event-ID": "0-0"}) for url in urls)
    assert [event_id for event_id, _ in first] == [event_id for event_id, _ in second]
    assert [j.model_dump() for _, j in first] == [j.model_dump() for _, j in second]

    jobs = [j for _, j in first]
    assert [j.status for j in jobs][:2] == ["queued", "running"] and jobs[-1].status == "succeeded"
    running = [j for j in jobs if j.status == "running"]
    phases = [j.progress.phase for j in running if j.progress.phase]
    assert sorted(set(phases), key=PHASES.index) == list(PHASES), phases
    assert phases == sorted(phases, key=PHASES.index), "phases go in order"
    fractions = [j.progress.fraction for j in running]
    assert fractions == sorted(fractions) and jobs[-1].progress.fraction == 1.0
    rendered = [j.progress.phase_done for j in running if j.progress.phase == "rendering"]
    assert rendered == sorted(rendered) and rendered[-1] == FRAMES and any(0 < n < FRAMES for n in rendered)
    motion = [j.progress.phase_done for j in running if j.progress.phase == "extracting_motion"]
    assert motion[-1] == FRAMES, motion
    # the first progress report (preparing) comes within a second of the start, by the service's clocks
    started = running[0].started_at
    report_id = next(i for i, j in first if j.status == "running" and j.progress.phase == "preparing")
    assert started is not None
    started_ms = int(started.timestamp() * 1000)  # stream ids count whole milliseconds
    assert 0 <= int(report_id.split("-")[0]) - started_ms < 1000


def test_last_event_id_resumes_after_that_event_and_a_finished_stream_ends(
    make_settings: Callable[..., Settings],
    gateway_server: Callable[[Settings], str],
    media: tuple[Path, Path],
) -> None:
    settings = make_settings()
    url = gateway_server(settings)
    hold = Hold(frames=2)
    with running_worker(settings, fake_engine(FakeAnimator(hold=hold))), Client(url) as client, hold:
        job = client.submit(*media)
        wait_until(lambda: client.status(job.id).progress.frames_done == 2, 20, "the render to be held")
        live: list[Event] = []
        for event in client.events(job.id):  # from the latest event on, while the job runs
            live.append(event)
            if len(live) == 1:
                hold.release()
        everything = sse(url, job.id, {"Last-Event-ID": "0-0"})
        ids = [event_id for event_id, _ in everything]
        middle = ids[len(ids) // 2]
        resumed = [event.id for event in client.events(job.id, last_event_id=middle)]
        latest = list(client.events(job.id))
    assert live[0].job.progress.frames_done == 2 and live[-1].job.status == "succeeded"
    assert [event.id for event in live] == ids[ids.index(live[0].id) :], "no event skipped or repeated"
    assert resumed == ids[ids.index(middle) + 1 :]
    assert [event.id for event in latest] == ids[-1:], "a finished job's stream is its last event"
    malformed = httpx.get(f"{url}/v1/jobs/{job.id}/events", headers={"Last-Event-ID": "nope"})
    assert malformed.status_code == 422
    assert httpx.get(f"{url}/v1/jobs/{'0' * 32}/events").status_code == 404


def test_a_quiet_stream_sends_keep_alive_comments(
    make_settings: Callable[..., Settings],
    gateway_server: Callable[[Settings], str],
    media: tuple[Path, Path],
) -> None:
    settings = make_settings(events_keepalive_s=0.2)
    url = gateway_server(settings)
    with Client(url) as client:
        job = client.submit(*media)  # no worker: it stays queued
        lines: list[str] = []
        with httpx.stream("GET", f"{url}/v1/jobs/{job.id}/events", timeout=10) as response:
            for line in response.iter_lines():
                lines.append(line)
                if line == ": keep-alive":
                    break
    assert lines[0].startswith("id: ") and lines[1].startswith("data: ") and lines[-1] == ": keep-alive"


def test_client_wait_polls_once_the_stream_breaks() -> None:
    """A stream that ends before the final event (a gateway going away): `wait` goes on by polling."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response, StreamingResponse
    from starlette.routing import Route

    from tests.conftest import serve_app

    running = Job(id="a" * 32, status="running", priority="default", created_at="2026-12-01T00:00:00Z")
    done = running.model_copy(update={"status": "succeeded"})

    async def events(request: Request) -> StreamingResponse:
        async def one_event():  # and then the connection ends
            yield f"id: 1-0\ndata: {running.model_dump_json()}\n\n".encode()

        return StreamingResponse(one_event(), media_type="text/event-stream")

    async def status(request: Request) -> Response:
        return Response(done.model_dump_json(), media_type="application/json")

    app = Starlette(routes=[Route("/v1/jobs/{id}/events", events), Route("/v1/jobs/{id}", status)])
    seen: list[Job] = []
    with serve_app(app) as url, Client(url) as client:
        final = client.wait(running.id, timeout=30, poll_s=0.05, on_progress=seen.append)
    assert final.status == "succeeded" and [job.status for job in seen] == ["running", "succeeded"]
