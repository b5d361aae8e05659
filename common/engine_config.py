"""How to load the engines: one typed config, built from Settings by the worker and the CLI, or directly
by bench/ and tests, and turned into a loaded engine by `engines.engine.load_engine`."""

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Device = Literal["auto", "cpu", "cuda"]
Backend = Literal["auto", "torch", "onnxruntime", "tensorrt"]
PrecisionName = Literal["auto", "fp32", "bf16", "fp16"]
Detector = Literal["auto", "insightface", "haar"]


class EngineConfig(BaseModel):
    """Everything that decides how the model and the face analyzer are loaded and run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    weights_dir: Path = Field(description="Official-layout weights bundle (local directory).")
    device: str = Field("auto", description="auto (CUDA when present, else CPU), cpu, cuda or cuda:N.")
    backend: Backend = Field(
        "torch",
        description="Inference backend; auto: TensorRT on a CUDA device that has it, else torch. The "
        "compiled backends export and build into engine_cache_dir on first use.",
    )
    optimize: bool = Field(
        True,
        description="torch backend: run the rewritten F, W and G (engines.acceleration.inference; same "
        "outputs to float32 rounding, faster) instead of the plain modules.",
    )
    precision: PrecisionName = Field(
        "fp32",
        description="Arithmetic of F, W and G; auto: fp16 on CUDA, fp32 on CPU. Reduced precision needs "
        "optimize (torch) and stays within 1e-2 relative L2 of float32.",
    )
    pipelined: bool = Field(
        True, description="Decode and crop ahead of inference, paste back and encode behind it, in threads."
    )
    frame_batch: int = Field(8, ge=1, le=64, description="Driving frames per W+G batch.")
    detector: Detector = Field(
        "auto",
        description="Face detector: the official InsightFace models when present (auto), required "
        "(insightface), or the licence-clean Haar cascade (haar, boxes only).",
    )
    engine_cache_dir: Path = Field(
        Path(".liveportrait/engines"), description="Where compiled backends keep their exports and engines."
    )
    cuda_graphs: bool = Field(False, description="With optimize on CUDA: replay W+G from CUDA graphs.")
    compose_on_device: bool | None = Field(
        None, description="Crop driving frames and paste back on the model's device (default: on CUDA)."
    )


def engine_default(name: str) -> object:
    """The default of EngineConfig field `name`, for settings that expose it under the same name."""
    return EngineConfig.model_fields[name].default
