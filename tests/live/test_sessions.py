"""Live sessions end to end: a real gateway and a stand-in live worker on loopback (see conftest)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from common.live import CLOSE_CODES, Closing, Dropped, ErrorMessage
from engines.engine import Engine
from service.live_client import Closed, LiveConnection
from service.settings import Settings
from tests.live.conftest import (
    LiveStack,
    brightened,
    decoded,
    driving_frames,
    next_event,
    next_frame,
    wait_for_slots,
)
from tests.waiting import wait_until
from worker.live import LiveServer


def colour(data: bytes) -> np.ndarray:
    """The mean colour (3,) of a JPEG frame."""
    return decoded(data).reshape(-1, 3).mean(axis=0)


def test_frames_out_for_frames_in(live_stack: Callable[..., LiveStack]) -> None:
    stack = live_stack()
    frames = driving_frames(3)
    with stack.connect() as live:
        assert live.ready.options.output_kind == "crop"
        assert live.ready.source == {"width": 512, "height": 512}
        for seq, frame in enumerate(frames):
            live.send_frame(frame)
            answer = next_frame(live)
            assert answer.stats.seq == seq and answer.stats.batch == 1
            assert set(answer.stats.latency_ms) == {"decode", "track", "wait", "render", "encode", "worker"}
            assert decoded(answer.jpeg).shape == (512, 512, 3)
    wait_for_slots(stack, 0)


def test_a_bad_frame_or_message_gets_an_error_and_the_session_goes_on(
    live_stack: Callable[..., LiveStack],
) -> None:
    stack = live_stack(live_max_frame_bytes=200_000)
    frame = driving_frames(1)[0]
    with stack.connect() as live:
        live.send_frame(b"\xff\xd8 not really a jpeg")
        error = next_event(live)
        assert isinstance(error, ErrorMessage) and (error.code, error.seq) == ("bad_frame", 0), error
        live.send_frame(bytes(300_000))
        error = next_event(live)
        assert isinstance(error, ErrorMessage) and (error.code, error.seq) == ("frame_too_large", 1), error
        live._ws.send('{"type": "dance"}')
        error = next_event(live)
        assert isinstance(error, ErrorMessage) and error.code == "bad_message", error
        live.set_options({"quality": 0})
        error = next_event(live)
        assert isinstance(error, ErrorMessage) and error.code == "invalid_options", error
        live.send_frame(frame)
        assert next_frame(live).stats.seq == 2


def test_reset_takes_the_next_frame_as_the_reference(live_stack: Callable[..., LiveStack]) -> None:
    """The stand-in paints the source's colour at the reference and brighter as the motion moves away."""
    stack = live_stack()
    still = driving_frames(1)[0]
    moved = brightened(still, 1.6)
    with stack.connect(smoothing=None) as live:
        live.send_frame(still)
        at_rest = colour(next_frame(live).jpeg)
        live.send_frame(moved)
        away = colour(next_frame(live).jpeg)
        live.reset()
        live.send_frame(moved)
        after_reset = colour(next_frame(live).jpeg)
    assert (away - at_rest).min() > 5, (at_rest, away)
    assert np.abs(after_reset - at_rest).max() < 2, (at_rest, after_reset)


def test_expression_and_options_apply_from_the_next_frame(live_stack: Callable[..., LiveStack]) -> None:
    stack = live_stack()
    frame = driving_frames(1)[0]
    with stack.connect(smoothing=None) as live:
        live.send_frame(frame)
        at_rest = colour(next_frame(live).jpeg)
        live.set_expression({"mov_z": 1.2, "yaw": 20})
        live.set_options({"size": 128, "output_kind": "side_by_side"})
        live.send_frame(frame)
        edited = next_frame(live).jpeg
        live.set_expression({})
        live.send_frame(frame)
        back = colour(next_frame(live).jpeg)
    assert decoded(edited).shape == (43, 128, 3)  # driving | source | result, longest side 128
    result = decoded(edited)[:, -42:].reshape(-1, 3).mean(axis=0)
    assert (result - at_rest).max() > 2, (at_rest, result)
    assert np.abs(back - at_rest).max() < 2, (at_rest, back)


