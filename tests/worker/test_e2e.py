"""End to end over HTTP (`pytest -k e2e`): the gateway under uvicorn, the real Redis, S3 on moto
(or the local store), a worker thread, and the Python client.

The FakeAnimator tests exercise the whole service path with the engine's test double; the
real-animator tests run engines.pipeline.Animator with synthetic weights (on CUDA when present;
on a small CPU they take minutes, hence also `slow`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import av
import httpx
import numpy as np
import pytest

from engines.demo import head_motion_frames, portrait
from service.client import Client
from service.contract import Job
from service.settings import Settings
from tests.waiting import wait_until
from tests.worker.doubles import (
    FakeAnimator,
    Hold,
    fake_engine,
    read_rgb,
    running_worker,
    write_inputs,
    write_png,
    write_video,
)
from worker.runner import WorkerEngine

API_KEY = "e2e-key"


def read_video(path: Path) -> tuple[int, float]:
    """Frame count and average fps of a video file."""
    with av.open(str(path)) as container:
        rate = container.streams.video[0].average_rate
        assert rate is not None, f"{path} has no frame rate"
        return sum(1 for _ in container.decode(video=0)), float(rate)


@pytest.fixture(params=["s3", "local"])
def e2e_gateway(
    make_settings: Callable[..., Settings],
    gateway_server: Callable[[Settings], str],
    request: pytest.FixtureRequest,
) -> tuple[Settings, str]:
    """Settings with an API key and each store in turn (a fresh moto bucket for s3), and a gateway's URL."""
    extra = {}
    if request.param == "s3":
        extra = {"storage_backend": "s3", "s3_bucket": request.getfixturevalue("s3_bucket")}
    settings = make_settings(api_keys=[hashlib.sha256(API_KEY.encode()).hexdigest()], **extra)
    return settings, gateway_server(settings)


def run_job(
    client: Client, source: Path, driving: Path, dest: Path, *, hold: Hold | None = None, **submit: object
) -> tuple[Job, list[Job]]:
    """Submit, wait (recording every progress report), download; returns the final job and reports.

    With `hold` (the Hold of a FakeAnimator), the render is released once a report showed it held.
    """
    reports: list[Job] = []

    def on_progress(report: Job) -> None:
        reports.append(report)
        if hold is not None and report.progress.frames_done >= hold.frames:
            hold.release()

    job = client.submit(source, driving, **submit)  # type: ignore[arg-type]
    assert job.status == "queued"
    final = client.wait(job.id, timeout=900, poll_s=0.05, on_progress=on_progress)
    assert final.status == "succeeded", final
    client.download(job.id, dest)
    return final, reports


def assert_progress_grew(reports: list[Job], total: int, *, strict: bool) -> None:
    """Progress never goes back; with `strict`, some report fell strictly between 0 and done."""
    done = [r.progress.frames_done for r in reports]
    assert done == sorted(done) and done[-1] == total, done
    assert reports[-1].progress.fraction == 1.0
    if strict:
        assert any(0 < d < total for d in done), done


@pytest.mark.e2e
def test_e2e_fake_animator(e2e_gateway: tuple[Settings, str], tmp_path: Path) -> None:
    settings, url = e2e_gateway
    source, driving = write_inputs(tmp_path)
    hold = Hold(frames=2)  # the first render waits there until the client saw it mid-way
    engine = fake_engine(FakeAnimator(hold=hold))
    with running_worker(settings, engine), Client(url, API_KEY) as client, hold:
        multipart, reports = run_job(
            client, source, driving, tmp_path / "a.mp4", hold=hold, options={"crf": 23}
        )
        direct, _ = run_job(client, source, driving, tmp_path / "b.mp4", direct_upload=True, filename="b.mp4")
        result = httpx.get(f"{url}/v1/jobs/{multipart.id}/result", headers={"X-API-Key": API_KEY})
        metrics = httpx.get(f"{url}/metrics").text
    assert_progress_grew(reports, 8, strict=True)
    for job, path in ((multipart, tmp_path / "a.mp4"), (direct, tmp_path / "b.mp4")):
        assert job.result is not None, job
        assert (job.result.frames, job.result.fps, job.result.content_type) == (8, 25.0, "video/mp4")
        assert read_video(path) == (8, 25.0)
        assert job.started_at is not None and job.finished_at is not None and job.attempts == 1
    if settings.storage_backend == "s3":
        assert settings.s3_endpoint_url is not None
        assert result.status_code == 302 and result.headers["location"].startswith(settings.s3_endpoint_url)
    else:
        assert result.status_code == 200 and result.headers["content-type"] == "video/mp4"
        assert result.content == (tmp_path / "a.mp4").read_bytes()
    for line in (
        'liveportrait_jobs_total{status="succeeded"} 2.0',
        'liveportrait_jobs_total{status="failed"} 0.0',
        "liveportrait_frames_processed_total 16.0",
        "liveportrait_job_run_seconds_count 2.0",
        "liveportrait_job_wait_seconds_count 2.0",
        'liveportrait_queue_depth{priority="default"} 0.0',
    ):
        assert line in metrics, line


