"""The prepared source: a portrait (an image, or one frame of a source video) ready to be animated.

Preparing a source is the official pipeline's first half: resize to the source limit, detect the
face (or follow it from the previous frame), crop it with the official crop, run M on the crop for
its motion (x_c, R, exp, t, s) and keypoints x_s, and F for its appearance feature volume f_s. With
landmark models, the source's eye and lip open ratios come along for retargeting. The crop keeps
its crop->frame transform, so a rendered crop can be pasted back (engines.compose).

A source image may have several faces: `prepare_faces` prepares each face the `faces` option
selects (faces smaller than `min_face_size` left out, indices counted left to right by box centre),
each with its own crop, motion and f_s, M and F running once on the batch of their crops.
"""

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from common.errors import LivePortraitError
from common.options import MAX_FACES, AnimationOptions
from engines.engine import Engine
from engines.face.crop import crop_box_from_face_box, crop_box_from_landmarks, crop_image, crop_transform
from engines.face.crop import to_network_input as resize_to_network
from engines.face.detection import Face, LandmarksRequired
from engines.face.ratios import eye_open_ratio, lip_open_ratio
from engines.model import image_to_tensor
from engines.motion.keypoints import source_keypoints
from engines.motion.transfer import SourceMotion

LANDMARK_OPTIONS = (
    "flag_eye_retargeting",
    "flag_lip_retargeting",
    "flag_normalize_lip",
    "flag_source_video_eye_retargeting",
)
"""Options that need facial landmarks (the official 106/203-point models)."""

SOURCE_OPTIONS = (
    "source_max_dim",
    "source_division",
    "flag_do_crop",
    "flag_do_rot",
    "det_thresh",
    "faces",
    "min_face_size",
    "scale",
    "vx_ratio",
    "vy_ratio",
)
"""The options a prepared source depends on (what crop_source reads)."""


class EngineError(LivePortraitError):
    """A job that cannot be done with its inputs (no face, missing landmark models, ...)."""


@dataclass
class SourceCrop:
    """A source frame prepared for the networks: the (resized) frame (H, W, 3) uint8, its 512 crop,
    the crop->frame transform M_c2o (3, 3) and, with landmark models, the eye (2,) and lip (1,) open
    ratios."""

    frame: np.ndarray
    crop512: np.ndarray
    M_c2o: np.ndarray
    eye_ratio: np.ndarray | None
    lip_ratio: np.ndarray | None

    @property
    def network_input(self) -> np.ndarray:
        """(256, 256, 3) uint8: the crop at the networks' input size."""
        return resize_to_network(self.crop512)


@dataclass
class PreparedSource:
    """A source ready to render: its crop, its motion (M's info, x_s (1, 21, 3), ratios) and f_s
    (1, 32, 16, 64, 64), all on the engine's device."""

    crop: SourceCrop
    motion: SourceMotion
    f_s: torch.Tensor

    @property
    def x_s(self) -> torch.Tensor:
        return self.motion.x_s


def limited_size(h: int, w: int, max_dim: int) -> tuple[int, int]:
    """(width, height) of an h x w image after the official resize to a longest side of max_dim."""
    if max_dim > 0 and max(h, w) > max_dim:
        return (int(w * max_dim / h), max_dim) if h > w else (max_dim, int(h * max_dim / w))
    return w, h


def resize_to_limit(rgb: np.ndarray, max_dim: int, division: int) -> np.ndarray:
    """The official source resize: longest side at most max_dim, sides cut to a multiple of division."""
    h, w = rgb.shape[:2]
    size = limited_size(h, w, max_dim)
    if size != (w, h):
        rgb = cv2.resize(rgb, size)
    h, w = rgb.shape[:2]
    nh, nw = h - h % division, w - w % division
    return rgb[:nh, :nw] if nh and nw else rgb


def landmark_points(face: Face) -> np.ndarray | None:
    """The landmarks the crop is computed from: 106 points where detected, else 203, else None."""
    return face.lmk106 if face.lmk106 is not None else face.lmk203


