"""S3 goes away and comes back: a switchable TCP proxy (harness.TcpProxy) stands between the worker
and moto's S3 server; the worker is an in-process thread running the engine double FakeAnimator
(real PyAV-written MP4s). Each S3 request gets 2 botocore attempts here; on top of them the worker
retries whole transfers for `storage_retry_window_s`."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from service.queue import JobQueue, connect
from service.settings import Settings
from service.storage import S3Store, StorageUnavailable, Store, make_store, put_with_retries
from tests.reliability.harness import TcpProxy, s3_client, s3_keys, submit, wait_for_job
from tests.waiting import wait_until
from tests.worker.doubles import FakeAnimator, Hold, fake_engine, running_worker

pytestmark = pytest.mark.slow

MIB = 1024 * 1024


@pytest.fixture
def proxy(moto_endpoint: str) -> Iterator[TcpProxy]:
    """A switchable proxy in front of moto."""
    endpoint = urlsplit(moto_endpoint)
    proxy = TcpProxy(endpoint.hostname or "127.0.0.1", endpoint.port or 80)
    yield proxy
    proxy.close()


@pytest.fixture
def s3_via_proxy(
    make_settings: Callable[..., Settings], s3_bucket: str, proxy: TcpProxy
) -> Callable[..., Settings]:
    """Settings whose S3 traffic goes through the proxy."""

    def build(**overrides: object) -> Settings:
        values = {"storage_backend": "s3", "s3_bucket": s3_bucket, "s3_endpoint_url": proxy.url}
        return make_settings(**{**values, "s3_max_attempts": 2, **overrides})

    return build


def bucket_state(moto_endpoint: str, bucket: str, prefix: str) -> tuple[list[str], list[str]]:
    """The keys under `prefix` and the multipart uploads in progress in the bucket (straight to moto)."""
    uploads = s3_client(moto_endpoint).list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    return s3_keys(moto_endpoint, bucket, prefix), [upload["Key"] for upload in uploads]


def wait_for_refusals(proxy: TcpProxy, count: int, what: str) -> None:
    """Wait until the proxy turned away `count` more connections."""
    start = proxy.refused
    wait_until(lambda: proxy.refused >= start + count, 20, what)


@dataclass
class HeldWorker:
    """A worker whose S3 traffic goes through the proxy, its engine held at frame 4 until released."""

    settings: Settings
    queue: JobQueue
    direct: Store  # straight to moto, bypassing the proxy
    hold: Hold
    moto_endpoint: str

    def bucket_state(self, prefix: str) -> tuple[list[str], list[str]]:
        return bucket_state(self.moto_endpoint, self.settings.s3_bucket, prefix)


StartHeldWorker = Callable[[float], AbstractContextManager[HeldWorker]]


@pytest.fixture
def held_worker(s3_via_proxy: Callable[..., Settings], moto_endpoint: str) -> StartHeldWorker:
    """`held_worker(window_s)`: a running worker (storage_retry_window_s=window_s) and its Hold."""

    @contextmanager
    def start(window_s: float) -> Iterator[HeldWorker]:
        settings = s3_via_proxy(storage_retry_window_s=window_s)
        direct = make_store(settings.model_copy(update={"s3_endpoint_url": moto_endpoint}))
        queue = JobQueue(connect(settings), settings)
        held = HeldWorker(settings, queue, direct, Hold(frames=4), moto_endpoint)
        with running_worker(settings, fake_engine(FakeAnimator(hold=held.hold))), held.hold:
            yield held

    return start


def test_s3_outages_within_the_retry_window_are_ridden_out(
    held_worker: StartHeldWorker, proxy: TcpProxy, media: dict[str, Path]
) -> None:
    with held_worker(20) as held:
        queue, direct, hold = held.queue, held.direct, held.hold
        proxy.disable()
        job_id = submit(queue, direct, media["face"], media["driving"])
        wait_for_refusals(proxy, 3, "the worker to retry the input download")
        proxy.enable()
        wait_for_job(queue, job_id, lambda r: r.frames_done == 4)  # held mid-render
        proxy.disable()
        hold.release()
        wait_for_refusals(proxy, 3, "the worker to retry the result upload")
        during = queue.get(job_id)
        wait_for_refusals(proxy, 2, "the outage to outlast another retry of the upload")
        proxy.enable()
        record = wait_for_job(queue, job_id)
    assert during is not None and (during.status, during.result_key) == ("running", None)
    assert (record.status, record.attempts, record.result_frames) == ("succeeded", 1, 16)
    assert held.bucket_state("results/") == ([record.result_key], [])


def test_s3_outage_beyond_the_retry_window_fails_storage_unavailable(
    held_worker: StartHeldWorker, proxy: TcpProxy, media: dict[str, Path]
) -> None:
    with held_worker(2) as held:
        queue, direct, hold = held.queue, held.direct, held.hold
        job_id = submit(queue, direct, media["face"], media["driving"])
        wait_for_job(queue, job_id, lambda r: r.frames_done == 4)  # held mid-render
        proxy.disable()
        hold.release()
        record = wait_for_job(queue, job_id)
        proxy.enable()
    assert (record.status, record.error_code, record.result_key) == ("failed", "storage_unavailable", None)
    assert record.error_message is not None and "unreachable for 2 s" in record.error_message
    assert held.bucket_state(f"results/{job_id}/") == ([], [])


def test_multipart_upload_cut_midway_is_retried_and_leaves_no_parts(
    s3_via_proxy: Callable[..., Settings], proxy: TcpProxy, moto_endpoint: str, tmp_path: Path
) -> None:
    settings = s3_via_proxy(s3_multipart_threshold_bytes=5 * MIB, s3_multipart_chunk_bytes=5 * MIB)
    store = S3Store(settings)
    data = os.urandom(12 * MIB + 123)
    source = tmp_path / "big.bin"
    source.write_bytes(data)

    def come_back() -> None:
        wait_until(lambda: proxy.refused > 0, 30, "the cut")
        wait_until(lambda: proxy.refused >= 3, 30, "the upload to be retried during the outage")
        proxy.enable()

    proxy.cut_after(7 * MIB)
    helper = threading.Thread(target=come_back, daemon=True)
    helper.start()
    put_with_retries(store, "results/big/1/output.mp4", source, content_type="video/mp4", window_s=30)
    helper.join(timeout=5)
    back = store.get("results/big/1/output.mp4", tmp_path / "back.bin")
    assert hashlib.sha256(back.read_bytes()).digest() == hashlib.sha256(data).digest()
    assert bucket_state(moto_endpoint, settings.s3_bucket, "results/") == (["results/big/1/output.mp4"], [])


def test_multipart_upload_that_never_gets_through_leaves_no_object(
    s3_via_proxy: Callable[..., Settings], proxy: TcpProxy, moto_endpoint: str, tmp_path: Path
) -> None:
    settings = s3_via_proxy(s3_multipart_threshold_bytes=5 * MIB, s3_multipart_chunk_bytes=5 * MIB)
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(12 * MIB))
    proxy.cut_after(7 * MIB)
    key = "results/lost/1/output.mp4"
    with pytest.raises(StorageUnavailable, match="unreachable for 1 s"):
        put_with_retries(S3Store(settings), key, source, content_type=None, window_s=1)
    proxy.enable()
    keys, uploads = bucket_state(moto_endpoint, settings.s3_bucket, "results/")
    assert keys == [], "no object is left under the key"
    # S3 was away when the upload was given up, so nobody could abort it: the bucket's
    # AbortIncompleteMultipartUpload lifecycle rule must (docs/reliability.md)
    assert uploads == [key]
