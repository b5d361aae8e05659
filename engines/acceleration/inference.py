"""Fast inference for LivePortraitModel: exact rewrites of F, W and G, and a precision policy.

`optimize_for_inference(model, device, precision)` returns an `InferenceModel`: the same interface as
`LivePortraitModel` (extract_appearance, extract_motion, warp, decode, render, the S MLPs), with F, W
and G rebuilt from the loaded weights. Every float32 rewrite is exact in real arithmetic, so the
golden tolerance (1e-4 relative L2) holds; only the rounding changes:

- W's Gaussian keypoint heatmaps flushed to zero below float32's smallest normal number. The
  Gaussians underflow through the denormal range on a shell around every keypoint, and a convolution
  reading denormals runs several times slower on x86 (microcode assists): the two W convolutions that
  read the heatmaps are 3-4x slower without this. The values changed are below 1.2e-38.
- CPU float32: G's 3x3 convolutions with >= 64 channels run as NNPACK's Winograd F(6x6, 3x3): 64
  multiplies per 6x6 outputs instead of 324 in its GEMM stage, at a few 1e-6 relative rounding
  error per convolution (direct: ~2e-7).
- nearest-neighbour upsampling by s followed by a 3x3 convolution (W's decoder, G's SPADE maps of the
  upsampled feature) computed as s*s phase convolutions with 2x2 kernels on the small input: 4/9 of
  the multiply-adds, and no upsampled copy.
- SPADE: gamma and beta merged into one convolution with the `1 +` in its bias, the learned
  shortcut's 1x1 convolution composed with beta's 3x3 (conv_s(beta) is linear in the shared map),
  and one instance norm of the block input shared by its two SPADEs.
- W's occlusion convolution (2272 -> 1 channel, 7x7) as a 1x1 convolution to 49 tap maps and their
  shifted sum; BatchNorm (eval statistics) folded into the convolution before it; spectral norms
  precomputed; F channels-last (NHWC / NDHWC), oneDNN's native layout.

Precision "bf16" and "fp16" run F, W and G under autocast with their convolution weights stored in
that dtype, G channels-last; M, the S MLPs, the keypoint math, the Gaussian heatmaps, the grid
sampling and the softmax of W's mask stay in float32. Their error against float32 is bounded by
`common.engine_config.REDUCED_PRECISION_REL_L2` (the one place of those bounds). On CUDA, float32
means float32: TF32 is turned off when an engine loads there (`use_float32_arithmetic`).

On CUDA, `cuda_graphs=True` replays W+G from CUDA graphs, and `compile_mode` runs W and G through
torch.compile; both run at fixed batch sizes (`FixedBatchRender`: a smaller batch is padded).
"""

import copy
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, Literal, TypeGuard, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from common.engine_config import COMPILE_MODES_WITH_CUDA_GRAPHS
from engines.model import LivePortraitModel
from engines.networks import AppearanceFeatureExtractor, SPADEDecoder, WarpingNetwork, expect_module
from engines.networks.blocks import DownBlock2d, DownBlock3d, ResBlock3d, SameBlock2d, UpBlock3d
from engines.networks.dense_motion import DenseMotionNetwork, coordinate_grid, keypoint_gaussians
from engines.networks.grid_sample import grid_sample_5d
from engines.networks.spade_generator import SPADE, SPADEResnetBlock, SpectralNormConv2d

Precision = Literal["fp32", "bf16", "fp16"]
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(name: str, device: str | torch.device) -> Precision:
    """A precision setting made concrete: "auto" is fp16 on a CUDA device and fp32 elsewhere."""
    if name == "auto":
        return "fp16" if torch.device(device).type == "cuda" else "fp32"
    if name not in DTYPES:
        raise ValueError(f"precision must be auto or one of {sorted(DTYPES)}, not {name!r}")
    return name  # type: ignore[return-value]


Conv = nn.Conv2d | nn.Conv3d
ConvT = TypeVar("ConvT", nn.Conv2d, nn.Conv3d)
Padding = str | int | tuple[int, ...]


# --- exact rewrites of single layers ------------------------------------------------------------


def _holding(conv: ConvT, weight: torch.Tensor, bias: torch.Tensor | None) -> ConvT:
    """`conv` (built on the meta device) given `weight` and `bias` as float32 frozen parameters."""
    conv.weight = nn.Parameter(weight.float().contiguous(), requires_grad=False)
    if bias is not None:
        conv.bias = nn.Parameter(bias.float().contiguous(), requires_grad=False)
    return conv


def _conv2d_like(weight: torch.Tensor, bias: torch.Tensor | None, padding: Padding) -> nn.Conv2d:
    """A Conv2d (stride 1) holding `weight` (Cout, Cin, kh, kw) and `bias` (Cout,)."""
    cout, cin, kh, kw = weight.shape
    if isinstance(padding, tuple):
        ph, pw = padding
        padding = (ph, pw)
    conv = nn.Conv2d(cin, cout, (kh, kw), padding=padding, bias=bias is not None, device="meta")
    return _holding(conv, weight, bias)