def test_two_sessions_at_once_get_their_own_frames(live_stack: Callable[..., LiveStack]) -> None:
    stack = live_stack(live_max_batch=2, live_batch_window_ms=50)
    red, blue = stack.source((1.0, 0.3, 0.3), "red.png"), stack.source((0.3, 0.3, 1.0), "blue.png")
    frames = driving_frames(3)
    with stack.connect(red, smoothing=None) as first, stack.connect(blue, smoothing=None) as second:
        answers: dict[str, list[np.ndarray]] = {"red": [], "blue": []}
        for frame in frames:
            first.send_frame(frame)
            second.send_frame(frame)
            answers["red"].append(colour(next_frame(first).jpeg))
            answers["blue"].append(colour(next_frame(second).jpeg))
    for c in answers["red"]:
        assert c[0] > 2 * c[2], answers
    for c in answers["blue"]:
        assert c[2] > 2 * c[0], answers


def test_no_free_slot_answers_503_with_retry_after(live_stack: Callable[..., LiveStack]) -> None:
    stack = live_stack(live_slots=1, live_retry_after_s=7)
    source = stack.source()
    with stack.client() as client:
        client.open_live(source)  # holds the only slot for its token's life, unused
    with open(source, "rb") as file:
        answer = httpx.post(f"{stack.url}/v1/live/sessions", files={"source": file})
    assert answer.status_code == 503 and answer.headers["retry-after"] == "7", answer.text


def test_no_live_worker_answers_503(
    live_settings: Callable[..., object], gateway_server: Callable[..., str], tmp_path
) -> None:
    from tests.worker.doubles import face_image, write_png

    url = gateway_server(live_settings())
    with (write_png(tmp_path / "face.png", face_image(96))).open("rb") as file:
        answer = httpx.post(f"{url}/v1/live/sessions", files={"source": file})
    assert answer.status_code == 503 and "retry-after" in answer.headers


def test_a_source_that_is_no_image_is_refused(live_stack: Callable[..., LiveStack], tmp_path) -> None:
    from tests.worker.doubles import moving_frames, write_video

    stack = live_stack()
    video = write_video(tmp_path / "clip.mp4", moving_frames(2))
    with video.open("rb") as file:
        answer = httpx.post(f"{stack.url}/v1/live/sessions", files={"source": file})
    assert answer.status_code == 422, answer.text
    answer = httpx.post(f"{stack.url}/v1/live/sessions", files={"source": ("x.png", b"nothing")})
    assert answer.status_code == 415, answer.text
    answer = httpx.post(
        f"{stack.url}/v1/live/sessions",
        files={"source": ("face.png", stack.source().read_bytes())},
        data={"options": '{"quality": 101}'},
    )
    assert answer.status_code == 422, answer.text


def test_a_malformed_form_is_refused_as_every_form_is(live_stack: Callable[..., LiveStack]) -> None:
    """The form's limits answer as a job's do: one problem body, 413 for a size, 422 for the fields."""
    stack = live_stack()
    sessions = f"{stack.url}/v1/live/sessions"
    face = ("face.png", stack.source().read_bytes())
    answers = {
        "options over its limit": (
            httpx.post(sessions, files={"source": face}, data={"options": "x" * 70_000}),
            413,
        ),
        "source and upload_id": (httpx.post(sessions, files={"source": face}, data={"upload_id": "u1"}), 422),
        "neither": (httpx.post(sessions, data={"options": "{}"}), 422),
        "an unknown field": (httpx.post(sessions, files={"source": face}, data={"priority": "high"}), 422),
        "a JSON body": (httpx.post(sessions, json={"source": "face.png"}), 415),
    }
    for case, (answer, status) in answers.items():
        assert answer.status_code == status, (case, answer.text)
        assert answer.headers["content-type"] == "application/problem+json", case
    wait_for_slots(stack, 0)


def test_the_token_is_single_use(live_stack: Callable[..., LiveStack]) -> None:
    stack = live_stack()
    with stack.client() as client:
        grant = client.open_live(stack.source())
    with LiveConnection(grant.websocket_url), pytest.raises(InvalidStatus) as refused:
        connect(grant.websocket_url, open_timeout=10, legacy=True)
    assert refused.value.response.status_code == 403
    with pytest.raises(InvalidStatus):
        connect(grant.websocket_url.replace("token=", "token=x"), open_timeout=10, legacy=True)


def test_a_client_that_vanishes_frees_its_slot(live_stack: Callable[..., LiveStack]) -> None:
    stack = live_stack(live_slots=1)
    live = stack.connect()
    live.send_frame(driving_frames(1)[0])
    next_frame(live)
    wait_for_slots(stack, 1)
    live._ws.socket.close()  # no close frame: the client is gone
    wait_for_slots(stack, 0)
    with stack.connect() as again:  # the slot is free again
        again.send_frame(driving_frames(1)[0])
        assert next_frame(again).stats.seq == 0


