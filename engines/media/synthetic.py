"""Generated media for tests and demos."""

import os
from collections.abc import Iterable

import numpy as np

from engines.media.video import VideoWriter


def write_test_video(
    path: str | os.PathLike[str],
    frames: Iterable[np.ndarray],
    fps: float = 25.0,
    with_audio: bool = True,
    crf: int = 18,
) -> int:
    """Encode RGB `frames` to an H.264 MP4, plus a 440 Hz sine-wave AAC track if `with_audio`.

    The frame size is taken from the first frame. Returns the number of frames written.
    """
    iterator = iter(frames)
    first = next(iterator, None)
    if first is None:
        raise ValueError("write_test_video needs at least one frame")
    height, width = first.shape[:2]
    tone = 440.0 if with_audio else None
    with VideoWriter(path, fps, width, height, crf=crf, preset="ultrafast", tone_hz=tone) as writer:
        writer.write(first)
        for frame in iterator:
            writer.write(frame)
    return writer.frames_written
