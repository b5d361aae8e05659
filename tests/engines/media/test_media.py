"""engines.media against real files encoded and decoded with PyAV."""

import struct
import tracemalloc
import zlib
from collections.abc import Iterator
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from engines.media import (
    Limits,
    MediaError,
    VideoReader,
    VideoWriter,
    probe,
    read_image,
    write_image,
    write_test_video,
)


def frames(n: int, height: int = 64, width: int = 96) -> Iterator[np.ndarray]:
    """Smooth, frame-dependent RGB content (compresses well, survives yuv420p closely)."""
    base = np.zeros((height, width, 3), np.uint8)
    base[..., 0] = np.arange(width) * 2 % 256
    base[..., 1] = (np.arange(height) * 3 % 256)[:, None]
    for i in range(n):
        rgb = base.copy()
        rgb[..., 0] += np.uint8(i * 5 % 256)
        rgb[..., 2] = i * 9 % 256
        yield rgb


def make_video(
    path: Path,
    n: int = 12,
    audio_codec: str | None = None,
    fmt: str = "mp4",
    *,
    audio_delay: int = 0,
    rotation: int | None = None,
    faststart: bool = False,
) -> Path:
    """Encode a small video directly with PyAV (no engines.media code), optionally with 2 s of
    audio starting `audio_delay` samples (at 48 kHz) after the video."""
    options = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(path), "w", format=fmt, options=options) as container:
        video = container.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        if rotation is not None:
            video.set_display_rotation(rotation)
        audio = container.add_stream(audio_codec, rate=48000, layout="stereo") if audio_codec else None
        assert audio is None or isinstance(audio, av.AudioStream)
        for i, rgb in enumerate(frames(n, 48, 64)):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        if audio is not None:
            samples = np.sin(np.arange(48000 * 2) * 2 * np.pi * 330 / 48000).astype(np.float32) * 0.3
            for start in range(0, samples.size, 960):
                block = np.ascontiguousarray(np.tile(samples[start : start + 960], (2, 1)))
                chunk = av.AudioFrame.from_ndarray(block, format="fltp", layout="stereo")
                chunk.sample_rate, chunk.pts = 48000, audio_delay + start
                container.mux(audio.encode(chunk))
            container.mux(audio.encode(None))
    return path


def streams(path: Path) -> tuple[av.container.InputContainer, av.VideoStream, av.AudioStream | None]:
    container = av.open(str(path))
    audio = container.streams.audio[0] if container.streams.audio else None
    return container, container.streams.video[0], audio


def seconds(stream: av.stream.Stream) -> float:
    assert stream.duration is not None and stream.time_base is not None
    return float(stream.duration * stream.time_base)


def code_of(call, *args, **kwargs) -> str:
    with pytest.raises(MediaError) as info:
        call(*args, **kwargs)
    return info.value.code


def png_bytes(width: int, height: int, idat: bytes = b"") -> bytes:
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


# writing and probing


