"""Streaming video I/O: frames are decoded and encoded one at a time, never held all at once."""

import os
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Self

import av
import av.container
import numpy as np
from av.video.reformatter import ColorRange, Colorspace

from common.media import video_format
from engines.media.audio import AudioTrack, copied_track, tone_track
from engines.media.errors import Limits, MediaError
from engines.media.probe import MediaInfo, open_container, probe

_BT709 = 1  # AVCOL_PRI_BT709 == AVCOL_TRC_BT709 == AVCOL_SPC_BT709
_MPEG_RANGE = 1  # AVCOL_RANGE_MPEG


class VideoReader:
    """Iterate a video's frames as uint8 HxWx3 RGB arrays, one at a time.

    The file is probed first (see `probe`; limits are enforced from its headers), then the first
    frame is decoded at once, so an empty or undecodable video fails on construction, and the
    display rotation of phone videos is known: frames come out upright, and `width`/`height` are
    the upright size. Iteration is single-pass. Decoding past `limits` raises `too_long`, and
    FFmpeg errors mid-stream become `corrupt_media`.
    """

    def __init__(self, path: str | os.PathLike[str], limits: Limits | None = None) -> None:
        self._limits = limits or Limits()
        self.info: MediaInfo = probe(path, self._limits)
        fmt = video_format(self.info.content_type)
        if fmt is None:
            raise MediaError("unsupported_media", "expected a video, got a still image")
        self._container = open_container(Path(path), fmt, self._limits.max_pixels)
        try:
            self._stream = next(s for s in self._container.streams.video if s.codec_context is not None)
            self._stream.thread_type = "AUTO"
            self._stream.codec_context.options = {"max_pixels": str(self._limits.max_pixels)}
            start, tick = self._stream.start_time, self._stream.time_base
            self._start = float(start * tick) if start and tick else 0.0
            self._frames = self._decode()
            first = next(self._frames, None)
            if first is None:
                raise MediaError("no_frames", "the video has no decodable frames")
            self._turns = round(first.rotation / 90) % 4
            self._pending: np.ndarray | None = self._convert(first)
        except BaseException:
            self._container.close()
            raise
        self.height, self.width = self._pending.shape[:2]
        self.fps: float = self.info.fps or 0.0
        self.n_frames: int = self.info.n_frames
        self._count = 0

    def __iter__(self) -> Iterator[np.ndarray]:
        if self._pending is not None:
            frame, self._pending = self._pending, None
            self._count = 1
            yield frame
        for decoded in self._frames:
            if self._count >= self._limits.max_frames:
                raise MediaError("too_long", f"the video has more than {self._limits.max_frames} frames")
            if decoded.time is not None and decoded.time - self._start > self._limits.max_seconds:
                raise MediaError("too_long", f"the video runs past {self._limits.max_seconds:g} s")
            self._count += 1
            yield self._convert(decoded)

    @property
    def frames_read(self) -> int:
        """How many frames iteration has produced so far."""
        return self._count

    def close(self) -> None:
        """Release the file and decoder."""
        self._container.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _decode(self) -> Iterator[av.VideoFrame]:
        try:
            for packet in self._container.demux(self._stream):
                yield from packet.decode()
        except av.FFmpegError as exc:
            raise MediaError("corrupt_media", f"the video stream is corrupt: {exc}") from exc

    def _convert(self, frame: av.VideoFrame) -> np.ndarray:
        rgb = frame.to_ndarray(format="rgb24", width=self.info.width, height=self.info.height)
        return np.ascontiguousarray(np.rot90(rgb, self._turns)) if self._turns else rgb


