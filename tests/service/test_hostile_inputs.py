"""Hostile inputs against the gateway under uvicorn (real Redis, local store), and through to a worker.

What can be decided from the bytes is refused by the gateway with a 4xx naming the input and the
reason (the `type` of a 422 is the error code a worker would report); what cannot (a face that is
not there, the content behind a URL) ends as a failed job with a code while the worker goes on.
After every refusal the gateway still answers /healthz and nothing was queued or stored.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import select
import socket
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlsplit

import av
import httpx
import numpy as np
import pytest
from PIL import Image

from service.client import Client, Input
from service.media import MediaLimits, MediaRejected, inspect_media
from service.queue import JobQueue, connect
from service.settings import Settings
from tests.worker.doubles import (
    face_image,
    fake_engine,
    moving_frames,
    running_worker,
    write_png,
    write_video,
)

KEY = "hostile-test-key"
LIMIT = 2 * 1024 * 1024
PUBLIC_URL = "https://93.184.216.34/driving.mp4"  # an address literal: no DNS needed


class _Trap:
    """Unpickling this creates `marker`: proof, if the file appears, that someone unpickled it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[Path]]:
        return (Path.touch, (self.marker,))


def png_chunk(tag: bytes, data: bytes) -> bytes:
    """One PNG chunk with its CRC."""
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def png_bomb(side: int = 100_000) -> bytes:
    """A valid ~100-byte PNG declaring side x side RGB pixels (30 GB decoded)."""
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\0" * 1024, 9)
    return (
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", rows) + png_chunk(b"IEND", b"")
    )


def jpeg_bytes(rgb: np.ndarray) -> bytes:
    """An RGB image as baseline JPEG."""
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, "JPEG", quality=90)
    return out.getvalue()


def jpeg_bomb(jpeg: bytes, side: int = 65_000) -> bytes:
    """`jpeg` with its frame header (SOF0) claiming side x side pixels."""
    sof = jpeg.index(b"\xff\xc0")
    return jpeg[: sof + 5] + struct.pack(">HH", side, side) + jpeg[sof + 9 :]


