"""common.media, differentially: the gateway's check and the engines' probe judge the same bytes alike.

Every file of a corpus (valid images and videos made with OpenCV, Pillow and PyAV, and crafted or
damaged ones) goes through the check the gateway runs on an upload (`service.media.inspect_media`
on the spooled file, and on the head of a stored object) and through `engines.media.probe.probe`
on the same bytes written to a file. Both must accept it, or refuse it with the same error code,
and that code must be the one the corpus expects.
"""

from __future__ import annotations

import io
import pickle
import struct
import subprocess
import sys
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from PIL import Image

from common.errors import LivePortraitError
from common.media import SNIFF_BYTES, MediaError, extension, identify, media_format, sniff
from engines.media import Limits
from engines.media.errors import MediaError as EngineMediaError
from engines.media.probe import probe
from service.media import HEAD_BYTES, MediaLimits, MediaRejected, inspect_media

MAX_PIXELS = 1024 * 1024
MAX_FRAMES = 100
MAX_SECONDS = 10.0
GATEWAY_LIMITS = MediaLimits(
    max_image_pixels=MAX_PIXELS, max_video_pixels=MAX_PIXELS, max_frames=MAX_FRAMES, max_seconds=MAX_SECONDS
)
ENGINE_LIMITS = Limits(max_pixels=MAX_PIXELS, max_frames=MAX_FRAMES, max_seconds=MAX_SECONDS)
OK = "accepted"


# --- making the corpus ------------------------------------------------------------------------


