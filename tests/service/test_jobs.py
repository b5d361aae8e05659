"""The jobs service (service.gateway.services.jobs) without HTTP: the real Redis and the local store."""

from __future__ import annotations

import asyncio
import io
import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from service.gateway import create_app
from service.gateway.services import (
    Conflict,
    FilePart,
    InvalidRequest,
    NotFound,
    TooLarge,
    UnsupportedMedia,
)
from service.gateway.services import jobs as job_service
from service.gateway.state import Gateway
from service.queue import job_lifetime_s
from service.settings import Settings
from tests.worker.doubles import write_inputs

OWNER, OTHER = "owner-a", "owner-b"
LIMIT = 1024 * 1024


@pytest.fixture
def gateway(make_settings: Callable[..., Settings]) -> Iterator[Gateway]:
    """The app's Gateway (queue, index, local store) with distinct lifetimes per status."""
    settings = make_settings(
        max_input_bytes=LIMIT,
        job_retries=1,
        retry_backoff_s=[7],
        job_timeout_s=300,
        result_ttl_s=600,
        failure_ttl_s=900,
        reaper_interval_s=20,
    )
    gateway = create_app(settings).state.gateway
    yield gateway
    gateway.redis.close()


@pytest.fixture
def media(tmp_path: Path) -> tuple[bytes, bytes]:
    """A face photo (PNG) and a driving video (MP4)."""
    face, driving = write_inputs(tmp_path)
    return face.read_bytes(), driving.read_bytes()


def part(data: bytes) -> FilePart:
    """A spooled form file holding `data`."""
    return FilePart(io.BytesIO(data), len(data))


def form(media: tuple[bytes, bytes], **fields: str | FilePart) -> dict[str, str | FilePart]:
    """Form fields of a submission with both inputs; `fields` adds or replaces fields."""
    return {"source": part(media[0]), "driving": part(media[1]), **fields}


def submit_form(gateway: Gateway, media: tuple[bytes, bytes], key: str | None = None, **fields: str) -> str:
    """Submit a multipart job as OWNER; its id."""
    submission = job_service.parse_form(gateway, form(media, **fields))
    return job_service.submit(gateway, submission, OWNER, key).record.id


def test_submit_form_stores_inputs_indexes_and_enqueues(gateway: Gateway, media: tuple[bytes, bytes]) -> None:
    submission = job_service.parse_form(
        gateway, form(media, options='{"crf": 20}', priority="high", output='{"filename": "clip.mp4"}')
    )
    assert (submission.priority, submission.options.crf, submission.output.filename) == (
        "high",
        20,
        "clip.mp4",
    )
    record, created = job_service.submit(gateway, submission, OWNER)
    assert created and (record.status, record.owner, record.priority) == ("queued", OWNER, "high")
    assert gateway.queue.depths()["high"] == 1
    source = record.payload["source"]
    assert source == {"key": f"inputs/{record.id}/source.png", "url": None, "content_type": "image/png"}
    assert gateway.store.size(source["key"]) == len(media[0])
    assert record.payload["driving"]["content_type"] == "video/mp4"

    async def pages() -> list[tuple[list, str | None]]:
        return [await job_service.page(gateway, owner, 10, None) for owner in (OWNER, OTHER)]

    (listed, cursor), others = asyncio.run(pages())
    assert [r.id for r in listed] == [record.id] and cursor is None
    assert others == ([], None)
    view = job_service.job_view(job_service.get(gateway, record.id, OWNER), "https://gw.example")
    assert (view.id, view.status, view.progress.fraction, view.result) == (record.id, "queued", 0.0, None)


@pytest.mark.parametrize(
    ("fields", "loc", "kind"),
    [
        ({"colour": "red"}, ["body"], "extra_forbidden"),
        ({"priority": "urgent"}, ["body", "priority"], "literal_error"),
        ({"options": '{"crf": 99}'}, ["body", "options", "crf"], "less_than_equal"),
        ({"options": part(b"{}")}, ["body", "options"], "type_error"),
        ({"driving": "not a file"}, ["body", "driving"], "missing"),
        ({"source": part(b"")}, ["body", "source"], "value_error"),
        ({"driving": part(b"\x00\x00\x00\x18ftypisom" + b"\0" * 40)}, ["body", "driving"], "corrupt_media"),
    ],
)
def test_parse_form_refuses_invalid_fields(
    gateway: Gateway, media: tuple[bytes, bytes], fields: dict[str, str | FilePart], loc: list[str], kind: str
) -> None:
    with pytest.raises(InvalidRequest) as refused:
        job_service.parse_form(gateway, form(media, **fields))
    error = refused.value.detail[0]
    assert isinstance(error, dict) and (error["loc"][: len(loc)], error["type"]) == (loc, kind), error


