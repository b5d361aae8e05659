"""The expression editor on a loaded engine: a portrait edited into a still, or animated by keyframes.

Both are the primitives again: a prepared source (engines.source; kept in a SourceCache by content,
so that the next edit of the same portrait runs only W and G), the edit's keypoints
(engines.motion.expression: the official panel's math, retargeting, stitching), render
(Engine.render) and compose (engines.compose); a keyframe video goes through the file job's
FrameSink. Offsets on a driving video are the file job's (`Animator.animate(expression=...)`).

An edit applies to each face the `faces` option selects (one face, or all of them): every face gets
the same controls on top of its own expression, its render in one batch with the others
(engines.faces), pasted back in turn.
"""

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from common.errors import Canceled
from common.expression import ExpressionControls, Keyframe, keyframe_frames, needs_landmarks
from common.options import AnimationOptions
from common.progress import FINALIZING, PREPARING, RENDERING, Phase, ProgressCallback, ProgressEvent
from engines.compose import compose_faces, pastes_back
from engines.driving import IMAGE_FPS
from engines.engine import Engine
from engines.faces import frame_crops, frames_per_batch, render_faces
from engines.media import Limits, probe, read_image, write_image
from engines.model import to_uint8_frames
from engines.motion.expression import (
    REST,
    EditBatch,
    ExpressionEdit,
    edit_motion,
    expression_edit,
    ramp,
    source_ratio,
)
from engines.pipeline import AnimateResult, FrameSink
from engines.source import (
    EngineError,
    PreparedSource,
    SourceCrop,
    limited_size,
    prepare_faces,
    prepare_source,
    require_landmarks,
)
from engines.source_cache import SourceCache, source_key

IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}
"""A still's output formats by suffix (anything else is written as PNG)."""


@dataclass
class _EditJob:
    """An edit job as FrameSink reads it (engines.pipeline.SinkJob, no driving input), and its progress."""

    output: Path
    options: AnimationOptions
    limits: Limits
    fps: float
    progress: ProgressCallback | None
    driving: Path | None = None
    driving_kind: str = "none"

    def report(self, phase: Phase, done: int = 0, total: int | None = None) -> None:
        if self.progress is not None:
            self.progress(ProgressEvent(phase, done, total))


def composing(options: AnimationOptions) -> AnimationOptions:
    """The options an edit composes with: the panel pastes back whether or not it stitched."""
    return options.model_copy(update={"flag_stitching": True})


def at_source_size(
    crops: list[SourceCrop], source: Path, options: AnimationOptions, limits: Limits
) -> list[SourceCrop]:
    """The crops (of one frame) with the source image as it was read (before the resize to
    source_max_dim and the cut to source_division) and the crop->image transforms to match, so a
    still keeps the source's size."""
    info = probe(source, limits)
    if crops[0].frame.shape[:2] in ((info.height, info.width), (info.width, info.height)):
        return crops
    original = read_image(source, limits)
    h, w = original.shape[:2]
    resized_w, resized_h = limited_size(h, w, options.source_max_dim)
    scale = np.diag([w / resized_w, h / resized_h, 1.0])
    return [dataclasses.replace(crop, frame=original, M_c2o=scale @ crop.M_c2o) for crop in crops]


