"""The live engine path without the network: JPEG in and out, the driving crop, One-Euro smoothing, and
the batcher that renders concurrent sessions in one call (bench.standin's STAND-IN MODEL: every frame
flat, of its own source's colour, brighter as the motion moves away from the reference)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from bench.standin import stand_in_engine
from common.errors import LivePortraitError
from common.live import LiveOptions
from engines.demo import head_motion_frames, portrait
from engines.engine import Engine
from engines.face.detection import Face
from engines.live.batcher import FrameBatcher, Rendered
from engines.live.codec import decode_frame, encode_frame
from engines.live.session import DrivingFrame, LiveSession, render_frames
from engines.live.tracking import CHECK_EVERY, DrivingCropper
from engines.motion.one_euro import OneEuroFilter
from engines.source import prepare_source
from tests.waiting import wait_until


@pytest.fixture(scope="module")
def engine() -> Engine:
    return stand_in_engine()


def tinted(tint: tuple[float, float, float]) -> np.ndarray:
    return np.clip(portrait().astype(np.float32) * np.array(tint), 0, 255).astype(np.uint8)


def session(engine: Engine, tint: tuple[float, float, float] = (1, 1, 1)) -> LiveSession:
    options = LiveOptions(smoothing=None)
    return LiveSession(engine, prepare_source(engine, tinted(tint), options.animation), options, 1920 * 1080)


def frames(n: int) -> list[np.ndarray]:
    return list(head_motion_frames(portrait(), n, size=512))


# --- JPEG ------------------------------------------------------------------------------------------


def test_frames_decode_and_encode() -> None:
    rgb = frames(1)[0]
    data = encode_frame(rgb, 95)
    back = decode_frame(data, 512 * 512)
    assert back.shape == rgb.shape and np.abs(back.astype(int) - rgb).mean() < 3
    assert decode_frame(encode_frame(rgb, 80, size=128), 512 * 512).shape == (128, 128, 3)


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", "bad_frame"),
        (b"garbage, not an image", "bad_frame"),
        (b"\xff\xd8\xff\xe0 truncated", "bad_frame"),
    ],
)
def test_bad_frames_are_refused_with_their_code(data: bytes, code: str) -> None:
    with pytest.raises(LivePortraitError) as refused:
        decode_frame(data, 512 * 512)
    assert refused.value.code == code


def test_frames_over_the_pixel_limit_are_refused_before_decoding() -> None:
    import cv2

    png = cv2.imencode(".png", frames(1)[0])[1].tobytes()
    with pytest.raises(LivePortraitError) as not_jpeg:
        decode_frame(png, 512 * 512)
    assert not_jpeg.value.code == "bad_frame"
    with pytest.raises(LivePortraitError) as too_large:
        decode_frame(encode_frame(frames(1)[0], 80), 511 * 511)
    assert too_large.value.code == "frame_too_large"


# --- One-Euro --------------------------------------------------------------------------------------


def test_one_euro_passes_the_first_sample_and_holds_a_constant() -> None:
    smoother = OneEuroFilter(min_cutoff=1.0, beta=0.0)
    x = torch.tensor([0.5, -1.0])
    assert torch.equal(smoother(x, 0.0), x)
    for i in range(1, 10):
        assert torch.allclose(smoother(x, i / 25), x)


def test_one_euro_smooths_a_step_and_beta_follows_it_sooner() -> None:
    still, quick = OneEuroFilter(1.0, 0.0), OneEuroFilter(1.0, 50.0)
    for smoother in (still, quick):
        smoother(torch.zeros(1), 0.0)
    slow_step, quick_step = still(torch.ones(1), 0.04).item(), quick(torch.ones(1), 0.04).item()
    assert 0 < slow_step < quick_step < 1
    still.reset()
    assert still(torch.ones(1), 1.0).item() == 1.0


# --- the driving crop --------------------------------------------------------------------------------


class CountingAnalyzer:
    """A face analyzer that counts its calls (the engine's Haar cascade inside)."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.has_landmarks = inner.has_landmarks
        self.calls = 0

    def detect(self, rgb: np.ndarray, min_score: float | None = None) -> list[Face]:
        return self.inner.detect(rgb, min_score)

    def faces(self, rgb: np.ndarray, min_score: float | None = None) -> list[Face]:
        return self.inner.faces(rgb, min_score)

    def landmarks(
        self, rgb: np.ndarray, prev: Face | None = None, min_score: float | None = None
    ) -> Face | None:
        self.calls += 1
        return self.inner.landmarks(rgb, prev, min_score)


def test_the_driving_crop_keeps_its_box_and_checks_the_face_now_and_then(engine: Engine) -> None:
    analyzer = CountingAnalyzer(engine.analyzer)
    cropper = DrivingCropper(analyzer, LiveOptions().animation)
    camera = frames(CHECK_EVERY)
    crop, face = cropper(camera[0])
    assert crop.shape == (512, 512, 3) and analyzer.calls >= 1
    first = analyzer.calls
    for rgb in camera[1 : CHECK_EVERY - 1]:
        cropper(rgb)
    assert analyzer.calls == first  # the box is kept: no detection on these frames
    cropper(camera[CHECK_EVERY - 1])
    assert analyzer.calls > first  # the periodic check
    shifted = np.zeros((512, 1024, 3), np.uint8)
    shifted[:, 512:] = camera[0]  # the face moved right by a whole face
    cropper._frames = CHECK_EVERY - 1
    _, moved = cropper(shifted)
    assert moved.box[0] > face.box[0] + 300
    with pytest.raises(LivePortraitError) as lost:
        cropper._frames = CHECK_EVERY - 1
        cropper(np.zeros((512, 512, 3), np.uint8))
    assert lost.value.code == "no_face"
    assert cropper(camera[0])[1] is not None  # found again afresh


# --- sessions and the batcher --------------------------------------------------------------------------


def test_render_frames_answers_each_session_with_its_own_source(engine: Engine) -> None:
    red, blue = session(engine, (1, 0.3, 0.3)), session(engine, (0.3, 0.3, 1))
    rgb = frames(1)[0]
    driving = [red.drive(rgb), blue.drive(rgb)]
    images = render_frames(engine, [red, blue], driving, [0.0, 0.0])
    colours = [np.asarray(image).reshape(-1, 3).mean(axis=0) for image in images]
    assert colours[0][0] > 2 * colours[0][2] and colours[1][2] > 2 * colours[1][0], colours


def test_a_failing_session_does_not_fail_the_others(engine: Engine) -> None:
    good, bad = session(engine), session(engine)
    driving = good.drive(frames(1)[0])

    def broken(*args: object) -> torch.Tensor:
        raise RuntimeError("this session's keypoints failed")

    bad.keypoints = broken  # type: ignore[method-assign,assignment]
    images = render_frames(engine, [bad, good], [driving, driving], [0.0, 0.0])
    assert isinstance(images[0], RuntimeError) and np.asarray(images[1]).shape == (512, 512, 3)


class Recording:
    """render_frames, recording the sessions of every call."""

    def __init__(self) -> None:
        self.calls: list[list[LiveSession]] = []

    def __call__(self, engine: Engine, sessions: list[LiveSession], *rest: object) -> list:
        self.calls.append(sessions)
        return render_frames(engine, sessions, *rest)  # type: ignore[arg-type]


def test_the_batcher_renders_two_sessions_frames_in_one_call(engine: Engine) -> None:
    recording = Recording()
    batcher = FrameBatcher(engine, window_s=60.0, max_batch=4, render=recording)
    red, blue = session(engine, (1, 0.3, 0.3)), session(engine, (0.3, 0.3, 1))
    rgb = frames(1)[0]
    frame_red, frame_blue = red.drive(rgb), blue.drive(rgb)
    try:
        batcher.opened()
        batcher.opened()
        answers = [batcher.submit(red, frame_red, 0.0)]
        threading.Thread(target=lambda: answers.append(batcher.submit(blue, frame_blue, 0.0))).start()
        wait_until(lambda: len(answers) == 2, 30, "both frames submitted")
        red_answer, blue_answer = (a.result(timeout=60) for a in answers)
    finally:
        batcher.stop()
    assert recording.calls == [[red, blue]]  # both sessions were in: no wait for the window's end
    assert isinstance(red_answer, Rendered) and red_answer.batch == blue_answer.batch == 2
    red_colour, blue_colour = (a.image.reshape(-1, 3).mean(axis=0) for a in (red_answer, blue_answer))
    assert red_colour[0] > 2 * red_colour[2] and blue_colour[2] > 2 * blue_colour[0]


def test_a_lone_session_never_waits_for_the_window(engine: Engine) -> None:
    batcher = FrameBatcher(engine, window_s=3600.0, max_batch=8)
    alone = session(engine)
    try:
        batcher.opened()
        answer = batcher.submit(alone, alone.drive(frames(1)[0]), 0.0).result(timeout=60)
    finally:
        batcher.stop()
    assert answer.batch == 1


def test_reset_makes_the_next_frame_the_reference(engine: Engine) -> None:
    live = session(engine)
    rgb = frames(1)[0]
    brighter = np.clip(rgb.astype(np.float32) * 1.6, 0, 255).astype(np.uint8)

    def render(image: np.ndarray, t: float) -> float:
        frame: DrivingFrame = live.drive(image)
        return float(np.asarray(render_frames(engine, [live], [frame], [t])[0]).mean())

    at_rest, away = render(rgb, 0.0), render(brighter, 0.04)
    live.reset()
    assert away > at_rest + 5 and abs(render(brighter, 0.08) - at_rest) < 1