def empty_mp4(path: Path) -> bytes:
    """An MP4 written with a video stream but no frames."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        container.start_encoding()
        for packet in stream.encode():
            container.mux(packet)
    return path.read_bytes()


@dataclass(frozen=True)
class Media:
    """Good and hostile inputs, made once per module."""

    face_png: bytes
    face_jpeg: bytes
    blank_png: bytes
    driving: bytes
    driving_96px: bytes
    driving_12_frames: bytes
    driving_3_seconds: bytes
    driving_no_frames: bytes


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Media:
    """Inputs for the gateway limits below: 64x64 video pixels, 10 frames, 2 seconds."""
    d = tmp_path_factory.mktemp("media")
    return Media(
        face_png=write_png(d / "face.png", face_image(96)).read_bytes(),
        face_jpeg=jpeg_bytes(face_image(96)),
        blank_png=write_png(d / "blank.png", np.zeros((96, 96, 3), np.uint8)).read_bytes(),
        driving=write_video(d / "d.mp4", moving_frames(8)).read_bytes(),
        driving_96px=write_video(d / "d96.mp4", moving_frames(8, size=96)).read_bytes(),
        driving_12_frames=write_video(d / "d12.mp4", moving_frames(12)).read_bytes(),
        driving_3_seconds=write_video(d / "d3s.mp4", moving_frames(3), fps=1).read_bytes(),
        driving_no_frames=empty_mp4(d / "empty.mp4"),
    )


@dataclass
class Gw:
    """A gateway for one test, with its queue and store."""

    url: str
    settings: Settings
    queue: JobQueue

    def client(self) -> httpx.Client:
        """An authenticated httpx client."""
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=10)

    def assert_up_and_nothing_queued(self) -> None:
        """The gateway answers /healthz, no job was queued and no input was stored."""
        assert httpx.get(f"{self.url}/healthz", timeout=5).json() == {"status": "ok"}
        assert sum(self.queue.depths().values()) == 0
        inputs = Path(self.settings.local_storage_dir) / "inputs"
        assert not inputs.exists() or not any(inputs.iterdir())


def gateway_settings(make_settings: Callable[..., Settings], **extra: object) -> Settings:
    """One API key, 2 MiB requests, 1 MiB inputs; videos up to 64x64 pixels, 10 frames, 2 s."""
    return make_settings(
        api_keys=[hashlib.sha256(KEY.encode()).hexdigest()],
        max_request_bytes=LIMIT,
        max_input_bytes=LIMIT // 2,
        max_driving_pixels=64 * 64,
        max_driving_frames=10,
        max_driving_seconds=2.0,
        **extra,
    )


@pytest.fixture
def gw(make_settings: Callable[..., Settings], gateway_server: Callable[[Settings], str]) -> Gw:
    """A gateway with the limits of `gateway_settings`, private URLs refused."""
    settings = gateway_settings(make_settings)
    return Gw(gateway_server(settings), settings, JobQueue(connect(settings), settings))


def _hostile_parts(media: Media, marker: Path) -> list[tuple[str, str, str, bytes, int, str | None]]:
    """(case, input, file name, bytes, status, 422 type) of each hostile multipart input."""
    jpeg = media.face_jpeg
    return [
        ("exe renamed .jpg", "source", "photo.jpg", b"MZ\x90\x00" + bytes(range(256)) * 8, 415, None),
        ("script renamed .jpg", "source", "photo.jpg", b"#!/bin/sh\nrm -rf /\n" * 20, 415, None),
        ("pickle as a template", "driving", "motion.pkl", pickle.dumps(_Trap(marker)), 422, "bad_template"),
        ("truncated JPEG", "source", "face.jpg", jpeg[: len(jpeg) * 2 // 3], 422, "corrupt_media"),
        (
            "truncated MP4",
            "driving",
            "d.mp4",
            media.driving[: len(media.driving) * 2 // 3],
            422,
            "corrupt_media",
        ),
        ("PNG bomb", "source", "bomb.png", png_bomb(), 422, "too_large"),
        ("JPEG bomb", "source", "bomb.jpg", jpeg_bomb(jpeg), 422, "too_large"),
        ("video of 0 frames", "driving", "empty.mp4", media.driving_no_frames, 422, "no_frames"),
        ("video over the pixel limit", "driving", "d.mp4", media.driving_96px, 422, "too_large"),
        ("video over the frame limit", "driving", "d.mp4", media.driving_12_frames, 422, "too_long"),
        ("video over the duration limit", "driving", "d.mp4", media.driving_3_seconds, 422, "too_long"),
    ]


def _decoder_tripwires(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make every image and video decoder in reach (PyAV, Pillow, OpenCV) record its use in the
    returned list and refuse to work: the gateway decides from the bytes and must never decode."""
    import cv2

    opened: list[str] = []

    def tripwire(name: str) -> Callable[..., None]:
        def refuse(*args: object, **kwargs: object) -> None:
            opened.append(name)
            raise RuntimeError(f"{name} called in the gateway")

        return refuse

    for module, attribute in ((av, "open"), (Image, "open"), (cv2, "imdecode"), (cv2, "imread")):
        monkeypatch.setattr(module, attribute, tripwire(f"{module.__name__}.{attribute}"))
    return opened