def _conv3d_like(weight: torch.Tensor, bias: torch.Tensor | None, padding: Padding) -> nn.Conv3d:
    """A Conv3d (stride 1) holding `weight` (Cout, Cin, kd, kh, kw) and `bias` (Cout,)."""
    cout, cin, kd, kh, kw = weight.shape
    if isinstance(padding, tuple):
        pd, ph, pw = padding
        padding = (pd, ph, pw)
    conv = nn.Conv3d(cin, cout, (kd, kh, kw), padding=padding, bias=bias is not None, device="meta")
    return _holding(conv, weight, bias)


def _conv_like(weight: torch.Tensor, bias: torch.Tensor | None, padding: Padding) -> Conv:
    """A Conv2d / Conv3d (stride 1) holding `weight` (Cout, Cin, k...) and `bias` (Cout,)."""
    if weight.dim() == 4:
        return _conv2d_like(weight, bias, padding)
    return _conv3d_like(weight, bias, padding)


def fold_batch_norm(conv: Conv, bn: nn.BatchNorm2d | nn.BatchNorm3d) -> Conv:
    """conv followed by an eval-mode BatchNorm as one convolution (folded in float64)."""
    if bn.weight is None or bn.bias is None or bn.running_mean is None or bn.running_var is None:
        raise ValueError("fold_batch_norm needs an affine BatchNorm that tracks running statistics")
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    weight = conv.weight.double() * scale.view(-1, *([1] * (conv.weight.dim() - 1)))
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    bias = (bias - bn.running_mean.double()) * scale + bn.bias.double()
    return _conv_like(weight, bias, conv.padding)


def _phase_collapse(scale: int, phase: int) -> tuple[torch.Tensor, int]:
    """For one output phase of (nearest x scale >= 2, then a 3-tap kernel): the (2, 3) matrix summing
    the 3 taps into 2 taps on the small input, and the offset of that 2-tap window (-1 or 0)."""
    offsets = [(phase + t - 1) // scale for t in range(3)]  # small-input offset of each tap: -1, 0, 1
    start = 0 if phase == scale - 1 else -1
    collapse = torch.zeros(2, 3, dtype=torch.float64)
    for t, o in enumerate(offsets):
        collapse[o - start, t] = 1.0
    return collapse, start


class NearestUpConv(nn.Module):
    """conv3x3(nearest_upsample(x, scale)) on the last two axes, computed on the small input.

    Output pixel (s*i + a, s*j + b) of the original only reads small-input rows i-1..i+1 and columns
    j-1..j+1, two of each at most: phase (a, b) is a 2x2 convolution of the small input. All s*s
    phases are one convolution with s*s*Cout output channels over the input padded by 1; the phases
    are then interleaved. (B, Cin, [D,] H, W) -> (B, Cout, [D,] s*H, s*W); 4/9 of the multiply-adds.
    A 3x3x3 kernel (W's decoder) keeps its depth taps and depth padding.
    """

    def __init__(self, conv: Conv, scale: int) -> None:
        super().__init__()
        w, padding = conv.weight.double(), conv.padding
        if isinstance(padding, str) or w.shape[-2:] != (3, 3) or tuple(padding[-2:]) != (1, 1) or scale < 2:
            raise ValueError("NearestUpConv needs a 3x3 kernel with padding 1 and a scale >= 2")
        self.scale = scale
        self.cout = w.shape[0]
        self.starts: list[tuple[int, int]] = []
        kernels = []
        for a in range(scale):
            ca, sa = _phase_collapse(scale, a)
            for b in range(scale):
                cb, sb = _phase_collapse(scale, b)
                kernels.append(ca @ w @ cb.T)
                self.starts.append((sa, sb))
        bias = None if conv.bias is None else conv.bias.double().repeat(scale * scale)
        depth_padding = padding[:-2]
        self.conv = _conv_like(torch.cat(kernels), bias, (*depth_padding, 0, 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        s, cout = self.scale, self.cout
        phases = self.conv(F.pad(x, (1, 1, 1, 1)))  # (B, s*s*Cout, [D,] H+1, W+1)
        out = phases.new_empty(*phases.shape[:1], cout, *phases.shape[2:-2], h, s, w, s)
        for p, (sa, sb) in enumerate(self.starts):
            a, b = divmod(p, s)
            rows, cols = slice(sa + 1, sa + 1 + h), slice(sb + 1, sb + 1 + w)
            out[..., :, a, :, b] = phases[:, p * cout : (p + 1) * cout, ..., rows, cols]
        return out.view(*out.shape[:-4], h * s, w * s)


class ConvAct(nn.Module):
    """A convolution (BatchNorm folded in) -> ReLU or LeakyReLU -> optional average pool."""

    def __init__(self, conv: nn.Module, slope: float = 0.0, pool: tuple[int, ...] | None = None) -> None:
        super().__init__()
        self.conv = conv
        self.slope = slope
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        x = F.leaky_relu(x, self.slope, inplace=True) if self.slope else F.relu(x, inplace=True)
        if self.pool is None:
            return x
        return F.avg_pool2d(x, self.pool) if x.dim() == 4 else F.avg_pool3d(x, self.pool)


def _same_block(block: SameBlock2d) -> ConvAct:
    return ConvAct(fold_batch_norm(block.conv, block.norm), 0.01 if block.lrelu else 0.0)


def _down_block(block: nn.Module) -> ConvAct:
    if not isinstance(block, DownBlock2d | DownBlock3d):
        raise TypeError(f"expected a DownBlock2d or DownBlock3d, got {type(block).__name__}")
    pool = (2, 2) if isinstance(block, DownBlock2d) else (1, 2, 2)
    return ConvAct(fold_batch_norm(block.conv, block.norm), pool=pool)


class UpsampleConv(nn.Module):
    """conv(nearest_upsample(x, (1, 2, 2))) as written: (B, Cin, D, H, W) -> (B, Cout, D, 2H, 2W)."""

    def __init__(self, conv: Conv) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=(1.0, 2.0, 2.0)))


def _up_block(block: UpBlock3d, phased: bool) -> ConvAct:
    conv = fold_batch_norm(block.conv, block.norm)
    return ConvAct(NearestUpConv(conv, 2) if phased else UpsampleConv(conv))


class TapSplitConv2d(nn.Module):
    """A k x k convolution with few outputs and many inputs (W's occlusion conv: 2272 -> 1, 7x7).

    Computed as a 1x1 convolution to Cout*k*k tap maps (one GEMM, fast) followed by the sum of the
    shifted tap maps (a k x k convolution with a one-hot kernel): the same products, summed in another
    order. oneDNN runs the original at a few percent of its speed with one output channel.
    """

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        cout, cin, kh, kw = conv.weight.shape
        taps = conv.weight.detach().permute(0, 2, 3, 1).reshape(cout * kh * kw, cin, 1, 1)
        self.taps = nn.Parameter(taps.contiguous(), requires_grad=False)
        shift = torch.zeros(cout, cout * kh * kw, kh, kw)
        for o in range(cout):
            for ky in range(kh):
                for kx in range(kw):
                    shift[o, (o * kh + ky) * kw + kx, ky, kx] = 1.0
        self.shift = nn.Parameter(shift, requires_grad=False)
        self.bias = conv.bias
        self.padding = conv.padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(x, self.taps), self.shift, self.bias, padding=self.padding)


