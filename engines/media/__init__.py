"""Media I/O for the engines: content-checked probing, streaming video, still images.

Inputs are recognised by their bytes, never their names, and checked against `Limits` from their
headers before any pixel is decoded. Every rejection is a `MediaError` with a stable `code`.
"""

from engines.media.errors import Limits, MediaError, MediaErrorCode
from engines.media.images import read_image, write_image
from engines.media.probe import MediaInfo, probe
from engines.media.synthetic import write_test_video
from engines.media.video import VideoReader, VideoWriter

__all__ = [
    "Limits",
    "MediaError",
    "MediaErrorCode",
    "MediaInfo",
    "VideoReader",
    "VideoWriter",
    "probe",
    "read_image",
    "write_image",
    "write_test_video",
]