def test_parse_form_refuses_other_content_and_size(gateway: Gateway, media: tuple[bytes, bytes]) -> None:
    with pytest.raises(UnsupportedMedia, match="'driving' is not an image or video"):
        job_service.parse_form(gateway, form(media, driving=part(b"print('hello')\n" * 10)))
    with pytest.raises(TooLarge, match="'source' is larger than"):
        job_service.parse_form(gateway, form(media, source=part(media[0] + b"\0" * LIMIT)))
    assert gateway.queue.depths() == {"high": 0, "default": 0, "low": 0}


def test_parse_json_checks_urls_and_uploads(gateway: Gateway, media: tuple[bytes, bytes]) -> None:
    upload_id = uuid.uuid4().hex
    gateway.store.put(f"uploads/{upload_id}", io.BytesIO(media[1]), "video/mp4")
    body = {"source": {"url": "https://93.184.216.34/a.png"}, "driving": {"upload_id": upload_id}}
    submission = job_service.parse_json(gateway, json.dumps(body).encode())
    record = job_service.submit(gateway, submission, OWNER).record
    assert record.payload["driving"] == {
        "key": f"uploads/{upload_id}",
        "url": None,
        "content_type": "video/mp4",
    }
    assert record.payload["source"]["url"] == "https://93.184.216.34/a.png"
    for source, loc, kind in (
        ({"url": "http://127.0.0.1:1/a.png"}, ["body", "source", "url"], "url_refused"),
        ({"upload_id": "0" * 32}, ["body", "source", "upload_id"], "upload_missing"),
    ):
        with pytest.raises(InvalidRequest) as refused:
            job_service.parse_json(gateway, json.dumps({**body, "source": source}).encode())
        error = refused.value.detail[0]
        assert isinstance(error, dict) and (error["loc"], error["type"]) == (loc, kind)
    with pytest.raises(InvalidRequest):
        job_service.parse_json(gateway, b"{")


def test_idempotency_key(gateway: Gateway, media: tuple[bytes, bytes]) -> None:
    first = job_service.submit(gateway, job_service.parse_form(gateway, form(media)), OWNER, "order-42")
    replay = job_service.submit(gateway, job_service.parse_form(gateway, form(media)), OWNER, "order-42")
    assert (first.created, replay.created, replay.record.id) == (True, False, first.record.id)
    different = job_service.parse_form(gateway, form(media, options='{"crf": 30}'))
    with pytest.raises(InvalidRequest, match="Idempotency-Key was already used"):
        job_service.submit(gateway, different, OWNER, "order-42")
    assert job_service.submit(gateway, different, OTHER, "order-42").created, "keys are per owner"

    submission = job_service.parse_form(gateway, form(media))
    gateway.queue.reserve_idempotency(OWNER, "in-flight", submission.fingerprint, uuid.uuid4().hex)
    with pytest.raises(Conflict, match="still being processed"):
        job_service.submit(gateway, submission, OWNER, "in-flight")
    assert gateway.queue.depths()["default"] == 2