def _winograd_eligible(conv: nn.Module) -> TypeGuard[nn.Conv2d]:
    """A plain 3x3, stride-1, padding-1 Conv2d with at least 64 input and output channels."""
    return (
        type(conv) is nn.Conv2d
        and conv.kernel_size == (3, 3)
        and conv.stride == (1, 1)
        and conv.padding == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and min(conv.in_channels, conv.out_channels) >= 64
    )


class WinogradConv2d(nn.Module):
    """A 3x3 convolution run by NNPACK's Winograd F(6x6, 3x3) on CPU float32, image by image.

    Winograd's minimal filtering is an exact identity (8x8 input tiles, 6x6 output tiles); its GEMM
    stage multiplies 5x less than the direct convolution, at a rounding error of a few 1e-6 relative
    (the direct one: ~2e-7). NNPACK's batched path is not Winograd, hence one image at a time.
    Elsewhere (CUDA, reduced precision) it is F.conv2d. (B, Cin, H, W) -> (B, Cout, H, W).
    """

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.weight = conv.weight
        self.bias = conv.bias
        if isinstance(conv.padding, str):
            raise ValueError(f"WinogradConv2d needs numeric padding, not {conv.padding!r}")
        self.padding = list(conv.padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or x.dtype != torch.float32 or self.weight.dtype != torch.float32:
            return F.conv2d(x, self.weight, self.bias, padding=self.padding)
        w, b, p = self.weight, self.bias, self.padding
        first = torch._nnpack_spatial_convolution(x[:1].contiguous(), w, b, p)
        if len(x) == 1:
            return first
        out = first.new_empty(len(x), *first.shape[1:])  # filled image by image: no second copy
        out[:1] = first
        for i in range(1, len(x)):
            out[i : i + 1] = torch._nnpack_spatial_convolution(x[i : i + 1].contiguous(), w, b, p)
        return out


def use_winograd(module: nn.Module) -> nn.Module:
    """Replace every eligible Conv2d inside `module` by a WinogradConv2d (in place), if this torch
    has NNPACK (the availability check also initialises it: NNPACK fails uninitialised)."""
    if not torch._nnpack_available():
        return module
    for parent in list(module.modules()):
        for name, child in parent.named_children():
            if _winograd_eligible(child):
                setattr(parent, name, WinogradConv2d(child))
    return module


def channels_last(module: nn.Module) -> nn.Module:
    """Store every Conv2d / Conv3d weight of `module` channels-last (NHWC / NDHWC), in place."""
    for conv in module.modules():
        if isinstance(conv, nn.Conv2d | nn.Conv3d):
            fmt = torch.channels_last if conv.weight.dim() == 4 else torch.channels_last_3d
            conv.weight.data = conv.weight.data.contiguous(memory_format=fmt)
    return module


def flush_denormals(x: torch.Tensor) -> torch.Tensor:
    """x with every |value| below the dtype's smallest normal number set to 0 (in place)."""
    return x.masked_fill_(x.abs() < torch.finfo(x.dtype).tiny, 0.0)


# --- F --------------------------------------------------------------------------------------------


class FastResBlock3d(nn.Module):
    """ResBlock3d with norm2 folded into conv1: x + conv2(relu(conv1'(relu(bn1(x)))))."""

    def __init__(self, block: ResBlock3d) -> None:
        super().__init__()
        self.norm1 = block.norm1
        self.conv1 = fold_batch_norm(block.conv1, block.norm2)
        self.conv2 = block.conv2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.conv1(F.relu(self.norm1(x), inplace=True)), inplace=True)) + x


