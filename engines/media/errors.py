"""The media error type (common.media's, shared with the gateway) and the engines' decoding limits."""

from dataclasses import dataclass

from common.media import MediaError, MediaErrorCode, MediaLimits

__all__ = ["Limits", "MediaError", "MediaErrorCode"]


@dataclass(frozen=True)
class Limits:
    """Upper bounds on an input, enforced from its headers before decoding and again while decoding."""

    max_pixels: int = 4096 * 4096
    max_frames: int = 9000
    max_seconds: float = 600.0

    def __post_init__(self) -> None:
        if self.max_pixels < 1 or self.max_frames < 1 or not self.max_seconds > 0:
            raise ValueError("limits must be positive")

    def header_limits(self) -> MediaLimits:
        """The same bounds for `common.media.inspect_media` (one pixel bound for images and videos)."""
        return MediaLimits(
            max_image_pixels=self.max_pixels,
            max_video_pixels=self.max_pixels,
            max_frames=self.max_frames,
            max_seconds=self.max_seconds,
        )
