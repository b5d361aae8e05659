"""The media error type and the input limits checked before any pixel is decoded."""

from dataclasses import dataclass
from typing import Literal

MediaErrorCode = Literal[
    "unsupported_media",
    "corrupt_media",
    "too_large",
    "too_long",
    "no_frames",
    "bad_template",
]


class MediaError(Exception):
    """A rejected or unreadable input; `code` is stable and machine-readable, `message` is for people."""

    def __init__(self, code: MediaErrorCode, message: str) -> None:
        super().__init__(message)
        self.code: MediaErrorCode = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.message} [{self.code}]"


@dataclass(frozen=True)
class Limits:
    """Upper bounds on an input, enforced from its headers before decoding and again while decoding."""

    max_pixels: int = 4096 * 4096
    max_frames: int = 9000
    max_seconds: float = 600.0

    def __post_init__(self) -> None:
        if self.max_pixels < 1 or self.max_frames < 1 or not self.max_seconds > 0:
            raise ValueError("limits must be positive")