def test_hostile_files_are_refused_from_their_bytes(
    gw: Gw, media: Media, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "unpickled"
    trap = pickle.dumps(_Trap(tmp_path / "trap-works"))
    pickle.loads(trap)  # the trap is live: loading it runs code
    assert (tmp_path / "trap-works").exists()
    decoders = _decoder_tripwires(monkeypatch)
    with gw.client() as client:
        for case, name, filename, content, status, code in _hostile_parts(media, marker):
            files = {"source": ("face.png", media.face_png), "driving": ("d.mp4", media.driving)}
            files[name] = (filename, content)
            response = client.post("/v1/jobs", files=files)
            assert decoders == [], (case, f"the gateway opened a decoder: {decoders}")
            assert response.status_code == status, (case, response.text)
            problem = response.json()
            if code is None:
                assert f"'{name}' is not an image or video" in problem["detail"], (case, problem)
            else:
                error = problem["errors"][0]
                assert problem["code"] == code, (case, problem)
                assert error["type"] == code and error["loc"] == ["body", name], (case, problem)
            gw.assert_up_and_nothing_queued()
        good = client.post(
            "/v1/jobs", files={"source": ("f.jpg", media.face_jpeg), "driving": ("d", media.driving)}
        )
        assert good.status_code == 202, good.text
    assert decoders == [], "a good job is queued without decoding it either"
    assert not marker.exists(), "the pickle was unpickled"


def test_hostile_direct_uploads_are_refused(gw: Gw, media: Media, tmp_path: Path) -> None:
    """The same checks on POST /v1/uploads/{id} (local store), so a bad upload is never stored."""
    marker = tmp_path / "unpickled"
    with gw.client() as client:
        for case, _, filename, content, status, code in _hostile_parts(media, marker):
            grant = client.post("/v1/uploads").json()
            response = httpx.post(grant["url"], data=grant["fields"], files={"file": (filename, content)})
            assert response.status_code == status, (case, response.text)
            if code is not None:
                assert response.json()["errors"][0]["type"] == code, case
            body = {"source": {"upload_id": grant["upload_id"]}, "driving": {"url": PUBLIC_URL}}
            missing = client.post("/v1/jobs", json=body)
            assert missing.status_code == 422 and "not found" in missing.text, case
            gw.assert_up_and_nothing_queued()
    assert not marker.exists(), "the pickle was unpickled"


def test_upload_ids_are_checked_again_at_submission(gw: Gw, media: Media) -> None:
    """An object put into the store behind the gateway's back (as a presigned S3 POST would) is checked."""
    store = Path(gw.settings.local_storage_dir) / "uploads"
    store.mkdir(parents=True)
    bomb_id, truncated_id = "a" * 32, "b" * 32
    (store / bomb_id).write_bytes(png_bomb())
    (store / truncated_id).write_bytes(media.driving[:-200])
    with gw.client() as client:
        for source, code in ((bomb_id, "too_large"), (truncated_id, "corrupt_media")):
            body = {"source": {"upload_id": source}, "driving": {"url": PUBLIC_URL}}
            response = client.post("/v1/jobs", json=body)
            assert response.status_code == 422, response.text
            assert response.json()["errors"][0]["type"] == code
            assert response.json()["errors"][0]["loc"] == ["body", "source", "upload_id"]
            gw.assert_up_and_nothing_queued()


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/a.png",
        "http://127.1:8080/a.png",
        "http://0x7f000001/a.png",
        "http://10.0.0.7/a.png",
        "http://192.168.1.1/a.png",
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "http://[::1]/a.png",
        "http://[::ffff:127.0.0.1]/a.png",
        "http://[fe80::1]/a.png",
        "http://[64:ff9b::a9fe:a9fe]/a.png",
        "http://localhost:6379/",
        "file:///etc/passwd",
        "ftp://example.com/a.png",
        "gopher://127.0.0.1:6379/_FLUSHALL",
        "dict://127.0.0.1:6379/info",
        "s3://someone-elses-bucket/a.png",
    ],
)
def test_ssrf_urls_are_refused(gw: Gw, url: str) -> None:
    with gw.client() as client:
        for name in ("source", "driving"):
            body = {"source": {"url": PUBLIC_URL}, "driving": {"url": PUBLIC_URL}, name: {"url": url}}
            response = client.post("/v1/jobs", json=body)
            assert response.status_code == 422, response.text
            error = response.json()["errors"][0]
            assert error["type"] == "url_refused" and error["loc"] == ["body", name, "url"], error
    gw.assert_up_and_nothing_queued()


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"crf": 99}, "crf"),
        ({"driving_multiplier": -1}, "driving_multiplier"),
        ({"scale": 1e300}, "scale"),
        ({"det_thresh": 1.0}, "det_thresh"),
        ({"source_max_dim": 10**9}, "source_max_dim"),
        ({"output_fps": "fast"}, "output_fps"),
        ({"animation_region": "everything"}, "animation_region"),
        ({"__class__": "os.system"}, "__class__"),
    ],
)
def test_options_out_of_range_name_the_field(gw: Gw, media: Media, options: dict, field: str) -> None:
    with gw.client() as client:
        body = {"source": {"url": PUBLIC_URL}, "driving": {"url": PUBLIC_URL}, "options": options}
        as_json = client.post("/v1/jobs", json=body)
        files = {"source": ("f.png", media.face_png), "driving": ("d.mp4", media.driving)}
        as_form = client.post("/v1/jobs", files=files, data={"options": json.dumps(options)})
    for response in (as_json, as_form):
        assert response.status_code == 422, response.text
        assert response.json()["errors"][0]["loc"] == ["body", "options", field], response.json()
    gw.assert_up_and_nothing_queued()


