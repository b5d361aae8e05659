"""The One-Euro filter (Casiez, Roussel and Vogel, CHI 2012) of live motion, as real-time face tools use.

A first-order low-pass filter whose cutoff rises with the signal's speed: still, the cutoff is
min_cutoff (jitter is smoothed away); moving, it is min_cutoff + beta * |speed| (little lag). The
speed is itself low-passed at d_cutoff. Samples may come at irregular times (dropped frames), so
the smoothing factor of each step is computed from the time elapsed since the previous sample:
alpha(fc, dt) = 1 / (1 + tau / dt), tau = 1 / (2 pi fc). Every entry of the signal is filtered on
its own; the signal is a tensor of any shape, filtered on its own device.
"""

import math

import torch


def smoothing_factor(cutoff: torch.Tensor | float, dt: float) -> torch.Tensor | float:
    """alpha = 1 / (1 + tau / dt) with tau = 1 / (2 pi cutoff): the weight of the new sample."""
    tau = 1.0 / (2.0 * math.pi * cutoff)
    return 1.0 / (1.0 + tau / dt)


class OneEuroFilter:
    """Filters successive samples x_t (any shape, the same each time) given their times t in seconds."""

    def __init__(self, min_cutoff: float, beta: float, d_cutoff: float = 1.0) -> None:
        self.min_cutoff = min_cutoff
        self.beta = beta
        self.d_cutoff = d_cutoff
        self._x: torch.Tensor | None = None
        self._dx: torch.Tensor | None = None
        self._t = 0.0

    def reset(self) -> None:
        """Forget the past: the next sample passes unchanged."""
        self._x = self._dx = None

    def __call__(self, x: torch.Tensor, t: float) -> torch.Tensor:
        """The filtered sample at time t (seconds, increasing); the first one is returned as it is."""
        if self._x is None or self._dx is None:
            self._x, self._dx, self._t = x, torch.zeros_like(x), t
            return x
        dt = max(t - self._t, 1e-6)
        dx = (x - self._x) / dt
        self._dx = self._dx + smoothing_factor(self.d_cutoff, dt) * (dx - self._dx)
        cutoff = self.min_cutoff + self.beta * self._dx.abs()
        self._x = self._x + smoothing_factor(cutoff, dt) * (x - self._x)
        self._t = t
        return self._x
