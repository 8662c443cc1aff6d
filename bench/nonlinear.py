"""Nonlinear Gaussian filter benchmark: bayesssm against dynamax's EKF, UKF and their smoothers.

Every library filters the same nonlinear model and the same data, in one process, in float64:
Lorenz-96 dynamics (dx_i/dt = (x_{i+1} - x_{i-2}) x_{i-1} - x_i + F, F = 8, indices mod D)
advanced by one Euler step of length DELTA per time step, with Gaussian process noise, and a
nonlinear observation of every component, y_i = x_i + GAIN sin(x_i) + v_i, for D in {4, 20} and
T = 1e4 (T = 1e3 with --quick).

- ours: `bs.filter` / `bs.smooth` with `bs.GaussianFilter(linearization=bs.Extended())` (EKF /
  extended RTS smoother, square-root), the same with `bs.Unscented()` (UKF / URTS), and
  `bs.IteratedSmoother(linearization=bs.Extended(), num_iterations=K)` sequential and parallel
  (iterated extended smoother = Gauss-Newton; dynamax has no iterated smoother, so these are
  reported without a peer ratio);
- dynamax 1.0.3: `extended_kalman_filter`, `extended_kalman_smoother`,
  `unscented_kalman_filter`, `unscented_kalman_smoother` (covariance form) on a
  `ParamsNLGSSM` with the same functions, jitted. The UKF runs with the same sigma-point
  parameters as ours (`bs.Unscented()`'s defaults alpha = 1, beta = 0, kappa = max(3 - D, 0),
  which is 0 for D >= 3).

Equal accuracy: for each pair the script prints the largest difference between the two
libraries' filtered (or smoothed) means, relative to the state's scale, and the log-likelihoods
(the same algorithm in exact arithmetic gives the same numbers; square-root and covariance forms
differ by rounding only). It also prints each method's RMSE to the true states.

Times: every variant runs once as a warm-up ("first": trace + compile + run), then repeats;
"time" is the fastest repeat. Ratios are dynamax time / our time (> 1: we are faster).

The process pins itself to one CPU before JAX starts (as `kalman.py`); `--all-cores` lifts that.

Usage:
    python bench/nonlinear.py            # D = 4 and 20, T = 1e4
    python bench/nonlinear.py --quick    # T = 1e3
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from kalman import fmt_time, in_thread, machine, pin_to_one_cpu  # noqa: E402 (sets XLA_FLAGS first)

jax.config.update("jax_enable_x64", True)

SIZES = (4, 20)
T, T_QUICK = 10_000, 1_000
FORCING, DELTA, GAIN = 8.0, 0.01, 0.1
PROCESS_SD, OBSERVATION_SD, INITIAL_SD = 0.05, 0.5, 1.0
ITERATIONS = 5
REPEATS = 5
CAP_S = 30.0  # no repeat that would take a variant's repeats past this (at least one runs)
HANG_S = 600.0
PACKAGES = ("bayesssm", "jax", "numpy", "dynamax")
ABANDONED: list[str] = []


# -- the problem ------------------------------------------------------------------------------


def lorenz96(x):
    """dx/dt of Lorenz-96 (works on NumPy and JAX arrays of shape (D,))."""
    xp = jnp if isinstance(x, jax.Array) else np
    return (xp.roll(x, -1) - xp.roll(x, 2)) * xp.roll(x, 1) - x + FORCING


def dynamics(x):
    return x + DELTA * lorenz96(x)


def observe(x):
    xp = jnp if isinstance(x, jax.Array) else np
    return x + GAIN * xp.sin(x)


def initial_mean(dim: int) -> np.ndarray:
    mean = np.full(dim, FORCING)
    mean[0] += 0.01  # off the unstable fixed point
    return mean


def simulate(dim: int, num_timesteps: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(x (T, D), y (T, D)) in NumPy."""
    rng = np.random.default_rng(seed)
    x = np.empty((num_timesteps, dim))
    x[0] = initial_mean(dim) + INITIAL_SD * rng.normal(size=dim)
    for t in range(1, num_timesteps):
        x[t] = dynamics(x[t - 1]) + PROCESS_SD * rng.normal(size=dim)
    y = observe(x) + OBSERVATION_SD * rng.normal(size=x.shape)
    return x, y


