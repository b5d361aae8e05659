"""Compose: a rendered 512 crop made into the output frame.

Three output kinds (the `output_kind` option): the crop pasted back into the source frame with the
official feathered mask, the 512 crop itself, or driving | source | result side by side. Paste-back
runs with OpenCV on the CPU, or on the model's device for a whole batch (bit-exact with the CPU).

A frame with several faces (engines.faces) pastes each face's crop back in turn, left to right,
so an overlapping crop blends over the one before it; the crop and side-by-side outputs tile the
faces' crops left to right.
"""

import numpy as np
import torch

from common.options import AnimationOptions
from engines.face.pasteback import paste_back, paste_back_frames
from engines.model import frames_to_device
from engines.source import SourceCrop


def pastes_back(options: AnimationOptions) -> bool:
    """Whether the output frames are the result pasted back into the source frame."""
    return (
        options.output_kind == "pasteback"
        and options.flag_pasteback
        and options.flag_do_crop
        and options.flag_stitching
    )


def compose_frame(
    options: AnimationOptions, result: np.ndarray, src: SourceCrop, driving512: np.ndarray | None
) -> np.ndarray:
    """The output frame (H, W, 3) uint8 for one rendered (512, 512, 3) uint8 crop: pasted back, the
    crop, or driving | source | result (the driving crop, black when there is none)."""
    return compose_faces(options, [result], [src], driving512)


def compose_faces(
    options: AnimationOptions,
    results: list[np.ndarray],
    crops: list[SourceCrop],
    driving512: np.ndarray | None,
) -> np.ndarray:
    """The output frame (H, W, 3) uint8 of F faces of one source frame, each rendered (512, 512, 3)
    uint8 with its crop: pasted back in turn, the crops side by side, or driving | sources |
    results (the driving crop black when there is none)."""
    if options.output_kind == "side_by_side":
        driving = driving512 if driving512 is not None else np.zeros_like(results[0])
        return np.concatenate([driving, *(c.crop512 for c in crops), *results], axis=1)
    if pastes_back(options):
        out = crops[0].frame
        for result, crop in zip(results, crops, strict=True):
            out = paste_back(result, crop.M_c2o, out)
        return out
    return results[0] if len(results) == 1 else np.concatenate(results, axis=1)


class DevicePasteBack:
    """Paste-back of rendered batches on the model's device; an image source's frame is uploaded once."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._original: tuple[np.ndarray, torch.Tensor] | None = None

    def __call__(self, images: torch.Tensor, crops: list[SourceCrop], faces: int = 1) -> torch.Tensor:
        """images (B * F, 3, 512, 512) in [0, 1], frame-major with F `faces` a frame, one source crop
        per image -> (B, H, W, 3) uint8 frames, each frame's faces pasted back in turn."""
        out = self._originals(crops[::faces])
        for face in range(faces):
            face_crops = crops[face::faces]
            if all(c is face_crops[0] for c in face_crops):
                out = paste_back_frames(images[face::faces], face_crops[0].M_c2o, out)
            else:
                out = paste_back_frames(images[face::faces], np.stack([c.M_c2o for c in face_crops]), out)
        return out

    def _originals(self, crops: list[SourceCrop]) -> torch.Tensor:
        """The source frames of B crops on the device: one (H, W, 3) when they share an image's frame
        (uploaded once for all its batches), else (B, H, W, 3)."""
        frame = crops[0].frame
        if all(c.frame is frame for c in crops):
            if self._original is None or self._original[0] is not frame:
                self._original = (frame, torch.from_numpy(frame).to(self.device))
            return self._original[1]
        return frames_to_device([c.frame for c in crops], self.device)
