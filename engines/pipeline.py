"""The file job, streaming: source and driving files in, an H.264 MP4 (or a PNG) out.

Thin orchestration over the engine's primitives. Pass 1 reads the driving input once and keeps only
its motion (engines.driving). Pass 2 renders in batches of frames: motion transfer, W and G
(Engine.render), compose (engines.compose), encode; the driving video is decoded again only for
the side-by-side output. A video source is read twice the same way (motion first, for the Kalman
smoothing, then pixels). Memory stays flat in the number of frames.
"""

import functools
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np
import torch

from common.errors import Canceled
from common.options import AnimationOptions
from common.progress import (
    EXTRACTING_MOTION,
    FINALIZING,
    PREPARING,
    RENDERING,
    Phase,
    ProgressCallback,
    ProgressEvent,
)
from engines.compose import DevicePasteBack, compose_faces, pastes_back
from engines.driving import IMAGE_FPS, driving_frames, load_driving, template_motion, video_motion
from engines.engine import Engine
from engines.faces import frame_crops, frames_per_batch, render_faces
from engines.heap import release_free_memory
from engines.media import Limits, VideoReader, VideoWriter, probe, read_image, write_image
from engines.model import to_uint8_frames
from engines.motion.expression import EditBatch, expression_edit
from engines.motion.keypoints import MotionInfo, source_keypoints
from engines.motion.template import MotionTemplate
from engines.motion.transfer import DrivingMotion, MotionTransfer, SourceMotion, smooth_video_motion
from engines.request import AnimateRequest
from engines.source import (
    EngineError,
    PreparedSource,
    SourceCrop,
    network_batch,
    prepare_faces,
    require_landmarks,
    source_crops,
    source_motion,
    stack_ratios,
)
from engines.stages import Behind, ahead, batches


@dataclass
class AnimateResult:
    output: Path
    frames: int
    fps: float
    width: int
    height: int
    content_type: str


@dataclass
class _Job:
    """What one animate call carries through its passes."""

    driving: Path
    driving_kind: str
    drv: DrivingMotion
    output: Path
    options: AnimationOptions
    limits: Limits
    fps: float
    progress: ProgressCallback | None
    should_cancel: Callable[[], bool] | None
    edit: EditBatch | None = None

    def check_cancel(self) -> None:
        if self.should_cancel is not None and self.should_cancel():
            raise Canceled

    def report(self, phase: Phase, done: int = 0, total: int | None = None) -> None:
        _report(self.progress, phase, done, total)


class SinkJob(Protocol):
    """What a FrameSink reads of its job: an animate job, or an expression edit's (engines.editor)."""

    @property
    def driving(self) -> Path | None: ...
    @property
    def driving_kind(self) -> str: ...
    @property
    def output(self) -> Path: ...
    @property
    def options(self) -> AnimationOptions: ...
    @property
    def limits(self) -> Limits: ...
    @property
    def fps(self) -> float: ...
    def report(self, phase: Phase, done: int = 0, total: int | None = None) -> None: ...


def check_offsets(options: AnimationOptions, source_is_video: bool) -> None:
    """Refuse expression offsets where the controls have no single source pose to add to."""
    if source_is_video:
        raise EngineError("unsupported_input", "expression offsets need an image source")
    if not options.flag_relative_motion:
        raise EngineError("invalid_options", "expression offsets need relative motion (flag_relative_motion)")


def _report(progress: ProgressCallback | None, phase: Phase, done: int = 0, total: int | None = None) -> None:
    if progress is not None:
        progress(ProgressEvent(phase, done, total))


