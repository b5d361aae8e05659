"""Driving motion: what M sees in each driving frame, kept as a motion template.

A driving video is read once (pass 1) and only its motion is kept, a few hundred floats a frame:
M's (x_c, R, exp, t, s) per frame and, with landmark models, each frame's eye and lip open ratios.
A driving image is one frame of motion; a motion template (.npz) is that motion saved. Motion
transfer (engines.motion.transfer) then makes it relative to a reference frame (the first).
"""

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import cv2
import numpy as np
import torch

from common.errors import Canceled
from common.options import AnimationOptions
from engines.engine import Engine
from engines.face.crop import crop_frames, crop_image, driving_global_box, to_network_input_frames
from engines.face.crop import to_network_input as resize_to_network
from engines.face.detection import Face, LandmarksRequired
from engines.heap import release_free_memory
from engines.media import Limits, VideoReader, probe, read_image
from engines.model import frames_to_device, image_to_tensor
from engines.motion.keypoints import MotionInfo, source_keypoints
from engines.motion.template import MotionTemplate, is_motion_template, load_motion_template
from engines.motion.transfer import DrivingMotion
from engines.source import EngineError, detect_face, face_ratios, landmark_points, stack_known
from engines.stages import ahead, batches

IMAGE_FPS = 25.0
"""The frame rate of a driving image's "video" (one frame) and of its outputs."""


def driving_crops(frames: Iterable[np.ndarray], M_o2c: np.ndarray | None) -> Iterator[np.ndarray]:
    """(512, 512, 3) crops of driving frames: the auto-crop `M_o2c`, or a plain resize when None."""
    for frame in frames:
        yield cv2.resize(frame, (512, 512)) if M_o2c is None else crop_image(frame, M_o2c)


def driving_crop(engine: Engine, path: Path, options: AnimationOptions, limits: Limits) -> np.ndarray:
    """The official driving auto-crop M_o2c (3, 3): one box, averaged over every frame's landmarks."""
    if not engine.analyzer.has_landmarks:
        raise EngineError("landmarks_required", str(LandmarksRequired("flag_crop_driving_video")))
    points: list[np.ndarray] = []
    face = None
    with VideoReader(path, limits) as reader:
        for frame in reader:
            face = detect_face(engine, frame, face, "driving video", options.det_thresh)
            points.append(_crop_points(face))
    return _global_box(points, options)


def _crop_points(face: Face) -> np.ndarray:
    """The landmarks the driving auto-crop is computed from; landmarks_required for a box-only face."""
    points = landmark_points(face)
    if points is None:
        raise EngineError("landmarks_required", str(LandmarksRequired("flag_crop_driving_video")))
    return points


def _global_box(points: list[np.ndarray], options: AnimationOptions) -> np.ndarray:
    crop = driving_global_box(
        points,
        options.scale_crop_driving_video,
        options.vx_ratio_crop_driving_video,
        options.vy_ratio_crop_driving_video,
    )
    return crop.M_o2c


def driving_frames(
    engine: Engine, path: Path, options: AnimationOptions, limits: Limits
) -> tuple[VideoReader, Iterator[np.ndarray]]:
    """The driving video's frames as 512x512 crops (auto-cropped or plainly resized)."""
    M_o2c = driving_crop(engine, path, options, limits) if options.flag_crop_driving_video else None
    reader = VideoReader(path, limits)
    return reader, driving_crops(reader, M_o2c)


def network_input(engine: Engine, crops: list[np.ndarray] | torch.Tensor) -> torch.Tensor:
    """(B, 3, 256, 256) float network input of 512 crops on the engine's device, from a list of
    (512, 512, 3) uint8 arrays or a (B, 512, 512, 3) uint8 tensor on the device."""
    if isinstance(crops, torch.Tensor):
        return to_network_input_frames(crops)
    batch = np.stack([resize_to_network(c) for c in crops])
    return image_to_tensor(torch.from_numpy(batch)).to(engine.device)


def _host_frames(frames: list[np.ndarray] | torch.Tensor) -> Iterable[np.ndarray]:
    """(H, W, 3) uint8 arrays in host memory of a list of them or of a (B, H, W, 3) tensor."""
    return frames.cpu().numpy() if isinstance(frames, torch.Tensor) else frames


def _template(
    infos: list[MotionInfo],
    eyes: list[np.ndarray | None],
    lips: list[np.ndarray | None],
    fps: float,
    name: str,
) -> MotionTemplate:
    """A motion template of N frames from M's info and the frames' ratios (kept when all are known)."""
    info = MotionInfo.cat(infos)
    return MotionTemplate(
        fps=fps,
        exp=info.exp.cpu().numpy(),
        R=info.R.cpu().numpy(),
        scale=info.scale.cpu().numpy(),
        t=info.t.cpu().numpy(),
        kp=info.kp.cpu().numpy(),
        x_s=source_keypoints(info).cpu().numpy(),
        c_eyes=stack_known(eyes),
        c_lip=stack_known(lips),
        source_name=name,
    )


