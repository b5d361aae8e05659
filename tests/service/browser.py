"""Debian's Chromium under Playwright for the page's browser tests and its screenshots.

Chromium's fake media stream stands in for a webcam: `write_y4m` writes the clip it plays (the
bundled portrait's face with head motion, engines.demo), looped, as the camera of every page.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:
    from playwright.sync_api import Browser

CHROMIUM = Path(os.environ.get("LIVEPORTRAIT_TEST_CHROMIUM", "/usr/bin/chromium"))
"""The browser the tests drive: Debian's `chromium` package (.ci/run installs it)."""


def write_y4m(path: Path, frames: list[np.ndarray], fps: int = 10) -> Path:
    """RGB frames (H, W, 3) uint8 of even sides as a YUV4MPEG2 4:2:0 clip, Chromium's fake camera format."""
    height, width = frames[0].shape[:2]
    with path.open("wb") as out:
        out.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for rgb in frames:
            out.write(b"FRAME\n")
            out.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420).tobytes())
    return path


def camera_clip(folder: Path, n_frames: int = 20) -> Path:
    """The fake camera's clip: the bundled portrait's face swaying and nodding (256 x 256, 10 fps)."""
    from engines.demo import head_motion_frames, portrait

    return write_y4m(folder / "camera.y4m", list(head_motion_frames(portrait(), n_frames)))


@contextmanager
def chromium(camera: Path) -> Iterator[Browser]:
    """Headless Chromium whose webcam plays `camera` (a .y4m clip), without asking for permission."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[
                "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-video-capture={camera}",
                "--autoplay-policy=no-user-gesture-required",
            ],
        )
        try:
            yield browser
        finally:
            browser.close()
