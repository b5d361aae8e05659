"""Webhooks end to end: signed deliveries to a real HTTP server on loopback, verified with the
`standardwebhooks` library (the reference implementation, not our code); retries while the receiver
is down; a 410 stops them; throttled progress; the delivery state on the job; refused submissions.

Real Redis, a uvicorn gateway (its webhook dispatcher), a worker thread with the engine's test double.
"""

from __future__ import annotations

import base64
import itertools
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import redis
from standardwebhooks import Webhook

from service.client import Client
from service.contract import Job, WebhookStatus
from service.settings import Settings
from tests.conftest import free_port
from tests.waiting import wait_until
from tests.worker.doubles import FakeAnimator, Hold, fake_engine, running_worker, write_inputs

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
FAST_RETRIES = {"webhook_retry_base_s": 0.2, "webhook_retry_max_delay_s": 0.5}


@dataclass
class Receiver:
    """An HTTP server on a loopback port that records every POST and answers `status`."""

    port: int
    status: int = 204
    received: list[tuple[dict[str, str], bytes, float]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    def verified(self) -> list[dict]:
        """The bodies, each checked with standardwebhooks against its headers."""
        hook = Webhook(SECRET)
        return [hook.verify(body, headers) for headers, body, _ in self.received]

    @contextmanager
    def serving(self) -> Iterator[Receiver]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.received.append((dict(self.headers.items()), body, time.monotonic()))
                self.send_response(receiver.status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            server.shutdown()
            server.server_close()


@pytest.fixture
def media(tmp_path: Path) -> tuple[Path, Path]:
    return write_inputs(tmp_path, 16)


@pytest.fixture
def hooked(make_settings: Callable[..., Settings], gateway_server: Callable[[Settings], str]):
    """`hooked(**settings)`: settings with the webhook secret and loopback URLs allowed, and a gateway."""

    def build(**overrides: object) -> tuple[Settings, str]:
        settings = make_settings(webhook_secret=SECRET, allow_private_urls=True, **overrides)
        return settings, gateway_server(settings)

    return build


def hook_state(
    client: Client, job_id: str, done: Callable[[WebhookStatus], bool]
) -> Callable[[], Job | None]:
    """A condition for wait_until: the job once its webhook's state satisfies `done`."""

    def check() -> Job | None:
        job = client.status(job_id)
        return job if job.webhook is not None and done(job.webhook) else None

    return check


def dispatched(settings: Settings) -> bool:
    """Whether the dispatchers read and acknowledged every event of the webhook stream."""
    client = redis.Redis.from_url(settings.redis_url)
    try:
        groups = client.xinfo_groups(f"{settings.queue_prefix}:webhooks:events")
    finally:
        client.close()
    return bool(groups) and all(g["pending"] == 0 and g["lag"] == 0 for g in groups)


def test_every_event_is_delivered_signed_in_order_with_progress_throttled(hooked, media) -> None:
    settings, url = hooked(**FAST_RETRIES)
    receiver = Receiver(free_port())
    animator = FakeAnimator(frame_delay=0.05)
    with receiver.serving(), running_worker(settings, fake_engine(animator)), Client(url) as client:
        job = client.submit(*media, webhook={"url": receiver.url})
        client.wait(job.id, timeout=60)
        final = wait_until(
            hook_state(client, job.id, lambda hook: hook.pending == 0 and dispatched(settings)),
            30,
            "every delivery to be done",
        )
    bodies = receiver.verified()
    types = [body["type"] for body in bodies]
    assert types[0] == "job.started" and types[-1] == "job.succeeded", types
    assert set(types[1:-1]) == {"job.progress"}
    assert Job.model_validate(bodies[-1]["data"]).status == "succeeded"
    ids = [headers["webhook-id"] for headers, _, _ in receiver.received]
    assert len(set(ids)) == len(ids)
    arrivals = [
        at for (_, _, at), kind in zip(receiver.received, types, strict=True) if kind == "job.progress"
    ]
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert all(gap >= 0.8 * settings.webhook_progress_interval_s for gap in gaps), gaps
    assert final.webhook is not None
    assert (final.webhook.delivered, final.webhook.failed, final.webhook.last_status) == (len(bodies), 0, 204)


def test_a_receiver_that_was_down_gets_the_delivery_once_it_is_back(hooked, media) -> None:
    settings, url = hooked(**FAST_RETRIES)
    receiver = Receiver(free_port())
    with running_worker(settings, fake_engine()), Client(url) as client:
        job = client.submit(*media, webhook={"url": receiver.url, "events": ["job.succeeded"]})
        client.wait(job.id, timeout=30)
        failing = wait_until(hook_state(client, job.id, lambda hook: bool(hook.last_error)), 30, "a failure")
        assert failing.webhook is not None
        assert failing.webhook.pending == 1 and failing.webhook.last_status is None  # connection refused
        with receiver.serving():
            done = wait_until(
                hook_state(client, job.id, lambda hook: hook.delivered == 1), 30, "the delivery"
            )
    (body,) = receiver.verified()
    assert body["type"] == "job.succeeded" and body["data"]["id"] == job.id
    assert done.webhook is not None and (done.webhook.pending, done.webhook.last_status) == (0, 204)


def test_410_gone_stops_every_delivery_of_the_job(hooked, media) -> None:
    settings, url = hooked(**FAST_RETRIES)
    receiver = Receiver(free_port(), status=410)
    hold = Hold(frames=2)
    with (
        receiver.serving(),
        running_worker(settings, fake_engine(FakeAnimator(hold=hold))),
        Client(url) as c,
        hold,
    ):
        job = c.submit(*media, webhook={"url": receiver.url})
        gone = wait_until(hook_state(c, job.id, lambda hook: hook.disabled), 30, "the 410")
        hold.release()
        c.wait(job.id, timeout=30)
        wait_until(lambda: dispatched(settings), 30, "the dispatchers to read every event")
    assert len(receiver.received) == 1 and receiver.verified()[0]["type"] == "job.started"
    assert gone.webhook is not None and gone.webhook.last_status == 410, "nothing was sent after the 410"


def test_webhook_submissions_are_checked(
    make_settings: Callable[..., Settings], gateway_server: Callable[[Settings], str], media
) -> None:
    files = {
        name: (path.name, path.read_bytes()) for name, path in zip(("source", "driving"), media, strict=True)
    }

    def submit(url: str, webhook: object) -> httpx.Response:
        return httpx.post(f"{url}/v1/jobs", files=files, data={"webhook": json.dumps(webhook)}, timeout=30)

    strict = gateway_server(make_settings(webhook_secret=SECRET))
    no_secret = gateway_server(make_settings())
    private = submit(strict, {"url": "http://127.0.0.1:9/hooks"})
    assert private.status_code == 422 and private.json()["errors"][0]["type"] == "url_refused"
    for bad in ({"url": "ftp://example.com/x"}, {"url": "http://example.com", "events": ["job.queued"]}):
        assert submit(strict, bad).status_code == 422, bad
    refused = submit(no_secret, {"url": "https://example.com/hooks"})
    assert refused.status_code == 422 and refused.json()["errors"][0]["type"] == "webhooks_disabled"
