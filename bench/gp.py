"""Gaussian-process benchmark: GP regression's log marginal likelihood and its gradient.

Irregular times (exponential gaps, mean 1) and y = a smooth periodic signal plus noise, for
T in {1e3, 1e4, 1e5, 1e6}; the kernel is Matern32(1, 10) + Periodic(1, 1, 20, order=3) (state
dimension 9) with noise variance 0.01. Timed, in one process on the same data:

- ours, `bs.log_marginal(bs.GPStateSpace(kernel, 0.01), series)` with the sequential and the
  parallel Kalman engine: the value, and value and gradient with respect to every
  hyperparameter (`eqx.filter_value_and_grad`);
- a dense GP (Cholesky of the T x T kernel matrix, in JAX, with the exact periodic kernel) where
  the matrix fits in memory;
- GPJax (if installed; `pip install gpjax`, 1.0 has state-space GPs): its state-space GP
  (`gpjax.state_space.state_space_mll`, a square-root Kalman filter, with
  `TruncatedPeriodic(truncation_order=3)`, the same approximation as ours) at every size, and its
  exact conjugate GP (`conjugate_mll`, dense Cholesky) where the dense GP runs.

For each: first call (trace + compile + run), then the median of warm repeats; the gradient's cost
as a multiple of the value's; XLA's reported working memory (temp buffers) of the compiled
program; and the log-likelihood, checked against the dense GP (which uses the exact periodic
kernel, so our state-space model differs from it by the order-3 approximation, stated in the
output). Ratios are peer time / our sequential time.

Usage:
    python bench/gp.py                      # all sizes (about 10 minutes on 2 cores)
    python bench/gp.py --sizes 1000,10000   # some sizes
    python bench/gp.py --parallel-max 1e6   # run our parallel filter at every size
"""

from __future__ import annotations

import argparse
import importlib.metadata
import math
import os
import sys
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from kalman import (  # noqa: E402 (sets XLA_FLAGS before JAX starts)
    Row,
    Variant,
    fmt_time,
    machine,
    measure,
    pin_to_one_cpu,
)

jax.config.update("jax_enable_x64", True)

SIZES = (1_000, 10_000, 100_000, 1_000_000)
NOISE = 0.01
KERNEL = dict(matern_variance=1.0, matern_lengthscale=10.0, variance=1.0, lengthscale=1.0)
PERIOD, ORDER = 20.0, 3


