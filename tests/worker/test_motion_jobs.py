"""Motion templates over the whole service: real HTTP, Redis, the local store, a worker thread running
engines.pipeline.Animator on synthetic weights (CPU here; minutes on a small machine, hence `slow`).

A template made by `liveportrait motion extract` and one made by a `motion` job hold the same motion,
and drive a job to the same frames as the video they came from; the motion job's template is cached
by the video's content, so a second motion job and an animation driven by the same video run M on
none of its frames (M still reads the source).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from common.media import MOTION_TEMPLATE
from engines.motion.template import load_template
from liveportrait.cli import main
from service.client import Client
from service.queue import JobQueue, connect
from service.settings import Settings
from tests.worker.doubles import running_worker, write_png, write_video
from worker.runner import WorkerEngine

API_KEY = "motion-key"
FRAMES = 2


def decoded(path: Path) -> np.ndarray:
    """Every frame of a video, (N, H, W, 3) RGB uint8."""
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from engines.weights import write_synthetic_bundle

    return write_synthetic_bundle(tmp_path_factory.mktemp("weights"), 0)


@pytest.fixture(scope="module")
def engine(weights: Path) -> WorkerEngine:
    """The worker's engine, loaded as `liveportrait worker` loads it (CPU, torch, batches of 2)."""
    from worker.worker import load_engine

    return load_engine(Settings(weights_dir=weights, device="cpu", backend="torch", frame_batch=2))


@pytest.mark.e2e
@pytest.mark.slow
def test_templates_drive_jobs_to_the_video_s_frames_and_are_cached(
    engine: WorkerEngine,
    weights: Path,
    make_settings: Callable[..., Settings],
    gateway_server: Callable[[Settings], str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from engines.demo import head_motion_frames, portrait
    from engines.pipeline import Animator

    settings = make_settings(api_keys=[hashlib.sha256(API_KEY.encode()).hexdigest()])
    url = gateway_server(settings)
    source = write_png(tmp_path / "portrait.png", portrait())
    driving = write_video(tmp_path / "driving.mp4", list(head_motion_frames(portrait(), FRAMES)), fps=25)

    assert isinstance(engine.animator, Animator)
    model = engine.animator.engine.model
    frames_through_m: list[int] = []
    original = model.extract_motion

    def counting(images: Any) -> Any:
        frames_through_m.append(int(images.shape[0]))
        return original(images)

    monkeypatch.setattr(model, "extract_motion", counting)

    local = tmp_path / "local.npz"
    flags = ["--weights", str(weights), "--device", "cpu", "--backend", "torch", "--frame-batch", "2"]
    assert main(["motion", "extract", str(driving), "-o", str(local), *flags]) == 0

    def animate(driving_input: Path, name: str) -> tuple[np.ndarray, int]:
        """The frames of a job driven by `driving_input`, and how many frames M read for it."""
        frames_through_m.clear()
        job = client.submit(source, driving_input)
        final = client.wait(job.id, timeout=1800, poll_s=0.2)
        assert final.status == "succeeded", final
        client.download(job.id, tmp_path / name)
        return decoded(tmp_path / name), sum(frames_through_m)

    with running_worker(settings, engine), Client(url, API_KEY) as client:
        from_video, read_for_video = animate(driving, "video.mp4")

        frames_through_m.clear()
        motion_job = client.submit(None, driving, output_kind="motion")
        final = client.wait(motion_job.id, timeout=1800, poll_s=0.2)
        assert final.status == "succeeded" and final.result is not None, final
        assert (final.result.content_type, final.result.frames) == (MOTION_TEMPLATE, FRAMES)
        assert sum(frames_through_m) == FRAMES, "the motion job reads every driving frame once"
        read = [
            event.record.phase_done
            for event in JobQueue(connect(settings), settings).events(motion_job.id)
            if event.record.phase == "extracting_motion"
        ]
        assert read == sorted(read) and read[-1] == FRAMES, read  # frames read, not only the phase entered
        client.download(motion_job.id, tmp_path / "job.npz")

        frames_through_m.clear()
        again = client.wait(client.submit(None, driving, output_kind="motion").id, timeout=600, poll_s=0.2)
        assert again.status == "succeeded" and sum(frames_through_m) == 0, "the cached template is reused"

        from_template, read_for_template = animate(local, "template.mp4")
        from_cached_video, read_for_cached = animate(driving, "cached.mp4")

    made_locally, made_by_job = load_template(local), load_template(tmp_path / "job.npz")
    for name, array in made_locally.arrays().items():
        np.testing.assert_array_equal(getattr(made_by_job, name), array, err_msg=name)
    assert made_by_job.fps == made_locally.fps == 25.0
    assert from_video.shape[0] == FRAMES
    np.testing.assert_array_equal(from_template, from_video)
    np.testing.assert_array_equal(from_cached_video, from_video)
    reads = (read_for_video, read_for_template, read_for_cached)
    assert read_for_video == read_for_template + FRAMES and read_for_cached == read_for_template, reads