class FastAppearance(nn.Module):
    """F with folded BatchNorms, channels-last: (B, 3, 256, 256) -> f_s (B, 32, 16, 64, 64)."""

    def __init__(self, f: AppearanceFeatureExtractor) -> None:
        super().__init__()
        self.reshape = (f.reshape_channel, f.reshape_depth)
        self.blocks = nn.Sequential(_same_block(f.first), *(_down_block(b) for b in f.down_blocks), f.second)
        self.resblocks_3d = nn.Sequential(
            *(FastResBlock3d(expect_module(b, ResBlock3d)) for b in f.resblocks_3d)
        )
        channels_last(self)

    def forward(self, source: torch.Tensor) -> torch.Tensor:
        out = self.blocks(source.contiguous(memory_format=torch.channels_last))
        b, _, h, w = out.shape
        volume = out.reshape(b, *self.reshape, h, w).contiguous(memory_format=torch.channels_last_3d)
        return self.resblocks_3d(volume).contiguous()


# --- W --------------------------------------------------------------------------------------------


class FastDenseMotion(nn.Module):
    """DenseMotionNetwork with folded BatchNorms, phase-decomposed up-blocks and flushed heatmaps.

    feature (B, 32, 16, 64, 64), x_d, x_s (B, 21, 3) -> deformation (B, 16, 64, 64, 3), occlusion
    map (B, 1, 64, 64). Keypoint math, heatmaps, grid sampling and the mask softmax run in float32.
    """

    def __init__(self, net: DenseMotionNetwork) -> None:
        super().__init__()
        self.num_kp = net.num_kp
        self.export_friendly = net.export_friendly
        self.compress = ConvAct(fold_batch_norm(net.compress, net.norm))
        self.down = nn.ModuleList(_down_block(b) for b in net.hourglass.encoder.down_blocks)
        # phase-decompose up-blocks from 8x8 inputs on: at 2x2 and 4x4 the phases' (H+1)(W+1) grid
        # costs as many multiply-adds as it saves
        up_blocks = net.hourglass.decoder.up_blocks
        self.up = nn.ModuleList(
            _up_block(expect_module(b, UpBlock3d), phased=j >= len(up_blocks) - 3)
            for j, b in enumerate(up_blocks)
        )
        self.final = ConvAct(fold_batch_norm(net.hourglass.decoder.conv, net.hourglass.decoder.norm))
        self.mask = net.mask
        self.occlusion = TapSplitConv2d(net.occlusion)

    def forward(
        self, feature: torch.Tensor, x_d: torch.Tensor, x_s: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        b, _, d, h, w = feature.shape
        k = self.num_kp + 1
        feature = self.compress(feature).float()  # (B, 4, D, H, W)
        grid = coordinate_grid(d, h, w, feature)
        heatmap = flush_denormals(keypoint_gaussians(x_d, grid) - keypoint_gaussians(x_s, grid))
        heatmap = torch.cat([torch.zeros_like(heatmap[:, :1]), heatmap], dim=1)  # (B, K, D, H, W)

        motions = grid[None, None] - x_d[:, :, None, None, None, :] + x_s[:, :, None, None, None, :]
        motions = torch.cat([grid[None, None].expand(b, 1, d, h, w, 3), motions], dim=1)

        volumes = feature[:, None].expand(b, k, *feature.shape[1:]).reshape(b * k, -1, d, h, w)
        deformed = grid_sample_5d(
            volumes, motions.reshape(b * k, d, h, w, 3), export_friendly=self.export_friendly
        ).view(b, k, -1, d, h, w)
        net_in = torch.cat([heatmap[:, :, None], deformed], dim=2).view(b, -1, d, h, w)

        skips = [net_in]
        for block in self.down:
            skips.append(block(skips[-1]))
        out = skips.pop()
        for block in self.up:
            up = block(out)
            out = torch.cat([up, skips.pop().to(up.dtype)], dim=1)
        prediction = self.final(out)  # (B, 142, D, H, W)

        mask = F.softmax(self.mask(prediction).float(), dim=1)  # (B, K, D, H, W)
        deformation = (motions.permute(0, 1, 5, 2, 3, 4) * mask[:, :, None]).sum(dim=1)
        occlusion_map = torch.sigmoid(self.occlusion(prediction.reshape(b, -1, h, w)).float())
        return deformation.permute(0, 2, 3, 4, 1), occlusion_map


class FastWarping(nn.Module):
    """W rebuilt: f_s (B, 32, 16, 64, 64), x_s, x_d (B, 21, 3) -> out (B, 256, 64, 64), occlusion
    map (B, 1, 64, 64), deformation (B, 16, 64, 64, 3)."""

    def __init__(self, w: WarpingNetwork) -> None:
        super().__init__()
        self.dense_motion_network = FastDenseMotion(w.dense_motion_network)
        self.third = _same_block(w.third)
        self.fourth = w.fourth

    def forward(self, f_s: torch.Tensor, x_s: torch.Tensor, x_d: torch.Tensor) -> dict[str, torch.Tensor]:
        deformation, occlusion_map = self.dense_motion_network(f_s, x_d, x_s)
        out = grid_sample_5d(
            f_s.float(), deformation, export_friendly=self.dense_motion_network.export_friendly
        )
        b, c, d, h, w = out.shape
        out = self.fourth(self.third(out.view(b, c * d, h, w)))
        return {"out": out * occlusion_map, "occlusion_map": occlusion_map, "deformation": deformation}


# --- G --------------------------------------------------------------------------------------------


def _plain(conv: SpectralNormConv2d | nn.Conv2d) -> nn.Conv2d:
    """A plain Conv2d; a spectral-norm conv gets its normalised weight computed once."""
    if isinstance(conv, nn.Conv2d):
        return conv
    return _conv2d_like(conv.weight().detach(), conv.bias, conv.padding)


def _conv_weight(conv: SpectralNormConv2d | nn.Conv2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) in float64; a missing bias is zeros."""
    plain = _plain(conv)
    bias = plain.bias if plain.bias is not None else torch.zeros(plain.weight.shape[0])
    return plain.weight.double(), bias.double()


def _modulation(spade: SPADE, project: nn.Conv2d | None = None) -> nn.Conv2d:
    """One conv from SPADE's shared map to [1 + gamma, beta] (channels concatenated).

    With `project` (a 1x1 conv without bias applied after the SPADE, the learned shortcut) beta is
    replaced by project(beta), composed into the 3x3 kernel.
    """
    wg, bg = _conv_weight(spade.mlp_gamma)
    wb, bb = _conv_weight(spade.mlp_beta)
    if project is not None:
        p = project.weight.double()[:, :, 0, 0]  # (fout, fin)
        wb, bb = torch.einsum("of,fikl->oikl", p, wb), p @ bb
    return _conv2d_like(torch.cat([wg, wb]), torch.cat([bg + 1.0, bb]), 1)


class FastSPADE(nn.Module):
    """One SPADE's maps: feature (B, 256, 64, 64) -> [1 + gamma, beta] (B, 2C, R, R) at scale R/64.

    mlp_shared is phase-decomposed when R > 64 (its input is the nearest-upsampled feature); gamma
    and beta are one convolution (see `_modulation`).
    """

    def __init__(self, spade: SPADE, scale: int, project: nn.Conv2d | None = None) -> None:
        super().__init__()
        shared = expect_module(spade.mlp_shared[0], nn.Conv2d)
        self.shared = shared if scale == 1 else NearestUpConv(shared, scale)
        self.modulation = _modulation(spade, project)

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        return self.modulation(F.relu(self.shared(feature), inplace=True))


class FastSPADEBlock(nn.Module):
    """SPADEResnetBlock rebuilt: x (B, fin, R, R), feature (B, 256, 64, 64) -> (B, fout, R, R).

    The learned shortcut is conv_s(xn * (1 + gamma_s)) + (conv_s o beta_s); each SPADE's maps are
    computed just before use, so that one block's maps are never all alive at once.
    """

    def __init__(self, block: SPADEResnetBlock, scale: int) -> None:
        super().__init__()
        self.norm_0 = FastSPADE(block.norm_0, scale)
        self.norm_1 = FastSPADE(block.norm_1, scale)
        self.conv_0 = _plain(block.conv_0)
        self.conv_1 = _plain(block.conv_1)
        self.learned_shortcut = block.learned_shortcut
        if self.learned_shortcut:
            self.conv_s = _plain(block.conv_s)
            self.norm_s = FastSPADE(block.norm_s, scale, self.conv_s)

    @staticmethod
    def _modulate(maps: torch.Tensor, normalized: torch.Tensor) -> torch.Tensor:
        """normalized * (1 + gamma) + beta, written into beta's storage."""
        gamma, beta = maps.chunk(2, dim=1)
        return beta.addcmul_(normalized, gamma)

    def forward(self, x: torch.Tensor, feature: torch.Tensor) -> torch.Tensor:
        xn = F.instance_norm(x, eps=1e-5)
        if self.learned_shortcut:
            gamma, beta = self.norm_s(feature).split([xn.shape[1], self.conv_s.out_channels], dim=1)
            shortcut = self.conv_s(xn * gamma) + beta
        else:
            shortcut = x
        dx = self.conv_0(F.leaky_relu(self._modulate(self.norm_0(feature), xn), 0.2, inplace=True))
        dx = F.instance_norm(dx, eps=1e-5)
        dx = self.conv_1(F.leaky_relu(self._modulate(self.norm_1(feature), dx), 0.2, inplace=True))
        return shortcut + dx


class FastSPADEDecoder(nn.Module):
    """G rebuilt: (B, 256, 64, 64) -> (B, 3, 512, 512) in [0, 1]."""

    def __init__(self, g: SPADEDecoder) -> None:
        super().__init__()
        self.fc = g.fc
        self.middle = nn.ModuleList(FastSPADEBlock(getattr(g, f"G_middle_{i}"), 1) for i in range(6))
        self.up_0 = FastSPADEBlock(g.up_0, 2)
        self.up_1 = FastSPADEBlock(g.up_1, 4)
        self.conv_img = g.conv_img

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        x = self.fc(feature)
        for block in self.middle:
            x = block(x, feature)
        x = self.up_0(F.interpolate(x, scale_factor=2.0), feature)
        x = self.up_1(F.interpolate(x, scale_factor=2.0), feature)
        return torch.sigmoid(self.conv_img(F.leaky_relu(x, 0.2)).float())


# --- the model ------------------------------------------------------------------------------------


def padded_batch(prepared: Iterable[int], b: int) -> int:
    """The batch size to run b rows at: the smallest prepared size that holds them, else b itself."""
    return min((n for n in prepared if n >= b), default=b)


def pad_rows(t: torch.Tensor, n: int) -> torch.Tensor:
    """t (b, ...) grown to (n, ...) rows by repeating its last row; t itself when b == n."""
    b = t.shape[0]
    return t if b == n else torch.cat([t, t[-1:].expand(n - b, *t.shape[1:])])


Render = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
PoolHandle = Any  # what torch.cuda.graph_pool_handle() returns (its type is private to torch)
Layout = tuple[tuple[bool, bool], tuple[tuple[tuple[int, ...], torch.dtype], ...]]
"""Which of f_s, x_s are shared by the batch (one row), and every input's shape without the batch
axis and its dtype."""


class _CapturedRender:
    """render(*static) captured into a CUDA graph on `device`; a call copies its inputs into the
    static buffers and replays the graph. The output buffer is the graph's own: copy it before the
    next replay.

    The warm-up runs (cuDNN's algorithm search, lazy initialisation, torch.compile's compilation) and
    the capture run on a side stream of `device`, whatever the current device. The capture is
    "thread_local": other threads (the encoder copying frames off the GPU, paste-back) may keep
    calling CUDA while this thread captures; in the default "global" mode their calls would make the
    capture fail.
    """

    def __init__(
        self, render: Render, static: list[torch.Tensor], device: torch.device, pool: PoolHandle
    ) -> None:
        self.device = device
        self.static = static
        with torch.cuda.device(device):
            stream = torch.cuda.Stream(device=device)
            stream.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(stream):
                for _ in range(2):
                    render(*static)
            torch.cuda.current_stream(device).wait_stream(stream)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph, pool=pool, stream=stream, capture_error_mode="thread_local"):
                self.out = render(*static)

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        with torch.cuda.device(self.device):
            for buffer, value in zip(self.static, inputs, strict=True):
                buffer.copy_(value)
            self.graph.replay()
        return self.out


