"""The dense motion network inside W: sparse keypoint motions to a dense 3-D flow and occlusion map."""

import torch
import torch.nn.functional as F
from torch import nn

from engines.networks.grid_sample import grid_sample_5d

from .blocks import Hourglass

KP_VARIANCE = 0.01


def coordinate_grid(d: int, h: int, w: int, like: torch.Tensor) -> torch.Tensor:
    """Normalised (x, y, z) coordinates of a d x h x w volume in [-1, 1]: (d, h, w, 3)."""
    z = torch.arange(d, dtype=like.dtype, device=like.device) / (d - 1) * 2 - 1
    y = torch.arange(h, dtype=like.dtype, device=like.device) / (h - 1) * 2 - 1
    x = torch.arange(w, dtype=like.dtype, device=like.device) / (w - 1) * 2 - 1
    zz, yy, xx = torch.meshgrid(z, y, x, indexing="ij")
    return torch.stack([xx, yy, zz], dim=-1)


def keypoint_gaussians(kp: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Gaussian heatmaps around keypoints: kp (B, K, 3), grid (D, H, W, 3) -> (B, K, D, H, W)."""
    diff = grid[None, None] - kp[:, :, None, None, None, :]
    return torch.exp(-0.5 * diff.pow(2).sum(-1) / KP_VARIANCE)


class DenseMotionNetwork(nn.Module):
    """Predicts W's deformation from the compressed feature volume and the two keypoint sets.

    feature (B, 32, 16, 64, 64), x_s and x_d (B, 21, 3) -> deformation (B, 16, 64, 64, 3) (a
    sampling grid into the source volume) and occlusion map (B, 1, 64, 64).
    """

    def __init__(
        self,
        block_expansion: int = 32,
        num_blocks: int = 5,
        max_features: int = 1024,
        num_kp: int = 21,
        feature_channel: int = 32,
        reshape_depth: int = 16,
        compress: int = 4,
    ) -> None:
        super().__init__()
        self.num_kp = num_kp
        self.hourglass = Hourglass(block_expansion, (num_kp + 1) * (compress + 1), num_blocks, max_features)
        self.mask = nn.Conv3d(self.hourglass.out_filters, num_kp + 1, kernel_size=7, padding=3)
        self.compress = nn.Conv3d(feature_channel, compress, kernel_size=1)
        self.norm = nn.BatchNorm3d(compress, affine=True)
        self.occlusion = nn.Conv2d(self.hourglass.out_filters * reshape_depth, 1, kernel_size=7, padding=3)
        self.export_friendly = False

    def forward(
        self, feature: torch.Tensor, x_d: torch.Tensor, x_s: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        b, _, d, h, w = feature.shape
        k = self.num_kp + 1
        feature = F.relu(self.norm(self.compress(feature)))  # (B, 4, D, H, W)
        grid = coordinate_grid(d, h, w, feature)

        # heatmaps: a zero map for the background, then driving minus source Gaussians
        heatmap = keypoint_gaussians(x_d, grid) - keypoint_gaussians(x_s, grid)
        heatmap = torch.cat([torch.zeros_like(heatmap[:, :1]), heatmap], dim=1)  # (B, K, D, H, W)

        # sparse motions: identity for the background, x_s + (grid - x_d) per keypoint
        motions = grid[None, None] - x_d[:, :, None, None, None, :] + x_s[:, :, None, None, None, :]
        motions = torch.cat([grid[None, None].expand(b, 1, d, h, w, 3), motions], dim=1)  # (B, K, D, H, W, 3)

        volumes = feature[:, None].expand(b, k, *feature.shape[1:]).reshape(b * k, -1, d, h, w)
        deformed = grid_sample_5d(
            volumes, motions.reshape(b * k, d, h, w, 3), export_friendly=self.export_friendly
        ).view(b, k, -1, d, h, w)

        net_in = torch.cat([heatmap[:, :, None], deformed], dim=2).view(b, -1, d, h, w)
        prediction = self.hourglass(net_in)  # (B, 142, D, H, W)

        mask = F.softmax(self.mask(prediction), dim=1)  # (B, K, D, H, W)
        deformation = (motions.permute(0, 1, 5, 2, 3, 4) * mask[:, :, None]).sum(dim=1)
        deformation = deformation.permute(0, 2, 3, 4, 1)  # (B, D, H, W, 3)

        occlusion_map = torch.sigmoid(self.occlusion(prediction.reshape(b, -1, h, w)))
        return deformation, occlusion_map