def make_data(T: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    times = np.cumsum(rng.exponential(1.0, T))
    y = np.sin(2 * np.pi * times / PERIOD) + 0.3 * np.sin(times / 50) + rng.normal(0, 0.1, T)
    return times, y


def our_model():
    import bayesssm as bs

    kernel = bs.kernels.Matern32(
        KERNEL["matern_variance"], KERNEL["matern_lengthscale"]
    ) + bs.kernels.Periodic(KERNEL["variance"], KERNEL["lengthscale"], PERIOD, order=ORDER)
    return bs.GPStateSpace(kernel, NOISE)


# Each variant with a thunk that reports its compiled program's working memory.
Variants = list[tuple[Variant, Callable[[], "int | None"]]]


def memory_bytes(function: Callable, *args) -> int | None:
    """XLA's working memory for the compiled program (temp buffers), where it reports it."""
    try:
        analysis = jax.jit(function).lower(*args).compile().memory_analysis()
        return int(analysis.temp_size_in_bytes)
    except Exception:  # not every backend reports it
        return None


def ours(times: np.ndarray, y: np.ndarray, parallel: bool) -> Variants:
    import bayesssm as bs

    series = bs.TimeSeries(times, y)
    engine = bs.Kalman(parallel=parallel)
    model = our_model()
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def value(params):
        return bs.log_marginal(eqx.combine(params, static), series, engine=engine)

    gradient = jax.value_and_grad(value)
    kind = "par" if parallel else "seq"
    value_jit, gradient_jit = jax.jit(value), jax.jit(gradient)
    return [
        (
            Variant("ours", f"ours {kind}", lambda: value_jit(params), float, kind=kind),
            lambda: memory_bytes(value, params),
        ),
        (
            Variant("ours", f"ours {kind} +grad", lambda: gradient_jit(params), _first, kind=kind),
            lambda: memory_bytes(gradient, params),
        ),
    ]


def _first(out: Any) -> float:
    return float(out[0])


def exact_covariance(params: dict, tau: jax.Array) -> jax.Array:
    """Matern32 + the exact periodic kernel (the one ours approximates), of the lag tau."""
    r = math.sqrt(3.0) * jnp.abs(tau) / params["matern_lengthscale"]
    matern = params["matern_variance"] * (1.0 + r) * jnp.exp(-r)
    s = jnp.sin(jnp.pi * tau / PERIOD)
    periodic = params["variance"] * jnp.exp(-2.0 * s**2 / params["lengthscale"] ** 2)
    return matern + periodic


def dense(times: np.ndarray, y: np.ndarray) -> Variants:
    t, yy = jnp.asarray(times), jnp.asarray(y)
    params = {k: jnp.asarray(v) for k, v in KERNEL.items()} | {"noise": jnp.asarray(NOISE)}

    def value(params):
        K = exact_covariance(params, t[:, None] - t[None, :])
        K = K + params["noise"] * jnp.eye(t.shape[0])
        L = jnp.linalg.cholesky(K)
        alpha = jax.scipy.linalg.solve_triangular(L, yy, lower=True)
        n = t.shape[0]
        return (
            -0.5 * alpha @ alpha - jnp.sum(jnp.log(jnp.diag(L))) - 0.5 * n * math.log(2 * math.pi)
        )

    gradient = jax.value_and_grad(value)
    value_jit, gradient_jit = jax.jit(value), jax.jit(gradient)
    return [
        (
            Variant("dense", "dense GP", lambda: value_jit(params), float),
            lambda: memory_bytes(value, params),
        ),
        (
            Variant("dense", "dense GP +grad", lambda: gradient_jit(params), _first),
            lambda: memory_bytes(gradient, params),
        ),
    ]


def gpjax(times: np.ndarray, y: np.ndarray, state_space: bool) -> Variants:
    import gpjax as gpx
    from gpjax import state_space as gss

    data = gpx.Dataset(X=jnp.asarray(times)[:, None], y=jnp.asarray(y)[:, None])
    matern = gpx.kernels.Matern32(
        lengthscale=KERNEL["matern_lengthscale"], variance=KERNEL["matern_variance"]
    )
    # GPJax's periodic kernel is exp(-0.5 (sin(pi tau / p) / l)^2): l_gpjax = l_ours / 2.
    periodic = dict(
        lengthscale=KERNEL["lengthscale"] / 2, variance=KERNEL["variance"], period=PERIOD
    )
    likelihood = gpx.likelihoods.Gaussian(obs_stddev=math.sqrt(NOISE))
    if state_space:
        kernel = matern + gss.TruncatedPeriodic(**periodic, truncation_order=ORDER)
        posterior = gss.StateSpacePrior(mean_function=gpx.mean_functions.Zero(), kernel=kernel)
        posterior = posterior * likelihood

        def objective(model):
            return gss.state_space_mll(model, data)

        name = "GPJax state-space"
    else:
        kernel = matern + gpx.kernels.Periodic(**periodic)
        posterior = gpx.gps.Prior(mean_function=gpx.mean_functions.Zero(), kernel=kernel)
        posterior = posterior * likelihood

        def objective(model):
            return gpx.objectives.conjugate_mll(model, data)

        name = "GPJax exact"
    params, static = eqx.partition(posterior, eqx.is_inexact_array)

    def value(params):
        return objective(eqx.combine(params, static))

    gradient = jax.value_and_grad(value)
    value_jit, gradient_jit = jax.jit(value), jax.jit(gradient)
    return [
        (
            Variant("gpjax", name, lambda: value_jit(params), float),
            lambda: memory_bytes(value, params),
        ),
        (
            Variant("gpjax", f"{name} +grad", lambda: gradient_jit(params), _first),
            lambda: memory_bytes(gradient, params),
        ),
    ]


def approximation_error() -> float:
    return float(our_model().kernel.kernels[1].approximation_error())


def run_size(T: int, args: argparse.Namespace) -> list[str]:
    times, y = make_data(T)
    rows: list[tuple[Row, int | None]] = []
    # (build, is a dense GP): a dense gradient past --dense-grad-max takes minutes and would be
    # abandoned by the watchdog while it keeps the core busy, so it is not started.
    builders: list[tuple[Callable[[], list], bool]] = [
        (lambda: ours(times, y, parallel=False), False)
    ]
    if T <= args.parallel_max:
        builders.append((lambda: ours(times, y, parallel=True), False))
    if "gpjax" in args.only:
        builders.append((lambda: gpjax(times, y, state_space=True), False))
    if T <= args.dense_max:
        builders.append((lambda: dense(times, y), True))
        if "gpjax" in args.only:
            builders.append((lambda: gpjax(times, y, state_space=False), True))
    for build, is_dense in builders:
        try:
            variants = build()
        except ImportError as error:
            print(f"  skipped: {error}", flush=True)
            continue
        if is_dense and T > args.dense_grad_max:
            variants = [(v, m) for v, m in variants if not v.name.endswith("+grad")]
            print(f"  {variants[0][0].name} +grad: not run (T > --dense-grad-max)", flush=True)
        for variant, memory in variants:
            row = measure(variant)  # before `memory`, which compiles the program again
            rows.append((row, memory() if row.time_s is not None else None))
            print(f"  {row.name}: {fmt_time(row.time_s)} ({row.note})", flush=True)
    return format_rows(T, rows)


def format_rows(T: int, rows: list[tuple[Row, int | None]]) -> list[str]:
    by_name = {row.name: row for row, _ in rows}
    reference = by_name.get("ours seq")
    dense_ll = by_name.get("dense GP")
    lines = [
        f"T = {T:,}",
        f"  {'variant':<20} {'time':>10} {'first call':>11} {'grad/value':>10} "
        f"{'vs ours seq':>11} {'memory':>10} {'log-lik':>18} {'vs dense':>9}",
    ]
    for row, memory in rows:
        first = None if row.time_s is None else row.time_s + (row.compile_s or 0.0)
        base = by_name.get(row.name.removesuffix(" +grad"))
        per_value = "-"
        if row.name.endswith("+grad") and base and base.time_s and row.time_s:
            per_value = f"{row.time_s / base.time_s:.2f}x"
        versus = "-"
        plain = row.name.removesuffix(" +grad")
        ref = by_name.get("ours seq +grad" if row.name.endswith("+grad") else "ours seq")
        if ref and ref.time_s and row.time_s and plain != "ours seq":
            versus = f"{row.time_s / ref.time_s:.2f}"
        rel = "-"
        if dense_ll and dense_ll.loglik and row.loglik is not None:
            rel = f"{abs(row.loglik - dense_ll.loglik) / abs(dense_ll.loglik):.1e}"
        mem = "-" if memory is None else f"{memory / 2**20:.0f} MiB"
        ll = "-" if row.loglik is None else f"{row.loglik:.6f}"
        lines.append(
            f"  {row.name:<20} {fmt_time(row.time_s):>10} {fmt_time(first):>11} {per_value:>10} "
            f"{versus:>11} {mem:>10} {ll:>18} {rel:>9}" + (f"  {row.note}" if row.note else "")
        )
    if reference is None:
        lines.append("  (ours seq did not run)")
    return lines


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=",".join(str(s) for s in SIZES))
    parser.add_argument("--parallel-max", type=float, default=1e5, help="largest T for parallel")
    parser.add_argument("--dense-max", type=float, default=1e4, help="largest T for dense GPs")
    parser.add_argument(
        "--dense-grad-max", type=float, default=1e3, help="largest T for dense GP gradients"
    )
    parser.add_argument("--only", default="gpjax", help="peers beyond the dense GP: gpjax or ''")
    parser.add_argument("--all-cores", action="store_true", help="do not pin to one CPU")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if not args.all_cores:
        pin_to_one_cpu()
    lines = ["# bench/gp.py", *machine()]
    try:
        lines.append(f"GPJax {importlib.metadata.version('gpjax')}")
    except importlib.metadata.PackageNotFoundError:
        lines.append("GPJax not installed")
    lines.append(
        f"Kernel Matern32 + Periodic(order {ORDER}), state dimension 9; the order-{ORDER} "
        f"periodic approximation's largest kernel error: {approximation_error():.1e}"
    )
    print("\n".join(lines), flush=True)
    for T in (int(float(s)) for s in args.sizes.split(",")):
        print(f"running T = {T:,} ...", flush=True)
        table = run_size(T, args)
        print("\n".join(table), flush=True)
        lines += table
    print("\n".join(["", "Summary", *lines]))


if __name__ == "__main__":
    main()
