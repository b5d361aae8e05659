"""A whole animation job, streaming: source and driving files in, an H.264 MP4 (or a PNG) out.

Pass 1 reads the driving input once and keeps only its motion (a few hundred floats a frame: the
same arrays as a motion template). Pass 2 renders in batches of frames: motion transfer, W and G,
paste-back, encode; the driving video is decoded again only for the side-by-side output. A video
source is read twice the same way (motion first, for the Kalman smoothing, then pixels). Memory
stays flat in the number of frames.
"""

import itertools
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import cv2
import numpy as np
import torch

from common.errors import Canceled, LivePortraitError
from common.options import AnimationOptions
from engines.acceleration.inference import Precision, optimize_for_inference
from engines.face.crop import (
    crop_box_from_face_box,
    crop_box_from_landmarks,
    crop_frames,
    crop_image,
    crop_transform,
    driving_global_box,
    to_network_input_frames,
)
from engines.face.crop import to_network_input as resize_to_network
from engines.face.detection import Face, FaceAnalyzer, LandmarksRequired, load_analyzer
from engines.face.pasteback import paste_back, paste_back_frames
from engines.face.ratios import eye_open_ratio, lip_open_ratio
from engines.heap import release_free_memory
from engines.media import Limits, MediaError, VideoReader, VideoWriter, probe, read_image, write_image
from engines.model import LivePortraitModel, image_to_tensor, to_uint8_frames
from engines.motion.keypoints import MotionInfo, source_keypoints
from engines.motion.template import MotionTemplate, is_motion_template, load_motion_template
from engines.motion.transfer import DrivingMotion, MotionTransfer, SourceMotion, smooth_video_motion
from engines.stages import Ahead, Behind

Progress = Callable[[int, int], None]
IMAGE_OUTPUT_FPS = 25.0
T = TypeVar("T")


class EngineError(LivePortraitError):
    """A job that cannot be done with its inputs (no face, missing landmark models, ...)."""


AnimationCanceled = Canceled


@dataclass
class AnimateResult:
    output: Path
    frames: int
    fps: float
    width: int
    height: int
    content_type: str


@dataclass
class SourceCrop:
    """A source frame prepared for the networks: the (resized) frame, its 512 crop, the crop->frame
    transform (3, 3) and, with landmark models, the eye (2,) and lip (1,) open ratios."""

    frame: np.ndarray
    crop512: np.ndarray
    M_c2o: np.ndarray
    eye_ratio: np.ndarray | None
    lip_ratio: np.ndarray | None

    @property
    def network_input(self) -> np.ndarray:
        return resize_to_network(self.crop512)


def resize_to_limit(rgb: np.ndarray, max_dim: int, division: int) -> np.ndarray:
    """The official source resize: longest side at most max_dim, sides cut to a multiple of division."""
    h, w = rgb.shape[:2]
    if max_dim > 0 and max(h, w) > max_dim:
        size = (int(w * max_dim / h), max_dim) if h > w else (max_dim, int(h * max_dim / w))
        rgb = cv2.resize(rgb, size)
    h, w = rgb.shape[:2]
    nh, nw = h - h % division, w - w % division
    return rgb[:nh, :nw] if nh and nw else rgb


def _landmark_points(face: Face) -> np.ndarray | None:
    return face.lmk106 if face.lmk106 is not None else face.lmk203


def _face_ratios(face: Face) -> tuple[np.ndarray | None, np.ndarray | None]:
    if face.lmk203 is None:
        return None, None
    lmk = np.asarray(face.lmk203, dtype=np.float32)[None]
    return eye_open_ratio(lmk)[0], lip_open_ratio(lmk)[0]


def _stack(values: list[np.ndarray | None]) -> torch.Tensor | None:
    if not values or any(v is None for v in values):
        return None
    return torch.from_numpy(np.stack(values).astype(np.float32))


def _batches(it: Iterable[T], size: int) -> Iterator[list[T]]:
    batch: list[T] = []
    for item in it:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _driving_crops(frames: Iterable[np.ndarray], M_o2c: np.ndarray | None) -> Iterator[np.ndarray]:
    """(512, 512, 3) crops of driving frames: the auto-crop `M_o2c`, or a plain resize when None."""
    for frame in frames:
        yield cv2.resize(frame, (512, 512)) if M_o2c is None else crop_image(frame, M_o2c)


