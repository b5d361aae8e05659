"""Probe an input: what it is, how big and how long, checked against limits before decoding."""

import os
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Literal

import av
import av.container
import av.stream
from av.audio.stream import AudioStream

from common import media as headers
from common.media import MediaFormat, VideoFormat, inspect_media, video_format
from engines.media.errors import Limits, MediaError

_MKV_DURATION = re.compile(r"(\d+):(\d\d):(\d\d(?:\.\d+)?)")
_DEMUXERS: dict[VideoFormat, str] = {
    "mp4": "mov",
    "matroska": "matroska",
    "avi": "avi",
}


@dataclass(frozen=True)
class MediaInfo:
    """What `probe` learned from an input's headers.

    `width`/`height` are as stored (a video's display rotation is applied later, by VideoReader);
    `n_frames` is the container's count or, without one, duration x fps; `fps` is None for images.
    """

    kind: Literal["image", "video"]
    format: MediaFormat
    codec: str
    width: int
    height: int
    fps: float | None
    n_frames: int
    duration: float
    has_audio: bool
    content_type: str


def probe(path: str | os.PathLike[str], limits: Limits | None = None) -> MediaInfo:
    """Identify `path` by content, validate its structure, and enforce `limits` from its headers.

    The checks are `common.media.inspect_media`'s, the gateway's own: MediaError
    `unsupported_media` for anything but JPEG/PNG/WebP images and MP4/MOV/MKV/WebM/AVI videos,
    `corrupt_media` for truncated or malformed files, `too_large` / `too_long` when the declared
    size, frame count or duration exceed the limits, and `no_frames` for a video without a video
    track. Videos are then opened with FFmpeg (demuxer pinned), and the limits are checked again
    against what it reports. No pixels are decoded.
    """
    limits = limits or Limits()
    path = Path(path)
    with open(path, "rb") as fh:
        header = inspect_media(fh, os.fstat(fh.fileno()).st_size, limits.header_limits())
    fmt = video_format(header.content_type)
    if fmt is None:
        image = header.format
        if header.width is None or header.height is None:  # cannot happen: the whole file was read
            raise MediaError("corrupt_media", f"cannot read the {image} header")
        return MediaInfo(
            "image", image, image, header.width, header.height, None, 1, 0.0, False, header.content_type
        )
    with open_container(path, fmt, limits.max_pixels) as container:
        info = _video_info(container, fmt, header.content_type)
    check_limits(info, limits)
    return info


def check_limits(info: MediaInfo, limits: Limits) -> None:
    """Raise `too_large` / `too_long` if `info` exceeds `limits` (`common.media.check_limits`)."""
    declared = headers.MediaInfo(info.content_type, info.width, info.height, info.n_frames, info.duration)
    headers.check_limits(declared, limits.header_limits())


def open_container(
    path: Path, fmt: VideoFormat, max_pixels: int | None = None
) -> av.container.InputContainer:
    """Open a sniffed video with its demuxer pinned, so FFmpeg never probes or follows other URLs.

    `max_pixels` also caps the decoders FFmpeg opens while reading stream parameters.
    """
    try:
        return av.open(
            os.path.abspath(path),
            mode="r",
            format=_DEMUXERS[fmt],
            options={"max_pixels": str(max_pixels)} if max_pixels else None,
            container_options={"protocol_whitelist": "file"},
        )
    except av.FFmpegError as exc:
        raise MediaError("corrupt_media", f"cannot read the {fmt} file: {exc}") from exc


def first_audio_stream(container: av.container.InputContainer) -> AudioStream | None:
    """The first audio stream that has a decoder, if any."""
    return next((s for s in container.streams.audio if s.codec_context is not None), None)


def _video_info(container: av.container.InputContainer, fmt: VideoFormat, content_type: str) -> MediaInfo:
    stream = next((s for s in container.streams.video if s.codec_context is not None), None)
    if stream is None:
        raise MediaError("no_frames", "the file contains no decodable video track")
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate or rate <= 0:
        raise MediaError("unsupported_media", "cannot determine the video frame rate")
    fps = float(rate)
    duration = _duration(container, stream)
    n_frames = stream.frames or round(duration * fps)
    if not duration:
        duration = n_frames / fps
    if n_frames <= 0:
        raise MediaError("no_frames", "the video track is empty")
    ctx = stream.codec_context
    if ctx.width <= 0 or ctx.height <= 0:
        raise MediaError("corrupt_media", "the video track declares no frame size")
    return MediaInfo(
        kind="video",
        format=fmt,
        codec=ctx.codec.canonical_name,
        width=ctx.width,
        height=ctx.height,
        fps=fps,
        n_frames=n_frames,
        duration=duration,
        has_audio=first_audio_stream(container) is not None,
        content_type=content_type,
    )


def _duration(container: av.container.InputContainer, stream: av.stream.Stream) -> float:
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    tagged = _MKV_DURATION.fullmatch(stream.metadata.get("DURATION", ""))
    if tagged:
        hours, minutes, seconds = tagged.groups()
        return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    if container.duration:
        return float(Fraction(container.duration, av.time_base))
    return 0.0
