"""Several faces of one source image rendered together.

Each selected face is its own prepared source (engines.source.prepare_faces) driven by the same
motion, its keypoints x_d from its own motion transfer. The faces of a batch of frames render
together, frame-major (frame 0's faces, then frame 1's, ...), in W+G batches of at most the
engine's frame batch: a GPU's batch holds every face of several frames, a CPU (batch 1, where a
larger batch costs more per crop) renders one face at a time. N faces cost about N renders of one;
compose (engines.compose) then pastes each frame's faces back in turn.
"""

from collections.abc import Sequence

import torch

from engines.engine import Engine
from engines.source import PreparedSource, SourceCrop


def frames_per_batch(engine: Engine, faces: int) -> int:
    """Frames per render batch with `faces` faces a frame: the engine's frame batch shared among the
    faces (at least one frame), so a batch holds about as many crops as with one face."""
    return max(1, engine.frame_batch // faces)


def render_faces(
    engine: Engine, faces: Sequence[PreparedSource], x_d: Sequence[torch.Tensor]
) -> torch.Tensor:
    """W and G of F faces driven over T frames: x_d holds each face's (T, 21, 3) keypoints ->
    (T * F, 3, 512, 512) in [0, 1], frame-major, on the model's device (in batches of at most the
    engine's frame batch)."""
    if len(faces) == 1:
        return engine.render(faces[0].f_s, faces[0].x_s, x_d[0])
    frames = x_d[0].shape[0]
    f_s = torch.cat([face.f_s for face in faces]).repeat(frames, 1, 1, 1, 1)  # (T * F, 32, 16, 64, 64)
    x_s = torch.cat([face.x_s for face in faces]).repeat(frames, 1, 1)  # (T * F, 21, 3)
    x_d_all = torch.stack(list(x_d), dim=1).flatten(0, 1)  # (T * F, 21, 3)
    step = max(1, engine.frame_batch)
    return torch.cat(
        [
            engine.render(f_s[i : i + step], x_s[i : i + step], x_d_all[i : i + step])
            for i in range(0, len(x_d_all), step)
        ]
    )


def frame_crops(faces: Sequence[PreparedSource], frames: int) -> list[SourceCrop]:
    """The source crop of each image of a frame-major batch of `frames` frames: (T * F) crops."""
    return [face.crop for face in faces] * frames
