"""The README demo's inputs: a public-domain portrait and a driving video made from it by head-like motion.

The portrait is the astronaut photo (Eileen Collins, NASA, public domain) that scikit-image also
ships. The driving video is that portrait's face region swayed (roll), nodded (vertical shift) and
zoomed a little, frame by frame, with a sine-wave audio track.
"""

import math
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from engines.media import read_image, write_test_video

PORTRAIT = Path(__file__).parent / "data" / "astronaut.jpg"
FACE_CENTER = (225.0, 115.0)  # the astronaut's face in the 512x512 portrait


def portrait() -> np.ndarray:
    """The bundled portrait, (512, 512, 3) RGB uint8."""
    return read_image(PORTRAIT)


def group_portrait(faces: int = 2, size: int = 256) -> np.ndarray:
    """(size, faces * size, 3) RGB uint8: the portrait and its mirror image in turn, side by side (a
    picture of `faces` real faces, for the several-faces tests and bench)."""
    tile = cv2.resize(portrait(), (size, size), interpolation=cv2.INTER_AREA)
    return np.concatenate([tile if i % 2 == 0 else tile[:, ::-1] for i in range(faces)], axis=1)


def head_motion_frames(rgb: np.ndarray, n_frames: int, size: int = 256) -> Iterator[np.ndarray]:
    """`n_frames` (size, size, 3) frames of the face region with a sway, a nod and a slight zoom."""
    cx, cy = FACE_CENTER
    for i in range(n_frames):
        phase = 2 * math.pi * i / max(n_frames, 1)
        angle = 8.0 * math.sin(phase)
        zoom = 1.0 + 0.05 * math.sin(2 * phase)
        M = cv2.getRotationMatrix2D((cx, cy), angle, zoom * size / 220.0)
        M[:, 2] += np.array([size / 2 - cx, size / 2 - cy + 6.0 * math.sin(phase)])
        yield cv2.warpAffine(rgb, M, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def write_demo_inputs(out_dir: Path, n_frames: int = 50, fps: float = 25.0) -> tuple[Path, Path]:
    """Write `source.jpg` and `driving.mp4` (with audio) under out_dir; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    source = out_dir / "source.jpg"
    source.write_bytes(PORTRAIT.read_bytes())
    driving = out_dir / "driving.mp4"
    write_test_video(driving, head_motion_frames(portrait(), n_frames), fps=fps, with_audio=True)
    return source, driving
