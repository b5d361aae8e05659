"""G, the SPADE decoder: the warped feature to a 512x512 image (SPADE: Park et al., 2019)."""

import torch
import torch.nn.functional as F
from torch import nn


class SpectralNormConv2d(nn.Module):
    """A Conv2d whose weight is divided by its spectral norm, estimated by the stored (u, v) pair.

    Keeps the official checkpoint keys `weight_orig`, `weight_u`, `weight_v` (and `bias`); in
    inference sigma = u . (W v) with no further power iteration, as in torch's spectral_norm
    in eval mode.
    """

    weight_u: torch.Tensor  # registered buffers (declared for type checkers)
    weight_v: torch.Tensor

    def __init__(self, fin: int, fout: int, kernel_size: int, padding: int = 0, bias: bool = True) -> None:
        super().__init__()
        self.padding = padding
        self.weight_orig = nn.Parameter(torch.empty(fout, fin, kernel_size, kernel_size))
        self.register_buffer("weight_u", torch.zeros(fout))
        self.register_buffer("weight_v", torch.zeros(fin * kernel_size * kernel_size))
        self.bias = nn.Parameter(torch.zeros(fout)) if bias else None

    def weight(self) -> torch.Tensor:
        w = self.weight_orig
        sigma = torch.dot(self.weight_u, torch.mv(w.flatten(1), self.weight_v))
        return w / sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight(), self.bias, padding=self.padding)


class SPADE(nn.Module):
    """Spatially-adaptive normalisation: instance-norm x, then modulate by maps predicted from seg."""

    def __init__(self, norm_nc: int, label_nc: int, hidden: int = 128) -> None:
        super().__init__()
        self.mlp_shared = nn.Sequential(nn.Conv2d(label_nc, hidden, kernel_size=3, padding=1), nn.ReLU())
        self.mlp_gamma = nn.Conv2d(hidden, norm_nc, kernel_size=3, padding=1)
        self.mlp_beta = nn.Conv2d(hidden, norm_nc, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        normalized = F.instance_norm(x, eps=1e-5)
        seg = F.interpolate(seg, size=x.shape[2:], mode="nearest")
        actv = self.mlp_shared(seg)
        return normalized * (1 + self.mlp_gamma(actv)) + self.mlp_beta(actv)


class SPADEResnetBlock(nn.Module):
    """Residual block of two SPADE -> LeakyReLU(0.2) -> spectral-norm conv3x3 stages."""

    def __init__(self, fin: int, fout: int, label_nc: int) -> None:
        super().__init__()
        fmiddle = min(fin, fout)
        self.learned_shortcut = fin != fout
        self.conv_0 = SpectralNormConv2d(fin, fmiddle, 3, padding=1)
        self.conv_1 = SpectralNormConv2d(fmiddle, fout, 3, padding=1)
        self.norm_0 = SPADE(fin, label_nc)
        self.norm_1 = SPADE(fmiddle, label_nc)
        if self.learned_shortcut:
            self.conv_s = SpectralNormConv2d(fin, fout, 1, bias=False)
            self.norm_s = SPADE(fin, label_nc)

    def forward(self, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        shortcut = self.conv_s(self.norm_s(x, seg)) if self.learned_shortcut else x
        dx = self.conv_0(F.leaky_relu(self.norm_0(x, seg), 0.2))
        dx = self.conv_1(F.leaky_relu(self.norm_1(dx, seg), 0.2))
        return shortcut + dx


class SPADEDecoder(nn.Module):
    """G: warped feature (B, 256, 64, 64) -> image (B, 3, 512, 512) in [0, 1] (after a sigmoid).

    The feature is both the input and the SPADE segmentation map of every block; six 512-channel
    blocks at 64x64, two upsampling blocks to 256x256, then conv + pixel shuffle to 512x512.
    """

    def __init__(self, label_nc: int = 256, hidden: int = 512, out_channels: int = 64) -> None:
        super().__init__()
        self.fc = nn.Conv2d(label_nc, hidden, kernel_size=3, padding=1)
        for i in range(6):
            self.add_module(f"G_middle_{i}", SPADEResnetBlock(hidden, hidden, label_nc))
        self.up_0 = SPADEResnetBlock(hidden, hidden // 2, label_nc)
        self.up_1 = SPADEResnetBlock(hidden // 2, out_channels, label_nc)
        self.conv_img = nn.Sequential(
            nn.Conv2d(out_channels, 3 * 4, kernel_size=3, padding=1), nn.PixelShuffle(upscale_factor=2)
        )

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        x = self.fc(feature)
        for i in range(6):
            x = getattr(self, f"G_middle_{i}")(x, feature)
        x = self.up_0(F.interpolate(x, scale_factor=2.0), feature)
        x = self.up_1(F.interpolate(x, scale_factor=2.0), feature)
        return torch.sigmoid(self.conv_img(F.leaky_relu(x, 0.2)))
