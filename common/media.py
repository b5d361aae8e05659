"""The one header checker: recognise an image or video by its bytes and check it without decoding.

The gateway (service.media) runs `inspect_media` on every upload and stored object, the worker on
every fetched input, and the engines (engines.media.probe) on every file before FFmpeg or OpenCV
opens it; so all three accept and refuse the same bytes, with the same error code. It reads
container headers only: PNG's IHDR and chunk list, JPEG's marker segments, WebP's chunks, the
ISO-BMFF (MP4/MOV) box tree, AVI's main header and Matroska's Info and Tracks elements. No pixel
is decoded and no buffer sized by a header is allocated, so a decompression bomb or a hostile
index costs a few reads. The engines then open videos with FFmpeg (demuxer pinned) for what only
a decoder can tell.

Checks run in a fixed order: the format from the first `SNIFF_BYTES` (`unsupported_media`), the
facts the header declares (size, frames, duration; `corrupt_media`, `no_frames` or
`unsupported_media`), the limits (`too_large`, `too_long`), then the structure of the whole file
(`corrupt_media` if truncated or malformed). A file that is both too large and cut off is
therefore `too_large` wherever it is checked. When only the first `available` bytes are at hand
(the gateway reads the head of a stored object), checks that need bytes past them are skipped;
a refusal from a partial read is always the refusal the whole file gets.

Rules, where the gateway's and the engines' former parsers disagreed:

- An ISO-BMFF file whose `ftyp` major brand is a HEIF/AVIF brand (heic, heix, mif1, msf1, avif,
  avis, ...) is a still image (or image sequence) in a format we do not read: `unsupported_media`,
  never an MP4. Other `ftyp` brands are MP4, or MOV for `qt  `.
- A file starting with `styp`, `moof` or `sidx` is one segment of a fragmented (DASH/HLS/CMAF)
  stream: it has no `moov` (that is in the stream's separate init segment), so it cannot be
  played alone. It is `unsupported_media` ("a segment of a fragmented stream, not a whole video
  file"), not `corrupt_media`: nothing in it is damaged, it is just not a file we take.
  A whole fragmented MP4 (`ftyp`, `moov` with `mvex`, then `moof`/`mdat` pairs) is accepted.
- A file starting with `moov`, `mdat`, `free`, `skip`, `wide` or `pnot` (old QuickTime, no `ftyp`)
  is MOV.
- An empty file is `unsupported_media`.
- PNG: the IHDR checksum is verified (`corrupt_media` if wrong).
- JPEG: every marker segment and scan is walked up to EOI (progressive files have many scans);
  a missing EOI is `truncated`. A deferred height (DNL) is `unsupported_media`.
- WebP: the animation flag of VP8X is `unsupported_media`; the size is the VP8X canvas (checked
  against the limits), and the structure check verifies that the chunks fill the RIFF container
  and that the bitstream's size equals the canvas.
- Videos get the same header checks on both sides (`moov` present and complete, a video track
  with a frame size and frames, AVI's main header, Matroska's video track).
- Zero width or height in any header is `corrupt_media`.
"""

from __future__ import annotations

import contextlib
import io
import re
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any, Literal, Protocol, cast

from common.errors import LivePortraitError, MediaErrorCode

SNIFF_BYTES = 64
"""How many leading bytes `sniff` looks at."""

SUPPORTED = "JPEG, PNG or WebP images; MP4/MOV, MKV/WebM or AVI videos"
"""The formats we read, for messages."""
SUPPORTED_DRIVING = f"{SUPPORTED}; or a motion template (.npz)"
"""The formats a driving input may have, for messages."""
MOTION_TEMPLATE = "application/x-liveportrait-motion"
"""The media type of a motion template (.npz, common.motion_template)."""

ImageFormat = Literal["png", "jpeg", "webp"]
VideoFormat = Literal["mp4", "matroska", "avi"]
MediaFormat = ImageFormat | VideoFormat
"""The container family of a content type: what picks a decoder or a demuxer."""

IMAGE_FORMATS: tuple[ImageFormat, ...] = ("png", "jpeg", "webp")


