"""TensorRT build and backend: cache keys, profiles, version-dependent flags, binding by name, the engine
cache, and (only where TensorRT and CUDA exist) real engines against the golden outputs.

TensorRT cannot run on the CPU-only machines the suite usually runs on: the fake engine, context and
network classes below stand for TensorRT's ICudaEngine, IExecutionContext and INetworkDefinition,
exposing the same methods (names, modes, dtypes and shapes as enums with TensorRT's member names).
"""

import enum
import json
from pathlib import Path
from typing import TypedDict, cast

import numpy as np
import pytest
import torch

from engines.acceleration.backends import GraphModel
from engines.acceleration.backends.tensorrt_backend import BackendError, TensorSpec, bind, check_io, engine_io
from engines.acceleration.export import GRAPHS, MOTION_OUTPUTS
from engines.acceleration.tensorrt_build import (
    ENGINE_MANIFEST,
    BuildError,
    BuildFlags,
    EngineCache,
    build_flags,
    engine_cache_key,
    float32_layers,
    profile_shapes,
    read_engine_manifest,
)
from engines.model import image_to_tensor
from tests.engines.golden_utils import assert_close, assert_close_sampled


class KeyArgs(TypedDict):
    """The arguments of engine_cache_key."""

    gpu_cc: tuple[int, int]
    trt_version: str
    precision: str
    weights_hash: str
    max_batch: int
    export_version: int


KEY_ARGS: KeyArgs = {
    "gpu_cc": (8, 9),
    "trt_version": "10.13.0.35",
    "precision": "fp16",
    "weights_hash": "ab" * 32,
    "max_batch": 8,
    "export_version": 1,
}


class DataType(enum.Enum):
    FLOAT = 0
    HALF = 1
    INT64 = 2


class TensorIOMode(enum.Enum):
    INPUT = 1
    OUTPUT = 2


class FakeEngine:
    """Stands for a TensorRT ICudaEngine: I/O tensors listed in an order unrelated to the graph's."""

    def __init__(self, tensors: list[tuple[str, TensorIOMode, DataType, tuple[int, ...]]]) -> None:
        self.tensors = tensors
        self.num_io_tensors = len(tensors)

    def _find(self, name: str) -> tuple:
        return next(t for t in self.tensors if t[0] == name)

    def get_tensor_name(self, i: int) -> str:
        return self.tensors[i][0]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return self._find(name)[1]

    def get_tensor_dtype(self, name: str) -> DataType:
        return self._find(name)[2]

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self._find(name)[3]


class FakeContext:
    """Stands for a TensorRT IExecutionContext of the warping engine (max batch 4): output shapes follow
    the batch of the input shapes that were set."""

    def __init__(self, engine: FakeEngine, max_batch: int = 4) -> None:
        self.engine = engine
        self.max_batch = max_batch
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        if not 1 <= shape[0] <= self.max_batch:
            return False
        self.shapes[name] = shape
        return True

    def set_tensor_address(self, name: str, ptr: int) -> None:
        self.addresses[name] = ptr

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        shape = self.engine.get_tensor_shape(name)
        if self.engine.get_tensor_mode(name) is TensorIOMode.INPUT:
            return self.shapes.get(name, shape)
        batches = {s[0] for s in self.shapes.values()}
        return (batches.pop() if len(batches) == 1 else -1, *shape[1:])


def warping_engine(dtype: DataType = DataType.FLOAT) -> FakeEngine:
    return FakeEngine(
        [
            ("deformation", TensorIOMode.OUTPUT, DataType.FLOAT, (-1, 16, 64, 64, 3)),
            ("x_d", TensorIOMode.INPUT, DataType.FLOAT, (-1, 21, 3)),
            ("out", TensorIOMode.OUTPUT, DataType.FLOAT, (-1, 256, 64, 64)),
            ("f_s", TensorIOMode.INPUT, dtype, (-1, 32, 16, 64, 64)),
            ("occlusion_map", TensorIOMode.OUTPUT, DataType.FLOAT, (-1, 1, 64, 64)),
            ("x_s", TensorIOMode.INPUT, DataType.FLOAT, (-1, 21, 3)),
        ]
    )