def our_model(dim: int):
    """The problem as a `bs.AbstractSSM` with distrax distributions."""
    import distrax
    import equinox as eqx

    import bayesssm as bs

    class Lorenz96(bs.AbstractSSM):
        m0: jax.Array
        chol_P0: jax.Array
        chol_Q: jax.Array
        chol_R: jax.Array

        def initial(self, inputs=None):
            return distrax.MultivariateNormalTri(self.m0, self.chol_P0)

        def transition(self, x, inputs=None):
            return distrax.MultivariateNormalTri(dynamics(x), self.chol_Q)

        def emission(self, x, inputs=None):
            return distrax.MultivariateNormalTri(observe(x), self.chol_R)

    eye = jnp.eye(dim)
    model = Lorenz96(
        jnp.asarray(initial_mean(dim)),
        INITIAL_SD * eye,
        PROCESS_SD * eye,
        OBSERVATION_SD * eye,
    )
    assert isinstance(model, eqx.Module)
    return model


# -- variants ---------------------------------------------------------------------------------


@dataclass
class Variant:
    """`run()` returns (means (T, D), log-likelihood or None), blocking."""

    lib: str
    name: str
    kind: str  # what is compared across libraries: "EKF", "EKS", "UKF", "UKS", "IEKS"
    run: Callable[[], tuple]


@dataclass
class Row:
    variant: Variant
    time: float | None = None
    first: float | None = None
    means: np.ndarray | None = None
    loglik: float | None = None
    note: str = ""


def ours(y: np.ndarray) -> list[Variant]:
    import bayesssm as bs

    model = our_model(y.shape[1])
    data = jnp.asarray(y)
    variants = []
    for rule, label in ((bs.Extended(), "extended"), (bs.Unscented(), "unscented")):
        engine = bs.GaussianFilter(linearization=rule)
        kind = "E" if label == "extended" else "U"

        def run_filter(engine=engine):
            f = bs.filter(model, data, engine=engine)
            return f.means.block_until_ready(), float(f.log_marginal)

        def run_smoother(engine=engine):
            s = bs.smooth(model, data, engine=engine)
            return s.means.block_until_ready(), float(s.log_marginal)

        variants.append(Variant("ours", f"GaussianFilter({label}) filter", kind + "KF", run_filter))
        variants.append(
            Variant("ours", f"GaussianFilter({label}) smooth", kind + "KS", run_smoother)
        )
    for parallel in (False, True):
        engine = bs.IteratedSmoother(
            linearization=bs.Extended(), num_iterations=ITERATIONS, parallel=parallel
        )

        def run_iterated(engine=engine):
            s = bs.smooth(model, data, engine=engine)
            return s.means.block_until_ready(), float(s.log_marginal)

        mode = "parallel" if parallel else "sequential"
        name = f"IteratedSmoother(extended, {ITERATIONS}, {mode})"
        variants.append(Variant("ours", name, "IEKS", run_iterated))
    return variants


def dynamax_variants(y: np.ndarray) -> list[Variant]:
    from dynamax.nonlinear_gaussian_ssm import (
        ParamsNLGSSM,
        extended_kalman_filter,
        extended_kalman_smoother,
        unscented_kalman_filter,
        unscented_kalman_smoother,
    )
    from dynamax.nonlinear_gaussian_ssm.inference_ukf import UKFHyperParams

    dim = y.shape[1]
    eye = jnp.eye(dim)
    params = ParamsNLGSSM(
        initial_mean=jnp.asarray(initial_mean(dim)),
        initial_covariance=INITIAL_SD**2 * eye,
        dynamics_function=dynamics,
        dynamics_covariance=PROCESS_SD**2 * eye,
        emission_function=observe,
        emission_covariance=OBSERVATION_SD**2 * eye,
    )
    data = jnp.asarray(y)
    # bs.Unscented()'s defaults: alpha = 1, beta = 0, kappa = max(3 - D, 0)
    hyper = UKFHyperParams(alpha=1.0, beta=0, kappa=max(3 - dim, 0))
    ekf = jax.jit(lambda y: extended_kalman_filter(params, y))
    eks = jax.jit(lambda y: extended_kalman_smoother(params, y))
    ukf = jax.jit(lambda y: unscented_kalman_filter(params, y, hyper))
    uks = jax.jit(lambda y: unscented_kalman_smoother(params, y, hyper))

    def filtered(fn):
        def run():
            post = fn(data)
            return post.filtered_means.block_until_ready(), float(post.marginal_loglik)

        return run

    def smoothed(fn):
        def run():
            post = fn(data)
            return post.smoothed_means.block_until_ready(), float(post.marginal_loglik)

        return run

    return [
        Variant("dynamax", "extended_kalman_filter", "EKF", filtered(ekf)),
        Variant("dynamax", "extended_kalman_smoother", "EKS", smoothed(eks)),
        Variant("dynamax", "unscented_kalman_filter", "UKF", filtered(ukf)),
        Variant("dynamax", "unscented_kalman_smoother", "UKS", smoothed(uks)),
    ]