def face_ratios(face: Face | None) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Eye (2,) and lip (1,) open ratios of a face with 203 landmarks; (None, None) otherwise."""
    if face is None or face.lmk203 is None:
        return None, None
    lmk = np.asarray(face.lmk203, dtype=np.float32)[None]
    return eye_open_ratio(lmk)[0], lip_open_ratio(lmk)[0]


def require_landmarks(engine: Engine, options: AnimationOptions, *, ratios: bool = False) -> None:
    """Refuse (landmarks_required) options that need landmarks when the analyzer has none; `ratios`: an
    expression edit sets target eye or lip ratios."""
    needs = [name for name in LANDMARK_OPTIONS if getattr(options, name)]
    needs += ["eye_ratio/lip_ratio"] if ratios else []
    if needs and not engine.analyzer.has_landmarks:
        raise EngineError("landmarks_required", str(LandmarksRequired(needs[0])))


def detect_face(engine: Engine, rgb: np.ndarray, prev: Face | None, what: str, min_score: float) -> Face:
    """The face of `rgb` (tracked from `prev`), or no_face naming `what`."""
    face = engine.analyzer.landmarks(rgb, prev, min_score=min_score)
    if face is None:
        raise EngineError("no_face", f"no face was found in the {what}")
    return face


def face_size(face: Face) -> float:
    """A face's size in pixels: the square root of its box area (so the largest face is the biggest)."""
    return float(np.sqrt(face.area))


def large_enough(faces: list[Face], frame_hw: tuple[int, int], min_face_size: float) -> list[Face]:
    """The faces at least `min_face_size` x the frame's shorter side, or no_face when none is."""
    smallest = min_face_size * min(frame_hw)
    kept = [face for face in faces if face_size(face) >= smallest]
    if not kept:
        raise EngineError("no_face", f"no face of at least {smallest:.0f} pixels (min_face_size) was found")
    return kept


def left_to_right(faces: list[Face]) -> list[Face]:
    """Faces in index order: by the x of their box centre, then its y."""
    return sorted(faces, key=lambda f: (float(f.box[0] + f.box[2]), float(f.box[1] + f.box[3])))


def select_faces(faces: list[Face], frame_hw: tuple[int, int], options: AnimationOptions) -> list[Face]:
    """The faces `options.faces` selects among detected `faces` (largest first), left to right:
    no_face when none is large enough, face_not_found for an index beyond the faces found."""
    faces = large_enough(faces, frame_hw, options.min_face_size)
    if options.faces == "largest":
        return faces[:1]
    if options.faces == "all":
        return left_to_right(faces[:MAX_FACES])
    ordered = left_to_right(faces)
    missing = [i for i in options.faces if i >= len(ordered)]
    if missing:
        found = f"{len(ordered)} face" + ("s" if len(ordered) > 1 else "")
        raise EngineError(
            "face_not_found",
            f"faces names face {missing[0]} but the source has {found} (indices 0 to {len(ordered) - 1}, "
            "left to right)",
        )
    return [ordered[i] for i in options.faces]


def crop_face(frame: np.ndarray, face: Face, options: AnimationOptions) -> SourceCrop:
    """The official crop of one face of a (resized) source frame: from its landmarks where it has
    them, else from its box."""
    points = landmark_points(face)
    if points is not None:
        box = crop_box_from_landmarks(
            points, options.scale, options.vx_ratio, options.vy_ratio, options.flag_do_rot
        )
    else:
        box = crop_box_from_face_box(face.box, options.scale, options.vx_ratio, options.vy_ratio)
    M_o2c = crop_transform(box)
    eye, lip = face_ratios(face)
    return SourceCrop(frame, crop_image(frame, M_o2c), np.linalg.inv(M_o2c), eye, lip)


