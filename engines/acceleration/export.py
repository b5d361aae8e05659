"""ONNX export of the LivePortrait networks, for onnxruntime and TensorRT.

One graph per network, every input and output with a dynamic batch axis (axis 0, "batch"):

  appearance_feature_extractor  image (B, 3, 256, 256) -> f_s (B, 32, 16, 64, 64)
  motion_extractor              image (B, 3, 256, 256) -> kp, exp (B, 63), pitch, yaw, roll (B, 66),
                                t (B, 3), scale (B, 1)
  warping_module                f_s (B, 32, 16, 64, 64), x_s, x_d (B, 21, 3) -> out (B, 256, 64, 64),
                                occlusion_map (B, 1, 64, 64), deformation (B, 16, 64, 64, 3)
  spade_generator               feature (B, 256, 64, 64) -> image (B, 3, 512, 512)
  stitching, lip, eye           input (B, 126 | 65 | 66) -> output (B, 65 | 63 | 63)

W and G stay two graphs: a fused W+G graph was no faster in onnxruntime on a CPU (batch 1, best of
5: 6.82 s fused against 6.76 s separate with 2 threads, 12.5 s against 12.7 s with one, within the
noise), since only the (B, 256, 64, 64) feature between them is saved, and the separate graphs also
serve `warp` and `decode` on their own.

W is exported with ``export_friendly=True`` so that no 5-D GridSample reaches the graph, and the
spectral norms of G are folded into plain convolution weights (computed in float32).

Precision "fp16": F, G and W's convolution stacks run in float16 between explicit casts, while M,
the three MLPs (tiny; their outputs are keypoints), W's coordinate grid, Gaussians, grid samples,
softmax and deformation stay float32. Every graph's inputs and outputs are float32 in both
precisions, so callers never change. TensorRT 11 (strongly typed) takes these types as they are.

Exported with torch's TorchScript-based exporter (``dynamo=False``): it needs no onnxscript, traces
the dynamic batch through the reshapes, and is present in every torch release the project supports.
"""

import copy
import hashlib
import json
import shutil
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict, Unpack

import onnx
import torch
import torch.nn.functional as F
from torch import nn

from engines.acceleration.onnx_check import check_graph
from engines.model import LivePortraitModel
from engines.networks import WarpingNetwork, expect_module
from engines.networks.blocks import DownBlock3d
from engines.networks.spade_generator import SpectralNormConv2d
from engines.weights import MODULES

PRECISIONS = ("fp32", "fp16")
DEFAULT_MAX_BATCH = 8
MIN_OPSET = 17  # LayerNormalization (opset 17) and 4-D GridSample (opset 16)
MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1
EXPORT_VERSION = 1
"""The version of the graphs this code exports. Bump it with every change that alters an exported graph
(a rewrite, a cast, an opset, an input): cached exports and the TensorRT engines built from them are
keyed by it (`engines.acceleration.backends.select`, `engine_cache_key`), so they are rebuilt rather
than silently reused."""
BATCH_AXIS = "batch"
MOTION_OUTPUTS = ("kp", "exp", "pitch", "yaw", "roll", "t", "scale")
MLP_INPUT_SIZES = {"stitching": 126, "lip": 65, "eye": 66}


class ExportError(Exception):
    """An export that cannot be made, or whose graph would not parse into TensorRT."""


@dataclass(frozen=True)
class GraphSpec:
    """One exported graph: its inputs and outputs as (name, shape without the batch axis)."""

    name: str
    inputs: tuple[tuple[str, tuple[int, ...]], ...]
    output_shapes: tuple[tuple[str, tuple[int, ...]], ...]

    @property
    def filename(self) -> str:
        return f"{self.name}.onnx"

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.inputs)

    @property
    def outputs(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.output_shapes)


