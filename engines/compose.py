"""Compose: a rendered 512 crop made into the output frame.

Three output kinds (the `output_kind` option): the crop pasted back into the source frame with the
official feathered mask, the 512 crop itself, or driving | source | result side by side. Paste-back
runs with OpenCV on the CPU, or on the model's device for a whole batch (bit-exact with the CPU).
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
    if options.output_kind == "side_by_side":
        driving = driving512 if driving512 is not None else np.zeros_like(result)
        return np.concatenate([driving, src.crop512, result], axis=1)
    if pastes_back(options):
        return paste_back(result, src.M_c2o, src.frame)
    return result


class DevicePasteBack:
    """Paste-back of rendered batches on the model's device; an image source's frame is uploaded once."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._original: tuple[SourceCrop, torch.Tensor] | None = None

    def __call__(self, images: torch.Tensor, crops: list[SourceCrop]) -> torch.Tensor:
        """images (B, 3, 512, 512) in [0, 1], one source crop per image -> (B, H, W, 3) uint8 frames."""
        if all(c is crops[0] for c in crops):
            if self._original is None or self._original[0] is not crops[0]:
                self._original = (crops[0], torch.from_numpy(crops[0].frame).to(self.device))
            return paste_back_frames(images, crops[0].M_c2o, self._original[1])
        originals = frames_to_device([c.frame for c in crops], self.device)
        return paste_back_frames(images, np.stack([c.M_c2o for c in crops]), originals)