class FixedBatchRender:
    """W+G run only at a few batch sizes per input layout, for CUDA graphs and torch.compile.

    A captured graph (and a graph compiled with fixed shapes) serves one batch size. A batch is run
    at the smallest size already prepared for its layout that holds it, padded with copies of its
    last row, and the output is cut back: the smaller last batch of a job replays the graph of the
    full batches instead of capturing (or compiling) a new one mid-job. f_s and x_s of one row are
    shared by the batch; a batch of one row also fits a per-frame layout (padded).

    capture_on: replay from a CUDA graph captured on this device per (layout, size); None: call
    `render` directly (torch.compile's fixed shapes).
    """

    def __init__(self, render: Render, capture_on: torch.device | None = None) -> None:
        self.render = render
        self.capture_on = capture_on
        self.prepared: dict[tuple[Layout, int], Render] = {}
        self.pool: PoolHandle | None = None

    @staticmethod
    def layout(f_s: torch.Tensor, x_s: torch.Tensor, x_d: torch.Tensor) -> Layout:
        shapes = tuple((tuple(t.shape[1:]), t.dtype) for t in (f_s, x_s, x_d))
        return (f_s.shape[0] == 1, x_s.shape[0] == 1), shapes

    def _fits(self, layout: Layout, f_s: torch.Tensor, x_s: torch.Tensor, x_d: torch.Tensor) -> bool:
        """A prepared `layout` runs these inputs: same shapes, and each input it shares has one row."""
        shared, shapes = layout
        own_shared, own_shapes = self.layout(f_s, x_s, x_d)
        return shapes == own_shapes and all(own or not s for s, own in zip(shared, own_shared, strict=True))

    def select(self, f_s: torch.Tensor, x_s: torch.Tensor, x_d: torch.Tensor) -> tuple[Layout, int]:
        """The (layout, batch size) to run these inputs at: a prepared one if any holds them."""
        b = x_d.shape[0]
        sizes = {n: layout for layout, n in self.prepared if n >= b and self._fits(layout, f_s, x_s, x_d)}
        if sizes:
            n = padded_batch(sizes, b)
            return sizes[n], n
        return self.layout(f_s, x_s, x_d), b

    def __call__(self, f_s: torch.Tensor, x_s: torch.Tensor, x_d: torch.Tensor) -> torch.Tensor:
        b = x_d.shape[0]
        layout, n = self.select(f_s, x_s, x_d)
        (share_f, share_x), _ = layout
        inputs = [
            f_s if share_f else pad_rows(f_s, n),
            x_s if share_x else pad_rows(x_s, n),
            pad_rows(x_d, n),
        ]
        run = self.prepared.get((layout, n))
        if run is None:
            run = self.prepared[(layout, n)] = self._prepare(inputs)
        out = run(*inputs)
        return out[:b].clone() if self.capture_on is not None else out[:b]

    def _prepare(self, inputs: list[torch.Tensor]) -> Render:
        if self.capture_on is None:
            return self.render
        if self.pool is None:  # one memory pool for every graph: outputs are copied out right after a replay
            with torch.cuda.device(self.capture_on):
                self.pool = torch.cuda.graph_pool_handle()
        return _CapturedRender(self.render, [t.clone() for t in inputs], self.capture_on, self.pool)