def warping_inputs(batch: int) -> dict[str, torch.Tensor]:
    return {
        "x_s": torch.zeros(batch, 21, 3),
        "f_s": torch.zeros(batch, 32, 16, 64, 64),
        "x_d": torch.zeros(batch, 21, 3),
    }


OTHER_VALUES = ((9, 0), "11.1.0.6", "fp32", "cd" * 32, 4, 2)
OTHER_KEY_ARGS = cast(KeyArgs, dict(zip(KEY_ARGS, OTHER_VALUES, strict=True)))  # every value differs


@pytest.mark.parametrize(
    "change", [{field: value} for field, value in OTHER_KEY_ARGS.items()], ids=list(OTHER_KEY_ARGS)
)
def test_cache_key_differs_by_each_component(change):
    assert engine_cache_key(**KEY_ARGS) != engine_cache_key(**(KEY_ARGS | change))


def test_cache_key_is_a_safe_file_name():
    key = engine_cache_key(**(KEY_ARGS | {"trt_version": "10.13.0.35+cuda12/x"}))
    assert key == "sm89-trt10.13.0.35_cuda12_x-fp16-b8-x1-abababababababab"
    assert EngineCache(Path("/nonexistent")).path(key).name == key
    with pytest.raises(BuildError):
        engine_cache_key(**(KEY_ARGS | {"precision": "int8"}))


@pytest.mark.parametrize(("max_batch", "opt"), [(1, 1), (2, 1), (8, 4), (9, 4)])
def test_profile_shapes_for_every_input(max_batch, opt):
    shapes = profile_shapes({"f_s": (-1, 32, 16, 64, 64), "x_s": (-1, 21, 3)}, max_batch)
    assert shapes == {
        "f_s": ((1, 32, 16, 64, 64), (opt, 32, 16, 64, 64), (max_batch, 32, 16, 64, 64)),
        "x_s": ((1, 21, 3), (opt, 21, 3), (max_batch, 21, 3)),
    }


def test_profile_shapes_reject_static_batch_or_dynamic_others():
    with pytest.raises(BuildError):
        profile_shapes({"image": (1, 3, 256, 256)}, 4)
    with pytest.raises(BuildError):
        profile_shapes({"image": (-1, 3, -1, 256)}, 4)
    with pytest.raises(BuildError):
        profile_shapes({"image": (-1, 3, 256, 256)}, 0)


@pytest.mark.parametrize(
    ("version", "precision", "expected"),
    [
        ("10.0.1", "fp32", BuildFlags(strongly_typed=False, fp16_flag=False, pin_float32=False)),
        ("10.13.0.35", "fp16", BuildFlags(strongly_typed=False, fp16_flag=True, pin_float32=True)),
        ("11.0.0.114", "fp16", BuildFlags(strongly_typed=True, fp16_flag=False, pin_float32=False)),
        ("11.1.0", "fp32", BuildFlags(strongly_typed=True, fp16_flag=False, pin_float32=False)),
        ("12.0.0", "fp16", BuildFlags(strongly_typed=True, fp16_flag=False, pin_float32=False)),
    ],
)
def test_build_flags_by_tensorrt_version(version, precision, expected):
    assert build_flags(version, precision) == expected


@pytest.mark.parametrize(("version", "precision"), [("8.6.1", "fp16"), ("dev", "fp32"), ("10.1", "int8")])
def test_build_flags_reject(version, precision):
    with pytest.raises(BuildError):
        build_flags(version, precision)


def test_float32_layers_are_those_with_only_float32_outputs():
    class Tensor:
        def __init__(self, dtype: DataType) -> None:
            self.dtype = dtype

    class Layer:
        def __init__(self, *dtypes: DataType) -> None:
            self.outputs = [Tensor(d) for d in dtypes]
            self.num_outputs = len(dtypes)

        def get_output(self, j: int) -> Tensor:
            return self.outputs[j]

    class Network:  # stands for a parsed TensorRT INetworkDefinition
        def __init__(self, layers: list[Layer]) -> None:
            self.layers = layers
            self.num_layers = len(layers)

        def get_layer(self, i: int) -> Layer:
            return self.layers[i]

    network = Network(
        [
            Layer(DataType.FLOAT),
            Layer(DataType.HALF),
            Layer(DataType.INT64),
            Layer(DataType.FLOAT, DataType.FLOAT),
            Layer(DataType.FLOAT, DataType.HALF),
        ]
    )
    assert float32_layers(network) == [0, 3]


