"""The TensorRT backend: one deserialised engine and execution context per graph, torch CUDA tensors as
buffers, every tensor bound by name, run on torch's current CUDA stream (no CUDA context of its own).

`tensorrt` is imported only when engines are loaded. `engine_io` and `bind` are pure functions of
engine-like and context-like objects (names, modes, dtypes, shapes) so that they can be tested
without TensorRT.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from engines.acceleration.backends import BackendError, GraphModel
from engines.acceleration.export import GRAPHS, GraphSpec
from engines.acceleration.tensorrt_build import read_engine_manifest

TORCH_DTYPES = {
    "FLOAT": torch.float32,
    "HALF": torch.float16,
    "BF16": torch.bfloat16,
    "INT32": torch.int32,
    "INT64": torch.int64,
    "INT8": torch.int8,
    "UINT8": torch.uint8,
    "BOOL": torch.bool,
}


@dataclass(frozen=True)
class TensorSpec:
    """One I/O tensor of an engine: shape with -1 on dynamic axes."""

    name: str
    is_input: bool
    dtype: torch.dtype
    shape: tuple[int, ...]


def engine_io(engine: Any) -> dict[str, TensorSpec]:
    """Every I/O tensor of an engine by name (num_io_tensors, get_tensor_name/mode/dtype/shape)."""
    specs = {}
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        dtype = engine.get_tensor_dtype(name).name
        if dtype not in TORCH_DTYPES:
            raise BackendError(f"tensor {name!r}: unsupported TensorRT data type {dtype}")
        specs[name] = TensorSpec(
            name=name,
            is_input=engine.get_tensor_mode(name).name == "INPUT",
            dtype=TORCH_DTYPES[dtype],
            shape=tuple(int(d) for d in engine.get_tensor_shape(name)),
        )
    return specs


def check_io(specs: dict[str, TensorSpec], graph: GraphSpec) -> None:
    """The engine's inputs and outputs are the graph's, by name, all float32 (BackendError otherwise)."""
    inputs = {n for n, s in specs.items() if s.is_input}
    outputs = {n for n, s in specs.items() if not s.is_input}
    if inputs != set(graph.input_names) or outputs != set(graph.outputs):
        raise BackendError(
            f"{graph.name}: engine I/O {sorted(inputs)} -> {sorted(outputs)} "
            f"!= graph {sorted(graph.input_names)} -> {sorted(graph.outputs)}"
        )
    for spec in specs.values():
        if spec.dtype != torch.float32:
            raise BackendError(f"{graph.name}: tensor {spec.name!r} is {spec.dtype}, expected float32")


def bind(
    context: Any, specs: dict[str, TensorSpec], inputs: dict[str, torch.Tensor], device: torch.device
) -> dict[str, torch.Tensor]:
    """Bind a call by name: set each input's shape and address, allocate each output with the shape the
    context derives and set its address. Returns the output tensors (filled once the context runs)."""
    for name, spec in specs.items():
        if not spec.is_input:
            continue
        tensor = inputs[name]
        if tensor.dtype != spec.dtype or tensor.dim() != len(spec.shape):
            raise BackendError(f"input {name!r}: {tensor.dtype} {tuple(tensor.shape)} does not fit {spec}")
        if any(d != -1 and d != t for d, t in zip(spec.shape, tensor.shape, strict=True)):
            raise BackendError(f"input {name!r}: shape {tuple(tensor.shape)} does not fit {spec.shape}")
        if not tensor.is_contiguous():
            raise BackendError(f"input {name!r} is not contiguous")
        if not context.set_input_shape(name, tuple(tensor.shape)):
            raise BackendError(f"input {name!r}: shape {tuple(tensor.shape)} outside the engine's profile")
        context.set_tensor_address(name, tensor.data_ptr())
    outputs = {}
    for name, spec in specs.items():
        if spec.is_input:
            continue
        shape = tuple(int(d) for d in context.get_tensor_shape(name))
        if any(d < 0 for d in shape):
            raise BackendError(f"output {name!r}: shape {shape} unresolved (an input is unbound)")
        outputs[name] = torch.empty(shape, dtype=spec.dtype, device=device)
        context.set_tensor_address(name, outputs[name].data_ptr())
    return outputs


class TensorRTModel(GraphModel):
    """LivePortraitModel's methods on TensorRT engines (batches above the engines' max run in chunks)."""

    def __init__(self, runtime: Any, engines: dict[str, Any], device: torch.device, info: dict) -> None:
        super().__init__(device, max_batch=int(info["max_batch"]))
        self.info = info
        self.precision: str = info["precision"]
        self._runtime = runtime
        self._engines = engines
        self._io = {name: engine_io(engine) for name, engine in engines.items()}
        for name, specs in self._io.items():
            check_io(specs, GRAPHS[name])
        with torch.cuda.device(device):
            self._contexts = {name: engine.create_execution_context() for name, engine in engines.items()}

    @classmethod
    def from_engine_dir(cls, engine_dir: Path, device: str | torch.device = "cuda") -> "TensorRTModel":
        """Deserialise every engine of a `build_engines` directory onto a CUDA device."""
        import tensorrt as trt

        device = torch.device(device)
        if device.type != "cuda" or not torch.cuda.is_available():
            raise BackendError("the TensorRT backend needs a CUDA device")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        info = read_engine_manifest(engine_dir)
        if info.get("tensorrt") != trt.__version__:
            raise BackendError(
                f"engines built with TensorRT {info.get('tensorrt')}, this is {trt.__version__}"
            )
        cc = list(torch.cuda.get_device_capability(device))
        if info.get("gpu_cc") != cc:
            raise BackendError(f"engines built for compute capability {info.get('gpu_cc')}, this GPU is {cc}")
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        engines = {}
        with torch.cuda.device(device):
            for name, filename in info["engines"].items():
                engine = runtime.deserialize_cuda_engine((Path(engine_dir) / filename).read_bytes())
                if engine is None:
                    raise BackendError(f"{engine_dir}/{filename}: TensorRT could not deserialise the engine")
                engines[name] = engine
        return cls(runtime, engines, device, info)

    def _run(self, graph: str, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        context = self._contexts[graph]
        outputs = bind(context, self._io[graph], inputs, self.device)
        stream = torch.cuda.current_stream(self.device)
        if not context.execute_async_v3(stream.cuda_stream):
            raise BackendError(f"{graph}: TensorRT execution failed")
        return outputs