def test_a_failed_submission_leaves_nothing_behind(
    gateway: Gateway, media: tuple[bytes, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise ConnectionError("enqueue failed")

    monkeypatch.setattr(gateway.queue, "submit", broken)
    submission = job_service.parse_form(gateway, form(media))
    with pytest.raises(ConnectionError):
        job_service.submit(gateway, submission, OWNER, "retry-me")
    assert gateway.redis.zcard(f"{gateway.settings.queue_prefix}:owner:{OWNER}") == 0, "unindexed"
    inputs = Path(gateway.settings.local_storage_dir) / "inputs"
    assert not inputs.exists() or not any(inputs.iterdir()), "stored inputs are deleted"
    monkeypatch.undo()
    retried = job_service.submit(gateway, job_service.parse_form(gateway, form(media)), OWNER, "retry-me")
    assert retried.created, "the Idempotency-Key was released"


def test_cancel(gateway: Gateway, media: tuple[bytes, bytes]) -> None:
    queued = submit_form(gateway, media)
    inputs = Path(gateway.settings.local_storage_dir) / "inputs" / queued
    assert any(inputs.iterdir())
    record = job_service.cancel(gateway, queued, OWNER)
    assert record.status == "canceled" and record.finished_at is not None
    assert not inputs.exists(), "a canceled job's inputs are deleted"
    assert job_service.cancel(gateway, queued, OWNER).status == "canceled"
    assert gateway.queue.depths()["default"] == 0
    with pytest.raises(Conflict, match="job is canceled"):
        job_service.result(gateway, queued, OWNER)

    running = submit_form(gateway, media)
    gateway.queue.claim(running, "w")
    record = job_service.cancel(gateway, running, OWNER)
    assert (record.status, record.cancel_requested) == ("running", True)
    gateway.queue.fail(running, "no_face", "no face found")
    with pytest.raises(Conflict, match="job already failed"):
        job_service.cancel(gateway, running, OWNER)

    for job_id, owner in ((queued, OTHER), ("not-an-id", OWNER), (uuid.uuid4().hex, OWNER)):
        with pytest.raises(NotFound):
            job_service.cancel(gateway, job_id, owner)


def test_result_of_a_succeeded_job(gateway: Gateway, media: tuple[bytes, bytes]) -> None:
    job_id = submit_form(gateway, media, output='{"filename": "clip.mp4"}')
    gateway.queue.claim(job_id, "w")
    gateway.store.put(f"results/{job_id}/output.mp4", io.BytesIO(b"video"), "video/mp4")
    gateway.queue.succeed(
        job_id,
        result_key=f"results/{job_id}/output.mp4",
        content_type="video/mp4",
        frames=8,
        fps=25,
        size_bytes=5,
    )
    found = job_service.result(gateway, job_id, OWNER)
    assert (found.filename, found.content_type, found.size_bytes, found.url) == (
        "clip.mp4",
        "video/mp4",
        5,
        None,
    )
    stream = job_service.open_result(gateway, found)
    try:
        assert stream.read() == b"video"
    finally:
        stream.close()
    view = job_service.job_view(job_service.get(gateway, job_id, OWNER), "https://gw.example")
    assert view.result is not None and view.result.url == f"https://gw.example/v1/jobs/{job_id}/result"


def test_page_refuses_a_malformed_cursor(gateway: Gateway) -> None:
    with pytest.raises(InvalidRequest) as refused:
        asyncio.run(job_service.page(gateway, OWNER, 10, "garbage!"))
    assert refused.value.detail == [
        {"loc": ["query", "cursor"], "msg": "malformed cursor", "type": "value_error"}
    ]


def test_listing_entry_and_job_hash_expire_together(gateway: Gateway, media: tuple[bytes, bytes]) -> None:
    """The owner index keeps an entry exactly as long as the job's hash lives (stored expiries)."""
    settings = gateway.settings
    lifetime = job_lifetime_s(settings, "queued")
    waits = 7 + (300 + 4 * settings.worker_heartbeat_s + 15 + 20) * 2
    assert gateway.index.lifetime_s == lifetime == 900 + waits
    before = time.time()
    job_id = submit_form(gateway, media)
    record = gateway.queue.get(job_id)
    assert record is not None
    hash_expiry_ms = gateway.redis.pexpiretime(gateway.queue.job_key(job_id))
    entry_expiry = gateway.index.expires_at(OWNER, job_id)
    assert entry_expiry is not None
    assert abs(hash_expiry_ms - entry_expiry * 1000) <= 1, (hash_expiry_ms, entry_expiry)
    assert abs(hash_expiry_ms - (record.created_at + lifetime) * 1000) <= 1
    assert before + lifetime <= entry_expiry <= time.time() + lifetime
    index_key = f"{settings.queue_prefix}:owner:{OWNER}"
    assert gateway.redis.pexpiretime(index_key) >= hash_expiry_ms, "the index outlives its newest entry"

    gateway.queue.claim(job_id, "w")
    gateway.queue.fail(job_id, "no_face", "no face")
    ttl = gateway.redis.pttl(gateway.queue.job_key(job_id)) / 1000
    assert job_lifetime_s(settings, "failed") - 2 < ttl <= job_lifetime_s(settings, "failed") == 900
    assert time.time() + ttl <= entry_expiry, "a settled job's hash never outlives its listing entry"
    canceled = submit_form(gateway, media)
    job_service.cancel(gateway, canceled, OWNER)
    ttl = gateway.redis.pttl(gateway.queue.job_key(canceled)) / 1000
    assert job_lifetime_s(settings, "canceled") - 2 < ttl <= job_lifetime_s(settings, "canceled") == 600