def crop_source(
    engine: Engine, rgb: np.ndarray, options: AnimationOptions, prev: Face | None = None
) -> tuple[SourceCrop, Face | None]:
    """Detect the largest face (or track it from `prev`) and crop one source frame, as the official
    cropper does."""
    frame = resize_to_limit(rgb, options.source_max_dim, options.source_division)
    analyzer = engine.analyzer
    if not options.flag_do_crop:
        crop = cv2.resize(frame, (512, 512), interpolation=cv2.INTER_AREA)
        scale = np.diag([frame.shape[1] / 512, frame.shape[0] / 512, 1.0])
        face = (
            analyzer.landmarks(frame, prev, min_score=options.det_thresh) if analyzer.has_landmarks else None
        )
        eye, lip = face_ratios(face)
        return SourceCrop(frame, crop, scale, eye, lip), face
    face = detect_face(engine, frame, prev, "source", options.det_thresh)
    if prev is None:
        large_enough([face], frame.shape[:2], options.min_face_size)
    return crop_face(frame, face, options), face


def crop_faces(engine: Engine, rgb: np.ndarray, options: AnimationOptions) -> list[SourceCrop]:
    """The crops of the faces of a source image that `options.faces` selects, left to right; they
    share one (resized) frame."""
    if options.faces == "largest":  # (so is any selection without the crop: AnimationOptions)
        return [crop_source(engine, rgb, options)[0]]
    frame = resize_to_limit(rgb, options.source_max_dim, options.source_division)
    faces = engine.analyzer.faces(frame, min_score=options.det_thresh)
    if not faces:
        raise EngineError("no_face", "no face was found in the source")
    return [crop_face(frame, face, options) for face in select_faces(faces, frame.shape[:2], options)]


def source_crops(
    engine: Engine, frames: Iterable[np.ndarray], options: AnimationOptions
) -> Iterator[SourceCrop]:
    """Each frame of a source video cropped, the face tracked from frame to frame."""
    face = None
    for frame in frames:
        crop, face = crop_source(engine, frame, options, face)
        yield crop


def network_batch(engine: Engine, crops: list[SourceCrop]) -> torch.Tensor:
    """(B, 3, 256, 256) float network input of source crops, on the engine's device."""
    batch = np.stack([c.network_input for c in crops])
    return image_to_tensor(torch.from_numpy(batch)).to(engine.device)


def stack_known(values: list[np.ndarray | None]) -> np.ndarray | None:
    """(B, K) stacked ratios, or None unless there are some and every one is known."""
    known = [v for v in values if v is not None]
    return np.stack(known) if known and len(known) == len(values) else None


def stack_ratios(values: list[np.ndarray | None], device: torch.device) -> torch.Tensor | None:
    """(B, K) float32 ratios on `device`, or None unless every crop has them."""
    stacked = stack_known(values)
    return None if stacked is None else torch.from_numpy(stacked.astype(np.float32)).to(device)


def source_motion(engine: Engine, crops: list[SourceCrop]) -> tuple[SourceMotion, torch.Tensor]:
    """M on B source crops: their motion (info, x_s (B, 21, 3), ratios) and the network input."""
    batch = network_batch(engine, crops)
    info = engine.model.extract_motion(batch)
    motion = SourceMotion(
        info,
        source_keypoints(info),
        stack_ratios([c.eye_ratio for c in crops], engine.device),
        stack_ratios([c.lip_ratio for c in crops], engine.device),
    )
    return motion, batch


def prepare_source(engine: Engine, rgb: np.ndarray, options: AnimationOptions) -> PreparedSource:
    """A portrait image (H, W, 3) uint8 RGB, prepared: crop, M (x_s, ratios) and F (f_s) of its
    largest face (options.faces is not read: see prepare_faces)."""
    crop, _ = crop_source(engine, rgb, options)
    motion, net_in = source_motion(engine, [crop])
    return PreparedSource(crop, motion, engine.model.extract_appearance(net_in))


def prepare_faces(engine: Engine, rgb: np.ndarray, options: AnimationOptions) -> list[PreparedSource]:
    """Each face of a source image (H, W, 3) uint8 RGB that options.faces selects, left to right,
    prepared as prepare_source prepares one; M and F run once on the batch of their crops."""
    crops = crop_faces(engine, rgb, options)
    motion, net_in = source_motion(engine, crops)
    f_s = engine.model.extract_appearance(net_in)
    return [PreparedSource(crop, motion[i : i + 1], f_s[i : i + 1]) for i, crop in enumerate(crops)]