def _upload(frames: list[np.ndarray], device: torch.device) -> torch.Tensor:
    """(B, H, W, 3) uint8 tensor on `device` from B equal-sized (H, W, 3) uint8 frames."""
    return torch.from_numpy(np.stack(frames)).to(device)


def _host_frames(frames: list[np.ndarray] | torch.Tensor) -> Iterable[np.ndarray]:
    """(H, W, 3) uint8 arrays in host memory of a list of them or of a (B, H, W, 3) tensor."""
    return frames.cpu().numpy() if isinstance(frames, torch.Tensor) else frames


def _pastes_back(options: AnimationOptions) -> bool:
    """Whether the output frames are the result pasted back into the source frame."""
    return (
        options.output_kind == "pasteback"
        and options.flag_pasteback
        and options.flag_do_crop
        and options.flag_stitching
    )


class Animator:
    """Keeps the model and the face analyzer loaded; runs animation jobs one after another."""

    def __init__(
        self,
        weights_dir: Path,
        device: str = "cpu",
        backend: str = "torch",
        frame_batch: int = 8,
        detector: str = "auto",
        optimize: bool = False,
        precision: Precision | None = None,
        *,
        pipelined: bool = True,
        compose_on_device: bool | None = None,
        cuda_graphs: bool = False,
        engine_cache_dir: Path | None = None,
    ) -> None:
        """backend: "torch", "onnxruntime", "tensorrt" or "auto" (TensorRT on a CUDA device that has
        it, else torch; compiled backends export and build into `engine_cache_dir` on first use);
        optimize: with torch, run acceleration.inference's rewritten F, W and G (float32 keeps the golden
        tolerance); precision: "fp32", "bf16" or "fp16" (torch: autocast, with optimize only;
        default fp32; compiled backends default to fp16 on CUDA); pipelined: decode and crop ahead of
        inference, paste back and encode behind it, in their own threads; compose_on_device: crop
        driving frames and paste back on the model's device (default: on CUDA); cuda_graphs: with
        optimize on CUDA, replay W+G from CUDA graphs captured per batch shape."""
        from engines.acceleration.backends.select import load_backend, resolve_backend

        self.device = torch.device(device)
        self.backend = resolve_backend(backend, self.device)
        if self.backend == "torch":
            precision = precision or "fp32"
            if precision != "fp32" and not optimize:
                raise ValueError("precision other than fp32 needs optimize=True")
            model = LivePortraitModel.from_weights(Path(weights_dir), self.device)
            if optimize:
                model = optimize_for_inference(
                    model, precision=precision, cuda_graphs=cuda_graphs, copy_model=False
                )
        else:
            model = load_backend(
                self.backend, Path(weights_dir), self.device, engine_cache_dir, precision=precision
            )
        self.model = model
        self.analyzer: FaceAnalyzer = load_analyzer(Path(weights_dir), detector)
        self.frame_batch = frame_batch
        self.pipelined = pipelined
        self.compose_on_device = (
            self.device.type == "cuda" if compose_on_device is None else compose_on_device
        )

    # --- inputs --------------------------------------------------------------------------------

    def _detect(self, rgb: np.ndarray, prev: Face | None, what: str) -> Face:
        face = self.analyzer.landmarks(rgb, prev)
        if face is None:
            raise EngineError("no_face", f"no face was found in the {what}")
        return face

    def _require_landmarks(self, options: AnimationOptions) -> None:
        needs = [
            name
            for name in (
                "flag_eye_retargeting",
                "flag_lip_retargeting",
                "flag_normalize_lip",
                "flag_source_video_eye_retargeting",
            )
            if getattr(options, name)
        ]
        if needs and not self.analyzer.has_landmarks:
            message = str(LandmarksRequired(needs[0]))
            raise EngineError("landmarks_required", message)

    def crop_source(
        self, rgb: np.ndarray, options: AnimationOptions, prev: Face | None = None
    ) -> tuple[SourceCrop, Face]:
        """Detect (or track from `prev`) and crop one source frame."""
        frame = resize_to_limit(rgb, options.source_max_dim, options.source_division)
        if not options.flag_do_crop:
            crop = cv2.resize(frame, (512, 512), interpolation=cv2.INTER_AREA)
            scale = np.diag([frame.shape[1] / 512, frame.shape[0] / 512, 1.0])
            face = self.analyzer.landmarks(frame, prev) if self.analyzer.has_landmarks else None
            eye, lip = _face_ratios(face) if face is not None else (None, None)
            return SourceCrop(frame, crop, scale, eye, lip), face
        face = self._detect(frame, prev, "source")
        points = _landmark_points(face)
        if points is not None:
            box = crop_box_from_landmarks(
                points, options.scale, options.vx_ratio, options.vy_ratio, options.flag_do_rot
            )
        else:
            box = crop_box_from_face_box(face.box, options.scale, options.vx_ratio, options.vy_ratio)
        M_o2c = crop_transform(box)
        eye, lip = _face_ratios(face)
        return SourceCrop(frame, crop_image(frame, M_o2c), np.linalg.inv(M_o2c), eye, lip), face

    def _driving_frames(
        self, path: Path, options: AnimationOptions, limits: Limits
    ) -> tuple[VideoReader, Iterator[np.ndarray]]:
        """The driving video's frames as 512x512 crops (auto-cropped or plainly resized)."""
        M_o2c = self._driving_crop(path, options, limits) if options.flag_crop_driving_video else None
        reader = VideoReader(path, limits)
        return reader, _driving_crops(reader, M_o2c)

    def _driving_crop(self, path: Path, options: AnimationOptions, limits: Limits) -> np.ndarray:
        """The official driving auto-crop: one box, averaged over every frame's landmarks."""
        if not self.analyzer.has_landmarks:
            raise EngineError("landmarks_required", str(LandmarksRequired("flag_crop_driving_video")))
        points, face = [], None
        with VideoReader(path, limits) as reader:
            for frame in reader:
                face = self._detect(frame, face, "driving video")
                points.append(_landmark_points(face))
        crop = driving_global_box(
            points,
            options.scale_crop_driving_video,
            options.vx_ratio_crop_driving_video,
            options.vy_ratio_crop_driving_video,
        )
        return crop.M_o2c

    def _ahead(self, items: Iterable[T], name: str) -> AbstractContextManager[Iterator[T]]:
        """`items` produced in a thread ahead of the caller when pipelined, else in the caller's."""
        return Ahead(items, depth=2, name=name) if self.pipelined else nullcontext(iter(items))

    def _network_input(self, crops: list[np.ndarray] | torch.Tensor) -> torch.Tensor:
        """(B, 3, 256, 256) float network input of 512 crops on the model's device, from a list of
        (512, 512, 3) uint8 arrays or a (B, 512, 512, 3) uint8 tensor on the device."""
        if isinstance(crops, torch.Tensor):
            return to_network_input_frames(crops)
        batch = np.stack([resize_to_network(c) for c in crops])
        return image_to_tensor(torch.from_numpy(batch)).to(self.device)

    def extract_motion(
        self,
        driving: Path,
        options: AnimationOptions,
        *,
        limits: Limits | None = None,
        should_cancel: Callable[[], bool] | None = None,
    ) -> MotionTemplate:
        """Pass 1 over a driving video: per-frame motion (and eye/lip ratios with landmark models).

        Decoding and cropping run ahead in a thread; with compose_on_device, the auto-crop warp runs
        on the model's device instead."""
        limits = limits or Limits()
        infos, eyes, lips = [], [], []
        want_ratios = self.analyzer.has_landmarks
        M_o2c = self._driving_crop(driving, options, limits) if options.flag_crop_driving_video else None
        on_device = self.compose_on_device and M_o2c is not None
        with VideoReader(driving, limits) as reader:
            frames = iter(reader) if on_device else _driving_crops(reader, M_o2c)
            with self._ahead(_batches(frames, self.frame_batch), "driving-decode") as batches:
                face = None
                for batch in batches:
                    if should_cancel is not None and should_cancel():
                        raise AnimationCanceled
                    crops = crop_frames(_upload(batch, self.device), M_o2c) if on_device else batch
                    infos.append(self.model.extract_motion(self._network_input(crops)))
                    for crop in _host_frames(crops) if want_ratios else ():
                        face = self.analyzer.landmarks(crop, face)
                        eye, lip = _face_ratios(face) if face is not None else (None, None)
                        eyes.append(eye)
                        lips.append(lip)
                    release_free_memory()
            fps = reader.fps or IMAGE_OUTPUT_FPS
        info = MotionInfo.cat(infos)
        template = MotionTemplate(
            fps=fps,
            exp=info.exp.cpu().numpy(),
            R=info.R.cpu().numpy(),
            scale=info.scale.cpu().numpy(),
            t=info.t.cpu().numpy(),
            kp=info.kp.cpu().numpy(),
            x_s=source_keypoints(info).cpu().numpy(),
            c_eyes=np.stack(eyes) if eyes and all(e is not None for e in eyes) else None,
            c_lip=np.stack(lips) if lips and all(v is not None for v in lips) else None,
            source_name=Path(driving).name,
        )
        return template

    def _template_motion(self, template: MotionTemplate) -> DrivingMotion:
        t = {
            k: torch.from_numpy(np.ascontiguousarray(getattr(template, k))).to(self.device)
            for k in ("exp", "R", "scale", "t")
        }
        n = t["exp"].shape[0]
        kp = (
            torch.zeros_like(t["exp"])
            if template.kp is None
            else torch.from_numpy(template.kp).to(self.device)
        )
        zeros = torch.zeros(n, device=self.device)
        info = MotionInfo(
            kp=kp, exp=t["exp"], pitch=zeros, yaw=zeros, roll=zeros, t=t["t"], scale=t["scale"], R=t["R"]
        )
        eye = None if template.c_eyes is None else torch.from_numpy(template.c_eyes[:, 0]).to(self.device)
        lip = None if template.c_lip is None else torch.from_numpy(template.c_lip[:, 0]).to(self.device)
        return DrivingMotion(info, eye, lip)

    # --- the job -------------------------------------------------------------------------------

    def animate(
        self,
        source: Path,
        driving: Path,
        output: Path,
        options: AnimationOptions,
        *,
        limits: Limits | None = None,
        progress: Progress | None = None,
        should_cancel: Callable[[], bool] | None = None,
        trust_pickle: bool = False,
    ) -> AnimateResult:
        """Animate `source` (image or video) with `driving` (video, image or motion template)."""
        limits = limits or Limits()
        source, driving, output = Path(source), Path(driving), Path(output)
        self._require_landmarks(options)

        driving_kind = "template" if is_motion_template(driving) else probe(driving, limits).kind
        if driving_kind == "template":
            template = load_motion_template(driving, trust_pickle=trust_pickle)
        elif driving_kind == "video":
            template = self.extract_motion(driving, options, limits=limits, should_cancel=should_cancel)
        else:
            template = self._image_template(driving, options, limits)
        drv = self._template_motion(template)
        if (options.flag_eye_retargeting and drv.eye_ratio is None) or (
            options.flag_lip_retargeting and drv.lip_ratio is None
        ):
            raise EngineError(
                "landmarks_required", "eye/lip retargeting needs the driving eye and lip ratios"
            )

        source_info = probe(source, limits)
        fps = options.output_fps or (template.fps if driving_kind != "image" else IMAGE_OUTPUT_FPS)
        job = _Job(driving, driving_kind, drv, output, options, limits, fps, progress, should_cancel)
        if source_info.kind == "video":
            return self._animate_video_source(source, job)
        return self._animate_image_source(source, job)

    def _image_template(self, path: Path, options: AnimationOptions, limits: Limits) -> MotionTemplate:
        rgb = read_image(path, limits)
        crop = cv2.resize(rgb, (512, 512))
        if options.flag_crop_driving_video:
            face = self._detect(rgb, None, "driving image")
            points = _landmark_points(face)
            if points is None:
                raise EngineError("landmarks_required", str(LandmarksRequired("flag_crop_driving_video")))
            crop = crop_image(
                rgb,
                driving_global_box(
                    [points],
                    options.scale_crop_driving_video,
                    options.vx_ratio_crop_driving_video,
                    options.vy_ratio_crop_driving_video,
                ).M_o2c,
            )
        info = self.model.extract_motion(self._network_input([crop]))
        eye = lip = None
        if self.analyzer.has_landmarks:
            face = self.analyzer.landmarks(crop, None)
            eye, lip = _face_ratios(face) if face is not None else (None, None)
        return MotionTemplate(
            fps=IMAGE_OUTPUT_FPS,
            exp=info.exp.cpu().numpy(),
            R=info.R.cpu().numpy(),
            scale=info.scale.cpu().numpy(),
            t=info.t.cpu().numpy(),
            kp=info.kp.cpu().numpy(),
            x_s=source_keypoints(info).cpu().numpy(),
            c_eyes=None if eye is None else eye[None],
            c_lip=None if lip is None else lip[None],
            source_name=path.name,
        )

    def _network_batch(self, crops: list[SourceCrop]) -> torch.Tensor:
        """(B, 3, 256, 256) float network input of source crops, on the model's device."""
        return image_to_tensor(torch.from_numpy(np.stack([c.network_input for c in crops]))).to(self.device)

    def _source_motion(self, crops: list[SourceCrop]) -> tuple[SourceMotion, torch.Tensor]:
        batch = self._network_batch(crops)
        info = self.model.extract_motion(batch)
        motion = SourceMotion(
            info,
            source_keypoints(info),
            _stack([c.eye_ratio for c in crops]),
            _stack([c.lip_ratio for c in crops]),
        )
        return motion, batch

    def _animate_image_source(self, source: Path, job: "_Job") -> AnimateResult:
        src_crop, _ = self.crop_source(read_image(source, job.limits), job.options)
        src, net_in = self._source_motion([src_crop])
        f_s = self.model.extract_appearance(net_in)
        transfer = MotionTransfer(
            self.model, job.options, src, job.drv.info[0:1], driving_is_video=job.driving_kind != "image"
        )
        n = len(job.drv.info)
        if job.driving_kind == "image":
            result = to_uint8_frames(self.model.render(f_s, src.x_s, transfer(src, job.drv)))[0].cpu().numpy()
            still = cv2.resize(read_image(job.driving, job.limits), (512, 512))
            out = compose_frame(job.options, result, src_crop, still)
            output = job.output.with_suffix(".png")
            write_image(output, out)
            if job.progress:
                job.progress(1, 1)
            return AnimateResult(output, 1, job.fps, out.shape[1], out.shape[0], "image/png")

        audio = job.driving if (job.options.audio == "driving" and job.driving_kind == "video") else None
        with _FrameSink(self, job, n, audio) as sink:
            for start in range(0, n, self.frame_batch):
                job.check_cancel()
                part = job.drv[start : start + self.frame_batch]
                sink.add(self.model.render(f_s, src.x_s, transfer(src, part)), [src_crop] * len(part.info))
        return sink.result()

    def _animate_video_source(self, source: Path, job: "_Job") -> AnimateResult:
        if job.driving_kind == "image":
            raise EngineError("unsupported_input", "a video source needs a driving video or motion template")
        options, drv, size = job.options, job.drv, self.frame_batch
        # pass 1 over the source: each frame's crop motion and ratios, for the smoothing
        infos, eyes, lips = [], [], []
        with (
            VideoReader(source, job.limits) as reader,
            self._ahead(_batches(self._source_crops(reader, options), size), "source-crop") as batches,
        ):
            for crops in batches:
                job.check_cancel()
                motion, _ = self._source_motion(crops)
                infos.append(motion.info)
                eyes += [c.eye_ratio for c in crops]
                lips += [c.lip_ratio for c in crops]
                if sum(len(i) for i in infos) >= len(drv.info):
                    break
        info = MotionInfo.cat(infos)
        n = min(len(info), len(drv.info))
        info, drv = info[:n], drv[:n]
        sources = SourceMotion(info, source_keypoints(info), _stack(eyes[:n]), _stack(lips[:n]))
        smoothed, _, _ = smooth_video_motion(info, drv.info, options)
        transfer = MotionTransfer(self.model, options, sources[0:1], drv.info[0:1], source_is_video=True)

        # pass 2: re-read and re-crop the source frames, render, paste back
        audio = {"driving": job.driving if job.driving_kind == "video" else None, "source": source}.get(
            options.audio
        )
        with (
            VideoReader(source, job.limits) as reader,
            self._ahead(
                _batches(itertools.islice(self._source_crops(reader, options), n), size), "source-crop"
            ) as batches,
            _FrameSink(self, job, n, audio) as sink,
        ):
            start = 0
            for crops in batches:
                job.check_cancel()
                stop = start + len(crops)
                f_s = self.model.extract_appearance(self._network_batch(crops))
                part = sources[start:stop]
                x_d = transfer(part, drv[start:stop], smoothed[start:stop])
                sink.add(self.model.render(f_s, part.x_s, x_d), crops)
                start = stop
        return sink.result()

    def _source_crops(self, frames: Iterable[np.ndarray], options: AnimationOptions) -> Iterator[SourceCrop]:
        """Each frame of a source video cropped, the face tracked from frame to frame."""
        face = None
        for frame in frames:
            crop, face = self.crop_source(frame, options, face)
            yield crop


