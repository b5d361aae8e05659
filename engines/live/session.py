"""The per-frame path of a live session, on the primitives.

A session holds a prepared source (engines.source) and, for each driving frame: the driving face
followed from the previous frame (engines.live.tracking; detected again when lost) and cropped as
the official driving crop does (no rotation: the roll is motion), M's motion of the crop (in a
batch with other sessions' frames), optionally smoothed by a One-Euro filter (expression, angles,
translation and scale; R is recomputed from the smoothed angles), made relative to the session's
reference frame by MotionTransfer (stitching, retargeting, expression offsets), then W+G
(`render_frames`, one call for the batch), compose (the crop, pasted back, or side by side) and JPEG.

Threads: `drive` and `answer` run on a pool of CPU threads (one frame of a session at a time),
`render_frames` on the inference thread; `reset`, `set_expression` and `set_options` come from the
session's connection and take effect at the next frame.
"""

import threading
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np
import torch

from common.expression import ExpressionControls
from common.live import LiveError, LiveOptions
from engines.compose import compose_frame
from engines.engine import Engine
from engines.face.crop import to_network_input as resize_to_network
from engines.live.codec import decode_frame, encode_frame
from engines.live.tracking import DrivingCropper
from engines.model import image_to_tensor, to_uint8_frames
from engines.motion.expression import EditBatch, expression_edit
from engines.motion.keypoints import NUM_KP, MotionInfo, rotation_matrix
from engines.motion.one_euro import OneEuroFilter
from engines.motion.transfer import DrivingMotion, MotionTransfer
from engines.source import PreparedSource, face_ratios, require_landmarks


@dataclass
class DrivingFrame:
    """A driving frame ready for M: its 512 crop (512, 512, 3) uint8 and the face's eye (2,) and lip (1,)
    open ratios (None without landmarks)."""

    crop512: np.ndarray
    eye_ratio: np.ndarray | None
    lip_ratio: np.ndarray | None

    @property
    def network_input(self) -> np.ndarray:
        """(256, 256, 3) uint8: the crop at the networks' input size."""
        return resize_to_network(self.crop512)


_SMOOTHED = (("exp", 3 * NUM_KP), ("pitch", 1), ("yaw", 1), ("roll", 1), ("t", 3), ("scale", 1))
"""The entries of M's motion the One-Euro filter smooths, and their sizes."""


def smoothed_motion(smoother: OneEuroFilter, info: MotionInfo, t: float) -> MotionInfo:
    """One frame of motion (batch 1) smoothed at time t (seconds): R is recomputed from the angles."""
    flat = torch.cat([getattr(info, name).reshape(1, -1) for name, _ in _SMOOTHED], dim=1)
    names, sizes = zip(*_SMOOTHED, strict=True)
    parts = dict(zip(names, smoother(flat, t).split(list(sizes), 1), strict=True))
    pitch, yaw, roll = parts["pitch"][:, 0], parts["yaw"][:, 0], parts["roll"][:, 0]
    return MotionInfo(
        kp=info.kp,
        exp=parts["exp"].view(1, NUM_KP, 3),
        pitch=pitch,
        yaw=yaw,
        roll=roll,
        t=parts["t"],
        scale=parts["scale"],
        R=rotation_matrix(pitch, yaw, roll),
    )


def _smoother(options: LiveOptions) -> OneEuroFilter | None:
    s = options.smoothing
    return None if s is None else OneEuroFilter(s.min_cutoff, s.beta)


