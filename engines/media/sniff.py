"""Recognise a file by its bytes and read image sizes from headers, without decoding anything.

FFmpeg's own probing is not used for either job: it picks demuxers by file name as well as by
content, some content-probed demuxers open further URLs (HLS, concat), and for still images
`avformat_find_stream_info` decodes the whole picture just to learn its size, which is exactly what
a decompression bomb relies on. Everything here reads a few header bytes or walks the container's
chunk/box structure, so it is cheap even for large files and never allocates pixel buffers.
"""

import mmap
import re
import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from engines.media.errors import MediaError

ImageFormat = Literal["png", "jpeg", "webp"]
VideoFormat = Literal["mp4", "matroska", "avi"]
MediaFormat = ImageFormat | VideoFormat

IMAGE_FORMATS: tuple[ImageFormat, ...] = ("png", "jpeg", "webp")

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_MP4_TOP_BOXES = {b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot", b"styp"}
_EBML_MAGIC = b"\x1a\x45\xdf\xa3"
_EBML_SEGMENT_ID = 0x18538067
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_JPEG_FILL = re.compile(rb"\xff+")
_JPEG_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")  # in entropy-coded data
_MAX_CHUNKS = 1_000_000  # bounds the Python-level structure walks on hostile files
_SUPPORTED = "supported inputs are JPEG, PNG and WebP images and MP4/MOV, MKV/WebM and AVI videos"

Buffer = bytes | mmap.mmap


@dataclass(frozen=True)
class ImageHeader:
    """An image's format and size, as declared by its header."""

    format: ImageFormat
    width: int
    height: int


@contextmanager
def mapped(path: Path) -> Iterator[Buffer]:
    """The file's bytes, memory-mapped read-only (an empty `bytes` for an empty file)."""
    with open(path, "rb") as fh:
        if fh.seek(0, 2) == 0:
            yield b""
            return
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            yield mm


def sniff(buf: Buffer) -> MediaFormat:
    """Identify a supported format from the leading bytes; raise `unsupported_media` otherwise."""
    head = bytes(buf[:16])
    if not head:
        raise MediaError("unsupported_media", "the file is empty")
    if head.startswith(_PNG_SIGNATURE):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "avi"
    if head.startswith(_EBML_MAGIC):
        return "matroska"
    if len(head) >= 8 and head[4:8] in _MP4_TOP_BOXES:
        return "mp4"
    raise MediaError("unsupported_media", f"unrecognised file content; {_SUPPORTED}")


def image_header(buf: Buffer, fmt: ImageFormat) -> ImageHeader:
    """Read an image's declared size from its header only."""
    if fmt == "png":
        width, height = _png_size(buf)
    elif fmt == "jpeg":
        width, height = _jpeg_size(buf)
    else:
        width, height = _webp_size(buf)
    if width <= 0 or height <= 0:
        raise MediaError("corrupt_media", f"the {fmt} header declares an empty image")
    return ImageHeader(fmt, width, height)


def check_complete(buf: Buffer, fmt: MediaFormat) -> None:
    """Walk the file's structure and raise `corrupt_media` if it is truncated or malformed."""
    {
        "png": _png_complete,
        "jpeg": _jpeg_complete,
        "webp": _riff_complete,
        "avi": _riff_complete,
        "mp4": _mp4_complete,
        "matroska": _ebml_complete,
    }[fmt](buf)


def _truncated(what: str) -> MediaError:
    return MediaError("corrupt_media", f"the {what} file is truncated")


def _malformed(what: str, detail: str) -> MediaError:
    return MediaError("corrupt_media", f"malformed {what} file: {detail}")


def _unpack(fmt: str, buf: Buffer, offset: int, what: str) -> tuple[int, ...]:
    if offset + struct.calcsize(fmt) > len(buf):
        raise _truncated(what)
    return struct.unpack_from(fmt, buf, offset)


# PNG: signature, IHDR first (13 bytes, CRC-protected), chunks up to IEND.


def _png_size(buf: Buffer) -> tuple[int, int]:
    length, tag = _unpack(">I4s", buf, 8, "PNG")
    if tag != b"IHDR" or length != 13:
        raise _malformed("PNG", "the first chunk is not IHDR")
    (crc,) = _unpack(">I", buf, 29, "PNG")
    if zlib.crc32(buf[12:29]) != crc:
        raise _malformed("PNG", "IHDR checksum mismatch")
    return _unpack(">II", buf, 16, "PNG")


def _png_complete(buf: Buffer) -> None:
    pos = len(_PNG_SIGNATURE)
    for _ in range(_MAX_CHUNKS):
        length, tag = _unpack(">I4s", buf, pos, "PNG")
        if length > 0x7FFFFFFF:
            raise _malformed("PNG", "chunk length out of range")
        pos += 12 + length
        if pos > len(buf):
            raise _truncated("PNG")
        if tag == b"IEND":
            return
    raise _malformed("PNG", "too many chunks")


# JPEG: marker segments up to SOS, entropy-coded data, more segments/scans, EOI.


def _jpeg_segments(buf: Buffer) -> Iterator[tuple[int, int]]:
    """Yield (marker, payload offset) for every marker segment, ending with EOI."""
    size = len(buf)
    pos = 2
    for _ in range(_MAX_CHUNKS):
        if pos >= size:
            raise _truncated("JPEG")
        fill = _JPEG_FILL.match(buf, pos)
        if fill is None:
            raise _malformed("JPEG", f"expected a marker at byte {pos}")
        pos = fill.end()
        if pos >= size:
            raise _truncated("JPEG")
        marker = buf[pos]
        pos += 1
        if marker == 0xD9:
            yield marker, pos
            return
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            continue
        (length,) = _unpack(">H", buf, pos, "JPEG")
        if length < 2:
            raise _malformed("JPEG", "segment length out of range")
        yield marker, pos + 2
        pos += length
        if pos > size:
            raise _truncated("JPEG")
        if marker == 0xDA:
            found = _JPEG_MARKER.search(buf, pos)
            if found is None:
                raise _truncated("JPEG")
            pos = found.start()
    raise _malformed("JPEG", "too many segments")


def _jpeg_size(buf: Buffer) -> tuple[int, int]:
    for marker, payload in _jpeg_segments(buf):
        if marker in _JPEG_SOF:
            height, width = _unpack(">xHH", buf, payload, "JPEG")
            if height == 0:
                raise MediaError("unsupported_media", "JPEGs with a deferred height (DNL) are not supported")
            return width, height
        if marker in (0xDA, 0xD9):
            break
    raise _malformed("JPEG", "no frame header before the image data")


def _jpeg_complete(buf: Buffer) -> None:
    for _ in _jpeg_segments(buf):
        pass


# RIFF (WebP, AVI): "RIFF" size form-type, then chunks.


def _riff_complete(buf: Buffer) -> None:
    (riff_size,) = _unpack("<I", buf, 4, "RIFF")
    end = 8 + riff_size
    if end > len(buf):
        raise _truncated("RIFF")
    if buf[8:12] != b"WEBP":
        return
    pos = 12
    for _ in range(_MAX_CHUNKS):
        if pos + 8 > end:
            break
        (chunk_size,) = _unpack("<I", buf, pos + 4, "WebP")
        pos += 8 + chunk_size + (chunk_size & 1)
    if pos < end - 1 or pos > end + 1:
        raise _malformed("WebP", "chunks do not fill the RIFF container")


def _webp_size(buf: Buffer, pos: int = 12) -> tuple[int, int]:
    """Size of the WebP image whose first chunk starts at `pos` (the bitstream's, for VP8X files)."""
    tag, chunk_size = _unpack("<4sI", buf, pos, "WebP")
    data = pos + 8
    if tag == b"VP8 ":
        start_code, width, height = _unpack("<3x3sHH", buf, data, "WebP")
        if start_code != b"\x9d\x01\x2a":
            raise _malformed("WebP", "bad VP8 start code")
        return width & 0x3FFF, height & 0x3FFF
    if tag == b"VP8L":
        signature, bits = _unpack("<BI", buf, data, "WebP")
        if signature != 0x2F:
            raise _malformed("WebP", "bad VP8L signature")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if tag == b"VP8X" and pos == 12:
        flags, w0, w1, w2, h0, h1, h2 = _unpack("<B3x6B", buf, data, "WebP")
        if flags & 0x02:
            raise MediaError("unsupported_media", "animated WebP images are not supported")
        canvas = 1 + (w0 | w1 << 8 | w2 << 16), 1 + (h0 | h1 << 8 | h2 << 16)
        pos = data + chunk_size + (chunk_size & 1)
        for _ in range(_MAX_CHUNKS):
            tag, chunk_size = _unpack("<4sI", buf, pos, "WebP")
            if tag in (b"VP8 ", b"VP8L"):
                if _webp_size(buf, pos) != canvas:
                    raise _malformed("WebP", "the canvas and bitstream sizes differ")
                return canvas
            pos += 8 + chunk_size + (chunk_size & 1)
    raise _malformed("WebP", f"unexpected chunk {tag!r}")


# ISO BMFF (MP4/MOV): top-level boxes must fit in the file.


def _mp4_complete(buf: Buffer) -> None:
    size = len(buf)
    pos = 0
    for _ in range(_MAX_CHUNKS):
        if size - pos < 8:
            return
        box_size, _ = _unpack(">I4s", buf, pos, "MP4")
        if box_size == 0:
            return
        if box_size == 1:
            (box_size,) = _unpack(">Q", buf, pos + 8, "MP4")
            if box_size < 16:
                raise _malformed("MP4", "box size out of range")
        elif box_size < 8:
            raise _malformed("MP4", "box size out of range")
        pos += box_size
        if pos > size:
            raise _truncated("MP4")
    raise _malformed("MP4", "too many top-level boxes")


# EBML (Matroska/WebM): the Segment element, when its size is known, must fit in the file.


def _ebml_vint(buf: Buffer, pos: int, keep_marker: bool) -> tuple[int, int, bool]:
    """Decode an EBML variable-length integer: (value, length in bytes, all value bits set)."""
    (first,) = _unpack("B", buf, pos, "Matroska")
    length = 9 - first.bit_length()
    if length > 8:
        raise _malformed("Matroska", "invalid variable-length integer")
    raw = int.from_bytes(_unpack(f"{length}s", buf, pos, "Matroska")[0], "big")
    mask = (1 << (7 * length)) - 1
    value = raw if keep_marker else raw & mask
    return value, length, raw & mask == mask


def _ebml_complete(buf: Buffer) -> None:
    pos = len(_EBML_MAGIC)
    header_size, n, _ = _ebml_vint(buf, pos, keep_marker=False)
    pos += n + header_size
    element_id, n, _ = _ebml_vint(buf, pos, keep_marker=True)
    if element_id != _EBML_SEGMENT_ID:
        raise _malformed("Matroska", "no Segment after the EBML header")
    pos += n
    segment_size, n, unknown = _ebml_vint(buf, pos, keep_marker=False)
    if not unknown and pos + n + segment_size > len(buf):
        raise _truncated("Matroska")