def test_engine_io_by_name():
    specs = engine_io(warping_engine())
    assert specs["f_s"] == TensorSpec("f_s", True, torch.float32, (-1, 32, 16, 64, 64))
    assert specs["out"] == TensorSpec("out", False, torch.float32, (-1, 256, 64, 64))
    check_io(specs, GRAPHS["warping_module"])
    with pytest.raises(BackendError, match="engine I/O"):
        check_io(specs, GRAPHS["spade_generator"])
    with pytest.raises(BackendError, match="float32"):
        check_io(engine_io(warping_engine(DataType.HALF)), GRAPHS["warping_module"])


def test_bind_sets_shapes_and_addresses_by_name():
    engine = warping_engine()
    context = FakeContext(engine)
    inputs = warping_inputs(3)
    outputs = bind(context, engine_io(engine), inputs, torch.device("cpu"))
    assert context.shapes == {name: tuple(t.shape) for name, t in inputs.items()}
    assert {k: outputs[k].shape for k in outputs} == {
        "out": (3, 256, 64, 64),
        "occlusion_map": (3, 1, 64, 64),
        "deformation": (3, 16, 64, 64, 3),
    }
    expected = {name: t.data_ptr() for name, t in (*inputs.items(), *outputs.items())}
    assert context.addresses == expected


def test_bind_rejects_what_does_not_fit():
    engine = warping_engine()
    specs = engine_io(engine)
    with pytest.raises(BackendError, match="profile"):
        bind(FakeContext(engine), specs, warping_inputs(5), torch.device("cpu"))
    wrong = warping_inputs(1) | {"x_s": torch.zeros(1, 20, 3)}
    with pytest.raises(BackendError, match="does not fit"):
        bind(FakeContext(engine), specs, wrong, torch.device("cpu"))
    half = warping_inputs(1) | {"x_s": torch.zeros(1, 21, 3, dtype=torch.float16)}
    with pytest.raises(BackendError, match="does not fit"):
        bind(FakeContext(engine), specs, half, torch.device("cpu"))


