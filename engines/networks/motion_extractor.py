"""M, the motion extractor: canonical keypoints, head pose, expression, translation and scale."""

import torch
from torch import nn

from .convnextv2 import ConvNeXtV2


class MotionExtractor(nn.Module):
    """M: (B, 3, 256, 256) RGB in [0, 1] -> raw motion dict (see ConvNeXtV2.forward).

    kp and exp are flattened 21x3 keypoints; pitch, yaw and roll are 66-bin logits that
    `engines.motion.keypoints.headpose_to_degrees` turns into degrees.
    """

    def __init__(self, num_kp: int = 21, num_bins: int = 66) -> None:
        super().__init__()
        self.detector = ConvNeXtV2(num_kp=num_kp, num_bins=num_bins)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.detector(x)