class InferenceModel(LivePortraitModel):
    """LivePortraitModel with F, W and G rebuilt for inference; same interface and outputs.

    Built by `optimize_for_inference` from a model it takes over (M and the S MLPs are its modules,
    kept in float32; the other convolutions are reused where they need no rewrite). winograd: on CPU
    in float32, run G's eligible 3x3 convolutions with NNPACK's Winograd kernels (not under
    torch.compile, which chooses its own). cuda_graphs: on CUDA, replay W+G from CUDA graphs;
    compile_mode: a torch.compile mode for W and G (None: eager). Both run `render` at fixed batch
    sizes (`FixedBatchRender`); a compile mode that makes CUDA graphs of its own is refused with
    cuda_graphs.
    """

    @classmethod
    def from_weights(
        cls, weights_dir: Path, device: str | torch.device = "cpu", precision: Precision = "fp32"
    ) -> "InferenceModel":
        """Load an official-layout bundle and optimise it."""
        return cls(LivePortraitModel.from_weights(weights_dir), precision, device=device)

    def __init__(
        self,
        base: LivePortraitModel,
        precision: Precision = "fp32",
        cuda_graphs: bool = False,
        winograd: bool = True,
        device: str | torch.device | None = None,
        compile_mode: str | None = None,
    ) -> None:
        nn.Module.__init__(self)  # the networks come from `base`, not freshly initialised
        if precision not in DTYPES:
            raise ValueError(f"precision must be one of {sorted(DTYPES)}, not {precision!r}")
        if cuda_graphs and compile_mode in COMPILE_MODES_WITH_CUDA_GRAPHS:
            raise ValueError(
                f"torch.compile mode {compile_mode!r} makes its own CUDA graphs: not with cuda_graphs"
            )
        device = torch.device(device) if device is not None else base.device
        if precision == "bf16" and device.type == "cpu" and not torch.backends.mkldnn.is_available():
            raise ValueError("bf16 on CPU needs oneDNN")
        self.precision = precision
        base.cpu()  # the rewrites are computed on the CPU (float64), then moved to `device`
        self.appearance_feature_extractor = FastAppearance(
            expect_module(base.appearance_feature_extractor, AppearanceFeatureExtractor)
        )
        self.motion_extractor = base.motion_extractor
        self.warping_module = FastWarping(expect_module(base.warping_module, WarpingNetwork))
        self.spade_generator = FastSPADEDecoder(expect_module(base.spade_generator, SPADEDecoder))
        self.stitching, self.lip, self.eye = base.stitching, base.lip, base.eye
        self.to(device).eval().requires_grad_(False)
        if precision != "fp32":
            for net in (self.appearance_feature_extractor, self.warping_module, self.spade_generator):
                for module in net.modules():
                    if isinstance(module, nn.Conv2d | nn.Conv3d):
                        module.to(DTYPES[precision])
            channels_last(self.spade_generator)
        if winograd and device.type == "cpu" and precision == "fp32" and compile_mode is None:
            use_winograd(self.spade_generator)
        if compile_mode is not None:
            for net in (self.warping_module, self.spade_generator):
                net.compile(mode=compile_mode, dynamic=False)
        graphs = cuda_graphs and device.type == "cuda"
        self._fixed = (
            FixedBatchRender(self._render, self.device if graphs else None)  # cuda:N, N concrete
            if graphs or compile_mode is not None
            else None
        )

    def _autocast(self) -> AbstractContextManager:
        if self.precision == "fp32":
            return nullcontext()
        # the weights are stored in the target dtype already: nothing to cache (and CUDA graphs
        # must not capture autocast's cache)
        return torch.autocast(self.device.type, dtype=DTYPES[self.precision], cache_enabled=False)

    @torch.inference_mode()
    def extract_appearance(self, source: torch.Tensor) -> torch.Tensor:
        """F: (B, 3, 256, 256) -> f_s (B, 32, 16, 64, 64), float32."""
        with self._autocast():
            return self.appearance_feature_extractor(source).float()

    @torch.inference_mode()
    def warp(self, f_s: torch.Tensor, x_s: torch.Tensor, x_d: torch.Tensor) -> dict[str, torch.Tensor]:
        """W: f_s (B, 32, 16, 64, 64), x_s, x_d (B, 21, 3) -> out (B, 256, 64, 64) (float32), ..."""
        with self._autocast():
            result = self.warping_module(f_s, x_s, x_d)
        return {k: v.float() for k, v in result.items()}

    @torch.inference_mode()
    def decode(self, feature: torch.Tensor) -> torch.Tensor:
        """G: (B, 256, 64, 64) -> (B, 3, 512, 512) in [0, 1], float32."""
        with self._autocast():
            return self._decode(feature)

    def _decode(self, feature: torch.Tensor) -> torch.Tensor:
        # NNPACK (CPU float32) reads NCHW; reduced precision runs channels-last (oneDNN's AMX and
        # cuDNN's tensor-core kernels are NHWC)
        layout = torch.contiguous_format if self.precision == "fp32" else torch.channels_last
        return self.spade_generator(feature.contiguous(memory_format=layout)).float()

    def _render(self, f_s: torch.Tensor, x_s: torch.Tensor, x_d: torch.Tensor) -> torch.Tensor:
        b = x_d.shape[0]
        f_s = f_s.expand(b, *f_s.shape[1:]) if f_s.shape[0] != b else f_s
        x_s = x_s.expand(b, *x_s.shape[1:]) if x_s.shape[0] != b else x_s
        with self._autocast():
            return self._decode(self.warping_module(f_s, x_s, x_d)["out"])

    @torch.inference_mode()
    def render(self, f_s: torch.Tensor, x_s: torch.Tensor, x_d: torch.Tensor) -> torch.Tensor:
        """W then G for B driving keypoint sets x_d (B, 21, 3); f_s, x_s broadcast from batch 1.
        Returns (B, 3, 512, 512) float32 in [0, 1]."""
        if self._fixed is not None:
            return self._fixed(f_s, x_s, x_d)
        return self._render(f_s, x_s, x_d)