class LiveSession:
    """One live session on an engine: its prepared source, the tracked driving face, the motion
    reference, the smoothing filter and the expression offsets."""

    def __init__(
        self,
        engine: Engine,
        prepared: PreparedSource,
        options: LiveOptions,
        max_pixels: int,
        executor: Executor | None = None,
    ) -> None:
        """`executor`: where the driving crop's periodic face checks run, off the frame's path."""
        self.engine = engine
        self.max_pixels = max_pixels
        self.executor = executor
        self._prepared = prepared
        self._options = options
        self._lock = threading.Lock()
        self._reference: MotionInfo | None = None
        self._transfer: MotionTransfer | None = None
        self._controls: ExpressionControls | None = None
        self._edit: EditBatch | None = None
        self._smoother = _smoother(options)
        self._cropper = self._new_cropper(options)

    def _new_cropper(self, options: LiveOptions) -> DrivingCropper:
        animation = options.animation
        every_frame = animation.flag_eye_retargeting or animation.flag_lip_retargeting
        return DrivingCropper(
            self.engine.analyzer, animation, executor=self.executor, every_frame=every_frame
        )

    @property
    def prepared(self) -> PreparedSource:
        return self._prepared

    @property
    def options(self) -> LiveOptions:
        return self._options

    # --- control, from the connection ---------------------------------------------------------

    def reset(self) -> None:
        """Take the next frame as the motion reference, its face framed afresh (and restart the smoothing)."""
        with self._lock:
            self._reference = self._transfer = None
            self._cropper = self._new_cropper(self._options)
            if self._smoother is not None:
                self._smoother.reset()

    def set_expression(self, controls: ExpressionControls | None) -> None:
        """Expression offsets on top of the driving motion from the next frame (None: none)."""
        self._check_expression(controls, self._options)
        edit = None if controls is None else EditBatch.stack([expression_edit(controls)], self.engine.device)
        with self._lock:
            self._controls, self._edit, self._transfer = controls, edit, None

    def set_options(self, options: LiveOptions, prepared: PreparedSource | None = None) -> None:
        """New options from the next frame; `prepared`: the source prepared again when the options it
        depends on changed. The motion reference is kept; the driving face is framed afresh."""
        require_landmarks(self.engine, options.animation)
        self._check_expression(self._controls, options)
        with self._lock:
            if options.smoothing != self._options.smoothing:
                self._smoother = _smoother(options)
            self._options, self._transfer = options, None
            self._cropper = self._new_cropper(options)
            if prepared is not None:
                self._prepared = prepared

    def _check_expression(self, controls: ExpressionControls | None, options: LiveOptions) -> None:
        if controls is None:
            return
        if not options.animation.flag_relative_motion:
            raise LiveError(
                "invalid_options", "expression offsets need relative motion (flag_relative_motion)"
            )
        require_landmarks(self.engine, options.animation, ratios=controls.needs_landmarks)

    # --- the frame path -----------------------------------------------------------------------

    def decode(self, data: bytes) -> np.ndarray:
        """A driving JPEG -> (H, W, 3) uint8 RGB (LiveError bad_frame, frame_too_large)."""
        return decode_frame(data, self.max_pixels)

    def drive(self, rgb: np.ndarray) -> DrivingFrame:
        """The driving crop of a camera frame (engines.live.tracking.DrivingCropper); LiveError no_face
        when no face is known."""
        crop, face = self._cropper(rgb)
        eye, lip = face_ratios(face)
        return DrivingFrame(crop, eye, lip)

    def keypoints(self, info: MotionInfo, frame: DrivingFrame, t: float) -> torch.Tensor:
        """x_d (1, 21, 3) of one frame's motion (batch 1) at time t (seconds), relative to the reference."""
        with self._lock:
            if self._smoother is not None:
                info = smoothed_motion(self._smoother, info, t)
            if self._reference is None:
                self._reference = info
            if self._transfer is None:
                self._transfer = MotionTransfer(
                    self.engine.model,
                    self._options.animation,
                    self._prepared.motion,
                    self._reference,
                    edit=self._edit,
                )
            transfer, source = self._transfer, self._prepared.motion
        device = info.exp.device
        eye = None if frame.eye_ratio is None else torch.tensor(frame.eye_ratio[:1], device=device)
        lip = None if frame.lip_ratio is None else torch.tensor(frame.lip_ratio[:1], device=device)
        return transfer(source, DrivingMotion(info, eye, lip))

    def answer(self, result: np.ndarray, frame: DrivingFrame) -> bytes:
        """The JPEG sent back for one rendered (512, 512, 3) uint8 crop: composed, resized, encoded."""
        options, prepared = self._options, self._prepared
        out = compose_frame(options.composing(), result, prepared.crop, frame.crop512)
        return encode_frame(out, options.quality, options.size)


def render_frames(
    engine: Engine, sessions: list[LiveSession], frames: list[DrivingFrame], times: list[float]
) -> list[np.ndarray | Exception]:
    """One frame of each of B sessions (one source each): M on the B crops, each session's keypoints,
    then one W+G call for the B of them -> (512, 512, 3) uint8 per session, or the error of a session
    whose keypoints failed (the others are rendered)."""
    batch = np.stack([f.network_input for f in frames])
    info = engine.model.extract_motion(image_to_tensor(torch.from_numpy(batch)).to(engine.device))
    keypoints: list[torch.Tensor | Exception] = []
    for i, (session, frame, t) in enumerate(zip(sessions, frames, times, strict=True)):
        try:
            keypoints.append(session.keypoints(info[i], frame, t))
        except Exception as exc:  # this session's failure is its own answer; the batch goes on
            keypoints.append(exc)
    rendered = [i for i, k in enumerate(keypoints) if isinstance(k, torch.Tensor)]
    images: dict[int, np.ndarray] = {}
    if rendered:
        f_s = torch.cat([sessions[i].prepared.f_s for i in rendered])
        x_s = torch.cat([sessions[i].prepared.x_s for i in rendered])
        x_d = torch.cat([k for k in keypoints if isinstance(k, torch.Tensor)])
        images = dict(zip(rendered, to_uint8_frames(engine.render(f_s, x_s, x_d)).cpu().numpy(), strict=True))
    return [k if isinstance(k, Exception) else images[i] for i, k in enumerate(keypoints)]
