"""Recognise an input by its bytes, and check its declared size, length and integrity before decoding.

The gateway has neither the engines nor FFmpeg, so these checks read container headers only: PNG's
IHDR and chunk list, JPEG's marker segments, WebP's chunks, the ISO-BMFF (MP4/MOV) box tree, AVI's
main header and Matroska's Info and Tracks elements. No pixel is decoded and no buffer sized by a
header is allocated, so a decompression bomb or a hostile index costs a few reads. The worker's
engines probe every input again with FFmpeg (engines.media.probe); what cannot be decided from the
headers (a WebM without a duration, a missing face) is left to them.
"""

from __future__ import annotations

import contextlib
import io
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from service.settings import Settings

SNIFF_BYTES = 64
"""How many leading bytes `sniff` looks at."""

HEAD_BYTES = 1024 * 1024
"""How much of a stored object the gateway reads to check an input it did not receive itself."""

SUPPORTED = "JPEG, PNG or WebP images; MP4/MOV, MKV/WebM or AVI videos"

_ISO_IMAGE_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis"}
_MP4_FIRST_BOXES = {b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot"}
_MAX_ITEMS = 100_000
_MAX_MOOV_BYTES = 32 * 1024 * 1024
_MAX_EBML_MASTER_BYTES = 1024 * 1024
_SEARCH_CHUNK = 1024 * 1024
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def sniff(head: bytes) -> str | None:
    """The media type of a file starting with `head`, or None when it is no image or video we read."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in _ISO_IMAGE_BRANDS:
            return None
        return "video/quicktime" if brand == b"qt  " else "video/mp4"
    if len(head) >= 8 and head[4:8] in _MP4_FIRST_BOXES:
        return "video/quicktime"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "video/webm" if b"webm" in head else "video/x-matroska"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "video/x-msvideo"
    return None


def extension(content_type: str) -> str:
    """A file name extension for a sniffed media type (decoders are happier with one)."""
    return {
        "image/png": ".png",
        "image/jpeg": ".jpg",
        "image/webp": ".webp",
        "video/mp4": ".mp4",
        "video/quicktime": ".mov",
        "video/webm": ".webm",
        "video/x-matroska": ".mkv",
        "video/x-msvideo": ".avi",
    }.get(content_type, "")


class MediaRejected(ValueError):
    """An input refused from its bytes; `code` is the job error code the worker would report."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class MediaLimits:
    """Bounds checked from headers: pixels of a still image, pixels, frames and seconds of a video."""

    max_image_pixels: int
    max_video_pixels: int
    max_frames: int
    max_seconds: float

    @classmethod
    def from_settings(cls, settings: Settings) -> MediaLimits:
        """Images are bounded by `max_source_pixels`, videos (source or driving) by the driving limits."""
        return cls(
            max_image_pixels=settings.max_source_pixels,
            max_video_pixels=settings.max_driving_pixels,
            max_frames=settings.max_driving_frames,
            max_seconds=settings.max_driving_seconds,
        )


@dataclass(frozen=True)
class MediaInfo:
    """What the headers declare; None where they do not say (or lie past the bytes inspected)."""

    content_type: str
    width: int | None = None
    height: int | None = None
    frames: int | None = None
    seconds: float | None = None

    @property
    def is_video(self) -> bool:
        """Whether this is a video container."""
        return self.content_type.startswith("video/")


class _Undecided(Exception):
    """The bytes needed lie past the part of the object that was read."""


class _Reader:
    """Random access to the first `available` bytes of an object of `size` bytes."""

    def __init__(self, file: BinaryIO, size: int, available: int, what: str) -> None:
        self.file, self.size, self.available, self.what = file, size, available, what

    def truncated(self) -> MediaRejected:
        return MediaRejected("corrupt_media", f"the {self.what} file is truncated")

    def malformed(self, detail: str) -> MediaRejected:
        return MediaRejected("corrupt_media", f"malformed {self.what} file: {detail}")

    def read(self, offset: int, length: int) -> bytes:
        end = offset + length
        if end > self.size:
            raise self.truncated()
        if end > self.available:
            raise _Undecided
        self.file.seek(offset)
        data = self.file.read(length)
        if len(data) != length:
            raise self.truncated()
        return data

    def unpack(self, fmt: str, offset: int) -> tuple[int, ...]:
        return struct.unpack(fmt, self.read(offset, struct.calcsize(fmt)))

    def find(self, needle: bytes, start: int) -> int:
        """Offset of the first `needle` at or after `start`; -1 if absent. _Undecided if not yet seen."""
        pos = start
        while pos < self.available:
            self.file.seek(pos)
            chunk = self.file.read(min(_SEARCH_CHUNK, self.available - pos))
            if not chunk:
                break
            found = chunk.find(needle)
            if found >= 0:
                return pos + found
            pos += max(1, len(chunk) - len(needle) + 1)
        if self.available < self.size:
            raise _Undecided
        return -1


def inspect_media(
    file: BinaryIO, size: int, limits: MediaLimits, *, available: int | None = None
) -> MediaInfo:
    """Identify an input by content and check it against `limits` from its headers.

    `file` is seekable and holds the object's first `available` bytes (default: all `size` of
    them); checks that need bytes past those are skipped. Raises MediaRejected with the code
    unsupported_media, corrupt_media (truncated or malformed), too_large (pixels), too_long
    (frames or seconds) or no_frames (a video without a video track or frames).
    """
    available = size if available is None else min(available, size)
    file.seek(0)
    content_type = sniff(file.read(min(SNIFF_BYTES, available)))
    if content_type is None:
        raise MediaRejected("unsupported_media", f"not an image or video format we read ({SUPPORTED})")
    name, header, complete = _FORMATS[content_type]
    reader = _Reader(file, size, available, name)
    try:
        info = header(reader, content_type)
    except _Undecided:
        return MediaInfo(content_type)
    _check_limits(info, limits)
    with contextlib.suppress(_Undecided):
        complete(reader)
    return info


def _check_limits(info: MediaInfo, limits: MediaLimits) -> None:
    if info.width is not None and info.height is not None:
        limit = limits.max_video_pixels if info.is_video else limits.max_image_pixels
        if info.width * info.height > limit:
            unit = "frame" if info.is_video else "image"
            raise MediaRejected(
                "too_large", f"{info.width}x{info.height} exceeds the limit of {limit} pixels per {unit}"
            )
    if info.frames is not None and info.frames > limits.max_frames:
        raise MediaRejected("too_long", f"{info.frames} frames exceed the limit of {limits.max_frames}")
    if info.seconds is not None and info.seconds > limits.max_seconds:
        raise MediaRejected("too_long", f"{info.seconds:.1f} s exceeds the limit of {limits.max_seconds:g} s")


def _image(content_type: str, width: int, height: int) -> MediaInfo:
    if width <= 0 or height <= 0:
        raise MediaRejected("corrupt_media", "the image header declares an empty image")
    return MediaInfo(content_type, width, height, 1)


# PNG: signature, then IHDR (13 bytes), then chunks up to IEND.


def _png_header(r: _Reader, content_type: str) -> MediaInfo:
    length, tag, width, height = r.unpack(">I4sII", 8)
    if tag != b"IHDR" or length != 13:
        raise r.malformed("the first chunk is not IHDR")
    return _image(content_type, width, height)


def _png_complete(r: _Reader) -> None:
    pos = 8
    for _ in range(_MAX_ITEMS):
        length, tag = r.unpack(">I4s", pos)
        if length > 0x7FFFFFFF:
            raise r.malformed("chunk length out of range")
        pos += 12 + length
        if pos > r.size:
            raise r.truncated()
        if tag == b"IEND":
            return
    raise r.malformed("too many chunks")


# JPEG: marker segments up to the first scan (SOS), entropy-coded data, ... EOI.


def _jpeg_segments(r: _Reader) -> Iterator[tuple[int, int]]:
    """(marker, payload offset) of each segment up to and including the first SOS."""
    pos = 2
    for _ in range(_MAX_ITEMS):
        (byte,) = r.unpack("B", pos)
        if byte != 0xFF:
            raise r.malformed(f"expected a marker at byte {pos}")
        while byte == 0xFF:
            pos += 1
            (byte,) = r.unpack("B", pos)
        pos += 1
        if 0xD0 <= byte <= 0xD7 or byte == 0x01:
            continue
        if byte == 0xD9:
            raise r.malformed("the image ends before its first scan")
        (length,) = r.unpack(">H", pos)
        if length < 2:
            raise r.malformed("segment length out of range")
        yield byte, pos + 2
        if byte == 0xDA:
            return
        pos += length
    raise r.malformed("too many segments")


def _jpeg_header(r: _Reader, content_type: str) -> MediaInfo:
    for marker, payload in _jpeg_segments(r):
        if marker in _JPEG_SOF:
            height, width = r.unpack(">xHH", payload)
            if height == 0:
                message = "JPEGs with a deferred height (DNL) are not supported"
                raise MediaRejected("unsupported_media", message)
            return _image(content_type, width, height)
    raise r.malformed("no frame header before the image data")


def _jpeg_complete(r: _Reader) -> None:
    sos = next(payload for marker, payload in _jpeg_segments(r) if marker == 0xDA)
    # in entropy-coded data 0xFF is always followed by 0x00 or a restart marker, so the first
    # FF D9 after the first scan header is the end of the image: a cut-off file has none
    if r.find(b"\xff\xd9", sos) < 0:
        raise r.truncated()


# WebP: RIFF container, first chunk VP8 (lossy), VP8L (lossless) or VP8X (extended canvas).


def _webp_header(r: _Reader, content_type: str) -> MediaInfo:
    tag, _ = r.unpack("<4sI", 12)
    if tag == b"VP8 ":
        start_code, width, height = r.unpack("<3x3sHH", 20)
        if start_code != b"\x9d\x01\x2a":
            raise r.malformed("bad VP8 start code")
        return _image(content_type, width & 0x3FFF, height & 0x3FFF)
    if tag == b"VP8L":
        signature, bits = r.unpack("<BI", 20)
        if signature != 0x2F:
            raise r.malformed("bad VP8L signature")
        return _image(content_type, (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
    if tag == b"VP8X":
        flags, w0, w1, w2, h0, h1, h2 = r.unpack("<B3x6B", 20)
        if flags & 0x02:
            raise MediaRejected("unsupported_media", "animated WebP images are not supported")
        return _image(content_type, 1 + (w0 | w1 << 8 | w2 << 16), 1 + (h0 | h1 << 8 | h2 << 16))
    raise r.malformed(f"unexpected first chunk {tag!r}")


def _riff_complete(r: _Reader) -> None:
    (riff_size,) = r.unpack("<I", 4)
    if 8 + riff_size > r.size:
        raise r.truncated()


# AVI: RIFF 'AVI ', LIST 'hdrl', then the main header 'avih'.


def _avi_header(r: _Reader, content_type: str) -> MediaInfo:
    list_tag, _, hdrl, avih, avih_size = r.unpack("<4sI4s4sI", 12)
    if (list_tag, hdrl, avih) != (b"LIST", b"hdrl", b"avih") or avih_size < 40:
        raise r.malformed("no main AVI header")
    usec_per_frame, _, _, _, frames, _, _, _, width, height = r.unpack("<10I", 32)
    if frames == 0:
        raise MediaRejected("no_frames", "the video has no frames")
    if width <= 0 or height <= 0:
        raise r.malformed("the header declares no frame size")
    return MediaInfo(content_type, width, height, frames, frames * usec_per_frame / 1e6)


# ISO BMFF (MP4/MOV): top-level boxes must fit in the file; moov describes the tracks.


def _box_header(data: bytes, pos: int, end: int, r: _Reader) -> tuple[bytes, int, int]:
    """(type, payload start, box end) of the box at `pos` inside `data[:end]`."""
    size, kind = struct.unpack_from(">I4s", data, pos)
    header = 8
    if size == 1:
        if pos + 16 > end:
            raise r.malformed(f"box {kind!r} overruns its parent")
        (size,) = struct.unpack_from(">Q", data, pos + 8)
        header = 16
    elif size == 0:
        size = end - pos
    if size < header or pos + size > end:
        raise r.malformed(f"box {kind!r} overruns its parent")
    return kind, pos + header, pos + size


def _children(data: bytes, start: int, end: int, r: _Reader) -> dict[bytes, list[tuple[int, int]]]:
    """The boxes directly inside data[start:end], by type: (payload start, end) of each."""
    found: dict[bytes, list[tuple[int, int]]] = {}
    pos = start
    for _ in range(_MAX_ITEMS):
        if pos + 8 > end:
            return found
        kind, payload, box_end = _box_header(data, pos, end, r)
        found.setdefault(kind, []).append((payload, box_end))
        pos = box_end
    raise r.malformed("too many boxes")


def _top_boxes(r: _Reader) -> Iterator[tuple[bytes, int, int]]:
    """(type, payload offset, end offset) of each top-level box, checking that it fits."""
    pos = 0
    for _ in range(_MAX_ITEMS):
        if r.size - pos < 8:
            return
        size, kind = r.unpack(">I4s", pos)
        header = 8
        if size == 1:
            (size,) = r.unpack(">Q", pos + 8)
            header = 16
        elif size == 0:
            size = r.size - pos
        if size < header:
            raise r.malformed(f"box {kind!r} has an impossible size")
        if pos + size > r.size:
            raise r.truncated()
        yield kind, pos + header, pos + size
        pos += size
    raise r.malformed("too many top-level boxes")


def _mp4_header(r: _Reader, content_type: str) -> MediaInfo:
    moov = next(((start, end) for kind, start, end in _top_boxes(r) if kind == b"moov"), None)
    if moov is None:
        raise r.malformed("no moov box (the index of the tracks)")
    start, end = moov
    if end - start > _MAX_MOOV_BYTES:
        raise MediaRejected("too_large", f"the {r.what} index is larger than {_MAX_MOOV_BYTES} bytes")
    data = r.read(start, end - start)
    boxes = _children(data, 0, len(data), r)
    fragmented = b"mvex" in boxes
    for trak_start, trak_end in boxes.get(b"trak", []):
        track = _mp4_video_track(data, trak_start, trak_end, r)
        if track is None:
            continue
        width, height, frames, seconds = track
        if frames == 0 and not fragmented:
            raise MediaRejected("no_frames", "the video track has no frames")
        return MediaInfo(content_type, width, height, frames or None, seconds)
    raise MediaRejected("no_frames", "the file contains no video track")


def _mp4_video_track(
    data: bytes, start: int, end: int, r: _Reader
) -> tuple[int, int, int, float | None] | None:
    """(width, height, frames, seconds) of a video track; None for other tracks."""
    mdia = _children(data, start, end, r).get(b"mdia")
    if not mdia:
        return None
    boxes = _children(data, *mdia[0], r)
    hdlr, mdhd, minf = boxes.get(b"hdlr"), boxes.get(b"mdhd"), boxes.get(b"minf")
    if not hdlr or not mdhd or not minf or data[hdlr[0][0] + 8 : hdlr[0][0] + 12] != b"vide":
        return None
    seconds = _mp4_seconds(data, *mdhd[0], r)
    stbl = _children(data, *minf[0], r).get(b"stbl")
    if not stbl:
        raise r.malformed("the video track has no sample table")
    tables = _children(data, *stbl[0], r)
    width = height = 0
    stsd = tables.get(b"stsd")
    if stsd and stsd[0][1] - stsd[0][0] >= 8 + 36:
        width, height = struct.unpack_from(">HH", data, stsd[0][0] + 8 + 32)
    if width <= 0 or height <= 0:
        raise r.malformed("the video track declares no frame size")
    frames = 0
    if tables.get(b"stsz") and tables[b"stsz"][0][1] - tables[b"stsz"][0][0] >= 12:
        (frames,) = struct.unpack_from(">I", data, tables[b"stsz"][0][0] + 8)
    elif tables.get(b"stz2") and tables[b"stz2"][0][1] - tables[b"stz2"][0][0] >= 12:
        (frames,) = struct.unpack_from(">I", data, tables[b"stz2"][0][0] + 8)
    return width, height, frames, seconds


def _mp4_seconds(data: bytes, start: int, end: int, r: _Reader) -> float | None:
    """The duration in a media header (mdhd) in seconds; None when unknown."""
    if end - start < 24:
        raise r.malformed("media header too short")
    if data[start] == 1:
        if end - start < 36:
            raise r.malformed("media header too short")
        timescale, duration = struct.unpack_from(">IQ", data, start + 20)
        unknown = 0xFFFFFFFFFFFFFFFF
    else:
        timescale, duration = struct.unpack_from(">II", data, start + 12)
        unknown = 0xFFFFFFFF
    if timescale == 0 or duration in (0, unknown):
        return None
    return duration / timescale


def _mp4_complete(r: _Reader) -> None:
    for _ in _top_boxes(r):
        pass


# Matroska/WebM: EBML header, then a Segment whose Info and Tracks precede the first Cluster.

_EBML_SEGMENT = 0x18538067
_EBML_INFO = 0x1549A966
_EBML_TRACKS = 0x1654AE6B
_EBML_CLUSTER = 0x1F43B675


def _vint(r: _Reader, pos: int, keep_marker: bool) -> tuple[int, int, bool]:
    """An EBML variable-length integer at `pos`: (value, length, all value bits set)."""
    (first,) = r.unpack("B", pos)
    length = 9 - first.bit_length()
    if length > 8:
        raise r.malformed("invalid variable-length integer")
    raw = int.from_bytes(r.read(pos, length), "big")
    mask = (1 << (7 * length)) - 1
    return (raw if keep_marker else raw & mask), length, raw & mask == mask


def _ebml_element(r: _Reader, pos: int) -> tuple[int, int, int | None]:
    """(id, payload offset, payload size or None if unknown) of the element at `pos`."""
    element_id, n, _ = _vint(r, pos, keep_marker=True)
    size, m, unknown = _vint(r, pos + n, keep_marker=False)
    return element_id, pos + n + m, None if unknown else size


def _ebml_children(r: _Reader, data: bytes) -> Iterator[tuple[int, bytes]]:
    """(id, payload) of the elements of an in-memory master element's payload."""
    inner = _Reader(io.BytesIO(data), len(data), len(data), r.what)
    pos = 0
    for _ in range(_MAX_ITEMS):
        if pos >= len(data):
            return
        element_id, payload, size = _ebml_element(inner, pos)
        if size is None or payload + size > len(data):
            raise r.malformed("element overruns its parent")
        yield element_id, data[payload : payload + size]
        pos = payload + size
    raise r.malformed("too many elements")


def _ebml_uint(data: bytes) -> int:
    return int.from_bytes(data, "big") if data else 0


def _matroska_segment(r: _Reader) -> tuple[int, int | None]:
    _, payload, size = _ebml_element(r, 0)
    if size is None:
        raise r.malformed("EBML header of unknown size")
    segment_id, segment_payload, segment_size = _ebml_element(r, payload + size)
    if segment_id != _EBML_SEGMENT:
        raise r.malformed("no Segment after the EBML header")
    return segment_payload, segment_size


def _matroska_header(r: _Reader, content_type: str) -> MediaInfo:
    start, segment_size = _matroska_segment(r)
    end = r.size if segment_size is None else min(r.size, start + segment_size)
    info = tracks = None
    pos = start
    for _ in range(_MAX_ITEMS):
        if pos >= end or (info is not None and tracks is not None):
            break
        element_id, payload, size = _ebml_element(r, pos)
        if element_id == _EBML_CLUSTER or size is None:
            break
        if element_id in (_EBML_INFO, _EBML_TRACKS):
            if size > _MAX_EBML_MASTER_BYTES:
                raise r.malformed("header element too large")
            data = r.read(payload, size)
            if element_id == _EBML_INFO:
                info = data
            else:
                tracks = data
        pos = payload + size
    if tracks is None:
        return MediaInfo(content_type)
    seconds = None
    if info is not None:
        scale, duration = 1_000_000, None
        for element_id, data in _ebml_children(r, info):
            if element_id == 0x2AD7B1:
                scale = _ebml_uint(data)
            elif element_id == 0x4489 and len(data) in (4, 8):
                (duration,) = struct.unpack(">f" if len(data) == 4 else ">d", data)
        if duration is not None and duration > 0:
            seconds = duration * scale / 1e9
    for element_id, entry in _ebml_children(r, tracks):
        if element_id != 0xAE:
            continue
        fields = dict(_ebml_children(r, entry))
        if _ebml_uint(fields.get(0x83, b"")) != 1:
            continue
        video = dict(_ebml_children(r, fields.get(0xE0, b"")))
        width, height = _ebml_uint(video.get(0xB0, b"")), _ebml_uint(video.get(0xBA, b""))
        if width <= 0 or height <= 0:
            raise r.malformed("the video track declares no frame size")
        frame_ns = _ebml_uint(fields.get(0x23E383, b""))
        frames = round(seconds * 1e9 / frame_ns) if seconds and frame_ns else None
        return MediaInfo(content_type, width, height, frames, seconds)
    raise MediaRejected("no_frames", "the file contains no video track")


def _matroska_complete(r: _Reader) -> None:
    start, segment_size = _matroska_segment(r)
    if segment_size is not None and start + segment_size > r.size:
        raise r.truncated()


_Header = Callable[[_Reader, str], MediaInfo]
_Complete = Callable[[_Reader], None]
_FORMATS: dict[str, tuple[str, _Header, _Complete]] = {
    "image/png": ("PNG", _png_header, _png_complete),
    "image/jpeg": ("JPEG", _jpeg_header, _jpeg_complete),
    "image/webp": ("WebP", _webp_header, _riff_complete),
    "video/mp4": ("MP4", _mp4_header, _mp4_complete),
    "video/quicktime": ("MOV", _mp4_header, _mp4_complete),
    "video/webm": ("WebM", _matroska_header, _matroska_complete),
    "video/x-matroska": ("MKV", _matroska_header, _matroska_complete),
    "video/x-msvideo": ("AVI", _avi_header, _riff_complete),
}
