"""The phases of a job and the progress event the engines report, shared by the engines and the service.

A file job goes through four phases, in this order:

==================  ===============================================================  ================
phase               what runs                                                        counted in
==================  ===============================================================  ================
preparing           fetch the inputs, probe them, detect and crop the source face, F  (not counted)
extracting_motion   pass 1: M over every driving frame (and a video source's frames)  frames read
rendering           motion transfer, W and G, paste-back                              frames rendered
finalizing          the encoder's tail, the audio track, the upload of the result     (not counted)
==================  ===============================================================  ================
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args

Phase = Literal["preparing", "extracting_motion", "rendering", "finalizing"]
PHASES: tuple[Phase, ...] = get_args(Phase)
"""The phases in the order a job goes through them."""

PREPARING: Phase = "preparing"
EXTRACTING_MOTION: Phase = "extracting_motion"
RENDERING: Phase = "rendering"
FINALIZING: Phase = "finalizing"


@dataclass(frozen=True)
class ProgressEvent:
    """The job entered `phase`, or advanced in it: `done` of `total` frames (None while unknown).

    Frames count in extracting_motion and rendering only; preparing and finalizing report 0 of None.
    """

    phase: Phase
    done: int = 0
    total: int | None = None


ProgressCallback = Callable[[ProgressEvent], None]
"""What a job reports its progress to (called from the thread that runs the job)."""