# -- timing -----------------------------------------------------------------------------------


def measure(variant: Variant) -> Row:
    row = in_thread(lambda: timed(variant), HANG_S)
    if row is None:
        ABANDONED.append(f"{variant.lib} {variant.name}")
        return Row(variant, note=f"abandoned after {HANG_S:.0f} s")
    return row


def timed(variant: Variant) -> Row:
    try:
        start = time.perf_counter()
        means, loglik = variant.run()
        first = time.perf_counter() - start
        times = []
        while len(times) < REPEATS and (not times or sum(times) + min(times) < CAP_S):
            start = time.perf_counter()
            variant.run()
            times.append(time.perf_counter() - start)
        return Row(variant, min(times), first, np.asarray(means), loglik)
    except Exception as error:  # a peer's failure is reported, not fatal
        traceback.print_exc(limit=3)
        return Row(variant, note=f"failed: {type(error).__name__}: {error}"[:120])


def report(rows: list[Row], x: np.ndarray) -> list[str]:
    scale = float(np.std(x))
    ours_by_kind: dict[str, Row] = {}
    for row in rows:
        if row.variant.lib == "ours" and row.variant.kind not in ours_by_kind:
            ours_by_kind[row.variant.kind] = row
    header = (
        f"  {'library':8s} {'variant':44s} {'time':>10s} {'first':>9s} {'dynamax/ours':>12s} "
        f"{'RMSE':>7s} {'loglik':>12s}  max |mean diff| / sd(x)"
    )
    lines = [header, "  " + "-" * (len(header) - 2)]
    for row in rows:
        v = row.variant
        if row.time is None:
            lines.append(f"  {v.lib:8s} {v.name:44s} {'-':>10s}  {row.note}")
            continue
        ref = ours_by_kind.get(v.kind)
        ratio = diff = ""
        if v.lib != "ours" and ref is not None and ref.time:
            ratio = f"{row.time / ref.time:.2f}"
            diff = f"{np.max(np.abs(row.means - ref.means)) / scale:.1e}"
        rmse = float(np.sqrt(np.mean((row.means - x) ** 2)))
        lines.append(
            f"  {v.lib:8s} {v.name:44s} {fmt_time(row.time):>10s} {fmt_time(row.first):>9s} "
            f"{ratio:>12s} {rmse:7.4f} {row.loglik:12.3f}  {diff}"
        )
    return lines


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"T={T_QUICK} instead of {T}")
    parser.add_argument(
        "--all-cores", action="store_true", help="do not pin to one CPU (XLA may hang)"
    )
    parser.add_argument("--no-dynamax", action="store_true", help="ours only")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    pinned = None if args.all_cores else pin_to_one_cpu()
    start = time.perf_counter()
    print("\n".join(machine(PACKAGES)))
    if pinned is not None:
        print(f"Pinned to CPU {pinned}: every library runs on one core (--all-cores to lift).")
    num_timesteps = T_QUICK if args.quick else T
    print(
        f"Lorenz-96 (F={FORCING}), Euler step {DELTA}, process sd {PROCESS_SD}, observation "
        f"y = x + {GAIN} sin(x) + noise (sd {OBSERVATION_SD}); T={num_timesteps}. time: fastest "
        f"of up to {REPEATS} repeats after a warm-up; first: trace + compile + run.\n",
        flush=True,
    )
    for dim in SIZES:
        x, y = simulate(dim, num_timesteps)
        variants = ours(y)
        if not args.no_dynamax:
            try:
                variants += dynamax_variants(y)
            except Exception:
                traceback.print_exc(limit=2)
        rows = [measure(v) for v in variants]
        print(f"D={dim}, T={num_timesteps}")
        print("\n".join(report(rows, x)) + "\n", flush=True)
    elapsed, load = time.perf_counter() - start, os.getloadavg()[0]
    print(f"Total wall time {elapsed:.0f} s; load average now {load:.2f}")
    if ABANDONED:
        print("Abandoned after hanging: " + "; ".join(ABANDONED))
        sys.stdout.flush()
        os._exit(1)


if __name__ == "__main__":
    main()