@pytest.mark.parametrize(
    "body",
    [
        b"{",
        b'{"source": {"url": "https://93.184.216.34/a.png"}, "driving": ',
        b"[1, 2, 3]",
        b"null",
        b'{"source": "\xff\xfe"}',
        b"[" * 5000 + b"]" * 5000,
        b'{"source": {"url": "https://93.184.216.34/a.png"}, "driving": {"url": 7}}',
        b'{"source": {"url": "https://93.184.216.34/a.png"}}',
        b'{"a": 1, "a": 2, "source": {}, "driving": {}}',
    ],
)
def test_malformed_json_is_4xx(gw: Gw, body: bytes) -> None:
    with gw.client() as client:
        response = client.post("/v1/jobs", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code in (400, 422), response.text
    problem = response.json()
    assert response.headers["content-type"] == "application/problem+json", response.headers
    assert problem["code"] == "invalid_request" and problem["errors"], problem
    gw.assert_up_and_nothing_queued()


def _send_chunked(url: str, path: str, content_type: str, head: bytes, total: int) -> tuple[bytes, int]:
    """POST a chunked body of up to `total` bytes until the server answers; (response head, bytes sent)."""
    parts = urlsplit(url)
    request = (
        f"POST {path} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {KEY}\r\n"
        f"Transfer-Encoding: chunked\r\nContent-Type: {content_type}\r\n\r\n"
    ).encode()
    chunk = b"A" * (64 * 1024)
    sent = 0
    with socket.create_connection((parts.hostname, parts.port)) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        sock.sendall(request + b"%x\r\n%s\r\n" % (len(head), head))
        try:
            while sent < total and not select.select([sock], [], [], 0)[0]:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = b""
        sock.settimeout(5)  # a server that never answers fails the test instead of hanging it
        while b"\r\n\r\n" not in answer and (data := sock.recv(65536)):
            answer += data
    return answer, sent


def test_oversized_bodies_are_413_while_streaming(gw: Gw) -> None:
    planned = 64 * LIMIT
    boundary = "xyz"
    part = f'--{boundary}\r\nContent-Disposition: form-data; name="source"; filename="a.png"\r\n\r\n'
    answer, sent = _send_chunked(
        gw.url, "/v1/jobs", f"multipart/form-data; boundary={boundary}", part.encode(), planned
    )
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert sent < planned // 4, f"{sent} bytes went out before the server refused"
    answer, sent = _send_chunked(gw.url, "/v1/jobs", "application/json", b'{"source": "', planned)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert sent < planned // 4
    with gw.client() as client:
        declared = client.post(
            "/v1/jobs", content=b"\0" * (LIMIT + 1), headers={"Content-Type": "application/json"}
        )
    assert declared.status_code == 413
    gw.assert_up_and_nothing_queued()


class _Files(BaseHTTPRequestHandler):
    """Serves `files` by path on loopback (stands in for a user's web server)."""

    files: ClassVar[dict[str, bytes]] = {}

    def do_GET(self) -> None:
        body = self.files.get(self.path)
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


@pytest.fixture
def file_server() -> Iterator[tuple[str, dict[str, bytes]]]:
    """A loopback HTTP server and the dict of what it serves."""

    class Files(_Files):
        files: ClassVar[dict[str, bytes]] = {}

    server = ThreadingHTTPServer(("127.0.0.1", 0), Files)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", Files.files
    server.shutdown()
    server.server_close()


@pytest.mark.e2e
def test_undecidable_inputs_fail_the_job_with_a_code_and_the_worker_goes_on(
    make_settings: Callable[..., Settings],
    gateway_server: Callable[[Settings], str],
    file_server: tuple[str, dict[str, bytes]],
    media: Media,
    tmp_path: Path,
) -> None:
    """No face in the source, a pickle or a non-image behind a URL: failed jobs, coded; worker still up."""
    settings = gateway_settings(make_settings, allow_private_urls=True)
    url = gateway_server(settings)
    base, served = file_server
    marker = tmp_path / "unpickled"
    served.update(
        {
            "/motion.pkl": pickle.dumps(_Trap(marker)),
            "/photo.jpg": b"<html>not a photo</html>",
            "/face.png": media.face_png,
            "/driving.mp4": media.driving,
        }
    )
    blank, face, driving = tmp_path / "blank.png", tmp_path / "face.png", tmp_path / "d.mp4"
    blank.write_bytes(media.blank_png)
    face.write_bytes(media.face_png)
    driving.write_bytes(media.driving)
    cases: list[tuple[tuple[Input, Input], str]] = [
        ((blank, driving), "no_face"),
        ((f"{base}/face.png", f"{base}/motion.pkl"), "bad_template"),
        ((f"{base}/photo.jpg", f"{base}/driving.mp4"), "unsupported_media"),
        ((f"{base}/missing.png", f"{base}/driving.mp4"), "fetch_failed"),
    ]
    with running_worker(settings, fake_engine()), Client(url, KEY) as client:
        for (source, drive), code in cases:
            failed = client.wait(client.submit(source, drive).id, timeout=30, poll_s=0.05)
            assert failed.status == "failed" and failed.error is not None, failed
            assert failed.error.code == code, failed.error
            assert httpx.get(f"{url}/healthz").status_code == 200
            after = client.wait(client.submit(face, driving).id, timeout=30, poll_s=0.05)
            assert after.status == "succeeded", "the worker keeps going after a bad job"
    assert not marker.exists(), "the pickle was unpickled"


def _video(path: Path, codec: str, pix_fmt: str = "yuv420p") -> bytes:
    """8 frames of 64x64 at 25 fps in the container its suffix names."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=25)
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height, stream.pix_fmt = 64, 64, pix_fmt
        for rgb in moving_frames(8):
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path.read_bytes()


def _image(fmt: str, **params: object) -> bytes:
    """A 96x96 portrait saved by Pillow as `fmt`."""
    out = io.BytesIO()
    Image.fromarray(face_image(96)).save(out, fmt, **params)
    return out.getvalue()


@pytest.mark.parametrize(
    ("make", "content_type", "expected"),
    [
        (lambda d: _image("PNG"), "image/png", (96, 96, 1, None)),
        (lambda d: _image("JPEG", progressive=True), "image/jpeg", (96, 96, 1, None)),
        (lambda d: _image("WEBP"), "image/webp", (96, 96, 1, None)),
        (lambda d: _image("WEBP", lossless=True), "image/webp", (96, 96, 1, None)),
        (lambda d: _video(d / "v.mp4", "libx264"), "video/mp4", (64, 64, 8, 0.32)),
        (lambda d: _video(d / "v.mov", "libx264"), "video/quicktime", (64, 64, 8, 0.32)),
        (lambda d: _video(d / "v.mkv", "libx264"), "video/x-matroska", (64, 64, 8, 0.32)),
        (lambda d: _video(d / "v.webm", "libvpx-vp9"), "video/webm", (64, 64, 8, 0.32)),
        (lambda d: _video(d / "v.avi", "mjpeg", "yuvj420p"), "video/x-msvideo", (64, 64, 8, 0.32)),
    ],
)
def test_header_checks_of_every_format(
    make: Callable[[Path], bytes], content_type: str, expected: tuple, tmp_path: Path
) -> None:
    """Every format the engines read: size and length from headers, truncation, partial reads."""
    data = make(tmp_path)
    limits = MediaLimits(max_image_pixels=96 * 96, max_video_pixels=64 * 64, max_frames=8, max_seconds=1)
    info = inspect_media(io.BytesIO(data), len(data), limits)
    assert info.content_type == content_type
    assert (info.width, info.height, info.frames, info.seconds) == pytest.approx(expected)
    cut = data[: len(data) * 6 // 10]
    with pytest.raises(MediaRejected) as refused:
        inspect_media(io.BytesIO(cut), len(cut), limits)
    assert refused.value.code == "corrupt_media"
    head_only = inspect_media(io.BytesIO(data[:64]), len(data), limits, available=64)
    assert head_only.content_type == content_type, "a partial read decides what it can"
    tight = MediaLimits(max_image_pixels=95 * 96, max_video_pixels=63 * 64, max_frames=8, max_seconds=1)
    with pytest.raises(MediaRejected) as refused:
        inspect_media(io.BytesIO(data), len(data), tight)
    assert refused.value.code == "too_large"
