"""The engine: the model (F, M, W, G, S on one backend) and the face analyzer, loaded once.

`load_engine(config)` is the one factory: the CLI, the worker and bench/ all build their engine
here from a `common.engine_config.EngineConfig`. Every workflow runs on an `Engine` through the same
primitives: a prepared source (`engines.source`), driving motion (`engines.driving`), render
(`Engine.render`: W + G for a batch of keypoints) and compose (`engines.compose`).
"""

from dataclasses import dataclass
from pathlib import Path

import torch

from common.engine_config import EngineConfig
from engines.acceleration.backends import GraphModel
from engines.acceleration.inference import (
    Precision,
    optimize_for_inference,
    resolve_precision,
    use_float32_arithmetic,
)
from engines.face.detection import FaceAnalyzer, load_analyzer
from engines.model import LivePortraitModel

Model = LivePortraitModel | GraphModel

FRAME_BATCH: dict[str, int] = {"cpu": 1, "cuda": 16}
"""The frame batch of each device type when the config leaves it to the device (docs/benchmarks.md):
on a CPU, batch 2 is slower per frame than batch 1 and each extra frame costs ~0.4 GB; a GPU needs
batches to fill its cores."""


def resolve_device(name: str) -> torch.device:
    """A device setting made concrete: "auto" is CUDA when torch sees one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass
class Engine:
    """A loaded model and face analyzer on one device, with how batches run on them.

    frame_batch: frames per W+G batch; pipelined: decode/crop ahead of inference and compose/encode
    behind it, in threads; compose_on_device: crop warps and paste-back on the model's device.
    """

    model: Model
    analyzer: FaceAnalyzer
    device: torch.device
    backend: str
    precision: Precision
    frame_batch: int = 1
    pipelined: bool = True
    compose_on_device: bool = False

    def render(self, f_s: torch.Tensor, x_s: torch.Tensor, x_d: torch.Tensor) -> torch.Tensor:
        """Render: W then G. f_s (B|1, 32, 16, 64, 64), x_s (B|1, 21, 3), x_d (B, 21, 3) ->
        (B, 3, 512, 512) float in [0, 1] on the model's device."""
        return self.model.render(f_s, x_s, x_d)


def load_model(config: EngineConfig, device: torch.device, backend: str, precision: Precision) -> Model:
    """F, M, W, G and S of `config.weights_dir` on `backend` (torch: optimised unless told otherwise)."""
    from engines.acceleration.backends.select import load_backend

    if backend != "torch":
        return load_backend(backend, config.weights_dir, device, config.engine_cache_dir, precision=precision)
    if precision != "fp32" and not config.optimize:
        raise ValueError("precision other than fp32 needs optimize=True")
    if config.compile != "off" and not config.optimize:
        raise ValueError("compile needs optimize=True")
    use_float32_arithmetic(device)
    model = LivePortraitModel.from_weights(Path(config.weights_dir), device)
    if not config.optimize:
        return model
    return optimize_for_inference(
        model,
        precision=precision,
        cuda_graphs=config.cuda_graphs,
        compile_mode=None if config.compile == "off" else config.compile,
        copy_model=False,
    )


def load_engine(config: EngineConfig) -> Engine:
    """The one engine factory: resolve device, backend and precision, then load model and analyzer."""
    from engines.acceleration.backends.select import resolve_backend

    device = resolve_device(config.device)
    backend = resolve_backend(config.backend, device)
    precision = resolve_precision(config.precision, device)
    model = load_model(config, device, backend, precision)
    return Engine(
        model=model,
        analyzer=load_analyzer(Path(config.weights_dir), config.detector),
        device=device,
        backend=backend,
        precision=precision,
        frame_batch=config.frame_batch or FRAME_BATCH.get(device.type, 1),
        pipelined=config.pipelined,
        compose_on_device=device.type == "cuda"
        if config.compose_on_device is None
        else config.compose_on_device,
    )
