"""How to load the engines: one typed config, built from Settings by the worker and the CLI, or directly
by bench/ and tests, and turned into a loaded engine by `engines.engine.load_engine`."""

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Device = Literal["auto", "cpu", "cuda"]
Backend = Literal["auto", "torch", "onnxruntime", "tensorrt"]
PrecisionName = Literal["auto", "fp32", "bf16", "fp16"]
CompileMode = Literal["off", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]
COMPILE_MODES_WITH_CUDA_GRAPHS = ("reduce-overhead", "max-autotune")
"""torch.compile modes that make CUDA graphs of their own: not together with cuda_graphs."""

REDUCED_PRECISION_REL_L2 = {"bf16": 3e-2, "fp16": 1e-2}
"""The bound on the relative L2 error of a rendered frame (W+G) in reduced precision against float32.
bf16 measured 2.1-2.2e-2 on the three golden frames (CPU, tests/engines/acceleration/test_inference.py);
fp16 is checked on CUDA against the same frames (the GPU check, docs/benchmarks.md)."""
Detector = Literal["auto", "insightface", "licence-clean", "haar-box"]


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
        description="Arithmetic of F, W and G; auto: fp16 on CUDA, fp32 on CPU (on CUDA with TF32 "
        "off). Reduced precision needs optimize (torch); a rendered frame stays within "
        + ", ".join(f"{p} {bound:g}" for p, bound in REDUCED_PRECISION_REL_L2.items())
        + " relative L2 of float32.",
    )
    pipelined: bool = Field(
        True, description="Decode and crop ahead of inference, paste back and encode behind it, in threads."
    )
    frame_batch: int | None = Field(
        None,
        ge=1,
        le=64,
        description="Driving frames per M and W+G batch; None (auto): the device's own "
        "(engines.engine.FRAME_BATCH: 1 on CPU, 16 on CUDA).",
    )
    detector: Detector = Field(
        "auto",
        description="Face stack (docs/models.md): insightface (official, non-commercial models), "
        "licence-clean (Haar or BlazeFace boxes seeding LivePortrait's MIT 203-point landmark.onnx), "
        "haar-box (boxes only: no landmark options); auto: insightface when its files are present, "
        "else licence-clean when landmark.onnx is, else haar-box.",
    )
    engine_cache_dir: Path = Field(
        Path(".liveportrait/engines"), description="Where compiled backends keep their exports and engines."
    )
    cuda_graphs: bool = Field(False, description="With optimize on CUDA: replay W+G from CUDA graphs.")
    compile: CompileMode = Field(
        "off",
        description="With optimize: torch.compile W and G in this mode (off until measured on a GPU; the "
        "first batch of each size compiles). With cuda_graphs, only modes without CUDA graphs of their "
        "own (default, max-autotune-no-cudagraphs).",
    )
    compose_on_device: bool | None = Field(
        None, description="Crop driving frames and paste back on the model's device (default: on CUDA)."
    )

    @model_validator(mode="after")
    def _compile_with_cuda_graphs(self) -> "EngineConfig":
        if self.cuda_graphs and self.compile in COMPILE_MODES_WITH_CUDA_GRAPHS:
            raise ValueError(f"compile={self.compile} makes its own CUDA graphs: not with cuda_graphs")
        return self


def engine_default(name: str) -> object:
    """The default of EngineConfig field `name`, for settings that expose it under the same name."""
    return EngineConfig.model_fields[name].default
