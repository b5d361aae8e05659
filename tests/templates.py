"""Motion templates for tests: random frames, seeded by their count."""

import numpy as np

from engines.motion.template import MotionTemplate


def random_template(n: int = 6, full: bool = True, fps: float = 30.0) -> MotionTemplate:
    """A template of `n` random frames; `full`: with the optional arrays (kp, x_s, eye and lip ratios)."""
    rng = np.random.default_rng(n)
    optional = (
        {
            "kp": rng.normal(size=(n, 21, 3)),
            "x_s": rng.normal(size=(n, 21, 3)),
            "c_eyes": rng.uniform(size=(n, 2)),
            "c_lip": rng.uniform(size=(n, 1)),
        }
        if full
        else {}
    )
    return MotionTemplate(
        fps=fps,
        exp=rng.normal(size=(n, 21, 3)),
        R=rng.normal(size=(n, 3, 3)),
        scale=rng.uniform(1, 2, size=(n, 1)),
        t=rng.normal(size=(n, 3)),
        source_name="driving.mp4",
        **optional,
    )