def compose_frame(
    options: AnimationOptions, result: np.ndarray, src: SourceCrop, driving512: np.ndarray | None
) -> np.ndarray:
    """The output frame for one rendered 512 crop: pasted back, the crop, or driving | source | result."""
    if options.output_kind == "side_by_side":
        return np.concatenate([driving512, src.crop512, result], axis=1)
    if _pastes_back(options):
        return paste_back(result, src.M_c2o, src.frame)
    return result


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
    progress: Progress | None
    should_cancel: Callable[[], bool] | None

    def check_cancel(self) -> None:
        if self.should_cancel is not None and self.should_cancel():
            raise AnimationCanceled


class _FrameSink:
    """Turns rendered batches into output frames and encodes them, behind the inference loop.

    `add` takes a batch as rendered, on the model's device. With compose_on_device the paste-back
    runs there too; otherwise the frames are composed on the CPU (OpenCV) in the encoding thread.
    The encoder opens on the first frame (its size is known then); on an error the partial file is
    removed. For the side-by-side output the driving video is decoded again alongside. Progress is
    reported from the caller's thread, in frames encoded.
    """

    def __init__(self, animator: Animator, job: _Job, total: int, audio: Path | None) -> None:
        self.job, self.total, self.audio, self.done = job, total, audio, 0
        self.device = animator.device
        self.on_device = animator.compose_on_device and _pastes_back(job.options)
        self.writer: VideoWriter | None = None
        self.reader: VideoReader | None = None
        self.driving_frames: Iterator[np.ndarray] | None = None
        self._reported = 0
        self._original: tuple[SourceCrop, torch.Tensor] | None = None
        if job.options.output_kind == "side_by_side":
            if job.driving_kind == "video":
                self.reader, self.driving_frames = animator._driving_frames(
                    job.driving, job.options, job.limits
                )
            else:  # a motion template has no pixels to show
                self.driving_frames = itertools.repeat(np.zeros((512, 512, 3), np.uint8))
        self._behind: Behind[tuple[torch.Tensor, list[SourceCrop]]] | None = (
            Behind(self._encode, depth=2, name="encode") if animator.pipelined else None
        )

    def __enter__(self) -> "_FrameSink":
        return self

    def add(self, images: torch.Tensor, crops: list[SourceCrop]) -> None:
        """Queue a batch: images (B, 3, 512, 512) in [0, 1] with each frame's source crop."""
        frames = self._paste_back_on_device(images, crops) if self.on_device else to_uint8_frames(images)
        if self._behind is None:
            self._encode((frames, crops))
        else:
            self._behind.put((frames, crops))
        self._report()

    def _paste_back_on_device(self, images: torch.Tensor, crops: list[SourceCrop]) -> torch.Tensor:
        """(B, H, W, 3) uint8 output frames on the model's device."""
        if all(c is crops[0] for c in crops):  # an image source: one frame, uploaded once
            if self._original is None or self._original[0] is not crops[0]:
                self._original = (crops[0], torch.from_numpy(crops[0].frame).to(self.device))
            return paste_back_frames(images, crops[0].M_c2o, self._original[1])
        originals = _upload([c.frame for c in crops], self.device)
        return paste_back_frames(images, np.stack([c.M_c2o for c in crops]), originals)

    def _encode(self, item: tuple[torch.Tensor, list[SourceCrop]]) -> None:
        """Compose (unless done on the device) and encode one batch of (B, H, W, 3) uint8 frames."""
        frames, crops = item
        options = self.job.options
        for frame, crop in zip(frames.cpu().numpy(), crops, strict=True):
            driving = next(self.driving_frames) if self.driving_frames is not None else None
            out = frame if self.on_device else compose_frame(options, frame, crop, driving)
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
        self.done += len(crops)
        release_free_memory()

    def _report(self) -> None:
        done = self.done
        if self.job.progress and done != self._reported:
            self._reported = done
            self.job.progress(done, self.total)

    def result(self) -> AnimateResult:
        w = self.writer
        return AnimateResult(self.job.output, self.done, self.job.fps, w.width, w.height, "video/mp4")

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        ok = exc_type is None
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
        self._report()


__all__ = ["AnimateResult", "AnimationCanceled", "Animator", "EngineError", "MediaError"]