def optimize_for_inference(
    model: LivePortraitModel,
    device: str | torch.device | None = None,
    precision: Precision = "fp32",
    *,
    cuda_graphs: bool = False,
    compile_mode: str | None = None,
    copy_model: bool = True,
) -> InferenceModel:
    """The fast inference model built from `model`'s weights.

    device: where it runs (default: the model's); precision: "fp32" (golden tolerance kept), "bf16"
    or "fp16" (F, W and G under autocast); cuda_graphs: on CUDA, replay W+G from captured graphs;
    compile_mode: torch.compile W and G in that mode (None: eager); copy_model: work on a copy,
    leaving `model` as it is (False: take `model`'s modules over and save the memory of a copy;
    `model` must not be used afterwards).
    """
    base = copy.deepcopy(model) if copy_model else model
    return InferenceModel(
        base,
        precision,
        cuda_graphs,
        device=device if device is not None else model.device,
        compile_mode=compile_mode,
    )


def use_float32_arithmetic(device: str | torch.device) -> None:
    """On a CUDA device, make float32 convolutions and matrix products compute in float32, not TF32.

    cuDNN runs float32 convolutions in TF32 by default (torch.backends.cudnn.allow_tf32 is True): a
    10-bit mantissa, ~4e-3 relative error against the 1e-4 that float32 promises. Precision "fp32"
    must mean float32, and so must the parts of the reduced-precision paths that stay in float32 (M,
    the S MLPs, the grids), as in the TensorRT build. The switches are torch's process-wide ones (a
    context manager around inference would be no narrower: they are global, not per thread, and
    the render, the crop warps and paste-back run in several threads): every CUDA computation of the
    process runs in float32 after an engine loads. Nothing changes on other devices.
    """
    if torch.device(device).type != "cuda":
        return
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
