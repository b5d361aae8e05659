"""Audio tracks for `VideoWriter`: copied from another file, or generated, muxed alongside the video.

A track is fed in step with the video: after each video frame the writer calls `mux_until(t)` with
the time the video has reached, and the track muxes its packets that start before `t`; `finish(t)`
ends it at the video's duration. The MP4 therefore comes out interleaved, with audio never more
than one audio frame ahead of the video.
"""

from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path

import av
import av.container
import numpy as np
from av.audio.stream import AudioStream

from engines.media.errors import MediaError
from engines.media.probe import first_audio_stream, open_container
from engines.media.sniff import video_format_of

_REMUXABLE = {"aac", "mp3"}
_AAC_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350)
_AAC_FRAME = 1024
_TONE_RATE = 44100


class AudioTrack:
    """The interface `VideoWriter` drives; see the module docstring."""

    def mux_until(self, seconds: float) -> None:
        """Mux everything that starts before `seconds` of output time."""
        raise NotImplementedError

    def finish(self, seconds: float) -> None:
        """Mux the rest up to `seconds` (the video's duration), flush, and release the input."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the input without muxing anything more."""


def copied_track(out: av.container.OutputContainer, source: Path) -> AudioTrack | None:
    """A track carrying the first audio stream of `source`, or None if it has none.

    AAC and MP3 packets are remuxed untouched (cut at packet granularity); any other codec is
    decoded and re-encoded to AAC, cut at the sample. The audio is aligned on the start of the
    source's video track, so audio taken from a driving video stays in sync with its frames.
    """
    fmt = video_format_of(source)
    if fmt is None:
        return None
    container = open_container(source, fmt)
    stream = first_audio_stream(container)
    if stream is None:
        container.close()
        return None
    video = next(iter(container.streams.video), None)
    anchor = video if video is not None and video.start_time is not None else stream
    start, tick = anchor.start_time, anchor.time_base
    origin = float(start * tick) if start is not None and tick is not None else 0.0
    ctx = stream.codec_context
    codec = ctx.codec.canonical_name
    if codec in _REMUXABLE and (codec == "mp3" or ctx.extradata) and stream.time_base is not None:
        return _RemuxedTrack(out, container, stream, stream.time_base, origin)
    rate = ctx.sample_rate if ctx.sample_rate in _AAC_RATES else 48000
    layout = "mono" if ctx.channels == 1 else "stereo"
    samples = _decoded_samples(container, stream, origin, rate, layout)
    return _EncodedTrack(out, samples, rate, layout, on_close=container.close)


def tone_track(out: av.container.OutputContainer, hz: float) -> AudioTrack:
    """A mono AAC track of a sine tone at `hz`, for tests and demos."""

    def tone() -> Iterator[np.ndarray]:
        start = 0
        while True:
            t = np.arange(start, start + _AAC_FRAME) / _TONE_RATE
            yield (0.2 * np.sin(2 * np.pi * hz * t)).astype(np.float32)[None]
            start += _AAC_FRAME

    return _EncodedTrack(out, tone(), _TONE_RATE, "mono", on_close=None)


def _corrupt(exc: av.FFmpegError) -> MediaError:
    return MediaError("corrupt_media", f"cannot read the audio track: {exc}")


class _RemuxedTrack(AudioTrack):
    """Packets are handled with their start: their pts shifted by the origin, in `time_base` ticks."""

    def __init__(
        self,
        out: av.container.OutputContainer,
        container: av.container.InputContainer,
        stream: AudioStream,
        time_base: Fraction,
        origin: float,
    ) -> None:
        self._out = out
        self._container = container
        self._out_stream = out.add_stream_from_template(stream)
        self._out_stream.codec_tag = "mp4a"
        self._time_base = time_base
        self._origin = round(origin / time_base)
        self._packets = container.demux(stream)
        self._pending: tuple[av.Packet, int] | None = None
        self._preroll: tuple[av.Packet, int] | None = None

    def _next(self) -> tuple[av.Packet, int] | None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            return pending
        try:
            for packet in self._packets:
                if packet.size and packet.pts is not None:
                    return packet, packet.pts - self._origin
        except av.FFmpegError as exc:
            raise _corrupt(exc) from exc
        return None

    def mux_until(self, seconds: float) -> None:
        while (item := self._next()) is not None:
            packet, start = item
            if start * self._time_base >= seconds:
                self._pending = item
                return
            if start + (packet.duration or 0) <= 0:
                self._preroll = item
                continue
            if self._preroll is not None:
                self._mux(*self._preroll)
                self._preroll = None
            self._mux(packet, start)

    def _mux(self, packet: av.Packet, start: int) -> None:
        packet.pts = start
        packet.dts = start if packet.dts is None else packet.dts - self._origin
        packet.stream = self._out_stream
        self._out.mux(packet)

    def finish(self, seconds: float) -> None:
        self.mux_until(seconds)
        self.close()

    def close(self) -> None:
        self._container.close()


