"""F, the appearance feature extractor: a source image to a 3-D appearance feature volume."""

import torch
from torch import nn

from .blocks import DownBlock2d, ResBlock3d, SameBlock2d


class AppearanceFeatureExtractor(nn.Module):
    """F: (B, 3, 256, 256) RGB in [0, 1] -> f_s (B, 32, 16, 64, 64).

    Two down-sampling 2-D blocks, a 1x1 conv to 512 channels folded into 32 channels x 16 depth,
    then six 3-D residual blocks.
    """

    def __init__(
        self,
        image_channel: int = 3,
        block_expansion: int = 64,
        num_down_blocks: int = 2,
        max_features: int = 512,
        reshape_channel: int = 32,
        reshape_depth: int = 16,
        num_resblocks: int = 6,
    ) -> None:
        super().__init__()
        self.reshape_channel = reshape_channel
        self.reshape_depth = reshape_depth
        self.first = SameBlock2d(image_channel, block_expansion)
        self.down_blocks = nn.ModuleList(
            DownBlock2d(
                min(max_features, block_expansion * 2**i), min(max_features, block_expansion * 2 ** (i + 1))
            )
            for i in range(num_down_blocks)
        )
        self.second = nn.Conv2d(block_expansion * 2**num_down_blocks, max_features, kernel_size=1)
        self.resblocks_3d = nn.Sequential()
        for i in range(num_resblocks):
            self.resblocks_3d.add_module(f"3dr{i}", ResBlock3d(reshape_channel))

    def forward(self, source: torch.Tensor) -> torch.Tensor:
        out = self.first(source)
        for block in self.down_blocks:
            out = block(out)
        out = self.second(out)
        b, _, h, w = out.shape
        f_s = out.view(b, self.reshape_channel, self.reshape_depth, h, w)
        return self.resblocks_3d(f_s)
