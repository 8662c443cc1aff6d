r"""Synthetic data sets, generated from a key (nothing is downloaded).

`damped_pendulum`: irregularly sampled, noisy and partly missing observations of damped
pendulums, the task of Ansari et al. (2023) with the bob's position in place of images.
`digits_sequences`: scikit-learn's 8 x 8 handwritten digits (shipped with the package) read as
sequences of 64 pixels, for sequence generation.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ._checks import check_positive_int
from ._types import Array, Float, Key
from .data import TimeSeries


class PendulumData(NamedTuple):
    """A batch of B pendulum series of T irregular observations each.

    Attributes:
        times: (B, T) observation times, strictly increasing, starting at 0.
        values: (B, T, 2) the observed bob positions $(\\sin\\theta, -\\cos\\theta)$ plus noise,
            NaN in the missing rows.
        targets: (B, T, 2) the noisy positions at every time, missing rows included (the truth
            to score imputations against).
        clean: (B, T, 2) the noise-free positions.
        states: (B, T, 2) the angle $\\theta$ and the angular velocity $\\dot\\theta$.
    """

    times: Float[Array, "B T"]
    values: Float[Array, "B T 2"]
    targets: Float[Array, "B T 2"]
    clean: Float[Array, "B T 2"]
    states: Float[Array, "B T 2"]

    def series(self) -> list[TimeSeries]:
        """The B series as `bs.TimeSeries`, NaN in the missing rows."""
        times, values = np.asarray(self.times), np.asarray(self.values)
        return [TimeSeries(t, v) for t, v in zip(times, values, strict=True)]


def damped_pendulum(
    key: Key,
    num_series: int,
    num_timesteps: int = 50,
    *,
    frequency: float = 2.0,
    damping: float = 0.2,
    noise_sd: float = 0.05,
    missing: float = 0.5,
    min_gap: float = 0.05,
    max_gap: float = 0.3,
    max_angle: float = 2.5,
    substeps: int = 10,
    dtype=None,
) -> PendulumData:
    r"""Damped pendulums $\ddot\theta = -\omega_0^2 \sin\theta - c\,\dot\theta$ observed at
    irregular times through the bob's position, with noise and missing rows.

    Each series starts at $\theta_0 \sim U(-\theta_{\max}, \theta_{\max})$,
    $\dot\theta_0 \sim U(-1, 1)$; its gaps are independent $U(\text{min\_gap},
    \text{max\_gap})$; the state is integrated over each gap by `substeps` classical Runge-Kutta
    steps. The observation is $(\sin\theta, -\cos\theta) + \text{noise\_sd}\cdot\epsilon$, and
    each row after the first is missing with probability `missing`.

    Args:
        key: PRNG key: the same key gives the same data.
        num_series: B.
        num_timesteps: T.
        frequency: $\omega_0 = \sqrt{g / l}$.
        damping: $c$.
        noise_sd: the observation noise's standard deviation.
        missing: the probability that a row (after the first) is missing.
        min_gap, max_gap: the range of the gaps between observation times.
        max_angle: the largest initial angle $\theta_{\max}$.
        substeps: Runge-Kutta steps per gap.
        dtype: float dtype of the arrays (default: JAX's default float).

    Returns:
        A `PendulumData`.

    References:
        Ansari, A. F., Heng, A., Lim, A. and Soh, H. (2023). Neural continuous-discrete state
        space models for irregularly-sampled time series. ICML (the pendulum experiments).
    """
    check_positive_int("num_series", num_series)
    check_positive_int("num_timesteps", num_timesteps)
    check_positive_int("substeps", substeps)
    if not 0.0 <= missing < 1.0:
        raise ValueError(f"missing must be a probability in [0, 1), got {missing!r}.")
    if not 0.0 < min_gap <= max_gap:
        raise ValueError(f"the gaps need 0 < min_gap <= max_gap, got {min_gap!r}, {max_gap!r}.")
    for name, value in (("frequency", frequency), ("max_angle", max_angle)):
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value!r}.")
    if damping < 0 or noise_sd < 0:
        raise ValueError("damping and noise_sd must be >= 0.")
    dtype = jnp.result_type(float) if dtype is None else dtype
    B, T = num_series, num_timesteps
    k_angle, k_speed, k_gap, k_noise, k_missing = jax.random.split(key, 5)
    theta0 = jax.random.uniform(k_angle, (B,), dtype, -max_angle, max_angle)
    omega0 = jax.random.uniform(k_speed, (B,), dtype, -1.0, 1.0)
    gaps = jax.random.uniform(k_gap, (B, T - 1), dtype, min_gap, max_gap)
    times = jnp.concatenate([jnp.zeros((B, 1), dtype), jnp.cumsum(gaps, axis=1)], axis=1)

    def field(x):
        return jnp.stack([x[1], -(frequency**2) * jnp.sin(x[0]) - damping * x[1]])

    def rk4(x, h):
        k1 = field(x)
        k2 = field(x + 0.5 * h * k1)
        k3 = field(x + 0.5 * h * k2)
        k4 = field(x + h * k3)
        return x + h / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)

    def over_gap(x, gap):
        h = gap / substeps
        x = jax.lax.fori_loop(0, substeps, lambda _, x: rk4(x, h), x)
        return x, x

    def path(x0, gaps):
        _, xs = jax.lax.scan(over_gap, x0, gaps)
        return jnp.concatenate([x0[None], xs])

    states = jax.vmap(path)(jnp.stack([theta0, omega0], axis=-1), gaps)  # (B, T, 2)
    clean = jnp.stack([jnp.sin(states[..., 0]), -jnp.cos(states[..., 0])], axis=-1)
    targets = clean + noise_sd * jax.random.normal(k_noise, clean.shape, dtype)
    gone = jax.random.uniform(k_missing, (B, T)) < missing
    gone = gone.at[:, 0].set(False)  # every series keeps its first row
    values = jnp.where(gone[..., None], jnp.nan, targets)
    return PendulumData(times, values, targets, clean, states)


class DigitsData(NamedTuple):
    """Handwritten digits as pixel sequences.

    Attributes:
        values: (B, 64, 1) the pixels in raster order (row by row), scaled to [0, 1]: with
            `dequantize`, (intensity + u) / 17, u ~ U(0, 1) (a continuous variable whose density
            bounds the discrete likelihood); else intensity / 16.
        intensities: (B, 64, 1) the raw intensities, integers 0..16 (as floats).
        labels: (B,) the digit shown.
    """

    values: Float[Array, "B 64 1"]
    intensities: Float[Array, "B 64 1"]
    labels: Array


def digits_sequences(key: Key | None = None, *, dequantize: bool = True, dtype=None) -> DigitsData:
    """scikit-learn's 1797 handwritten digits (8 x 8 pixels, 17 grey levels), each read as a
    sequence of 64 pixels, row by row.

    The data ship with scikit-learn (`sklearn.datasets.load_digits`); nothing is downloaded.
    Uniform dequantisation (Theis, van den Oord and Bethge 2016) makes the pixels continuous,
    so Gaussian likelihoods are proper and comparable: a model's density of the dequantised
    pixels, times $17^{64}$, bounds its probability of the integer image from below.

    Args:
        key: PRNG key for the dequantisation noise (needed when `dequantize`).
        dequantize: add U(0, 1) noise to the intensities before scaling (see `DigitsData`).
        dtype: float dtype (default JAX's default float).

    Returns:
        A `DigitsData`.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # pragma: no cover - scikit-learn comes with the dev extra
        raise ImportError("digits_sequences needs scikit-learn: pip install scikit-learn") from err
    digits = load_digits()
    dtype = jnp.result_type(float) if dtype is None else dtype
    raw = jnp.asarray(digits.data, dtype)[..., None]  # (B, 64, 1), row-major pixels
    if dequantize:
        if key is None:
            raise ValueError("dequantize=True needs key=jax.random.key(...) for its noise.")
        values = (raw + jax.random.uniform(key, raw.shape, dtype)) / 17.0
    else:
        values = raw / 16.0
    return DigitsData(values, raw, jnp.asarray(digits.target))


__all__ = ["DigitsData", "PendulumData", "damped_pendulum", "digits_sequences"]
