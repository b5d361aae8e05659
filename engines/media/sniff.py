"""The engines' file access around `common.media`: a file's format from its bytes, its bytes mapped.

Recognising and checking a file is `common.media`'s job alone (the gateway runs the same code);
FFmpeg's own probing is never used for it: it picks demuxers by file name as well as by content,
some content-probed demuxers open further URLs (HLS, concat), and for still images
`avformat_find_stream_info` decodes the whole picture just to learn its size.
"""

import mmap
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from common.media import SNIFF_BYTES, VideoFormat, identify, video_format

Buffer = bytes | mmap.mmap


@contextmanager
def mapped(path: Path) -> Iterator[Buffer]:
    """The file's bytes, memory-mapped read-only (an empty `bytes` for an empty file)."""
    with open(path, "rb") as fh:
        if fh.seek(0, 2) == 0:
            yield b""
            return
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            yield mm


def video_format_of(path: str | os.PathLike[str]) -> VideoFormat | None:
    """The container family of the video at `path` from its first bytes; None for an image.

    Raises MediaError `unsupported_media` for anything else.
    """
    with open(path, "rb") as fh:
        return video_format(identify(fh.read(SNIFF_BYTES)))