def video_motion(
    engine: Engine,
    driving: Path,
    options: AnimationOptions,
    *,
    limits: Limits | None = None,
    should_cancel: Callable[[], bool] | None = None,
    frames_read: Callable[[int, int], None] | None = None,
) -> MotionTemplate:
    """Pass 1 over a driving video: per-frame motion (and eye/lip ratios with landmark models).

    Decoding and cropping run ahead in a thread; with compose_on_device, the auto-crop warp runs on
    the model's device instead. `frames_read(done, expected)` is called after each batch M read."""
    limits = limits or Limits()
    infos: list[MotionInfo] = []
    eyes: list[np.ndarray | None] = []
    lips: list[np.ndarray | None] = []
    want_ratios = engine.analyzer.has_landmarks
    M_o2c = driving_crop(engine, driving, options, limits) if options.flag_crop_driving_video else None
    device_crop = M_o2c if engine.compose_on_device else None  # the auto-crop, run on the device
    with VideoReader(driving, limits) as reader:
        frames = iter(reader) if device_crop is not None else driving_crops(reader, M_o2c)
        with ahead(
            batches(frames, engine.frame_batch), enabled=engine.pipelined, name="driving-decode"
        ) as items:
            face: Face | None = None
            for batch in items:
                if should_cancel is not None and should_cancel():
                    raise Canceled
                crops = (
                    crop_frames(frames_to_device(batch, engine.device), device_crop)
                    if device_crop is not None
                    else batch
                )
                infos.append(engine.model.extract_motion(network_input(engine, crops)))
                for crop in _host_frames(crops) if want_ratios else ():
                    face = engine.analyzer.landmarks(crop, face, min_score=options.det_thresh)
                    eye, lip = face_ratios(face)
                    eyes.append(eye)
                    lips.append(lip)
                release_free_memory()
                if frames_read is not None:
                    done = sum(len(i) for i in infos)
                    frames_read(done, max(reader.n_frames, done))
        fps = reader.fps or IMAGE_FPS
    return _template(infos, eyes, lips, fps, Path(driving).name)


def image_motion(engine: Engine, path: Path, options: AnimationOptions, limits: Limits) -> MotionTemplate:
    """A driving image's motion: one frame (auto-cropped around its face, or plainly resized)."""
    rgb = read_image(path, limits)
    crop = cv2.resize(rgb, (512, 512))
    if options.flag_crop_driving_video:
        points = _crop_points(detect_face(engine, rgb, None, "driving image", options.det_thresh))
        crop = crop_image(rgb, _global_box([points], options))
    info = engine.model.extract_motion(network_input(engine, [crop]))
    face = (
        engine.analyzer.landmarks(crop, None, min_score=options.det_thresh)
        if engine.analyzer.has_landmarks
        else None
    )
    eye, lip = face_ratios(face)
    return _template([info], [eye], [lip], IMAGE_FPS, path.name)


def driving_kind(path: Path, limits: Limits) -> str:
    """ "template", "video" or "image", from the file's bytes."""
    return "template" if is_motion_template(path) else probe(path, limits).kind


def load_driving(
    engine: Engine,
    path: Path,
    options: AnimationOptions,
    limits: Limits,
    *,
    should_cancel: Callable[[], bool] | None = None,
    trust_pickle: bool = False,
    frames_read: Callable[[int, int], None] | None = None,
) -> tuple[str, MotionTemplate]:
    """The driving input's kind and its motion, whatever it is (video, image or motion template)."""
    kind = driving_kind(path, limits)
    if kind == "template":
        return kind, load_motion_template(path, trust_pickle=trust_pickle)
    if kind == "video":
        return kind, video_motion(
            engine, path, options, limits=limits, should_cancel=should_cancel, frames_read=frames_read
        )
    return kind, image_motion(engine, path, options, limits)


def template_motion(template: MotionTemplate, device: torch.device) -> DrivingMotion:
    """A motion template's N frames as DrivingMotion on `device` (eye ratio: the left eye's)."""
    t = {
        k: torch.from_numpy(np.ascontiguousarray(getattr(template, k))).to(device)
        for k in ("exp", "R", "scale", "t")
    }
    n = t["exp"].shape[0]
    kp = torch.zeros_like(t["exp"]) if template.kp is None else torch.from_numpy(template.kp).to(device)
    zeros = torch.zeros(n, device=device)
    info = MotionInfo(
        kp=kp, exp=t["exp"], pitch=zeros, yaw=zeros, roll=zeros, t=t["t"], scale=t["scale"], R=t["R"]
    )
    eye = None if template.c_eyes is None else torch.from_numpy(template.c_eyes[:, 0]).to(device)
    lip = None if template.c_lip is None else torch.from_numpy(template.c_lip[:, 0]).to(device)
    return DrivingMotion(info, eye, lip)
