"""The onnxruntime backend: the exported graphs run by onnxruntime (CUDA, else CPU), torch tensors in and out.

Tensors are bound to the sessions by name through IO binding, on the tensors' own memory: inputs are
read in place and outputs are written into torch tensors allocated here, so nothing is copied on
the host or between host and GPU.
"""

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from engines.acceleration.backends import BackendError, GraphModel
from engines.acceleration.export import GRAPHS, read_manifest

CUDA_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")
CPU_PROVIDERS = ("CPUExecutionProvider",)


def providers_for(device: torch.device, available: list[str]) -> list[str]:
    """Execution providers for `device`: CUDA then CPU for a CUDA device (BackendError if onnxruntime
    has no CUDA provider), CPU alone otherwise."""
    if device.type == "cuda":
        if "CUDAExecutionProvider" not in available:
            raise BackendError("onnxruntime has no CUDAExecutionProvider here (install onnxruntime-gpu)")
        return list(CUDA_PROVIDERS)
    if device.type != "cpu":
        raise BackendError(f"onnxruntime backend: unsupported device {device}")
    return list(CPU_PROVIDERS)


class OnnxRuntimeModel(GraphModel):
    """LivePortraitModel's methods on onnxruntime sessions, one per exported graph."""

    def __init__(
        self, sessions: dict[str, ort.InferenceSession], device: str | torch.device, manifest: dict
    ) -> None:
        super().__init__(device)
        missing = set(GRAPHS) - set(sessions)
        if missing:
            raise BackendError(f"missing graphs: {sorted(missing)}")
        self.sessions = sessions
        self.manifest = manifest
        self.precision: str = manifest["precision"]

    @classmethod
    def from_export_dir(
        cls, export_dir: Path, device: str | torch.device = "cpu", threads: int | None = None
    ) -> "OnnxRuntimeModel":
        """Open every graph of an `export.export_onnx` directory (threads: intra-op, CPU)."""
        device = torch.device(device)
        manifest = read_manifest(export_dir)
        providers = providers_for(device, ort.get_available_providers())
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        provider_options = [{"device_id": device.index or 0}, {}] if device.type == "cuda" else None
        sessions = {
            name: ort.InferenceSession(
                str(Path(export_dir) / entry["file"]),
                options,
                providers=providers,
                provider_options=provider_options,
            )
            for name, entry in manifest["graphs"].items()
        }
        return cls(sessions, device, manifest)

    def _run(self, graph: str, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        session = self.sessions[graph]
        device_type = self.device.type
        device_id = self.device.index or 0
        binding = session.io_binding()
        batch = next(iter(inputs.values())).shape[0]
        for name, tensor in inputs.items():
            binding.bind_input(
                name, device_type, device_id, np.float32, list(tensor.shape), tensor.data_ptr()
            )
        outputs = {}
        for name, rest in GRAPHS[graph].output_shapes:
            out = torch.empty((batch, *rest), dtype=torch.float32, device=self.device)
            binding.bind_output(name, device_type, device_id, np.float32, list(out.shape), out.data_ptr())
            outputs[name] = out
        if device_type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()  # inputs written by torch are ready
        session.run_with_iobinding(binding)
        if device_type == "cuda":
            binding.synchronize_outputs()
        return outputs