class VideoWriter:
    """Encode RGB frames, one at a time, to an H.264 (libx264, yuv420p, BT.709) MP4.

    Odd frame sizes are padded by one replicated row/column (`width`/`height` give the encoded
    size). The file is written to `<path>.part` and renamed on `close`, so `path` only ever holds a
    complete MP4 with its index at the front (faststart). On an exception inside `with`, the partial
    file is deleted.

    Audio: with `audio_from`, the first audio stream of that file is muxed interleaved with the video
    as frames are written (AAC/MP3 remuxed untouched, anything else re-encoded to AAC) and cut to the
    video's duration at close; a file without audio gives a silent video. `tone_hz` instead adds a
    generated sine-wave AAC track (for tests and demos).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        fps: float,
        width: int,
        height: int,
        crf: int = 18,
        audio_from: str | os.PathLike[str] | None = None,
        *,
        preset: str = "medium",
        tone_hz: float | None = None,
    ) -> None:
        if not fps > 0 or width < 1 or height < 1 or not 0 <= crf <= 51:
            raise ValueError(f"invalid video parameters: fps={fps} size={width}x{height} crf={crf}")
        if audio_from is not None and tone_hz is not None:
            raise ValueError("give audio_from or tone_hz, not both")
        self.path = Path(path)
        self._part = self.path.with_name(self.path.name + ".part")
        self.fps = Fraction(fps).limit_denominator(1001)
        self.frame_width, self.frame_height = width, height
        self.width, self.height = width + width % 2, height + height % 2
        self._count = 0
        self._audio: AudioTrack | None = None
        self._container = av.open(str(self._part), mode="w", format="mp4", options={"movflags": "+faststart"})
        try:
            options = {"crf": str(crf), "preset": preset}
            stream = self._container.add_stream("libx264", rate=self.fps, options=options)
            stream.width, stream.height, stream.pix_fmt = self.width, self.height, "yuv420p"
            stream.codec_context.time_base = 1 / self.fps
            ctx = stream.codec_context
            ctx.color_primaries = ctx.color_trc = ctx.colorspace = _BT709
            ctx.color_range = _MPEG_RANGE
            self._stream = stream
            if audio_from is not None:
                self._audio = copied_track(self._container, Path(audio_from))
            elif tone_hz is not None:
                self._audio = tone_track(self._container, tone_hz)
        except BaseException:
            self.abort()
            raise

    @property
    def frames_written(self) -> int:
        """How many frames have been written."""
        return self._count

    def write(self, rgb: np.ndarray) -> None:
        """Encode one uint8 HxWx3 RGB frame of the size given at construction."""
        if rgb.dtype != np.uint8 or rgb.shape != (self.frame_height, self.frame_width, 3):
            expected = f"{self.frame_height}x{self.frame_width}x3"
            raise ValueError(f"expected a uint8 {expected} frame, got {rgb.dtype} {rgb.shape}")
        if (self.height, self.width) != rgb.shape[:2]:
            pad = ((0, self.height - self.frame_height), (0, self.width - self.frame_width), (0, 0))
            rgb = np.pad(rgb, pad, mode="edge")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24").reformat(
            format="yuv420p", dst_colorspace=Colorspace.ITU709, dst_color_range=ColorRange.MPEG
        )
        frame.pts = self._count
        frame.time_base = self._stream.codec_context.time_base
        self._container.mux(self._stream.encode(frame))
        self._count += 1
        if self._audio is not None:
            self._audio.mux_until(float(self._count / self.fps))

    def close(self) -> None:
        """Flush the encoder, finish the audio, finalize the MP4 and move it into place."""
        if self._count == 0:
            self.abort()
            raise MediaError("no_frames", "no frames were written")
        try:
            self._container.mux(self._stream.encode(None))
            if self._audio is not None:
                self._audio.finish(float(self._count / self.fps))
            self._container.close()
        except BaseException:
            self.abort()
            raise
        self._part.replace(self.path)

    def abort(self) -> None:
        """Stop without producing `path`, deleting the partial file."""
        try:
            if self._audio is not None:
                self._audio.close()
            self._container.close()
        finally:
            self._part.unlink(missing_ok=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
