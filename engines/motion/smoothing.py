"""Kalman RTS smoothing of per-frame motion for video sources (the official video-to-video editing).

Every flattened entry is an independent random walk observed with noise: identity transition and
observation, transition variance q, observation variance r, initial state = the first observation
with unit variance. The forward Kalman filter is followed by the Rauch-Tung-Striebel backward pass,
all in float64.
"""

import numpy as np


def rts_smooth(
    observations: np.ndarray, observation_variance: float = 3e-7, transition_variance: float = 1e-5
) -> np.ndarray:
    """Smooth a sequence (T, ...) along its first axis; returns float64 of the same shape."""
    obs = np.asarray(observations, dtype=np.float64)
    shape = obs.shape
    z = obs.reshape(shape[0], -1)
    n = z.shape[0]
    means = np.empty_like(z)  # filtered means
    variances = np.empty(n)  # filtered variances (the same for every entry)
    predicted_var = np.empty(n)
    mean, var = z[0].copy(), 1.0  # prior of the first state
    for t in range(n):
        if t > 0:
            var = var + transition_variance
        predicted_var[t] = var
        gain = var / (var + observation_variance)
        mean = mean + gain * (z[t] - mean)
        var = (1.0 - gain) * var
        means[t], variances[t] = mean, var
    smoothed = means.copy()
    for t in range(n - 2, -1, -1):
        gain = variances[t] / predicted_var[t + 1]
        smoothed[t] = means[t] + gain * (smoothed[t + 1] - means[t])
    return smoothed.reshape(shape)