class Animator:
    """Runs file jobs one after another on a loaded engine (engines.engine.load_engine)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def extract_motion(
        self,
        driving: Path,
        options: AnimationOptions,
        *,
        limits: Limits | None = None,
        should_cancel: Callable[[], bool] | None = None,
        progress: ProgressCallback | None = None,
    ) -> MotionTemplate:
        """A driving video's motion template (pass 1 alone: `liveportrait motion extract`); `progress`
        hears extracting_motion with the frames read."""
        return video_motion(
            self.engine,
            driving,
            options,
            limits=limits,
            should_cancel=should_cancel,
            frames_read=functools.partial(_report, progress, EXTRACTING_MOTION),
        )

    def animate(self, request: AnimateRequest) -> AnimateResult:
        """Run the file job `request` (engines.request) to its output file."""
        options, limits, progress, expression = (
            request.options,
            request.limits,
            request.progress,
            request.expression,
        )
        source, driving, output = Path(request.source), Path(request.driving), Path(request.output)
        require_landmarks(self.engine, options, ratios=expression is not None and expression.needs_landmarks)
        _report(progress, PREPARING)
        source_is_video = probe(source, limits).kind == "video"
        if expression is not None:
            check_offsets(options, source_is_video)
        prepared = None if source_is_video else self._prepare_image_source(source, options, limits)
        _report(progress, EXTRACTING_MOTION)
        if request.motion is not None:  # the video's motion is known: no pass over it
            kind, template = "video", request.motion
        else:
            kind, template = load_driving(
                self.engine,
                driving,
                options,
                limits,
                should_cancel=request.should_cancel,
                trust_pickle=request.trust_pickle,
                frames_read=functools.partial(_report, progress, EXTRACTING_MOTION),
            )
        drv = template_motion(template, self.engine.device)
        if (options.flag_eye_retargeting and drv.eye_ratio is None) or (
            options.flag_lip_retargeting and drv.lip_ratio is None
        ):
            raise EngineError(
                "landmarks_required", "eye/lip retargeting needs the driving eye and lip ratios"
            )
        fps = options.output_fps or (template.fps if kind != "image" else IMAGE_FPS)
        job = _Job(driving, kind, drv, output, options, limits, fps, progress, request.should_cancel)
        if expression is not None:
            job.edit = EditBatch.stack([expression_edit(expression)], self.engine.device)
        if prepared is None:
            return self._animate_video_source(source, job)
        return self._animate_image_source(prepared, job)

    def _prepare_image_source(
        self, source: Path, options: AnimationOptions, limits: Limits
    ) -> list[PreparedSource]:
        """Detect and crop the source faces `options.faces` selects, then M and F on their crops."""
        return prepare_faces(self.engine, read_image(source, limits), options)

    def _animate_image_source(self, prepared: list[PreparedSource], job: _Job) -> AnimateResult:
        """Drive each prepared face with the same motion, relative to its own pose; the faces of a
        frame render as one batch (engines.faces) and are pasted back in turn."""
        engine = self.engine
        transfers = [
            MotionTransfer(
                engine.model,
                job.options,
                face.motion,
                job.drv.info[0:1],
                driving_is_video=job.driving_kind != "image",
                edit=job.edit,
            )
            for face in prepared
        ]

        def render(part: DrivingMotion) -> torch.Tensor:
            x_d = [transfer(face.motion, part) for transfer, face in zip(transfers, prepared, strict=True)]
            return render_faces(engine, prepared, x_d)

        if job.driving_kind == "image":
            job.report(RENDERING, 0, 1)
            results = list(to_uint8_frames(render(job.drv)).cpu().numpy())
            still = cv2.resize(read_image(job.driving, job.limits), (512, 512))
            job.report(RENDERING, 1, 1)
            out = compose_faces(job.options, results, [face.crop for face in prepared], still)
            job.report(FINALIZING)
            output = job.output.with_suffix(".png")
            write_image(output, out)
            return AnimateResult(output, 1, job.fps, out.shape[1], out.shape[0], "image/png")

        n = len(job.drv.info)
        audio = job.driving if (job.options.audio == "driving" and job.driving_kind == "video") else None
        step = frames_per_batch(engine, len(prepared))
        with FrameSink(engine, job, n, audio) as sink:
            for start in range(0, n, step):
                job.check_cancel()
                part = job.drv[start : start + step]
                sink.add(render(part), frame_crops(prepared, len(part.info)), faces=len(prepared))
        return sink.result()

    def _animate_video_source(self, source: Path, job: _Job) -> AnimateResult:
        if job.driving_kind == "image":
            raise EngineError("unsupported_input", "a video source needs a driving video or motion template")
        engine, options, drv, size = self.engine, job.options, job.drv, self.engine.frame_batch
        # pass 1 over the source: each frame's crop motion and ratios, for the smoothing
        infos: list[MotionInfo] = []
        eyes: list[np.ndarray | None] = []
        lips: list[np.ndarray | None] = []
        with (
            VideoReader(source, job.limits) as reader,
            ahead(
                batches(source_crops(engine, reader, options), size),
                enabled=engine.pipelined,
                name="source-crop",
            ) as items,
        ):
            for crops in items:
                job.check_cancel()
                motion, _ = source_motion(engine, crops)
                infos.append(motion.info)
                eyes += [c.eye_ratio for c in crops]
                lips += [c.lip_ratio for c in crops]
                read, N = len(eyes), len(drv.info)
                job.report(EXTRACTING_MOTION, N + read, N + max(read, min(reader.n_frames, N)))
                if read >= N:
                    break
        info = MotionInfo.cat(infos)
        n = min(len(info), len(drv.info))
        info, drv = info[:n], drv[:n]
        sources = SourceMotion(
            info,
            source_keypoints(info),
            stack_ratios(eyes[:n], engine.device),
            stack_ratios(lips[:n], engine.device),
        )
        smoothed, _, _ = smooth_video_motion(info, drv.info, options)
        transfer = MotionTransfer(engine.model, options, sources[0:1], drv.info[0:1], source_is_video=True)

        # pass 2: re-read and re-crop the source frames, render, paste back
        audio = {"driving": job.driving if job.driving_kind == "video" else None, "source": source}.get(
            options.audio
        )
        with (
            VideoReader(source, job.limits) as reader,
            ahead(
                batches(itertools.islice(source_crops(engine, reader, options), n), size),
                enabled=engine.pipelined,
                name="source-crop",
            ) as items,
            FrameSink(engine, job, n, audio) as sink,
        ):
            start = 0
            for crops in items:
                job.check_cancel()
                stop = start + len(crops)
                f_s = engine.model.extract_appearance(network_batch(engine, crops))
                part = sources[start:stop]
                x_d = transfer(part, drv[start:stop], smoothed[start:stop])
                sink.add(engine.render(f_s, part.x_s, x_d), crops)
                start = stop
        return sink.result()


class FrameSink:
    """Turns rendered batches into output frames and encodes them, behind the inference loop.

    `add` takes a batch as rendered, on the model's device. With compose_on_device the paste-back
    runs there too; otherwise the frames are composed on the CPU (OpenCV) in the encoding thread.
    The encoder opens on the first frame (its size is known then); on an error the partial file is
    removed. For the side-by-side output the driving video is decoded again alongside. Progress is
    reported from the caller's thread: rendering in frames rendered (queued for encoding), then
    finalizing once the last batch is in (the encoder's tail and the audio track).
    """

    def __init__(self, engine: Engine, job: SinkJob, total: int, audio: Path | None) -> None:
        self.job, self.total, self.audio, self.done, self.rendered = job, total, audio, 0, 0
        self.paste_back = (
            DevicePasteBack(engine.device) if engine.compose_on_device and pastes_back(job.options) else None
        )
        self.writer: VideoWriter | None = None
        self.reader: VideoReader | None = None
        self.driving_frames: Iterator[np.ndarray | None] = itertools.repeat(None)
        if job.options.output_kind == "side_by_side" and job.driving_kind == "video" and job.driving:
            self.reader, self.driving_frames = driving_frames(engine, job.driving, job.options, job.limits)
        self._behind: Behind[tuple[torch.Tensor, list[SourceCrop], int]] | None = (
            Behind(self._encode, depth=2, name="encode") if engine.pipelined else None
        )
        job.report(RENDERING, 0, total)

    def __enter__(self) -> "FrameSink":
        return self

    def add(self, images: torch.Tensor, crops: list[SourceCrop], faces: int = 1) -> None:
        """Queue a batch of B frames: images (B * F, 3, 512, 512) in [0, 1], frame-major with F `faces`
        a frame (engines.faces), with each image's source crop."""
        if self.paste_back is not None:
            frames = self.paste_back(images, crops, faces)
        else:
            frames = to_uint8_frames(images)
        if self._behind is None:
            self._encode((frames, crops, faces))
        else:
            self._behind.put((frames, crops, faces))
        self.rendered += len(crops) // faces
        self.job.report(RENDERING, self.rendered, self.total)

    def _encode(self, item: tuple[torch.Tensor, list[SourceCrop], int]) -> None:
        """Compose (unless done on the device: B frames) and encode one batch of (B * F, H, W, 3)
        uint8 images, F `faces` a frame."""
        images, crops, faces = item
        options = self.job.options
        images_np = images.cpu().numpy()
        for start in range(0, len(crops), faces):
            driving = next(self.driving_frames)
            if self.paste_back is not None:
                out = images_np[start // faces]
            else:
                out = compose_faces(
                    options, list(images_np[start : start + faces]), crops[start : start + faces], driving
                )
            if self.writer is None:
                audio = self.audio if options.audio != "none" else None
                self.writer = VideoWriter(
                    self.job.output,
                    self.job.fps,
                    out.shape[1],
                    out.shape[0],
                    crf=options.crf,
                    audio_from=audio,
                )
            self.writer.write(out)
        self.done += len(crops) // faces
        release_free_memory()

    def result(self) -> AnimateResult:
        if self.writer is None:
            raise EngineError("no_frames", "the job rendered no frames")
        w = self.writer
        return AnimateResult(self.job.output, self.done, self.job.fps, w.width, w.height, "video/mp4")

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        ok = exc_type is None
        if ok:
            self.job.report(FINALIZING)
        try:
            if self._behind is not None and ok:
                self._behind.finish()
            elif self._behind is not None:
                self._behind.abort()
        except BaseException:
            ok = False
            raise
        finally:
            if self.reader is not None:
                self.reader.close()
            if self.writer is not None and ok:
                self.writer.close()
            elif self.writer is not None:
                self.writer.abort()
