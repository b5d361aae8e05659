"""TensorRT engines from the exported ONNX graphs: build, cache keys and an engine cache.

TensorRT 10 and 11 are both supported, told apart by ``tensorrt.__version__``:
- TensorRT 11 networks are strongly typed (the only mode there): precision comes from the graph's
  own types, which `engines.acceleration.export` writes (float16 islands between explicit casts).
- TensorRT 10 builds the same graphs weakly typed: for "fp16" the FP16 builder flag is set, and the
  layers whose outputs are float32 in the graph are asked to stay float32
  (PREFER_PRECISION_CONSTRAINTS), so that M, the grids and the grid samples keep their precision.
TF32 is turned off, so float32 layers compute in float32.
Every input gets an optimisation profile over the batch axis (1, max(1, max_batch // 2), max_batch).
An engine only runs on the GPU architecture and TensorRT version it was built with, and is only as
current as the graphs it was built from: `engine_cache_key` names all three (the graphs by the weights
hash and the export code's `EXPORT_VERSION`), and `EngineCache` keeps engine directories under that
key locally and, optionally, in an object store (any object with get/put of bytes; the worker adapts
S3 to it).
`tensorrt` is imported only by the functions that build.
"""

import json
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from engines.acceleration.export import GRAPHS, PRECISIONS, read_json_object, read_manifest

ENGINE_MANIFEST = "engines.json"
ENGINE_SUFFIX = ".engine"
WORKSPACE_BYTES = 4 << 30


class BuildError(Exception):
    """An engine that cannot be built (parser errors, unsupported TensorRT version, bad shapes)."""


@dataclass(frozen=True)
class BuildFlags:
    """How a network is created and configured for one TensorRT version and precision."""

    strongly_typed: bool
    fp16_flag: bool
    pin_float32: bool


def trt_major(trt_version: str) -> int:
    """The major version of a TensorRT version string ("10.13.0.35" -> 10)."""
    match = re.match(r"\s*(\d+)\.", trt_version)
    if match is None:
        raise BuildError(f"unrecognised TensorRT version {trt_version!r}")
    return int(match.group(1))


def build_flags(trt_version: str, precision: str) -> BuildFlags:
    """TensorRT >= 11: strongly typed, precision from the graph; TensorRT 10: weakly typed, with the FP16
    flag and float32 layers pinned for "fp16"."""
    if precision not in PRECISIONS:
        raise BuildError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    major = trt_major(trt_version)
    if major < 10:
        raise BuildError(f"TensorRT {trt_version} is too old: 10 or newer is needed")
    if major >= 11:
        return BuildFlags(strongly_typed=True, fp16_flag=False, pin_float32=False)
    fp16 = precision == "fp16"
    return BuildFlags(strongly_typed=False, fp16_flag=fp16, pin_float32=fp16)