class MediaError(LivePortraitError):
    """An input refused or unreadable from its bytes; `code` is stable, `message` is for people.

    Messages of `unsupported_media` from sniffing read after "is" ("'source' is not an image ...").
    """

    code: MediaErrorCode

    def __init__(self, code: MediaErrorCode, message: str) -> None:
        super().__init__(code, message)


# content type -> (format, file name extension, name in messages)
_TYPES: dict[str, tuple[MediaFormat, str, str]] = {
    "image/png": ("png", ".png", "PNG"),
    "image/jpeg": ("jpeg", ".jpg", "JPEG"),
    "image/webp": ("webp", ".webp", "WebP"),
    "video/mp4": ("mp4", ".mp4", "MP4"),
    "video/quicktime": ("mp4", ".mov", "MOV"),
    "video/webm": ("matroska", ".webm", "WebM"),
    "video/x-matroska": ("matroska", ".mkv", "MKV"),
    "video/x-msvideo": ("avi", ".avi", "AVI"),
}

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_EBML_MAGIC = b"\x1a\x45\xdf\xa3"
_HEIF_BRANDS = {
    b"mif1", b"mif2", b"msf1", b"miaf", b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx",
    b"hevm", b"hevs", b"avif", b"avis", b"avci", b"avcs",
}  # fmt: skip
_FRAGMENT_BOXES = {b"styp", b"moof", b"sidx"}
_QUICKTIME_FIRST_BOXES = {b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot"}
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_JPEG_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")  # a marker inside entropy-coded data
_NOT_FF = re.compile(rb"[^\xff]")
_MAX_ITEMS = 1_000_000  # bounds the Python-level structure walks on hostile files
_MAX_MOOV_BYTES = 32 * 1024 * 1024
_MAX_EBML_MASTER_BYTES = 1024 * 1024
_SEARCH_CHUNK = 1024 * 1024
_WINDOW = 16 * 1024  # small reads are served from a window of this many bytes


def _unsupported(what: str, formats: str = SUPPORTED) -> MediaError:
    return MediaError("unsupported_media", f"{what} ({formats})")


def identify(head: bytes, *, formats: str = SUPPORTED) -> str:
    """The media type of a file starting with `head` (its first `SNIFF_BYTES`, or all if fewer).

    Raises MediaError `unsupported_media`, saying why (and that `formats` are read), for anything
    but an image or video we read.
    """
    if not head:
        raise _unsupported("empty, not an image or video", formats)
    if head.startswith(_PNG_SIGNATURE):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "video/x-msvideo"
    if head.startswith(_EBML_MAGIC):
        return "video/webm" if b"webm" in head else "video/x-matroska"
    box = head[4:8]
    if box == b"ftyp":
        brand = head[8:12]
        if brand in _HEIF_BRANDS:
            raise _unsupported(
                f"a HEIF/AVIF image ({brand.decode('latin-1').strip()}), a format we do not read"
            )
        return "video/quicktime" if brand == b"qt  " else "video/mp4"
    if box in _FRAGMENT_BOXES:
        raise _unsupported("a segment of a fragmented stream, not a whole video file")
    if box in _QUICKTIME_FIRST_BOXES:
        return "video/quicktime"
    raise _unsupported("not an image or video format we read", formats)


def sniff(head: bytes) -> str | None:
    """The media type of a file starting with `head`, or None when it is no image or video we read."""
    try:
        return identify(head)
    except MediaError:
        return None


def extension(content_type: str) -> str:
    """A file name extension for a sniffed media type (decoders are happier with one); '' if unknown."""
    if content_type == MOTION_TEMPLATE:
        return ".npz"
    entry = _TYPES.get(content_type)
    return entry[1] if entry else ""


def media_format(content_type: str) -> MediaFormat:
    """The container family of a sniffed media type (MOV is "mp4", WebM is "matroska")."""
    return _TYPES[content_type][0]


def video_format(content_type: str) -> VideoFormat | None:
    """The container family of a sniffed video type, or None for an image type."""
    fmt = media_format(content_type)
    return None if fmt in IMAGE_FORMATS else cast(VideoFormat, fmt)


class _LimitSettings(Protocol):
    max_source_pixels: int
    max_driving_pixels: int
    max_driving_frames: int
    max_driving_seconds: float


@dataclass(frozen=True)
class MediaLimits:
    """Bounds checked from headers: pixels of a still image, pixels, frames and seconds of a video."""

    max_image_pixels: int
    max_video_pixels: int
    max_frames: int
    max_seconds: float

    @classmethod
    def from_settings(cls, settings: _LimitSettings) -> MediaLimits:
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

    @property
    def format(self) -> MediaFormat:
        """The container family (see `media_format`)."""
        return media_format(self.content_type)


def check_limits(info: MediaInfo, limits: MediaLimits) -> None:
    """Raise MediaError `too_large` / `too_long` where what `info` declares exceeds `limits`."""
    if info.width is not None and info.height is not None:
        limit = limits.max_video_pixels if info.is_video else limits.max_image_pixels
        if info.width * info.height > limit:
            unit = "frame" if info.is_video else "image"
            raise MediaError(
                "too_large", f"{info.width}x{info.height} exceeds the limit of {limit} pixels per {unit}"
            )
    if info.frames is not None and info.frames > limits.max_frames:
        raise MediaError("too_long", f"{info.frames} frames exceed the limit of {limits.max_frames}")
    if info.seconds is not None and info.seconds > limits.max_seconds:
        raise MediaError("too_long", f"{info.seconds:.1f} s exceeds the limit of {limits.max_seconds:g} s")


def inspect_media(
    file: IO[bytes],
    size: int,
    limits: MediaLimits,
    *,
    available: int | None = None,
    motion_templates: bool = False,
) -> MediaInfo:
    """Identify an input by content and check it against `limits` from its headers.

    `file` is seekable and holds the object's first `available` bytes (default: all `size` of
    them); checks that need bytes past those are skipped. Raises MediaError with the code
    unsupported_media, corrupt_media (truncated or malformed), too_large (pixels), too_long
    (frames or seconds) or no_frames (a video without a video track or frames). With
    `motion_templates` (a driving input), a zip or a pickle is checked as a motion template
    (common.motion_template: bad_template, too_large, too_long).
    """
    available = size if available is None else max(0, min(available, size))
    file.seek(0)
    head = file.read(min(SNIFF_BYTES, available))
    if motion_templates:
        from common.motion_template import inspect_template, looks_like_template

        if looks_like_template(head):
            return inspect_template(file, size, limits, available=available)
    content_type = identify(head, formats=SUPPORTED_DRIVING if motion_templates else SUPPORTED)
    _, _, name = _TYPES[content_type]
    header, complete = _CHECKS[content_type]
    reader = _Reader(file, size, available, name)
    try:
        info = header(reader, content_type)
    except _Undecided:
        return MediaInfo(content_type)
    check_limits(info, limits)
    with contextlib.suppress(_Undecided):
        complete(reader)
    return info


class _Undecided(Exception):
    """The bytes needed lie past the part of the object that was read."""


class _Reader:
    """Random access to the first `available` bytes of an object of `size` bytes."""

    def __init__(self, file: IO[bytes], size: int, available: int, what: str) -> None:
        self.file, self.size, self.available, self.what = file, size, available, what
        self._window, self._window_start = b"", 0

    def truncated(self) -> MediaError:
        return MediaError("corrupt_media", f"the {self.what} file is truncated")

    def malformed(self, detail: str) -> MediaError:
        return MediaError("corrupt_media", f"malformed {self.what} file: {detail}")

    def read(self, offset: int, length: int) -> bytes:
        end = offset + length
        if end > self.size:
            raise self.truncated()
        if end > self.available:
            raise _Undecided
        start = self._window_start
        if start <= offset and end <= start + len(self._window):
            return self._window[offset - start : end - start]
        self.file.seek(offset)
        if length >= _WINDOW:
            data = self.file.read(length)
        else:
            self._window, self._window_start = self.file.read(min(_WINDOW, self.available - offset)), offset
            data = self._window[:length]
        if len(data) != length:
            raise self.truncated()
        return data

    def unpack(self, fmt: str, offset: int) -> tuple[Any, ...]:
        return struct.unpack(fmt, self.read(offset, struct.calcsize(fmt)))

    def search(self, pattern: re.Pattern[bytes], start: int, width: int) -> int:
        """Offset of the first match (`width` bytes long) at or after `start`; -1 if there is none.

        Raises _Undecided if none is found in the bytes at hand and the object goes on past them.
        """
        pos, step = start, 256  # growing reads: a match is usually close
        while pos < self.available:
            self.file.seek(pos)
            chunk = self.file.read(min(step, self.available - pos))
            if not chunk:
                break
            found = pattern.search(chunk)
            if found is not None:
                return pos + found.start()
            if pos + len(chunk) >= self.available:
                break
            pos += max(1, len(chunk) - width + 1)
            step = min(2 * step, _SEARCH_CHUNK)
        if self.available < self.size:
            raise _Undecided
        return -1


def _image(content_type: str, width: int, height: int) -> MediaInfo:
    if width <= 0 or height <= 0:
        raise MediaError("corrupt_media", "the image header declares an empty image")
    return MediaInfo(content_type, width, height, 1)


# PNG: signature, then IHDR (13 bytes, CRC-protected), then chunks up to IEND.


def _png_header(r: _Reader, content_type: str) -> MediaInfo:
    data = r.read(8, 25)
    length, tag, width, height = struct.unpack_from(">I4sII", data)
    if tag != b"IHDR" or length != 13:
        raise r.malformed("the first chunk is not IHDR")
    (crc,) = struct.unpack_from(">I", data, 21)
    if zlib.crc32(data[4:21]) != crc:
        raise r.malformed("IHDR checksum mismatch")
    return _image(content_type, width, height)


def _png_complete(r: _Reader) -> None:
    pos = len(_PNG_SIGNATURE)
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


# JPEG: marker segments, a scan (SOS, entropy-coded data), more segments and scans, ... EOI.


def _jpeg_segments(r: _Reader) -> Iterator[tuple[int, int]]:
    """(marker, payload offset) of every marker segment, ending with EOI."""
    pos = 2
    for _ in range(_MAX_ITEMS):
        byte, marker = r.read(pos, 2)
        if byte != 0xFF:
            raise r.malformed(f"expected a marker at byte {pos}")
        pos += 1
        if marker == 0xFF:  # fill bytes
            pos = r.search(_NOT_FF, pos, 1)
            if pos < 0:
                raise r.truncated()
            (marker,) = r.unpack("B", pos)
        pos += 1
        if marker == 0xD9:
            yield marker, pos
            return
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            continue
        (length,) = r.unpack(">H", pos)
        if length < 2:
            raise r.malformed("segment length out of range")
        yield marker, pos + 2
        pos += length
        if pos > r.size:
            raise r.truncated()
        if marker == 0xDA:
            # in entropy-coded data 0xFF is followed by 0x00, a restart marker or more 0xFF,
            # so the next other marker ends the scan: a cut-off file has none
            pos = r.search(_JPEG_MARKER, pos, 2)
            if pos < 0:
                raise r.truncated()
    raise r.malformed("too many segments")


def _jpeg_header(r: _Reader, content_type: str) -> MediaInfo:
    for marker, payload in _jpeg_segments(r):
        if marker in _JPEG_SOF:
            height, width = r.unpack(">xHH", payload)
            if height == 0:
                raise MediaError(
                    "unsupported_media", "a JPEG with a deferred height (DNL), which we do not read"
                )
            return _image(content_type, width, height)
        if marker in (0xDA, 0xD9):
            break
    raise r.malformed("no frame header before the image data")


def _jpeg_complete(r: _Reader) -> None:
    for _ in _jpeg_segments(r):
        pass


# WebP: RIFF container, first chunk VP8 (lossy), VP8L (lossless) or VP8X (extended: a canvas, then
# optional chunks, then the bitstream of VP8 or VP8L).


def _webp_bitstream_size(r: _Reader, pos: int) -> tuple[int, int] | None:
    """Width and height of the VP8/VP8L chunk at `pos`; None for any other chunk."""
    tag = r.read(pos, 4)
    if tag == b"VP8 ":
        start_code, width, height = r.unpack("<3x3sHH", pos + 8)
        if start_code != b"\x9d\x01\x2a":
            raise r.malformed("bad VP8 start code")
        return width & 0x3FFF, height & 0x3FFF
    if tag == b"VP8L":
        signature, bits = r.unpack("<BI", pos + 8)
        if signature != 0x2F:
            raise r.malformed("bad VP8L signature")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None


def _webp_canvas(r: _Reader) -> tuple[int, int] | None:
    """The VP8X canvas size; None if the file is a simple (VP8/VP8L) WebP."""
    if r.read(12, 4) != b"VP8X":
        return None
    flags, w0, w1, w2, h0, h1, h2 = r.unpack("<B3x6B", 20)
    if flags & 0x02:
        raise MediaError("unsupported_media", "an animated WebP, which we do not read")
    return 1 + (w0 | w1 << 8 | w2 << 16), 1 + (h0 | h1 << 8 | h2 << 16)


def _webp_header(r: _Reader, content_type: str) -> MediaInfo:
    size = _webp_canvas(r) or _webp_bitstream_size(r, 12)
    if size is None:
        raise r.malformed(f"unexpected first chunk {r.read(12, 4)!r}")
    return _image(content_type, *size)


def _webp_complete(r: _Reader) -> None:
    end = _riff_end(r)
    canvas = _webp_canvas(r)
    bitstream = None
    pos = 12
    for _ in range(_MAX_ITEMS):
        if pos + 8 > end:
            break
        if bitstream is None:
            bitstream = _webp_bitstream_size(r, pos)
        (chunk_size,) = r.unpack("<I", pos + 4)
        pos += 8 + chunk_size + (chunk_size & 1)
    if pos < end - 1 or pos > end + 1:
        raise r.malformed("chunks do not fill the RIFF container")
    if bitstream is None:
        raise r.malformed("no image data")
    if canvas is not None and bitstream != canvas:
        raise r.malformed("the canvas and bitstream sizes differ")


def _riff_end(r: _Reader) -> int:
    (riff_size,) = r.unpack("<I", 4)
    if 8 + riff_size > r.size:
        raise r.truncated()
    return 8 + riff_size


def _riff_complete(r: _Reader) -> None:
    _riff_end(r)


# AVI: RIFF 'AVI ', LIST 'hdrl', then the main header 'avih'.


def _avi_header(r: _Reader, content_type: str) -> MediaInfo:
    list_tag, _, hdrl, avih, avih_size = r.unpack("<4sI4s4sI", 12)
    if (list_tag, hdrl, avih) != (b"LIST", b"hdrl", b"avih") or avih_size < 40:
        raise r.malformed("no main AVI header")
    usec_per_frame, _, _, _, frames, _, _, _, width, height = r.unpack("<10I", 32)
    if frames == 0:
        raise MediaError("no_frames", "the video has no frames")
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
        raise MediaError("too_large", f"the {r.what} index is larger than {_MAX_MOOV_BYTES} bytes")
    data = r.read(start, end - start)
    boxes = _children(data, 0, len(data), r)
    fragmented = b"mvex" in boxes
    for trak_start, trak_end in boxes.get(b"trak", []):
        track = _mp4_video_track(data, trak_start, trak_end, r)
        if track is None:
            continue
        width, height, frames, seconds = track
        if frames == 0 and not fragmented:
            raise MediaError("no_frames", "the video track has no frames")
        return MediaInfo(content_type, width, height, frames or None, seconds)
    raise MediaError("no_frames", "the file contains no video track")


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
    for table in (b"stsz", b"stz2"):
        entry = tables.get(table)
        if entry and entry[0][1] - entry[0][0] >= 12:
            (frames,) = struct.unpack_from(">I", data, entry[0][0] + 8)
            break
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
    """(payload offset, payload size or None if unknown) of the Segment."""
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
    raise MediaError("no_frames", "the file contains no video track")


def _matroska_complete(r: _Reader) -> None:
    start, segment_size = _matroska_segment(r)
    if segment_size is not None and start + segment_size > r.size:
        raise r.truncated()


_Header = Callable[[_Reader, str], MediaInfo]
_Complete = Callable[[_Reader], None]
_CHECKS: dict[str, tuple[_Header, _Complete]] = {
    "image/png": (_png_header, _png_complete),
    "image/jpeg": (_jpeg_header, _jpeg_complete),
    "image/webp": (_webp_header, _webp_complete),
    "video/mp4": (_mp4_header, _mp4_complete),
    "video/quicktime": (_mp4_header, _mp4_complete),
    "video/webm": (_matroska_header, _matroska_complete),
    "video/x-matroska": (_matroska_header, _matroska_complete),
    "video/x-msvideo": (_avi_header, _riff_complete),
}
