"""Choose and load an inference backend by name, exporting and building on first use into a cache.

Cache layout under `cache_dir`:
  onnx/HASH16-PRECISION-xV/        an `acceleration.export` directory (HASH16: the weights hash's first 16;
                                   V: `EXPORT_VERSION`, the version of the export code)
  tensorrt/KEY/                    engines, KEY = `engine_cache_key` (GPU, TensorRT, precision,
                                   weights, max batch, export version), mirrored to an optional object store
  tensorrt/timing-smXY-trtV.cache  the TensorRT timing cache of that GPU and version

"auto" picks TensorRT on a CUDA device where TensorRT is installed, and torch otherwise: on a CPU
torch beats onnxruntime. Measured for one frame's W + G (batch 1, float32, a busy 2-core CPU, best
of several runs): torch 5.6 s, onnxruntime 6.8 s with 2 threads; 10.0 s against 12.5 s with one.
onnxruntime's G is faster (4.8 s against 6.3 s, one thread) but its W is twice as slow (8.2 s
against 3.8 s): its 3-D convolutions are slower, and the graph must use the 4-D GridSample rewrite
of the trilinear sampling, which reads all 16 depth slices where torch's native 5-D op reads two.
"""

import importlib.util
import tempfile
from pathlib import Path

import torch

from engines.acceleration.backends import BackendError, GraphModel
from engines.acceleration.export import (
    DEFAULT_MAX_BATCH,
    EXPORT_VERSION,
    MANIFEST_NAME,
    PRECISIONS,
    export_onnx_atomic,
    read_manifest,
    weights_hash,
)
from engines.acceleration.tensorrt_build import EngineCache, ObjectStore, build_engines, engine_cache_key
from engines.model import LivePortraitModel
from engines.weights import load_state_dicts

BACKENDS = ("torch", "onnxruntime", "tensorrt", "auto")
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "liveportrait" / "engines"


def tensorrt_available() -> bool:
    """TensorRT is importable and torch sees a CUDA device."""
    return importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available()


def resolve_backend(name: str, device: str | torch.device) -> str:
    """The concrete backend for `name`: "auto" -> "tensorrt" on a CUDA device with TensorRT, else "torch"."""
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}; expected one of {BACKENDS}")
    if name != "auto":
        return name
    return "tensorrt" if torch.device(device).type == "cuda" and tensorrt_available() else "torch"


def default_precision(device: str | torch.device) -> str:
    """fp16 on a CUDA device, fp32 on a CPU (where float16 brings no speed)."""
    return "fp16" if torch.device(device).type == "cuda" else "fp32"


def _model_from_states(states: dict[str, dict[str, torch.Tensor]]) -> LivePortraitModel:
    model = LivePortraitModel()
    for name, state in states.items():
        getattr(model, name).load_state_dict(state, strict=True)
    return model.eval()


def onnx_cache_name(weights_digest: str, precision: str) -> str:
    """The cache directory name of an export: weights, precision and the export code's version."""
    return f"{weights_digest[:16]}-{precision}-x{EXPORT_VERSION}"


def ensure_onnx_export(
    weights_dir: Path, cache_dir: Path, precision: str, max_batch: int = DEFAULT_MAX_BATCH
) -> tuple[Path, str]:
    """The cached ONNX export of a weight bundle at `precision`, made if absent: (directory, weights hash)."""
    if precision not in PRECISIONS:
        raise BackendError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    states = load_state_dicts(Path(weights_dir))
    digest = weights_hash(states)
    out = Path(cache_dir) / "onnx" / onnx_cache_name(digest, precision)
    if not (out / MANIFEST_NAME).is_file():
        export_onnx_atomic(_model_from_states(states), out, precision=precision, max_batch=max_batch)
    manifest = read_manifest(out)
    if (
        manifest["weights_hash"] != digest
        or manifest["precision"] != precision
        or manifest.get("export_version") != EXPORT_VERSION
    ):
        raise BackendError(
            f"{out}: cached export does not match the weights, precision or export version; delete it"
        )
    return out, digest


def load_backend(
    name: str,
    weights_dir: Path,
    device: str | torch.device = "cpu",
    cache_dir: Path | None = None,
    *,
    precision: str | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
    object_store: ObjectStore | None = None,
) -> LivePortraitModel | GraphModel:
    """A model with LivePortraitModel's inference methods, for backend `name` (see BACKENDS) on `device`.

    onnxruntime and tensorrt export (and build) on first use into `cache_dir` (default
    ~/.cache/liveportrait/engines); `precision` defaults to fp16 on CUDA and fp32 on CPU; `max_batch`
    bounds the TensorRT profiles (larger batches run in chunks); `object_store` shares engines
    between machines.
    """
    device = torch.device(device)
    backend = resolve_backend(name, device)
    if backend == "torch":
        return LivePortraitModel.from_weights(Path(weights_dir), device)
    cache_dir = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE_DIR
    precision = precision or default_precision(device)
    if backend == "onnxruntime":
        from engines.acceleration.backends.onnxruntime_backend import OnnxRuntimeModel

        export_dir, _ = ensure_onnx_export(weights_dir, cache_dir, precision, max_batch)
        return OnnxRuntimeModel.from_export_dir(export_dir, device)
    return _load_tensorrt(weights_dir, device, cache_dir, precision, max_batch, object_store)


def _load_tensorrt(
    weights_dir: Path,
    device: torch.device,
    cache_dir: Path,
    precision: str,
    max_batch: int,
    object_store: ObjectStore | None,
) -> GraphModel:
    if device.type != "cuda" or not tensorrt_available():
        raise BackendError("the tensorrt backend needs TensorRT and a CUDA device")
    import tensorrt as trt

    from engines.acceleration.backends.tensorrt_backend import TensorRTModel

    export_dir, digest = ensure_onnx_export(weights_dir, cache_dir, precision, max_batch)
    cc = torch.cuda.get_device_capability(device)
    key = engine_cache_key(cc, trt.__version__, precision, digest, max_batch, EXPORT_VERSION)
    cache = EngineCache(cache_dir / "tensorrt", object_store)
    engine_dir = cache.get(key)
    if engine_dir is None:
        timing_cache = cache.root / f"timing-sm{cc[0]}{cc[1]}-trt{trt.__version__}.cache"
        cache.root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache.root) as tmp, torch.cuda.device(device):
            build_engines(export_dir, Path(tmp), max_batch, timing_cache)
            engine_dir = cache.put(key, Path(tmp))
    return TensorRTModel.from_engine_dir(engine_dir, device)