MLP_OUTPUT_SIZES = {"stitching": 65, "lip": 63, "eye": 63}
_IMAGE = (("image", (3, 256, 256)),)
GRAPHS: dict[str, GraphSpec] = {
    spec.name: spec
    for spec in (
        GraphSpec("appearance_feature_extractor", _IMAGE, (("f_s", (32, 16, 64, 64)),)),
        GraphSpec(
            "motion_extractor",
            _IMAGE,
            tuple(zip(MOTION_OUTPUTS, ((63,), (63,), (66,), (66,), (66,), (3,), (1,)), strict=True)),
        ),
        GraphSpec(
            "warping_module",
            (("f_s", (32, 16, 64, 64)), ("x_s", (21, 3)), ("x_d", (21, 3))),
            (("out", (256, 64, 64)), ("occlusion_map", (1, 64, 64)), ("deformation", (16, 64, 64, 3))),
        ),
        GraphSpec("spade_generator", (("feature", (256, 64, 64)),), (("image", (3, 512, 512)),)),
        *(
            GraphSpec(name, (("input", (size,)),), (("output", (MLP_OUTPUT_SIZES[name],)),))
            for name, size in MLP_INPUT_SIZES.items()
        ),
    )
}


def weights_hash(states: Mapping[str, Mapping[str, torch.Tensor]]) -> str:
    """sha256 over every module's state dict (modules and keys sorted; name, dtype, shape and bytes).

    Floating-point tensors are hashed as float32, the model's dtype, so that a bundle and the model
    loaded from it hash alike whatever the checkpoint's own float type.
    """
    digest = hashlib.sha256()
    for module in sorted(states):
        for key in sorted(states[module]):
            tensor = states[module][key].detach().to("cpu")
            tensor = (tensor.float() if tensor.is_floating_point() else tensor).contiguous()
            digest.update(f"{module}/{key}:{tensor.dtype}:{tuple(tensor.shape)}\n".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def model_weights_hash(model: LivePortraitModel) -> str:
    """weights_hash of a loaded model (equal to that of the bundle it was loaded from)."""
    return weights_hash({name: getattr(model, name).state_dict() for name in MODULES})


class _Half(nn.Module):
    """A float16 island: casts its inputs to float16, runs `module` (already half) and returns float32."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module.half()

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        return self.module(*(a.half() for a in args)).float()


class _FoldedDownBlock3d(nn.Module):
    """DownBlock3d with its (1, 2, 2) average pool taken as a 2-D pool over depth-folded channels:
    the same values, and traceable in float16 on a CPU (torch has no float16 avg_pool3d there)."""

    def __init__(self, block: DownBlock3d) -> None:
        super().__init__()
        self.conv = block.conv
        self.norm = block.norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.norm(self.conv(x)))
        b, c, d, h, w = x.shape
        return F.avg_pool2d(x.reshape(b, c * d, h, w), kernel_size=2).reshape(b, c, d, h // 2, w // 2)


class _Motion(nn.Module):
    """M with a tuple of outputs in MOTION_OUTPUTS order."""

    def __init__(self, motion_extractor: nn.Module) -> None:
        super().__init__()
        self.motion_extractor = motion_extractor

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        raw = self.motion_extractor(image)
        return tuple(raw[key] for key in MOTION_OUTPUTS)


class _Warp(nn.Module):
    """W with a tuple of outputs (out, occlusion_map, deformation)."""

    def __init__(self, warping_module: nn.Module) -> None:
        super().__init__()
        self.warping_module = warping_module

    def forward(self, f_s: torch.Tensor, x_s: torch.Tensor, x_d: torch.Tensor) -> tuple[torch.Tensor, ...]:
        result = self.warping_module(f_s, x_s, x_d)
        return result["out"], result["occlusion_map"], result["deformation"]


def fold_spectral_norm(module: nn.Module) -> nn.Module:
    """Replace every SpectralNormConv2d under `module` (in place) by a Conv2d holding W / sigma."""
    for name, child in module.named_children():
        if isinstance(child, SpectralNormConv2d):
            weight = child.weight().detach()
            conv = nn.Conv2d(
                weight.shape[1],
                weight.shape[0],
                weight.shape[2],
                padding=child.padding,
                bias=child.bias is not None,
            )
            conv.weight.data.copy_(weight)
            if child.bias is not None and conv.bias is not None:  # both or neither
                conv.bias.data.copy_(child.bias.detach())
            setattr(module, name, conv)
        else:
            fold_spectral_norm(child)
    return module


def _warping_module(model: LivePortraitModel, precision: str) -> nn.Module:
    """W of a model copy, with the 4-D GridSample rewrite (and float16 islands for "fp16")."""
    warping = expect_module(model.warping_module, WarpingNetwork)
    warping.export_friendly = True
    if precision == "fp16":
        dense = warping.dense_motion_network
        blocks = dense.hourglass.encoder.down_blocks
        for i, block in enumerate(blocks):
            blocks[i] = _FoldedDownBlock3d(expect_module(block, DownBlock3d))
        # the islands replace the typed children: swapped as modules (setattr would do the same)
        for parent, name in (
            (dense, "hourglass"),
            (dense, "mask"),
            (dense, "occlusion"),
            (warping, "third"),
            (warping, "fourth"),
        ):
            parent.add_module(name, _Half(parent.get_submodule(name)))
    return _Warp(warping)


def export_modules(model: LivePortraitModel, precision: str) -> dict[str, nn.Module]:
    """The modules that are traced into each graph (float32 CPU copies; fp16 islands for "fp16")."""
    if precision not in PRECISIONS:
        raise ExportError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    model = copy.deepcopy(model).float().to("cpu").eval()
    appearance: nn.Module = model.appearance_feature_extractor
    generator: nn.Module = fold_spectral_norm(model.spade_generator)
    if precision == "fp16":
        appearance, generator = _Half(appearance), _Half(generator)
    modules = {
        "appearance_feature_extractor": appearance,
        "motion_extractor": _Motion(model.motion_extractor),
        "warping_module": _warping_module(model, precision),
        "spade_generator": generator,
        **{name: getattr(model, name) for name in MLP_INPUT_SIZES},
    }
    return {name: module.eval() for name, module in modules.items()}


def cpu_has_native_float16() -> bool:
    """Whether this CPU computes float16 convolutions natively (AVX512-FP16 or AMX-FP16, Linux).

    Without it torch's float16 convolutions on the CPU are a slow reference path, 200x float32 on an
    AVX-512 AMD EPYC (one 32-channel 3x3x3 conv over 16x64x64: 12.6 s against 0.06 s), and tracing
    the float16 islands of an "fp16" export, which runs them once, takes hours.
    """
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_fp16" in flags or "amx_fp16" in flags


def trace_device(precision: str) -> torch.device:
    """Where the graphs of `precision` are traced: "fp16" on a CUDA device when there is one (its
    float16 islands are computed once while tracing), everything else on the CPU."""
    cuda = precision == "fp16" and torch.cuda.is_available()
    return torch.device("cuda" if cuda else "cpu")


def _example_inputs(spec: GraphSpec, batch: int) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(0)
    out = []
    for name, shape in spec.inputs:
        x = torch.rand((batch, *shape), generator=generator)
        out.append(x * 0.2 - 0.1 if name in ("x_s", "x_d") else x)
    return tuple(out)


def _export_graph(module: nn.Module, spec: GraphSpec, path: Path, opset: int) -> None:
    names = (*spec.input_names, *spec.outputs)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter's notice
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # SPADE's instance norm uses the input's statistics, as intended: "train=True" is that case
        warnings.filterwarnings("ignore", message=".*instance_norm.*", category=UserWarning)
        device = next(module.parameters()).device
        torch.onnx.export(
            module,
            tuple(x.to(device) for x in _example_inputs(spec, batch=1)),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=list(spec.input_names),
            output_names=list(spec.outputs),
            dynamic_axes={name: {0: BATCH_AXIS} for name in names},
            do_constant_folding=True,
        )


def _set_output_shapes(graph: onnx.ModelProto, spec: GraphSpec) -> None:
    """Write the static output shapes (batch axis symbolic) that the tracer left partly symbolic."""
    shapes = dict(spec.output_shapes)
    for output in graph.graph.output:
        dims = output.type.tensor_type.shape.dim
        del dims[:]
        dims.add().dim_param = BATCH_AXIS
        for size in shapes[output.name]:
            dims.add().dim_value = size


def _io_entry(value: onnx.ValueInfoProto) -> dict[str, object]:
    tensor = value.type.tensor_type
    shape = [d.dim_param if d.HasField("dim_param") else d.dim_value for d in tensor.shape.dim]
    return {
        "name": value.name,
        "dtype": onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name,
        "shape": shape,
    }


def export_onnx(
    model: LivePortraitModel,
    out_dir: Path,
    precision: str = "fp32",
    max_batch: int = DEFAULT_MAX_BATCH,
    opset: int = MIN_OPSET,
) -> dict[str, Path]:
    """Export every network of `model` to `out_dir`/NAME.onnx and write `out_dir`/manifest.json.

    Each graph is checked with `engines.acceleration.onnx_check.check_graph`; any problem raises ExportError.
    `max_batch` is recorded for the TensorRT build (the ONNX batch axis itself is unbounded).
    Returns graph name -> path.
    """
    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset} < {MIN_OPSET}: LayerNormalization and 4-D GridSample need it")
    if max_batch < 1:
        raise ExportError(f"max_batch must be >= 1, not {max_batch}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    digest = model_weights_hash(model)
    paths: dict[str, Path] = {}
    graphs: dict[str, object] = {}
    device = trace_device(precision)
    if precision == "fp16" and device.type == "cpu" and not cpu_has_native_float16():
        warnings.warn(
            "tracing an fp16 export on a CPU without native float16 (AVX512-FP16/AMX-FP16) and no CUDA "
            "device: its float16 convolutions run on torch's reference path and the export takes hours; "
            "export on a GPU machine instead",
            RuntimeWarning,
            stacklevel=2,
        )
    for name, module in export_modules(model, precision).items():
        spec = GRAPHS[name]
        path = out_dir / spec.filename
        _export_graph(module.to(device), spec, path, opset)
        graph = onnx.load(str(path))
        _set_output_shapes(graph, spec)
        onnx.save(graph, str(path))
        problems = check_graph(graph)
        if problems:
            raise ExportError(f"{spec.filename}: " + "; ".join(problems))
        paths[name] = path
        graphs[name] = {
            "file": spec.filename,
            "inputs": [_io_entry(v) for v in graph.graph.input],
            "outputs": [_io_entry(v) for v in graph.graph.output],
        }
    manifest = {
        "format": MANIFEST_FORMAT,
        "export_version": EXPORT_VERSION,
        "precision": precision,
        "opset": opset,
        "weights_hash": digest,
        "max_batch": max_batch,
        "exporter": f"torch {torch.__version__} (TorchScript exporter)",
        "graphs": graphs,
    }
    (out_dir / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    return paths


def read_json_object(path: Path, error: type[Exception], what: str) -> dict:
    """The JSON object in `path`, or `error` naming `what` when it is unreadable or not an object."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise error(f"{path}: not {what} ({exc})") from exc
    if not isinstance(data, dict):
        raise error(f"{path}: not {what} (not a JSON object)")
    return data


def read_manifest(export_dir: Path) -> dict:
    """The manifest.json of an export directory (ExportError when absent or not an export)."""
    path = Path(export_dir) / MANIFEST_NAME
    manifest = read_json_object(path, ExportError, "an ONNX export manifest")
    if manifest.get("format") != MANIFEST_FORMAT or set(manifest.get("graphs", ())) != set(GRAPHS):
        raise ExportError(f"{path}: unknown manifest format or graph set")
    return manifest


class ExportArgs(TypedDict, total=False):
    """export_onnx's keyword arguments (its defaults apply to those left out)."""

    precision: str
    max_batch: int
    opset: int


def export_onnx_atomic(model: LivePortraitModel, out_dir: Path, **export: Unpack[ExportArgs]) -> Path:
    """export_onnx into a temporary sibling, then rename it to `out_dir` (a no-op if another process
    finished first). Returns `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        export_onnx(model, tmp, **export)
        try:
            tmp.rename(out_dir)
        except OSError:
            if not (out_dir / MANIFEST_NAME).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