def profile_shapes(
    input_shapes: Mapping[str, Sequence[int]], max_batch: int
) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """(min, opt, max) shapes per input name for a batch axis 0 of -1 (dynamic) and static other axes."""
    if max_batch < 1:
        raise BuildError(f"max_batch must be >= 1, not {max_batch}")
    opt = max(1, max_batch // 2)
    out = {}
    for name, shape in input_shapes.items():
        rest = tuple(int(d) for d in shape[1:])
        if not shape or shape[0] != -1 or any(d < 1 for d in rest):
            raise BuildError(
                f"input {name!r}: expected a dynamic batch axis and static others, got {tuple(shape)}"
            )
        out[name] = ((1, *rest), (opt, *rest), (max_batch, *rest))
    return out


def float32_layers(network: Any) -> list[int]:
    """Indices of the layers of a parsed network whose outputs are all float32 (by dtype name), the
    ones to keep in float32 in a weakly typed FP16 build."""
    keep = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        dtypes = {layer.get_output(j).dtype.name for j in range(layer.num_outputs)}
        if dtypes == {"FLOAT"}:
            keep.append(i)
    return keep


def engine_cache_key(
    gpu_cc: tuple[int, int],
    trt_version: str,
    precision: str,
    weights_hash: str,
    max_batch: int,
    export_version: int,
) -> str:
    """A file-name-safe key naming everything an engine depends on: GPU compute capability, TensorRT
    version, precision, weights, max batch and the version of the export code that made its graphs."""
    if precision not in PRECISIONS:
        raise BuildError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    version = re.sub(r"[^0-9A-Za-z.]", "_", trt_version)
    gpu = f"sm{gpu_cc[0]}{gpu_cc[1]}"
    return f"{gpu}-trt{version}-{precision}-b{max_batch}-x{export_version}-{weights_hash[:16]}"


def _parse(trt: Any, builder: Any, logger: Any, onnx_path: Path, flags: BuildFlags) -> tuple[Any, Any]:
    """(network, parser) for an ONNX file; the parser owns weights the network uses, keep it alive."""
    creation = 0
    if flags.strongly_typed:
        creation |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(creation)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BuildError(f"{onnx_path}: TensorRT could not parse the graph: {errors}")
    return network, parser


def build_engine(
    onnx_path: Path,
    engine_path: Path,
    precision: str,
    max_batch: int,
    timing_cache: Path | None = None,
) -> Path:
    """Build one serialised engine from an ONNX graph with a dynamic batch axis; returns engine_path.

    The timing cache file, when given, is read first (if present) and written back after the build.
    """
    import tensorrt as trt

    flags = build_flags(trt.__version__, precision)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network, _parser = _parse(trt, builder, logger, Path(onnx_path), flags)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    config.clear_flag(trt.BuilderFlag.TF32)  # float32 means float32: M, grids, the fp32 precision
    if flags.fp16_flag:
        config.set_flag(trt.BuilderFlag.FP16)
    if flags.pin_float32:
        config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
        for i in float32_layers(network):
            layer = network.get_layer(i)
            layer.precision = trt.float32
            for j in range(layer.num_outputs):
                layer.set_output_type(j, trt.float32)

    inputs = {network.get_input(i).name: tuple(network.get_input(i).shape) for i in range(network.num_inputs)}
    profile = builder.create_optimization_profile()
    for name, (low, opt, high) in profile_shapes(inputs, max_batch).items():
        profile.set_shape(name, low, opt, high)
    config.add_optimization_profile(profile)

    cache_file = Path(timing_cache) if timing_cache is not None else None
    cache = config.create_timing_cache(
        cache_file.read_bytes() if cache_file and cache_file.is_file() else b""
    )
    config.set_timing_cache(cache, ignore_mismatch=False)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BuildError(f"{onnx_path}: TensorRT failed to build an engine (see its log)")
    engine_path = Path(engine_path)
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    engine_path.write_bytes(memoryview(serialized))
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        cache_file.write_bytes(memoryview(config.get_timing_cache().serialize()))
    return engine_path


def build_engines(
    onnx_dir: Path, out_dir: Path, max_batch: int | None = None, timing_cache: Path | None = None
) -> dict[str, Path]:
    """Build an engine for every graph of an ONNX export directory into `out_dir`, with engines.json
    (precision, max batch, weights hash, export version, TensorRT version, GPU compute capability).
    max_batch defaults to the export's. Returns graph name -> engine path."""
    import tensorrt as trt
    import torch

    manifest = read_manifest(onnx_dir)
    max_batch = max_batch or int(manifest["max_batch"])
    precision = manifest["precision"]
    export_version = int(manifest.get("export_version", 0))  # 0: an export older than the versions
    out_dir = Path(out_dir)
    paths = {
        name: build_engine(
            Path(onnx_dir) / entry["file"],
            out_dir / f"{name}{ENGINE_SUFFIX}",
            precision,
            max_batch,
            timing_cache,
        )
        for name, entry in manifest["graphs"].items()
    }
    cc = torch.cuda.get_device_capability()
    info = {
        "precision": precision,
        "max_batch": max_batch,
        "weights_hash": manifest["weights_hash"],
        "export_version": export_version,
        "tensorrt": trt.__version__,
        "gpu_cc": list(cc),
        "key": engine_cache_key(
            cc, trt.__version__, precision, manifest["weights_hash"], max_batch, export_version
        ),
        "engines": {name: path.name for name, path in paths.items()},
    }
    (out_dir / ENGINE_MANIFEST).write_text(json.dumps(info, indent=2) + "\n")
    return paths


def read_engine_manifest(engine_dir: Path) -> dict:
    """engines.json of an engine directory, checked to name one engine file per graph."""
    path = Path(engine_dir) / ENGINE_MANIFEST
    info = read_json_object(path, BuildError, "an engine manifest")
    engines = info.get("engines", {})
    if set(engines) != set(GRAPHS) or any(
        not isinstance(f, str) or f != Path(f).name or not f.endswith(ENGINE_SUFFIX) for f in engines.values()
    ):
        raise BuildError(f"{path}: expected one engine file per graph {sorted(GRAPHS)}")
    return info


class ObjectStore(Protocol):
    """A bytes store keyed by strings (the worker passes an S3 adapter); get returns None when absent."""

    def get(self, key: str) -> bytes | None: ...

    def put(self, key: str, data: bytes) -> None: ...


class EngineCache:
    """Engine directories by cache key: `root`/KEY locally, and `prefix`/KEY/FILE in an optional store."""

    def __init__(
        self, root: Path, store: ObjectStore | None = None, prefix: str = "tensorrt-engines"
    ) -> None:
        self.root = Path(root)
        self.store = store
        self.prefix = prefix.strip("/")

    def path(self, key: str) -> Path:
        """The local directory of `key` (present or not)."""
        if not re.fullmatch(r"[0-9A-Za-z._-]+", key) or key in (".", ".."):
            raise BuildError(f"bad engine cache key {key!r}")
        return self.root / key

    def _store_key(self, key: str, name: str) -> str:
        return f"{self.prefix}/{key}/{name}"

    def get(self, key: str) -> Path | None:
        """The local engine directory of `key`, downloading it from the store if only the store has it."""
        local = self.path(key)
        if (local / ENGINE_MANIFEST).is_file():
            return local
        if self.store is None:
            return None
        manifest = self.store.get(self._store_key(key, ENGINE_MANIFEST))
        if manifest is None:
            return None
        with tempfile.TemporaryDirectory(dir=self._staging_root()) as tmp:
            staging = Path(tmp) / key
            staging.mkdir()
            (staging / ENGINE_MANIFEST).write_bytes(manifest)
            for name in read_engine_manifest(staging)["engines"].values():
                data = self.store.get(self._store_key(key, name))
                if data is None:
                    return None
                (staging / name).write_bytes(data)
            return self._install(staging, local)

    def put(self, key: str, engine_dir: Path) -> Path:
        """Copy a built engine directory into the cache (and the store); returns the cached directory."""
        info = read_engine_manifest(engine_dir)
        local = self.path(key)
        with tempfile.TemporaryDirectory(dir=self._staging_root()) as tmp:
            staging = Path(tmp) / key
            staging.mkdir()
            for name in (*info["engines"].values(), ENGINE_MANIFEST):
                shutil.copyfile(Path(engine_dir) / name, staging / name)
            installed = self._install(staging, local)
        if self.store is not None:
            for name in info["engines"].values():  # the manifest last: its presence means complete
                self.store.put(self._store_key(key, name), (installed / name).read_bytes())
            self.store.put(self._store_key(key, ENGINE_MANIFEST), (installed / ENGINE_MANIFEST).read_bytes())
        return installed

    def _staging_root(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        return self.root

    @staticmethod
    def _install(staging: Path, local: Path) -> Path:
        """Move a complete directory into place; another process that got there first wins."""
        try:
            staging.rename(local)
        except OSError:
            if not (local / ENGINE_MANIFEST).is_file():
                raise
        return local
