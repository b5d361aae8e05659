"""Test doubles and helpers (media, an engine, a queue and store, a worker thread) for worker and e2e tests.

`FakeAnimator` stands in for the GPU engine (engines.pipeline.Animator): same `animate`
signature, real media in and out (it decodes the inputs and writes a real H.264 MP4 with PyAV,
frame by frame, in batches), the engine's progress events (each phase on entry, the driving frames
as they are decoded, the frames after every batch), cooperative cancel between batches, and
coded errors; a `Hold` stops it mid-render until the test releases it. It does no animation: each
output frame is the source image, shifted.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from common.errors import Canceled, LivePortraitError
from common.progress import (
    EXTRACTING_MOTION,
    FINALIZING,
    PREPARING,
    RENDERING,
    ProgressEvent,
)
from engines.request import AnimateRequest
from service.queue import JobQueue, connect
from service.settings import Settings
from service.storage import Store, make_store
from worker.runner import WorkerEngine
from worker.worker import AnimationWorker, build_worker


@dataclass
class FakeResult:
    """What FakeAnimator.animate returns."""

    output: Path
    frames: int
    fps: float


def read_rgb(path: Path) -> np.ndarray:
    """The first frame of an image or video, RGB uint8."""
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
        return frame.to_ndarray(format="rgb24")


def write_video(path: Path, frames: list[np.ndarray], fps: int = 25) -> Path:
    """Write RGB frames as an H.264 MP4."""
    height, width = frames[0].shape[:2]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for rgb in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def moving_frames(n: int, size: int = 64) -> list[np.ndarray]:
    """`n` frames of a moving gradient."""
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    return [
        np.stack(
            [
                np.roll(ramp, 3 * i)[None, :].repeat(size, 0),
                ramp[:, None].repeat(size, 1),
                np.full((size, size), 128.0),
            ],
            -1,
        ).astype(np.uint8)
        for i in range(n)
    ]


def write_png(path: Path, rgb: np.ndarray) -> Path:
    """Write an RGB image as PNG."""
    with av.open(str(path), "w", format="image2") as container:
        stream = container.add_stream("png")
        stream.height, stream.width = rgb.shape[:2]
        stream.pix_fmt = "rgb24"
        for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def face_image(size: int = 128) -> np.ndarray:
    """A downscaled astronaut portrait (a real face)."""
    from skimage import data

    rgb = data.astronaut()
    step = max(1, rgb.shape[0] // size)
    return np.ascontiguousarray(rgb[::step, ::step][:size, :size])


def write_inputs(folder: Path, frames: int = 8) -> tuple[Path, Path]:
    """A 96-pixel face photo `folder`/face.png and a 25 fps driving video `folder`/driving.mp4."""
    return (
        write_png(folder / "face.png", face_image(96)),
        write_video(folder / "driving.mp4", moving_frames(frames)),
    )


def queue_and_store(settings: Settings) -> tuple[JobQueue, Store]:
    """The job queue on the settings' Redis and the settings' store."""
    return JobQueue(connect(settings), settings), make_store(settings)


class Hold:
    """Holds a FakeAnimator render once `frames` frames are done (progress reported), until released.

    A test then acts on a job that is surely mid-render (cancels it, watches its heartbeats, cuts
    the store away) instead of racing a render slowed down by sleeps. Used as a context manager
    around the test's actions, it releases the render on the way out, whatever happened.
    """

    def __init__(self, frames: int, timeout: float = 60.0) -> None:
        self.frames = frames
        self.timeout = timeout
        self.reached = threading.Event()
        self._released = threading.Event()

    def release(self) -> None:
        """Let the render go on."""
        self._released.set()

    def __call__(self, frames_done: int) -> None:
        """Called by the render after each batch: blocks the first time `frames_done` reaches `frames`."""
        if frames_done >= self.frames and not self.reached.is_set():
            self.reached.set()
            if not self._released.wait(self.timeout):
                raise RuntimeError(f"the render was held for {self.timeout:g} s and never released")

    def __enter__(self) -> Hold:
        return self

    def __exit__(self, *_: object) -> None:
        self.release()


class FakeAnimator:
    """The engine's test double; see the module docstring."""

    def __init__(
        self, frame_delay: float = 0.0, frame_batch: int = 2, fail_times: int = 0, hold: Hold | None = None
    ) -> None:
        self.frame_delay = frame_delay
        self.frame_batch = frame_batch
        self.fail_times = fail_times
        self.hold = hold
        self.calls = 0

    def animate(self, request: AnimateRequest) -> FakeResult:
        """Write `output` with one frame per driving frame at the driving fps (`expression` is ignored)."""
        source, driving, output = request.source, request.driving, request.output
        progress, should_cancel = request.progress, request.should_cancel
        self.calls += 1
        if self.fail_times > 0:
            self.fail_times -= 1
            raise RuntimeError("simulated engine crash")
        report = progress or (lambda event: None)
        report(ProgressEvent(PREPARING))
        image = read_rgb(source)
        if float(image.std()) < 2.0:
            raise LivePortraitError("no_face", "no face found in the source image")
        report(ProgressEvent(EXTRACTING_MOTION))
        with av.open(str(driving)) as container:
            stream = container.streams.video[0]
            fps = float(stream.average_rate or 25)
            expected = stream.frames or None
            total = 0
            for _ in container.decode(video=0):
                total += 1
                if total % self.frame_batch == 0:
                    report(ProgressEvent(EXTRACTING_MOTION, total, max(total, expected or total)))
        report(ProgressEvent(EXTRACTING_MOTION, total, total))
        report(ProgressEvent(RENDERING, 0, total))
        height, width = (d - d % 2 for d in image.shape[:2])
        image = np.ascontiguousarray(image[:height, :width])
        with av.open(str(output), "w") as out:
            video = out.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
            video.width, video.height, video.pix_fmt = width, height, "yuv420p"
            for start in range(0, total, self.frame_batch):
                if should_cancel is not None and should_cancel():
                    raise Canceled()
                end = min(total, start + self.frame_batch)
                for index in range(start, end):
                    frame = av.VideoFrame.from_ndarray(np.roll(image, index, axis=1), format="rgb24")
                    for packet in video.encode(frame):
                        out.mux(packet)
                    if self.frame_delay:
                        # Slow on purpose, where the duration is the point: a render that takes
                        # measurable time (metrics), or a worker in a subprocess, which cannot be
                        # given a Hold, rendering slowly enough to be signalled or killed mid-job.
                        time.sleep(self.frame_delay)
                report(ProgressEvent(RENDERING, end, total))
                if self.hold is not None:
                    self.hold(end)
            report(ProgressEvent(FINALIZING))
            for packet in video.encode():
                out.mux(packet)
        return FakeResult(output=Path(output), frames=total, fps=fps)


def fake_engine(animator: FakeAnimator | None = None) -> WorkerEngine:
    """A WorkerEngine driving `animator` (a default FakeAnimator if none)."""
    return WorkerEngine(animator if animator is not None else FakeAnimator())


@contextmanager
def running_worker(settings: Settings, engine: WorkerEngine) -> Iterator[AnimationWorker]:
    """A worker thread on the settings' queues; stopped (warm) at exit."""
    worker = build_worker(settings, engine, idle_poll_s=1)
    thread = threading.Thread(target=worker.work, kwargs={"logging_level": "WARNING"}, daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        worker.stop()
        thread.join(timeout=15)
        assert not thread.is_alive(), "the worker did not stop"


def run_worker_process() -> None:
    """Entry point of a worker subprocess running FakeAnimator (settings from the environment)."""
    animator = FakeAnimator(frame_delay=float(os.environ.get("FAKE_FRAME_DELAY", "0")))
    build_worker(Settings(), fake_engine(animator), idle_poll_s=1).work(logging_level="WARNING")
