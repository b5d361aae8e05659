"""A file job's request: what to animate, and how its caller follows and stops it.

One object for `engines.pipeline.Animator.animate`, the worker's engine interface and every double
of it, so that the job's parameters are written once.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from common.expression import ExpressionControls
from common.options import AnimationOptions
from common.progress import ProgressCallback
from engines.media.errors import Limits
from engines.motion.template import MotionTemplate


@dataclass(frozen=True)
class AnimateRequest:
    """Animate `source` (image or video) with `driving` (video, image or motion template) into `output`.

    `limits` bound the inputs before and while decoding; `progress` gets an event on entering each
    phase (common.progress) and after each batch of frames; `should_cancel` is polled between
    batches (common.errors.Canceled when it turns true); `trust_pickle` admits official `.pkl`
    templates (the local CLI only); `expression`: controls added to every driven frame (an image
    source, relative motion: engines.motion.transfer); `motion`: the driving video's motion when it
    is already known (a cached template, worker.motion): pass 1 over the video is skipped, which
    still gives the audio and the side-by-side frames.
    """

    source: Path
    driving: Path
    output: Path
    options: AnimationOptions = field(default_factory=AnimationOptions)
    limits: Limits = field(default_factory=Limits)
    progress: ProgressCallback | None = None
    should_cancel: Callable[[], bool] | None = None
    trust_pickle: bool = False
    expression: ExpressionControls | None = None
    motion: MotionTemplate | None = None