class _EncodedTrack(AudioTrack):
    """AAC-encodes float32 planar sample blocks, in whole encoder frames until the last one."""

    def __init__(
        self,
        out: av.container.OutputContainer,
        samples: Iterator[np.ndarray],
        rate: int,
        layout: str,
        on_close: Callable[[], None] | None,
    ) -> None:
        self._out = out
        self._stream = out.add_stream("aac", rate=rate, layout=layout)
        self._stream.codec_context.format = "fltp"
        self._samples = samples
        self._rate = rate
        self._layout = layout
        self._on_close = on_close
        self._chunks: list[np.ndarray] = []
        self._buffered = 0
        self._sent = 0

    def mux_until(self, seconds: float) -> None:
        target = round(seconds * self._rate)
        while self._sent + _AAC_FRAME <= target and self._send(_AAC_FRAME):
            pass

    def finish(self, seconds: float) -> None:
        target = round(seconds * self._rate)
        while self._sent < target and self._send(min(_AAC_FRAME, target - self._sent)):
            pass
        self._mux(self._stream.encode(None))
        self.close()

    def close(self) -> None:
        if self._on_close is not None:
            self._on_close()

    def _send(self, count: int) -> bool:
        block = self._take(count)
        if block is None:
            return False
        frame = av.AudioFrame.from_ndarray(block, format="fltp", layout=self._layout)
        frame.sample_rate = self._rate
        frame.time_base = Fraction(1, self._rate)
        frame.pts = self._sent
        self._sent += block.shape[1]
        self._mux(self._stream.encode(frame))
        return True

    def _take(self, count: int) -> np.ndarray | None:
        """Up to `count` samples, fewer only when the source has ended; None once it is empty."""
        while self._buffered < count:
            chunk = next(self._samples, None)
            if chunk is None:
                break
            self._chunks.append(chunk)
            self._buffered += chunk.shape[1]
        if not self._buffered:
            return None
        data = np.concatenate(self._chunks, axis=1) if len(self._chunks) > 1 else self._chunks[0]
        block, rest = data[:, :count], data[:, count:]
        self._chunks = [rest] if rest.shape[1] else []
        self._buffered = rest.shape[1]
        return np.ascontiguousarray(block)

    def _mux(self, packets: list[av.Packet]) -> None:
        for packet in packets:
            self._out.mux(packet)


def _decoded_samples(
    container: av.container.InputContainer, stream: AudioStream, origin: float, rate: int, layout: str
) -> Iterator[np.ndarray]:
    """Float32 planar blocks of the stream's audio from `origin` on, resampled to `rate`/`layout`.

    A late start is padded with silence (lazily, a second at a time) and an early one trimmed;
    later gaps are not filled.
    """
    resampler = av.AudioResampler(format="fltp", layout=layout, rate=rate)
    channels = 1 if layout == "mono" else 2
    skip: int | None = None
    try:
        for packet in container.demux(stream):
            for frame in packet.decode():
                if skip is None:
                    offset = round(((frame.time or 0.0) - origin) * rate)
                    for start in range(0, offset, rate):
                        yield np.zeros((channels, min(rate, offset - start)), np.float32)
                    skip = max(0, -offset)
                for block in (out.to_ndarray() for out in resampler.resample(frame)):
                    trimmed, skip = block[:, skip:], max(0, skip - block.shape[1])
                    if trimmed.shape[1]:
                        yield trimmed
        for out in resampler.resample(None):
            yield out.to_ndarray()
    except av.FFmpegError as exc:
        raise _corrupt(exc) from exc