def test_written_video_is_h264_yuv420p_with_audio_matching_duration(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    assert write_test_video(path, frames(24), fps=24, with_audio=True) == 24

    info = probe(path)
    assert (info.kind, info.format, info.codec) == ("video", "mp4", "h264")
    assert (info.width, info.height, info.fps, info.n_frames) == (96, 64, 24.0, 24)
    assert info.duration == pytest.approx(1.0)
    assert info.has_audio

    container, video, audio = streams(path)
    with container:
        assert video.codec_context.name == "h264"
        assert video.codec_context.pix_fmt == "yuv420p"
        assert video.frames == 24
        assert audio is not None and audio.codec_context.name == "aac"
        assert seconds(audio) == pytest.approx(seconds(video), abs=0.03)


def test_reader_streams_frames_back(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    originals = list(frames(15))
    write_test_video(path, originals, fps=30, with_audio=False)

    with VideoReader(path) as reader:
        assert (reader.width, reader.height, reader.fps, reader.n_frames) == (96, 64, 30.0, 15)
        assert not reader.info.has_audio
        decoded = list(reader)
        assert reader.frames_read == 15
    assert len(decoded) == 15
    for got, want in zip(decoded, originals, strict=True):
        assert got.dtype == np.uint8 and got.shape == (64, 96, 3) and got.flags.c_contiguous
        assert np.abs(got.astype(int) - want).mean() < 4


def test_odd_sized_frames_are_padded_to_even(tmp_path: Path) -> None:
    path = tmp_path / "odd.mp4"
    originals = list(frames(8, height=63, width=81))
    with VideoWriter(path, 25, 81, 63, preset="ultrafast") as writer:
        assert (writer.width, writer.height) == (82, 64)
        for rgb in originals:
            writer.write(rgb)

    with VideoReader(path) as reader:
        decoded = list(reader)
    assert decoded[0].shape == (64, 82, 3)
    assert np.abs(decoded[3][:63, :81].astype(int) - originals[3]).mean() < 4
    with pytest.raises(ValueError, match="63x81x3"):
        VideoWriter(tmp_path / "x.mp4", 25, 81, 63).write(np.zeros((64, 82, 3), np.uint8))


def test_audio_is_remuxed_untouched_and_cut_to_the_video(tmp_path: Path) -> None:
    source = tmp_path / "source.mp4"
    write_test_video(source, frames(50), fps=25, with_audio=True)  # 2 s of audio
    out = tmp_path / "out.mp4"
    with VideoWriter(out, 25, 64, 48, audio_from=source, preset="ultrafast") as writer:
        for rgb in frames(25, 48, 64):  # 1 s of video
            writer.write(rgb)

    src_container, _, src_audio = streams(source)
    out_container, out_video, out_audio = streams(out)
    with src_container, out_container:
        assert out_audio is not None and out_audio.codec_context.name == "aac"
        assert seconds(out_audio) == pytest.approx(1.0, abs=1024 / 44100 + 1e-3)
        src_packets = [bytes(p) for p in src_container.demux(src_audio) if p.size]
        out_packets = [bytes(p) for p in out_container.demux(out_audio) if p.size]
    assert out_packets == src_packets[: len(out_packets)]
    assert seconds(out_video) == pytest.approx(1.0)


@pytest.mark.parametrize(("codec", "fmt"), [("libopus", "matroska"), ("pcm_s16le", "mov")])
def test_other_audio_codecs_are_reencoded_to_aac(tmp_path: Path, codec: str, fmt: str) -> None:
    source = make_video(tmp_path / f"source.{fmt}", n=25, audio_codec=codec, fmt=fmt)
    out = tmp_path / "out.mp4"
    with VideoWriter(out, 25, 64, 48, audio_from=source, preset="ultrafast") as writer:
        for rgb in frames(30, 48, 64):
            writer.write(rgb)

    container, video, audio = streams(out)
    with container:
        assert audio is not None and audio.codec_context.name == "aac"
        assert audio.codec_context.sample_rate == 48000 and audio.codec_context.channels == 2
        assert seconds(audio) == pytest.approx(seconds(video), abs=0.03)
        decoded = np.concatenate([f.to_ndarray() for f in container.decode(audio)], axis=1)
    assert np.abs(decoded).max() > 0.1  # the tone survived, not silence


def test_reencoded_audio_keeps_its_offset_from_the_video(tmp_path: Path) -> None:
    source = make_video(tmp_path / "late.mkv", n=25, audio_codec="libopus", fmt="matroska", audio_delay=24000)
    out = tmp_path / "out.mp4"
    with VideoWriter(out, 25, 64, 48, audio_from=source, preset="ultrafast") as writer:
        for rgb in frames(25, 48, 64):
            writer.write(rgb)
    container, _, audio = streams(out)
    assert audio is not None
    with container:
        pcm = np.concatenate([f.to_ndarray()[0] for f in container.decode(audio)])
    assert np.abs(pcm[:18000]).max() < 0.05  # silence until ~0.4 s (give or take AAC priming)
    assert np.abs(pcm[27000:48000]).max() > 0.2  # the tone from 0.5 s on


def test_audio_is_interleaved_with_video(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    write_test_video(path, frames(50), fps=25, with_audio=True)
    container, _, _ = streams(path)
    with container:
        kinds = [p.stream.type for p in container.demux() if p.size]
    first_audio = kinds.index("audio")
    last_video = len(kinds) - 1 - kinds[::-1].index("video")
    assert first_audio < last_video


def test_audio_source_without_audio_gives_silent_video(tmp_path: Path) -> None:
    source = tmp_path / "silent.mp4"
    write_test_video(source, frames(5), with_audio=False)
    out = tmp_path / "out.mp4"
    with VideoWriter(out, 25, 96, 64, audio_from=source, preset="ultrafast") as writer:
        writer.write(next(frames(1)))
    assert not probe(out).has_audio


def test_writer_leaves_nothing_behind_on_error(tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    with pytest.raises(RuntimeError), VideoWriter(out, 25, 96, 64, preset="ultrafast") as writer:
        writer.write(next(frames(1)))
        raise RuntimeError("render failed")
    assert list(tmp_path.iterdir()) == []
    assert code_of(VideoWriter(out, 25, 96, 64).close) == "no_frames"
    assert list(tmp_path.iterdir()) == []


def test_display_rotation_is_applied(tmp_path: Path) -> None:
    path = make_video(tmp_path / "rotated.mp4", n=3, rotation=90)
    plain = make_video(tmp_path / "plain.mp4", n=3)
    with VideoReader(path) as rotated, VideoReader(plain) as upright:
        assert (rotated.width, rotated.height) == (48, 64)
        turned, original = next(iter(rotated)), next(iter(upright))
    assert turned.shape == (64, 48, 3)
    assert np.abs(turned.astype(int) - np.rot90(original)).mean() < 2


def test_memory_stays_bounded_while_streaming(tmp_path: Path) -> None:
    n, size = 300, 256
    path = tmp_path / "long.mp4"
    frame_bytes = size * size * 3
    tracemalloc.start()
    try:
        with VideoWriter(path, 30, size, size, preset="ultrafast") as writer:
            for rgb in frames(n, size, size):
                writer.write(rgb)
        with VideoReader(path) as reader:
            count = sum(1 for _ in reader)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == n
    assert peak < 10 * frame_bytes  # all 300 frames would be 30 times that


# images


@pytest.mark.parametrize(("suffix", "tolerance"), [(".png", 0), (".jpg", 6), (".webp", 6)])
def test_image_round_trip(tmp_path: Path, suffix: str, tolerance: float) -> None:
    rgb = next(frames(1, 37, 53))
    path = tmp_path / f"image{suffix}"
    write_image(path, rgb)
    info = probe(path)
    assert (info.kind, info.width, info.height, info.n_frames, info.fps) == ("image", 53, 37, 1, None)
    back = read_image(path)
    assert back.shape == (37, 53, 3) and back.dtype == np.uint8
    assert np.abs(back.astype(int) - rgb).mean() <= tolerance


def test_image_variants_decode_to_rgb(tmp_path: Path) -> None:
    rgb = next(frames(1, 24, 40))
    bgra = np.dstack([rgb[..., ::-1], np.full((24, 40), 128, np.uint8)])
    grey16 = (rgb[..., 0].astype(np.uint16) * 257)[..., None]
    cases = [
        (".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_PROGRESSIVE, 1], rgb, 6),
        (".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_RST_INTERVAL, 2], rgb, 6),
        (".png", bgra, [], rgb, 0),
        (".webp", bgra, [cv2.IMWRITE_WEBP_QUALITY, 101], rgb, 0),  # lossless: VP8L with alpha
        (".webp", bgra, [cv2.IMWRITE_WEBP_QUALITY, 95], rgb, 6),  # lossy with alpha: VP8X, ALPH, VP8
        (".png", grey16, [], np.repeat(rgb[..., :1], 3, axis=2), 0),
    ]
    for i, (suffix, pixels, params, expected, tolerance) in enumerate(cases):
        path = tmp_path / f"image{i}{suffix}"
        path.write_bytes(cv2.imencode(suffix, pixels, params)[1].tobytes())
        assert (probe(path).width, probe(path).height) == (40, 24)
        assert np.abs(read_image(path).astype(int) - expected).mean() <= tolerance, i


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    rgb = next(frames(1, 24, 40))
    plain = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 98])[1].tobytes()
    tiff = b"MM\x00\x2a" + struct.pack(">IHHHIHHI", 8, 1, 0x0112, 3, 1, 6, 0, 0)  # orientation 6
    exif = b"Exif\x00\x00" + tiff
    path = tmp_path / "phone.jpg"
    path.write_bytes(plain[:2] + b"\xff\xe1" + struct.pack(">H", len(exif) + 2) + exif + plain[2:])
    assert (probe(path).width, probe(path).height) == (40, 24)
    upright = read_image(path)
    assert upright.shape == (40, 24, 3)
    assert np.abs(upright.astype(int) - np.rot90(rgb, -1)).mean() < 6


def test_image_format_follows_content_not_name(tmp_path: Path) -> None:
    rgb = next(frames(1, 16, 16))
    write_image(tmp_path / "real.png", rgb)
    misnamed = tmp_path / "photo.jpg"
    misnamed.write_bytes((tmp_path / "real.png").read_bytes())
    assert probe(misnamed).format == "png"
    assert np.array_equal(read_image(misnamed), rgb)


def test_non_media_renamed_jpg_is_unsupported(tmp_path: Path) -> None:
    fake = tmp_path / "photo.jpg"
    fake.write_text("this is not an image, just text with a .jpg name\n")
    assert code_of(probe, fake) == "unsupported_media"
    assert code_of(read_image, fake) == "unsupported_media"
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    assert code_of(read_image, empty) == "unsupported_media"


def test_playlists_are_not_opened_as_video(tmp_path: Path) -> None:
    playlist = tmp_path / "clip.mp4"
    playlist.write_text("#EXTM3U\n#EXTINF:1,\nfile:///etc/passwd\n#EXT-X-ENDLIST\n")
    assert code_of(VideoReader, playlist) == "unsupported_media"


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".webp"])
def test_truncated_image_is_corrupt(tmp_path: Path, suffix: str) -> None:
    whole = tmp_path / f"whole{suffix}"
    write_image(whole, next(frames(1, 64, 64)))
    data = whole.read_bytes()
    for cut in (len(data) // 2, len(data) - 2):
        truncated = tmp_path / f"cut{suffix}"
        truncated.write_bytes(data[:cut])
        assert code_of(read_image, truncated) == "corrupt_media"


def test_png_decompression_bomb_is_refused_from_the_header(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoded: list[int] = []
    real_imdecode = cv2.imdecode

    def imdecode(buf: np.ndarray, flags: int) -> np.ndarray | None:
        decoded.append(len(buf))
        return real_imdecode(buf, flags)

    monkeypatch.setattr(cv2, "imdecode", imdecode)
    for width, height in [(100_000, 100_000), (12_000, 12_000)]:
        bomb = tmp_path / "bomb.png"
        bomb.write_bytes(png_bytes(width, height, zlib.compress(b"\0" * 4096)))
        with pytest.raises(MediaError) as info:
            read_image(bomb)
        assert info.value.code == "too_large"
        assert f"{width}x{height}" in info.value.message
    assert decoded == [], "a bomb is refused before any pixel is decoded"
    small = tmp_path / "small.png"
    write_image(small, next(frames(1, 8, 8)))
    assert read_image(small).shape == (8, 8, 3)
    assert len(decoded) == 1, "the decoder watched here is the one read_image uses"


def test_png_with_bad_header_checksum_is_corrupt(tmp_path: Path) -> None:
    data = bytearray(png_bytes(8, 8))
    data[20] ^= 0xFF
    path = tmp_path / "bad.png"
    path.write_bytes(bytes(data))
    assert code_of(read_image, path) == "corrupt_media"


def test_kinds_are_not_mixed_up(tmp_path: Path) -> None:
    image = tmp_path / "image.png"
    write_image(image, next(frames(1)))
    video = tmp_path / "video.mp4"
    write_test_video(video, frames(3), with_audio=False)
    assert code_of(VideoReader, image) == "unsupported_media"
    assert code_of(read_image, video) == "unsupported_media"


# broken and oversized videos


@pytest.mark.parametrize("faststart", [True, False])
def test_truncated_mp4_is_corrupt(tmp_path: Path, faststart: bool) -> None:
    whole = make_video(tmp_path / "whole.mp4", n=20, audio_codec="aac", faststart=faststart)
    data = whole.read_bytes()
    for fraction in (0.3, 0.6, 0.95):
        truncated = tmp_path / "truncated.mp4"
        truncated.write_bytes(data[: int(len(data) * fraction)])
        assert code_of(probe, truncated) == "corrupt_media"
        assert code_of(VideoReader, truncated) == "corrupt_media"


def test_truncated_mkv_is_corrupt(tmp_path: Path) -> None:
    whole = make_video(tmp_path / "whole.mkv", n=20, fmt="matroska")
    truncated = tmp_path / "truncated.mkv"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    assert code_of(VideoReader, truncated) == "corrupt_media"


def test_garbage_inside_the_stream_fails_cleanly(tmp_path: Path) -> None:
    whole = make_video(tmp_path / "whole.mp4", n=20, faststart=True)
    data = bytearray(whole.read_bytes())
    rng = np.random.default_rng(0)
    start = len(data) // 2
    data[start : start + 2000] = rng.integers(0, 256, 2000, dtype=np.uint8).tobytes()
    damaged = tmp_path / "damaged.mp4"
    damaged.write_bytes(bytes(data))
    try:
        with VideoReader(damaged) as reader:
            for rgb in reader:
                assert rgb.shape == (48, 64, 3)
    except MediaError as exc:
        assert exc.code == "corrupt_media"


def test_video_without_frames(tmp_path: Path) -> None:
    empty = tmp_path / "empty.mp4"
    with av.open(str(empty), "w", format="mp4") as container:
        video = container.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = 64, 64, "yuv420p"
        container.start_encoding()
    assert code_of(probe, empty) == "no_frames"
    assert code_of(VideoReader, empty) == "no_frames"


def test_limits_are_enforced_before_decoding(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    write_test_video(path, frames(30), fps=30, with_audio=False)
    assert code_of(VideoReader, path, Limits(max_pixels=96 * 64 - 1)) == "too_large"
    assert code_of(VideoReader, path, Limits(max_frames=29)) == "too_long"
    assert code_of(probe, path, Limits(max_seconds=0.5)) == "too_long"
    assert probe(path, Limits(max_pixels=96 * 64, max_frames=30, max_seconds=1.0)).n_frames == 30

    image = tmp_path / "image.png"
    write_image(image, next(frames(1)))
    assert code_of(read_image, image, Limits(max_pixels=1000)) == "too_large"


def test_limits_are_enforced_while_decoding_when_headers_lie(tmp_path: Path) -> None:
    path = make_video(tmp_path / "clip.mkv", n=25, fmt="matroska")  # 1 s
    data = path.read_bytes()
    assert data.count(b"00:00:01.000000000") == 1
    info_duration = b"\x44\x89\x88" + struct.pack(">d", 1000.0)  # Segment Info: 1000 ms
    assert data.count(info_duration) == 1
    data = data.replace(info_duration, b"\x44\x89\x88" + struct.pack(">d", 200.0))
    path.write_bytes(data.replace(b"00:00:01.000000000", b"00:00:00.200000000"))
    for limits, frames_read in [(Limits(max_frames=10), 10), (Limits(max_seconds=0.5), 13)]:
        with VideoReader(path, limits) as reader:
            assert reader.n_frames == 5
            with pytest.raises(MediaError) as info:
                for _ in reader:
                    pass
        assert info.value.code == "too_long"
        assert reader.frames_read == frames_read  # 25 fps: frames at 0.00 .. 0.48 s are within 0.5 s


def test_matroska_frame_count_comes_from_the_track(tmp_path: Path) -> None:
    path = make_video(tmp_path / "clip.mkv", n=25, audio_codec="libopus", fmt="matroska")
    info = probe(path)
    assert (info.format, info.n_frames, info.has_audio) == ("matroska", 25, True)
    assert info.duration == pytest.approx(1.0, abs=0.05)
    with VideoReader(path) as reader:
        assert sum(1 for _ in reader) == 25