def test_graph_model_splits_batches_above_max():
    class Recorder(GraphModel):
        def __init__(self) -> None:
            super().__init__("cpu", max_batch=2)
            self.batches: list[int] = []

        def _run(self, graph: str, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            x = inputs["input"]
            self.batches.append(x.shape[0])
            return {"output": x[:, :63] * 2}

    model = Recorder()
    x = torch.arange(5 * 66, dtype=torch.float64).reshape(5, 66)
    out = model.run_mlp("eye", x)
    assert model.batches == [2, 2, 1]
    assert out.dtype == torch.float32 and torch.equal(out, x[:, :63].float() * 2)


class DictStore:
    """An in-memory object store (the worker adapts S3 to the same get/put of bytes)."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    def get(self, key: str) -> bytes | None:
        return self.objects.get(key)

    def put(self, key: str, data: bytes) -> None:
        self.objects[key] = data


def _engine_dir(path: Path) -> Path:
    path.mkdir()
    engines = {name: f"{name}.engine" for name in GRAPHS}
    for name, filename in engines.items():
        (path / filename).write_bytes(name.encode() * 3)
    (path / ENGINE_MANIFEST).write_text(f'{{"max_batch": 4, "engines": {json.dumps(engines)}}}')
    return path


def test_engine_cache_local_and_store(tmp_path):
    key = engine_cache_key(**KEY_ARGS)
    store = DictStore()
    cache = EngineCache(tmp_path / "a", store)
    assert cache.get(key) is None
    cached = cache.put(key, _engine_dir(tmp_path / "built"))
    assert cached == tmp_path / "a" / key and cache.get(key) == cached
    assert read_engine_manifest(cached)["max_batch"] == 4
    assert f"tensorrt-engines/{key}/{ENGINE_MANIFEST}" in store.objects
    assert len(store.objects) == len(GRAPHS) + 1

    other = EngineCache(tmp_path / "b", store)  # another machine: same store, empty local dir
    fetched = other.get(key)
    assert fetched is not None and fetched == tmp_path / "b" / key
    for name in GRAPHS:
        assert (fetched / f"{name}.engine").read_bytes() == name.encode() * 3
    assert EngineCache(tmp_path / "c").get(key) is None


def test_engine_cache_ignores_incomplete_store_entries(tmp_path):
    key = engine_cache_key(**KEY_ARGS)
    store = DictStore()
    EngineCache(tmp_path / "a", store).put(key, _engine_dir(tmp_path / "built"))
    del store.objects[f"tensorrt-engines/{key}/spade_generator.engine"]
    assert EngineCache(tmp_path / "b", store).get(key) is None
    assert not (tmp_path / "b" / key).exists()
    with pytest.raises(BuildError):
        EngineCache(tmp_path).path("../escape")


def test_engine_manifest_must_name_plain_files(tmp_path):
    bad = _engine_dir(tmp_path / "bad")
    manifest = json.loads((bad / ENGINE_MANIFEST).read_text())
    manifest["engines"]["eye"] = "../eye.engine"
    (bad / ENGINE_MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BuildError):
        read_engine_manifest(bad)


# --- real TensorRT ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tensorrt_available():
    pytest.importorskip("tensorrt", reason="TensorRT/CUDA not available on this machine")
    if not torch.cuda.is_available():
        pytest.skip("TensorRT/CUDA not available on this machine")


@pytest.mark.parametrize(("precision", "tol"), [("fp32", 1e-4), ("fp16", 1e-2)])
def test_tensorrt_engines_match_golden(tensorrt_available, golden, golden_model, tmp_path, precision, tol):
    from engines.acceleration.backends.tensorrt_backend import TensorRTModel
    from engines.acceleration.export import export_onnx
    from engines.acceleration.tensorrt_build import build_engines

    export_onnx(golden_model, tmp_path / "onnx", precision=precision, max_batch=2)
    build_engines(tmp_path / "onnx", tmp_path / "engines", timing_cache=tmp_path / "timing.cache")
    assert (tmp_path / "timing.cache").stat().st_size > 0
    model = TensorRTModel.from_engine_dir(tmp_path / "engines", "cuda")
    source = image_to_tensor(torch.from_numpy(golden["source_rgb"])[None]).cuda()
    f_s = model.extract_appearance(source)
    assert_close_sampled(f_s.cpu().numpy(), golden, "F_out", tol)
    raw = model.extract_motion_raw(source)
    for key in MOTION_OUTPUTS:
        # M is float32 in both precisions (and TF32 is off)
        assert_close(raw[key].cpu().numpy(), golden[f"M_source_{key}"], f"M_source_{key}", 1e-4)
    for name in ("stitching", "lip", "eye"):
        out = model.run_mlp(name, torch.from_numpy(golden[f"S_{name}_in"]))
        assert_close(out.cpu().numpy(), golden[f"S_{name}_out"], f"S_{name}_out", tol)
    x_s = torch.from_numpy(golden["x_s"])
    x_d = torch.from_numpy(np.ascontiguousarray(golden["default__x_d"]))
    frames = model.render(f_s, x_s, x_d)  # 3 frames through engines of max batch 2: two chunks
    for i in range(x_d.shape[0]):
        warped = model.warp(f_s, x_s, x_d[i : i + 1])
        assert_close(warped["occlusion_map"].cpu().numpy(), golden[f"W{i}_occlusion_map"], f"W{i}_occ", tol)
        assert_close_sampled(warped["out"].cpu().numpy(), golden, f"W{i}_out", tol)
        assert_close_sampled(frames[i : i + 1].cpu().numpy(), golden, f"G{i}_out", tol)