@pytest.mark.e2e
def test_e2e_cancel_running_and_no_face_over_http(
    make_settings: Callable[..., Settings], gateway_server: Callable[[Settings], str], tmp_path: Path
) -> None:
    settings = make_settings()
    url = gateway_server(settings)
    face, driving = write_inputs(tmp_path)
    blank = write_png(tmp_path / "blank.png", np.zeros((96, 96, 3), np.uint8))
    hold = Hold(frames=2)
    with running_worker(settings, fake_engine(FakeAnimator(hold=hold))), Client(url) as client, hold:
        job = client.submit(face, driving)
        wait_until(lambda: client.status(job.id).progress.frames_done == 2, 20, "the job to make progress")
        assert client.cancel(job.id).cancel_requested
        hold.release()
        canceled = client.wait(job.id, timeout=20, poll_s=0.05)
        no_face = client.wait(client.submit(blank, driving).id, timeout=20, poll_s=0.05)
        after = client.wait(client.submit(face, driving).id, timeout=20, poll_s=0.05)
    assert canceled.status == "canceled" and canceled.progress.frames_done == 2 and canceled.result is None
    assert no_face.status == "failed" and no_face.error is not None
    assert (no_face.error.code, no_face.error.message) == ("no_face", "no face found in the source image")
    assert after.status == "succeeded", "the worker keeps going after a bad job"


@pytest.fixture(scope="module")
def real_engine(tmp_path_factory: pytest.TempPathFactory) -> WorkerEngine:
    """engines.pipeline.Animator on synthetic weights, loaded once for this module."""
    import torch

    from engines.weights import write_synthetic_bundle
    from worker.worker import load_engine

    weights = write_synthetic_bundle(tmp_path_factory.mktemp("weights"), 0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return load_engine(Settings(weights_dir=weights, device=device, backend="torch", frame_batch=2))


def test_the_worker_engine_follows_the_settings(real_engine: WorkerEngine, tmp_path: Path) -> None:
    """Defaults: the optimised model, pipelined stages; LIVEPORTRAIT_OPTIMIZE / _PIPELINED turn them off."""
    from engines.acceleration.inference import InferenceModel
    from engines.model import LivePortraitModel
    from engines.pipeline import Animator
    from engines.weights import write_synthetic_bundle
    from worker.worker import load_engine

    assert isinstance(real_engine.animator, Animator)
    engine = real_engine.animator.engine
    assert isinstance(engine.model, InferenceModel) and engine.pipelined
    weights = write_synthetic_bundle(tmp_path / "weights", 0)
    settings = Settings(
        weights_dir=weights, device="cpu", optimize=False, pipelined=False, detector="haar-box"
    )
    plain_animator = load_engine(settings).animator
    assert isinstance(plain_animator, Animator)
    plain = plain_animator.engine
    assert type(plain.model) is LivePortraitModel and not plain.pipelined and plain.backend == "torch"


@pytest.mark.e2e
@pytest.mark.slow
def test_e2e_real_animator(
    real_engine: WorkerEngine, e2e_gateway: tuple[Settings, str], tmp_path: Path
) -> None:
    settings, url = e2e_gateway
    source = write_png(tmp_path / "astronaut.png", portrait())
    # few frames: each costs W + G (~1.25 TFLOP) on this CPU; frame_batch 2 makes progress visible
    driving = write_video(tmp_path / "driving.mp4", list(head_motion_frames(portrait(), 4)), fps=25)
    with running_worker(settings, real_engine), Client(url, API_KEY) as client:
        final, reports = run_job(client, source, driving, tmp_path / "out.mp4")
    assert_progress_grew(reports, 4, strict=False)
    assert final.result is not None, final
    assert (final.result.frames, final.result.fps, final.result.content_type) == (4, 25.0, "video/mp4")
    assert read_video(tmp_path / "out.mp4") == (4, 25.0)


@pytest.mark.e2e
@pytest.mark.slow
def test_e2e_still_edit_over_http(
    real_engine: WorkerEngine, e2e_gateway: tuple[Settings, str], tmp_path: Path
) -> None:
    """A job without a driving input: the source edited by expression controls, as a PNG of its size."""
    settings, url = e2e_gateway
    rgb = np.ascontiguousarray(portrait()[:, :509])  # an odd width, which the still keeps
    source = write_png(tmp_path / "astronaut.png", rgb)
    with running_worker(settings, real_engine), Client(url, API_KEY) as client:
        job = client.submit(source, expression={"smile": 0.8, "yaw": 10, "eee": 5})
        final = client.wait(job.id, timeout=900, poll_s=0.1)
        assert final.status == "succeeded", final
        client.download(job.id, tmp_path / "still.png")
    assert final.result is not None and (final.result.frames, final.result.content_type) == (1, "image/png")
    edited = read_rgb(tmp_path / "still.png")
    assert edited.shape == rgb.shape and np.abs(edited.astype(int) - rgb.astype(int)).mean() > 1.0