@pytest.mark.parametrize(
    ("limit", "reason"),
    [({"live_idle_timeout_s": 0.5}, "idle_timeout"), ({"live_max_session_s": 1}, "session_expired")],
    ids=["idle", "maximum-length"],
)
def test_a_session_past_its_limit_is_closed_with_its_code(
    live_stack: Callable[..., LiveStack], limit: dict[str, float], reason: str
) -> None:
    stack = live_stack(**limit)
    with stack.connect() as live:
        closing = next_event(live)
        closed = next_event(live)
    assert isinstance(closing, Closing) and closing.reason == reason, closing
    assert closed == Closed(CLOSE_CODES[reason], reason), closed
    wait_for_slots(stack, 0)


def test_a_newer_frame_supersedes_a_waiting_one(
    live_settings: Callable[..., Settings],
    gateway_server: Callable[..., str],
    live_worker: Callable[..., LiveServer],
    standin_engine: Engine,
    tmp_path: Path,
) -> None:
    """The render is held while frames 1 and 2 arrive: 2 replaces 1 (dropped), then 0 and 2 come out."""
    from engines.live.batcher import FrameBatcher
    from engines.live.session import render_frames
    from tests.live.conftest import LiveStack

    entered, release = threading.Event(), threading.Event()

    def held(*args):
        entered.set()
        release.wait(60)
        return render_frames(*args)

    settings = live_settings()
    url = gateway_server(settings)
    batcher = FrameBatcher(standin_engine, window_s=0, max_batch=1, render=held)
    stack = LiveStack(settings, url, live_worker(settings, standin_engine, batcher=batcher), tmp_path)
    frames = driving_frames(3)
    try:
        with stack.connect() as live:
            live.send_frame(frames[0])
            wait_until(entered.is_set, 30, "frame 0 in the render")
            live.send_frame(frames[1])
            live.send_frame(frames[2])
            dropped = next_event(live)
            release.set()
            assert dropped == Dropped(seq=1, reason="superseded"), dropped
            assert [next_frame(live).stats.seq for _ in range(2)] == [0, 2]
    finally:
        release.set()


def test_live_metrics(live_stack: Callable[..., LiveStack]) -> None:
    stack = live_stack()
    with stack.connect() as live:
        live.send_frame(driving_frames(1)[0])
        next_frame(live)

        def scraped() -> str | None:
            text = httpx.get(f"{stack.url}/metrics").text
            return text if "liveportrait_live_frames_sent_total 1.0" in text else None

        text = wait_until(scraped, 30, "the live counters in /metrics")
    assert "liveportrait_live_frames_received_total 1.0" in text
    assert "liveportrait_live_sessions_total 1.0" in text
    assert "liveportrait_live_slots 2.0" in text and "liveportrait_live_workers 1.0" in text
    assert "liveportrait_live_frame_latency_seconds_count 1.0" in text


def test_a_session_from_a_direct_upload_keeps_the_upload(live_stack: Callable[..., LiveStack]) -> None:
    stack = live_stack()
    with stack.client() as client:
        grant = client.open_live(stack.source(), direct_upload=True)
    with LiveConnection(grant.websocket_url) as live:
        live.send_frame(driving_frames(1)[0])
        assert next_frame(live).stats.seq == 0
    wait_for_slots(stack, 0)
    uploads = list((stack.settings.local_storage_dir / "uploads").iterdir())
    assert len(uploads) == 1, uploads  # the session's source was the upload: it stays


def test_a_worker_that_stops_closes_its_sessions_with_worker_lost(
    live_stack: Callable[..., LiveStack],
) -> None:
    stack = live_stack()
    with stack.connect() as live:
        stopping = threading.Thread(target=stack.worker.stop)
        stopping.start()
        closing = next_event(live)
        closed = next_event(live)
        stopping.join(timeout=60)
    assert isinstance(closing, Closing) and closing.reason == "worker_lost", closing
    assert closed == Closed(CLOSE_CODES["worker_lost"], "worker_lost"), closed


def test_an_unused_grant_frees_its_slot_and_its_source(live_stack: Callable[..., LiveStack]) -> None:
    stack = live_stack(live_slots=1, live_token_ttl_s=1)
    with stack.client() as client:
        client.open_live(stack.source())
        sources = stack.settings.local_storage_dir / "live"

        def stored() -> list[Path]:
            return [path for path in sources.rglob("*") if path.is_file()]

        assert len(stored()) == 1
        wait_until(lambda: not stored(), 60, "the unused session's source deleted")
        client.open_live(stack.source())  # its slot was free again
