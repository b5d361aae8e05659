"""engines.motion.smoothing: the Kalman RTS smoother of video-source motion, by its own behaviour.

Model (the module's docstring): every flattened entry is an independent random walk with transition
variance q, observed with variance r; the first state's prior is the first observation with unit
variance; a forward Kalman filter, then the Rauch-Tung-Striebel backward pass, in float64.
"""

import numpy as np
import pytest

from engines.motion.smoothing import rts_smooth

DEFAULT_R, DEFAULT_Q = 3e-7, 1e-5


def noisy_walk(shape: tuple[int, ...], seed: int, step: float = 3e-3, noise: float = 1e-2) -> tuple:
    """(truth, observations): a slow random walk and the same walk with white observation noise."""
    rng = np.random.default_rng(seed)
    truth = np.cumsum(step * rng.standard_normal(shape), axis=0)
    return truth, truth + noise * rng.standard_normal(shape)


@pytest.mark.parametrize("shape", [(1,), (7,), (9, 21, 3), (5, 3, 3)])
def test_output_has_the_shape_of_the_input_in_float64(shape):
    observations = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    smoothed = rts_smooth(observations)
    assert smoothed.shape == shape
    assert smoothed.dtype == np.float64


def test_a_single_frame_is_returned_unchanged():
    frame = np.random.default_rng(1).standard_normal((1, 21, 3))
    np.testing.assert_array_equal(rts_smooth(frame, 0.5, 0.5), frame)


def test_the_input_is_not_modified():
    observations = np.random.default_rng(2).standard_normal((6, 4))
    kept = observations.copy()
    rts_smooth(observations, 0.1, 0.1)
    np.testing.assert_array_equal(observations, kept)


@pytest.mark.parametrize("r,q", [(DEFAULT_R, DEFAULT_Q), (1.0, 1e-3), (1e-2, 1.0)])
def test_a_constant_sequence_stays_constant(r, q):
    constant = np.broadcast_to(np.random.default_rng(3).standard_normal((1, 21, 3)), (12, 21, 3))
    np.testing.assert_allclose(rts_smooth(constant, r, q), constant, rtol=0, atol=1e-12)


def test_two_frames_computed_by_hand():
    """r = q = 1, z = [0, 1]. Filter: m0 = 0, P0 = 1/2; predicted P = 3/2, gain 3/5, m1 = 3/5.
    Smoother: s1 = m1 = 3/5; s0 = m0 + P0 / (P0 + q) * (s1 - m0) = (1/3)(3/5) = 1/5."""
    np.testing.assert_allclose(rts_smooth(np.array([0.0, 1.0]), 1.0, 1.0), [1 / 5, 3 / 5], rtol=1e-12)


def test_three_frames_computed_by_hand():
    """r = q = 1, z = [0, 1, 1]. Filter: m = [0, 3/5, 11/13], P = [1/2, 3/5, 8/13], predicted P =
    [-, 3/2, 8/5]. Smoother: s2 = 11/13; s1 = 3/5 + (3/5)/(8/5) (11/13 - 3/5) = 9/13;
    s0 = (1/2)/(3/2) * 9/13 = 3/13."""
    expected = [3 / 13, 9 / 13, 11 / 13]
    np.testing.assert_allclose(rts_smooth(np.array([0.0, 1.0, 1.0]), 1.0, 1.0), expected, rtol=1e-12)


def test_entries_are_smoothed_independently():
    _, observations = noisy_walk((15, 4), seed=4)
    together = rts_smooth(observations, 1e-4, 1e-5)
    for column in range(4):
        alone = rts_smooth(observations[:, column], 1e-4, 1e-5)
        np.testing.assert_allclose(together[:, column], alone, rtol=0, atol=1e-15)


def test_smoothing_is_affine_in_the_observations():
    """The gains do not depend on the data and the prior is the first observation itself, so
    smooth(a * z + b) = a * smooth(z) + b."""
    _, observations = noisy_walk((20, 3), seed=5)
    a, b = -2.5, 0.75
    np.testing.assert_allclose(
        rts_smooth(a * observations + b, 1e-4, 1e-5), a * rts_smooth(observations, 1e-4, 1e-5) + b, atol=1e-12
    )


def test_smoothing_reduces_the_noise_of_a_noisy_sequence():
    truth, observations = noisy_walk((200, 21, 3), seed=6, noise=1e-2)
    smoothed = rts_smooth(observations, observation_variance=1e-4, transition_variance=1e-5)
    error_before = np.mean((observations - truth) ** 2)
    error_after = np.mean((smoothed - truth) ** 2)
    assert error_after < 0.5 * error_before
    # frame-to-frame jitter drops too
    assert np.var(np.diff(smoothed, axis=0)) < 0.5 * np.var(np.diff(observations, axis=0))


def test_more_observation_variance_smooths_more():
    _, observations = noisy_walk((100, 6), seed=7)
    jitter = [np.var(np.diff(rts_smooth(observations, r, 1e-5), axis=0)) for r in (1e-6, 1e-4, 1e-2)]
    assert jitter[0] > jitter[1] > jitter[2]


@pytest.mark.parametrize("r", [1e-12, 1e-15])
def test_vanishing_observation_variance_returns_the_observations(r):
    _, observations = noisy_walk((30, 21, 3), seed=8)
    np.testing.assert_allclose(rts_smooth(observations, r, 1e-5), observations, rtol=0, atol=1e-8)


def test_a_linear_trend_is_preserved_away_from_the_ends():
    """The interior of a ramp is reproduced; only the first and last few frames bend towards it."""
    ramp = np.linspace(0.0, 1.0, 200)[:, None] * np.array([1.0, -2.0, 0.5])
    smoothed = rts_smooth(ramp, 1e-5, 1e-5)
    np.testing.assert_allclose(smoothed[30:-30], ramp[30:-30], rtol=0, atol=1e-9)
    assert np.abs(smoothed - ramp).max() < 0.01


def test_the_default_variances_follow_the_observations_closely():
    """With the official video-editing defaults (r = 3e-7, q = 1e-5) a walk that matches the model
    comes back within a few noise deviations of its observations, and closer to the truth."""
    truth, observations = noisy_walk((60, 21, 3), seed=9, step=DEFAULT_Q**0.5, noise=DEFAULT_R**0.5)
    smoothed = rts_smooth(observations)
    assert np.abs(smoothed - observations).max() < 2e-3
    assert np.mean((smoothed - truth) ** 2) < 0.98 * np.mean((observations - truth) ** 2)
