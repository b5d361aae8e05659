"""The gateway's view of the one header checker in `common.media`.

Everything here is `common.media`'s, so the gateway, the worker and the engines accept and refuse
the same bytes with the same code; the gateway adds how much of a stored object it reads.
`MediaRejected` is `common.media.MediaError` under the name the gateway has always used.
"""

from __future__ import annotations

from common.media import (
    MOTION_TEMPLATE,
    SNIFF_BYTES,
    SUPPORTED,
    MediaError,
    MediaInfo,
    MediaLimits,
    extension,
    identify,
    inspect_media,
    sniff,
)
from common.motion_template import looks_like_template, max_template_bytes

HEAD_BYTES = 1024 * 1024
"""How much of a stored object the gateway reads to check an input it did not receive itself."""

MediaRejected = MediaError

__all__ = [
    "HEAD_BYTES",
    "MOTION_TEMPLATE",
    "SNIFF_BYTES",
    "SUPPORTED",
    "MediaError",
    "MediaInfo",
    "MediaLimits",
    "MediaRejected",
    "extension",
    "identify",
    "inspect_media",
    "looks_like_template",
    "max_template_bytes",
    "sniff",
]
