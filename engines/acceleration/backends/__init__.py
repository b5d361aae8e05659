"""Compiled backends (onnxruntime, TensorRT) offering LivePortraitModel's interface over exported graphs.

`GraphModel` holds what every backend shares: the mapping of LivePortraitModel's primitives
(`engines.model.ModelMethods`) onto the named graphs of `engines.acceleration.export.GRAPHS`,
float32 torch tensors in and out on the backend's device, and the split of a batch larger than the
backend's maximum. A backend only implements `_run`.
`engines.acceleration.backends.select.load_backend` picks, exports and builds a backend by name.
"""

import torch

from engines.acceleration.export import GRAPHS, MLP_INPUT_SIZES, MOTION_OUTPUTS
from engines.model import ModelMethods


class BackendError(Exception):
    """A backend that cannot be loaded or run here (missing runtime, device or files)."""


class GraphModel(ModelMethods):
    """LivePortraitModel's inference methods on top of one `_run(graph, inputs)` per backend.

    Inputs are moved to `device` as contiguous float32; outputs are float32 tensors on `device`.
    With `max_batch` set, larger batches run in chunks of at most `max_batch`.
    """

    def __init__(self, device: str | torch.device, max_batch: int | None = None) -> None:
        self._device = torch.device(device)
        self.max_batch = max_batch

    @property
    def device(self) -> torch.device:
        return self._device

    def _run(self, graph: str, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run one graph on a batch of at most `max_batch`: name -> tensor in, name -> tensor out."""
        raise NotImplementedError

    def run_graph(self, graph: str, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run graph `graph` (a key of export.GRAPHS) on inputs (B, ...) bound by name."""
        spec = GRAPHS[graph]
        if set(inputs) != set(spec.input_names):
            raise ValueError(f"{graph}: inputs {sorted(inputs)} != {sorted(spec.input_names)}")
        ready = {k: v.to(self._device, torch.float32).contiguous() for k, v in inputs.items()}
        batches = {v.shape[0] for v in ready.values()}
        if len(batches) != 1:
            raise ValueError(f"{graph}: inputs of different batch sizes {sorted(batches)}")
        batch = batches.pop()
        if self.max_batch is None or batch <= self.max_batch:
            return self._run(graph, ready)
        parts = [
            self._run(graph, {k: v[i : i + self.max_batch].contiguous() for k, v in ready.items()})
            for i in range(0, batch, self.max_batch)
        ]
        return {name: torch.cat([p[name] for p in parts]) for name in spec.outputs}

    @torch.no_grad()
    def extract_appearance(self, source: torch.Tensor) -> torch.Tensor:
        """F: (B, 3, 256, 256) -> f_s (B, 32, 16, 64, 64)."""
        return self.run_graph("appearance_feature_extractor", {"image": source})["f_s"]

    @torch.no_grad()
    def extract_motion_raw(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """M: (B, 3, 256, 256) -> kp, exp (B, 63), pitch/yaw/roll (B, 66), t (B, 3), scale (B, 1)."""
        out = self.run_graph("motion_extractor", {"image": images})
        return {key: out[key] for key in MOTION_OUTPUTS}

    @torch.no_grad()
    def run_mlp(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """One of the S MLPs ("stitching", "lip", "eye") on raw inputs (B, 126 | 65 | 66)."""
        if name not in MLP_INPUT_SIZES:
            raise ValueError(f"unknown MLP {name!r}; expected one of {sorted(MLP_INPUT_SIZES)}")
        return self.run_graph(name, {"input": x})["output"]

    @torch.no_grad()
    def warp(self, f_s: torch.Tensor, x_s: torch.Tensor, x_d: torch.Tensor) -> dict[str, torch.Tensor]:
        """W: f_s (B, 32, 16, 64, 64), x_s, x_d (B, 21, 3) -> out (B, 256, 64, 64), occlusion, deformation."""
        return self.run_graph("warping_module", {"f_s": f_s, "x_s": x_s, "x_d": x_d})

    @torch.no_grad()
    def decode(self, feature: torch.Tensor) -> torch.Tensor:
        """G: (B, 256, 64, 64) -> (B, 3, 512, 512) in [0, 1]."""
        return self.run_graph("spade_generator", {"feature": feature})["image"]

    # The keypoint-level methods (extract_motion, stitch, retarget_eye, retarget_lip, render) are
    # ModelMethods', LivePortraitModel's own, running on the graphs above.


__all__ = ["BackendError", "GraphModel"]
