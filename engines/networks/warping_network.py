"""W, the warping module: warps the source feature volume by the keypoint-driven dense motion."""

import torch
from torch import nn

from engines.networks.grid_sample import grid_sample_5d

from .blocks import SameBlock2d
from .dense_motion import DenseMotionNetwork


class WarpingNetwork(nn.Module):
    """W: f_s (B, 32, 16, 64, 64), x_s and x_d (B, 21, 3) -> dict with

    out (B, 256, 64, 64) (the warped feature, masked by occlusion), occlusion_map (B, 1, 64, 64)
    and deformation (B, 16, 64, 64, 3).
    """

    def __init__(self, num_kp: int = 21, block_expansion: int = 64, max_features: int = 512) -> None:
        super().__init__()
        self.dense_motion_network = DenseMotionNetwork(num_kp=num_kp)
        self.third = SameBlock2d(max_features, block_expansion * 4, lrelu=True)
        self.fourth = nn.Conv2d(block_expansion * 4, block_expansion * 4, kernel_size=1)

    @property
    def export_friendly(self) -> bool:
        """Sample volumes with 4-D GridSample only (for ONNX / TensorRT)."""
        return self.dense_motion_network.export_friendly

    @export_friendly.setter
    def export_friendly(self, value: bool) -> None:
        self.dense_motion_network.export_friendly = value

    def forward(self, f_s: torch.Tensor, x_s: torch.Tensor, x_d: torch.Tensor) -> dict[str, torch.Tensor]:
        deformation, occlusion_map = self.dense_motion_network(f_s, x_d, x_s)
        out = grid_sample_5d(f_s, deformation, export_friendly=self.export_friendly)
        b, c, d, h, w = out.shape
        out = self.fourth(self.third(out.view(b, c * d, h, w)))
        return {"out": out * occlusion_map, "occlusion_map": occlusion_map, "deformation": deformation}