class Editor:
    """Expression edits on one engine (engines.engine.load_engine), with an optional cache of prepared
    sources shared by the edits it runs."""

    def __init__(self, engine: Engine, cache: SourceCache | None = None) -> None:
        self.engine = engine
        self.cache = cache

    def prepare(self, source: Path, options: AnimationOptions, limits: Limits) -> PreparedSource:
        """The prepared portrait image `source` (its largest face: detection, crop, M, F), from the cache
        when it is there."""
        if self.cache is None:
            return prepare_source(self.engine, read_image(source, limits), options)
        key = source_key(source, options)
        prepared = self.cache.get(key)
        if prepared is None:
            prepared = prepare_source(self.engine, read_image(source, limits), options)
            self.cache.put(key, prepared)
        return prepared

    def prepare_faces(self, source: Path, options: AnimationOptions, limits: Limits) -> list[PreparedSource]:
        """The faces of the portrait image `source` that options.faces selects, prepared, left to right.
        The cache holds one face a source (as live sessions use it): the largest comes from it, other
        selections are prepared each time."""
        if options.faces == "largest":
            return [self.prepare(source, options, limits)]
        return prepare_faces(self.engine, read_image(source, limits), options)

    @staticmethod
    def resolved(prepared: PreparedSource, edits: list[ExpressionEdit]) -> list[ExpressionEdit]:
        """The edits with their unset ratios the source's own; landmarks_required where an edit sets a
        ratio of a source without landmarks."""
        motion = prepared.motion
        eye_rest, lip_rest = source_ratio(motion.eye_ratio), source_ratio(motion.lip_ratio)
        if any(
            (e.eye_ratio is not None and eye_rest is None) or (e.lip_ratio is not None and lip_rest is None)
            for e in edits
        ):
            raise EngineError(
                "landmarks_required", "a target eye_ratio or lip_ratio needs the source face's 203 landmarks"
            )
        return [e.resolve(eye_rest, lip_rest) for e in edits]

    def keypoints(
        self, prepared: PreparedSource, edits: list[ExpressionEdit], stitching: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """B edits of a prepared source: (x_d before retargeting, final x_d), each (B, 21, 3)."""
        batch = EditBatch.stack(self.resolved(prepared, edits), self.engine.device)
        return edit_motion(self.engine.model, prepared.motion, batch, stitching)

    def render(
        self, prepared: PreparedSource, edits: list[ExpressionEdit], options: AnimationOptions
    ) -> torch.Tensor:
        """W and G of B edits: (B, 3, 512, 512) in [0, 1] on the model's device."""
        return self.render_faces([prepared], [edits], options)

    def render_faces(
        self,
        faces: Sequence[PreparedSource],
        edits: Sequence[list[ExpressionEdit]],
        options: AnimationOptions,
    ) -> torch.Tensor:
        """W and G of B edits of each of F faces (edits[f]: face f's), as one batch: (B * F, 3, 512,
        512) in [0, 1], frame-major, on the model's device."""
        x_d = [
            self.keypoints(face, face_edits, options.flag_stitching)[1]
            for face, face_edits in zip(faces, edits, strict=True)
        ]
        return render_faces(self.engine, faces, x_d)

    def ramped(self, prepared: PreparedSource, keyframes: list[Keyframe]) -> list[ExpressionEdit]:
        """Each frame's edit of a face animated by keyframes, from the face's own rest state."""
        rest, *targets = self.resolved(prepared, [REST, *(expression_edit(k.expression) for k in keyframes)])
        return list(ramp([(t, k.change, k.keep) for t, k in zip(targets, keyframes, strict=True)], rest))

    def still(
        self,
        source: Path,
        output: Path,
        expression: ExpressionControls,
        options: AnimationOptions,
        *,
        limits: Limits | None = None,
        progress: ProgressCallback | None = None,
    ) -> AnimateResult:
        """The portrait `source` edited by `expression`, as an image of the source's size (PNG, or JPEG
        for an output named .jpg/.jpeg)."""
        limits = limits or Limits()
        source, output = Path(source), Path(output)
        job = _EditJob(output, composing(options), limits, options.output_fps or IMAGE_FPS, progress)
        require_landmarks(self.engine, options, ratios=expression.needs_landmarks)
        job.report(PREPARING)
        prepared = self.prepare_faces(source, options, limits)
        job.report(RENDERING, 0, 1)
        edits = [[expression_edit(expression)]] * len(prepared)
        results = list(to_uint8_frames(self.render_faces(prepared, edits, options)).cpu().numpy())
        job.report(RENDERING, 1, 1)
        job.report(FINALIZING)
        crops = [face.crop for face in prepared]
        if pastes_back(job.options):
            crops = at_source_size(crops, source, options, limits)
        out = compose_faces(job.options, results, crops, None)
        if output.suffix.lower() not in IMAGE_TYPES:
            output = output.with_suffix(".png")
        write_image(output, out)
        return AnimateResult(
            output, 1, job.fps, out.shape[1], out.shape[0], IMAGE_TYPES[output.suffix.lower()]
        )

    def animate(
        self,
        source: Path,
        output: Path,
        keyframes: list[Keyframe],
        options: AnimationOptions,
        *,
        limits: Limits | None = None,
        progress: ProgressCallback | None = None,
        should_cancel: Callable[[], bool] | None = None,
    ) -> AnimateResult:
        """An MP4 of the portrait `source` animated by keyframes: sum(change + keep) frames at
        output_fps (25 by default), no audio."""
        limits = limits or Limits()
        total = keyframe_frames(keyframes)
        if total > limits.max_frames:
            raise EngineError("too_long", f"the keyframes make {total} frames; at most {limits.max_frames}")
        fps = options.output_fps or IMAGE_FPS
        job = _EditJob(Path(output).with_suffix(".mp4"), composing(options), limits, fps, progress)
        require_landmarks(self.engine, options, ratios=needs_landmarks(None, keyframes))
        job.report(PREPARING)
        prepared = self.prepare_faces(Path(source), options, limits)
        frames = [self.ramped(face, keyframes) for face in prepared]
        step = frames_per_batch(self.engine, len(prepared))
        with FrameSink(self.engine, job, total, audio=None) as sink:
            for start in range(0, total, step):
                if should_cancel is not None and should_cancel():
                    raise Canceled
                edits = [face_frames[start : start + step] for face_frames in frames]
                images = self.render_faces(prepared, edits, options)
                sink.add(images, frame_crops(prepared, len(edits[0])), faces=len(prepared))
        return sink.result()

    def edit(
        self,
        source: Path,
        output: Path,
        options: AnimationOptions,
        *,
        expression: ExpressionControls | None = None,
        keyframes: list[Keyframe] | None = None,
        limits: Limits | None = None,
        progress: ProgressCallback | None = None,
        should_cancel: Callable[[], bool] | None = None,
    ) -> AnimateResult:
        """A job without a driving input: keyframes make a video, an expression a still."""
        if keyframes is not None:
            return self.animate(
                source,
                output,
                keyframes,
                options,
                limits=limits,
                progress=progress,
                should_cancel=should_cancel,
            )
        if expression is None:
            raise ValueError("an edit needs an expression or keyframes")
        return self.still(source, output, expression, options, limits=limits, progress=progress)