def rgb(height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    """Smooth RGB content that differs with `seed`."""
    image = np.zeros((height, width, 3), np.uint8)
    image[..., 0] = (np.arange(width) * 3 + seed * 40) % 256
    image[..., 1] = (np.arange(height) * 5)[:, None] % 256
    image[..., 2] = seed * 70 % 256
    return image


def cv2_image(suffix: str, pixels: np.ndarray | None = None, params: list[int] | None = None) -> bytes:
    """An image encoded by OpenCV."""
    image = rgb()[..., ::-1] if pixels is None else pixels
    ok, encoded = cv2.imencode(suffix, image, params or [])
    assert ok
    return encoded.tobytes()


def pil_image(fmt: str, **params: object) -> bytes:
    """An image encoded by Pillow."""
    out = io.BytesIO()
    Image.fromarray(rgb()).save(out, fmt, **params)
    return out.getvalue()


def animated_webp() -> bytes:
    """A two-frame animated WebP (VP8X with the animation flag, ANIM and ANMF chunks)."""
    out = io.BytesIO()
    first, second = Image.fromarray(rgb(seed=0)), Image.fromarray(rgb(seed=3))
    first.save(out, "WEBP", save_all=True, append_images=[second], duration=100, loop=0)
    data = out.getvalue()
    assert data[12:16] == b"VP8X" and data[20] & 0x02, "Pillow wrote no animation"
    return data


def png_chunk(tag: bytes, data: bytes) -> bytes:
    """One PNG chunk with its CRC."""
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def crafted_png(width: int, height: int) -> bytes:
    """A structurally valid PNG declaring `width` x `height` RGB pixels."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\0" * 1024, 9)
    return (
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", rows) + png_chunk(b"IEND", b"")
    )


def with_jpeg_size(jpeg: bytes, width: int, height: int) -> bytes:
    """`jpeg` with its baseline frame header (SOF0) declaring another size."""
    sof = jpeg.index(b"\xff\xc0")
    return jpeg[: sof + 5] + struct.pack(">HH", height, width) + jpeg[sof + 9 :]


def with_webp_canvas(webp: bytes, width: int, height: int) -> bytes:
    """A VP8X WebP with its canvas declaring another size."""
    assert webp[12:16] == b"VP8X"
    canvas = (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    return webp[:24] + canvas + webp[30:]


def box(kind: bytes, payload: bytes) -> bytes:
    """An ISO-BMFF box."""
    return struct.pack(">I", 8 + len(payload)) + kind + payload


def heif(brand: bytes) -> bytes:
    """A minimal HEIF still image: ftyp with `brand`, a meta box with a 'pict' handler, and mdat."""
    ftyp = box(b"ftyp", brand + b"\0\0\0\0" + b"mif1" + brand)
    hdlr = box(b"hdlr", b"\0" * 8 + b"pict" + b"\0" * 13)
    meta = box(b"meta", b"\0\0\0\0" + hdlr + box(b"pitm", b"\0\0\0\0\0\x01"))
    return ftyp + meta + box(b"mdat", bytes(range(64)))


def video(path: Path, codec: str = "libx264", *, n: int = 8, audio: bool = False, **options: str) -> bytes:
    """`n` frames of 64x48 at 25 fps, in the container `path`'s suffix names (PyAV)."""
    pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream(codec, rate=25)
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height, stream.pix_fmt = 64, 48, pix_fmt
        sound = container.add_stream("aac", rate=48000, layout="mono") if audio else None
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(rgb(seed=i), format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
        if sound is not None:
            tone = (np.sin(np.arange(48000 * n // 25) * 0.05) * 0.3).astype(np.float32)
            for start in range(0, tone.size, 1024):
                block = av.AudioFrame.from_ndarray(
                    tone[None, start : start + 1024], format="fltp", layout="mono"
                )
                block.sample_rate, block.pts = 48000, start
                container.mux(sound.encode(block))
            container.mux(sound.encode(None))
    return path.read_bytes()


def empty_mp4(path: Path) -> bytes:
    """An MP4 with a video track and no frames."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        container.start_encoding()
    return path.read_bytes()


def patch(data: bytes, at: int, value: bytes) -> bytes:
    """`data` with `value` written at offset `at`."""
    return data[:at] + value + data[at + len(value) :]


def mp4_with_size(mp4: bytes, width: int, height: int) -> bytes:
    """An H.264 MP4 whose sample description (avc1) declares another frame size."""
    at = mp4.index(b"avc1", mp4.index(b"stsd")) + 28  # (not the avc1 brand of ftyp)
    return patch(mp4, at, struct.pack(">HH", width, height))


def mp4_with_seconds(mp4: bytes, seconds: int) -> bytes:
    """An MP4 whose (version 0) media header declares another duration."""
    mdhd = mp4.index(b"mdhd")
    assert mp4[mdhd + 4] == 0
    (timescale,) = struct.unpack_from(">I", mp4, mdhd + 16)
    return patch(mp4, mdhd + 20, struct.pack(">I", timescale * seconds))


def avi_with_size(avi: bytes, width: int, height: int) -> bytes:
    """An AVI whose main header declares another frame size."""
    assert avi[24:28] == b"avih"
    return patch(avi, 64, struct.pack("<II", width, height))


def without_moov(mp4: bytes) -> bytes:
    """The ftyp and mdat boxes of a (non-faststart) MP4, without its moov."""
    pos, kept = 0, b""
    while pos < len(mp4):
        size, kind = struct.unpack_from(">I4s", mp4, pos)
        if kind != b"moov":
            kept += mp4[pos : pos + size]
        pos += size
    assert b"moov" not in kept[:64]
    return kept


def ftyp_as_free(mp4: bytes) -> bytes:
    """An old-style QuickTime file: the ftyp box turned into a free box of the same size (no offsets move)."""
    assert mp4[4:8] == b"ftyp"
    return mp4[:4] + b"free" + mp4[8:]


def segment(fragmented: bytes, first_box: bytes) -> bytes:
    """A media segment of a segmented stream: the moof/mdat pairs of a fragmented MP4, after `first_box`."""
    moof = fragmented.index(b"moof") - 4
    return first_box + fragmented[moof:]


def cut(data: bytes, fraction: float) -> bytes:
    """The first `fraction` of `data`."""
    return data[: int(len(data) * fraction)]


@dataclass(frozen=True)
class Case:
    """A corpus entry: its bytes and the outcome both sides must agree on (OK or an error code)."""

    name: str
    data: bytes
    expected: str


def build_corpus(folder: Path) -> list[Case]:
    """The corpus; videos are written to `folder`."""
    jpeg = cv2_image(".jpg")
    png = cv2_image(".png")
    bgra = np.dstack([rgb()[..., ::-1], np.full((48, 64), 128, np.uint8)])
    webp_alpha = cv2_image(".webp", bgra, [cv2.IMWRITE_WEBP_QUALITY, 90])  # VP8X, ALPH, VP8
    mp4 = video(folder / "v.mp4", audio=True)
    mp4_faststart = video(folder / "fast.mp4", movflags="+faststart")
    mov = video(folder / "v.mov")
    mkv = video(folder / "v.mkv")
    webm = video(folder / "v.webm", "libvpx-vp9")
    avi = video(folder / "v.avi", "mjpeg")
    fragmented = video(folder / "frag.mp4", movflags="frag_keyframe+empty_moov+default_base_moof")
    styp = box(b"styp", b"msdh\0\0\0\0msdhmsix")
    cases = [
        # images we read
        Case("PNG", png, OK),
        Case("PNG with alpha", cv2_image(".png", np.dstack([rgb(), rgb()[..., :1]])), OK),
        Case("16-bit grey PNG", cv2_image(".png", (rgb()[..., :1].astype(np.uint16) * 257)), OK),
        Case("baseline JPEG", jpeg, OK),
        Case("progressive JPEG", pil_image("JPEG", progressive=True), OK),
        Case("JPEG with restart markers", cv2_image(".jpg", params=[cv2.IMWRITE_JPEG_RST_INTERVAL, 1]), OK),
        Case("lossy WebP (VP8)", cv2_image(".webp", params=[cv2.IMWRITE_WEBP_QUALITY, 80]), OK),
        Case("lossless WebP (VP8L)", cv2_image(".webp", params=[cv2.IMWRITE_WEBP_QUALITY, 101]), OK),
        Case("WebP with alpha (VP8X)", webp_alpha, OK),
        # images refused
        Case("truncated PNG", cut(png, 0.5), "corrupt_media"),
        Case("PNG without its IEND", png[:-12], "corrupt_media"),
        Case("truncated JPEG", cut(jpeg, 0.6), "corrupt_media"),
        Case("JPEG without its EOI", jpeg[:-2], "corrupt_media"),
        Case("truncated WebP", cut(webp_alpha, 0.7), "corrupt_media"),
        Case("PNG with a bad IHDR checksum", patch(png, 29, b"\0\0\0\0"), "corrupt_media"),
        Case("PNG of 0x8 pixels", crafted_png(0, 8), "corrupt_media"),
        Case("JPEG of 0 pixels width", with_jpeg_size(jpeg, 0, 48), "corrupt_media"),
        Case("JPEG with a deferred height", with_jpeg_size(jpeg, 64, 0), "unsupported_media"),
        Case("WebP whose canvas is not its bitstream", with_webp_canvas(webp_alpha, 32, 48), "corrupt_media"),
        Case("PNG bomb", crafted_png(100_000, 100_000), "too_large"),
        Case("JPEG bomb", with_jpeg_size(jpeg, 65_000, 65_000), "too_large"),
        Case("WebP bomb", with_webp_canvas(webp_alpha, 16_000, 16_000), "too_large"),
        Case("animated WebP", animated_webp(), "unsupported_media"),
        # ISO-BMFF still images are not videos
        Case("HEIC (ftyp heic)", heif(b"heic"), "unsupported_media"),
        Case("HEIF (ftyp mif1)", heif(b"mif1"), "unsupported_media"),
        Case("AVIF (ftyp avif, Pillow)", pil_image("AVIF"), "unsupported_media"),
        # videos we read
        Case("MP4 with audio", mp4, OK),
        Case("MP4, moov first", mp4_faststart, OK),
        Case("MOV", mov, OK),
        Case("QuickTime without ftyp", ftyp_as_free(mov), OK),
        Case("MKV", mkv, OK),
        Case("WebM", webm, OK),
        Case("AVI", avi, OK),
        Case("fragmented MP4", fragmented, OK),
        # videos refused
        Case("segment of a stream (styp)", segment(fragmented, styp), "unsupported_media"),
        Case("segment of a stream (moof)", segment(fragmented, b""), "unsupported_media"),
        Case("MP4 without moov", without_moov(mp4), "corrupt_media"),
        Case("MP4 of 0 frames", empty_mp4(folder / "empty.mp4"), "no_frames"),
        Case("truncated MP4", cut(mp4, 0.6), "corrupt_media"),
        Case("truncated MP4, moov first", cut(mp4_faststart, 0.95), "corrupt_media"),
        Case("truncated MOV", cut(mov, 0.5), "corrupt_media"),
        Case("truncated MKV", cut(mkv, 0.5), "corrupt_media"),
        Case("truncated WebM", cut(webm, 0.5), "corrupt_media"),
        Case("truncated AVI", cut(avi, 0.5), "corrupt_media"),
        Case("MP4 declaring 8192x8192", mp4_with_size(mp4_faststart, 8192, 8192), "too_large"),
        Case("MP4 declaring 0x0", mp4_with_size(mp4_faststart, 0, 0), "corrupt_media"),
        Case("MP4 declaring an hour", mp4_with_seconds(mp4_faststart, 3600), "too_long"),
        Case("AVI declaring 8192x8192", avi_with_size(avi, 8192, 8192), "too_large"),
        Case("ftyp box alone, cut short", mp4[:12], "corrupt_media"),
        # not media
        Case("empty", b"", "unsupported_media"),
        Case(
            "garbage",
            np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
            "unsupported_media",
        ),
        Case("HTML", b"<!doctype html><html><body>not a photo</body></html>", "unsupported_media"),
        Case("pickle", pickle.dumps({"motion": list(range(100))}), "unsupported_media"),
        Case(
            "HLS playlist", b"#EXTM3U\n#EXTINF:1,\nfile:///etc/passwd\n#EXT-X-ENDLIST\n", "unsupported_media"
        ),
        Case("RIFF WAVE", b"RIFF\x24\0\0\0WAVEfmt " + b"\0" * 28, "unsupported_media"),
        Case("PE executable", b"MZ\x90\x00" + bytes(range(256)) * 4, "unsupported_media"),
    ]
    assert len({case.name for case in cases}) == len(cases)
    return cases


with tempfile.TemporaryDirectory(prefix="media-corpus-") as _folder:
    CORPUS = build_corpus(Path(_folder))


# --- the two paths ----------------------------------------------------------------------------


def gateway_outcome(data: bytes) -> str:
    """What the gateway answers for an upload of `data` (spooled as Starlette spools it)."""
    with tempfile.SpooledTemporaryFile(max_size=1024 * 1024) as upload:
        upload.write(data)
        upload.seek(0)
        try:
            info = inspect_media(upload, len(data), GATEWAY_LIMITS)
        except MediaRejected as exc:
            return exc.code
    assert info.content_type == sniff(data[:SNIFF_BYTES])
    return OK


def stored_head_outcome(data: bytes, available: int) -> str:
    """What the gateway answers for a stored upload of which it reads the first `available` bytes."""
    head = data[:available]
    try:
        inspect_media(io.BytesIO(head), len(data), GATEWAY_LIMITS, available=len(head))
    except MediaRejected as exc:
        return exc.code
    return OK


def engine_outcome(data: bytes, folder: Path) -> str:
    """What the engines' probe answers for `data` written to a file (its name says nothing)."""
    path = folder / "input.bin"
    path.write_bytes(data)
    try:
        probe(path, ENGINE_LIMITS)
    except EngineMediaError as exc:
        return exc.code
    return OK


# --- the tests --------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CORPUS, ids=[case.name for case in CORPUS])
def test_gateway_and_engines_agree(case: Case, tmp_path: Path) -> None:
    """The gateway and the engines accept or refuse the same bytes, with the same code."""
    gateway, engine = gateway_outcome(case.data), engine_outcome(case.data, tmp_path)
    assert (gateway, engine) == (case.expected, case.expected)


@pytest.mark.parametrize("case", CORPUS, ids=[case.name for case in CORPUS])
def test_a_partial_read_refuses_only_what_the_whole_file_is_refused_for(case: Case) -> None:
    """Reading only the head of a stored object decides less, never differently."""
    for available in (SNIFF_BYTES, 1000, 4096, HEAD_BYTES):
        partial = stored_head_outcome(case.data, available)
        assert partial in (OK, case.expected), (available, partial)
    if len(case.data) <= HEAD_BYTES:
        assert stored_head_outcome(case.data, HEAD_BYTES) == case.expected


def test_there_is_one_media_error_class() -> None:
    """The gateway's MediaRejected and the engines' MediaError are common.media.MediaError."""
    assert MediaRejected is MediaError is EngineMediaError
    assert issubclass(MediaError, LivePortraitError)
    error = MediaError("too_large", "big")
    assert (error.code, error.message, str(error)) == ("too_large", "big", "big [too_large]")


@pytest.mark.parametrize(
    ("head", "content_type", "fmt", "suffix"),
    [
        (b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00", "video/mp4", "mp4", ".mp4"),
        (b"\x00\x00\x00\x14ftypqt  \x00\x00\x00\x00", "video/quicktime", "mp4", ".mov"),
        (b"\x00\x00\x00\x08wide\x00\x00\x10\x00mdat", "video/quicktime", "mp4", ".mov"),
        (b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\x82\x84webm", "video/webm", "matroska", ".webm"),
        (b"\x1a\x45\xdf\xa3\xa3\x42\x86\x81\x01\x42\x82\x88matroska", "video/x-matroska", "matroska", ".mkv"),
        (b"RIFF\x00\x00\x00\x00AVI LIST", "video/x-msvideo", "avi", ".avi"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8L", "image/webp", "webp", ".webp"),
        (b"\xff\xd8\xff\xdb", "image/jpeg", "jpeg", ".jpg"),
        (b"\x89PNG\r\n\x1a\n", "image/png", "png", ".png"),
    ],
)
def test_content_types_formats_and_extensions(head: bytes, content_type: str, fmt: str, suffix: str) -> None:
    assert identify(head) == sniff(head) == content_type
    assert (media_format(content_type), extension(content_type)) == (fmt, suffix)


@pytest.mark.parametrize(
    ("head", "reason"),
    [
        (b"", "empty"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", "HEIF/AVIF image"),
        (b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf", "HEIF/AVIF image"),
        (b"\x00\x00\x00\x18stypmsdh\x00\x00\x00\x00msdhmsix", "segment of a fragmented stream"),
        (b"\x00\x00\x00\x10moof\x00\x00\x00\x10mfhd", "segment of a fragmented stream"),
        (b"#!/bin/sh\necho hi\n", "not an image or video format we read"),
    ],
)
def test_unsupported_inputs_say_why(head: bytes, reason: str) -> None:
    assert sniff(head) is None
    with pytest.raises(MediaError) as refused:
        identify(head)
    assert refused.value.code == "unsupported_media"
    assert reason in refused.value.message
    assert extension("application/octet-stream") == ""


def test_hostile_structures_are_cheap() -> None:
    """A JPEG of a million empty segments, or a PNG of tiny chunks, is walked in bounded time."""
    comments = b"\xff\xd8" + b"\xff\xfe\x00\x02" * 1_100_000
    with pytest.raises(MediaError) as refused:
        inspect_media(io.BytesIO(comments), len(comments), GATEWAY_LIMITS)
    assert refused.value.code == "corrupt_media"
    fill = b"\xff\xd8" + b"\xff" * 5_000_000
    with pytest.raises(MediaError) as refused:
        inspect_media(io.BytesIO(fill), len(fill), GATEWAY_LIMITS)
    assert refused.value.code == "corrupt_media"


def test_limits_come_from_settings_without_importing_them() -> None:
    @dataclass
    class FakeSettings:
        max_source_pixels: int = 100
        max_driving_pixels: int = 50
        max_driving_frames: int = 7
        max_driving_seconds: float = 2.5

    assert MediaLimits.from_settings(FakeSettings()) == MediaLimits(100, 50, 7, 2.5)
    assert ENGINE_LIMITS.header_limits() == GATEWAY_LIMITS


def test_common_stays_a_leaf() -> None:
    """Importing common.media loads no third-party package and no other package of this project."""
    code = "import sys; import common.media; print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    loaded = set(
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.split()
    )
    assert not loaded & {"torch", "numpy", "cv2", "av", "PIL", "engines", "service", "worker", "liveportrait"}
    third_party = {name for name in loaded - set(sys.stdlib_module_names) if not name.startswith("_")}
    assert third_party == {"common"}
