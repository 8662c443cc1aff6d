"""Kalman filter benchmark: bayesssm against statsmodels, dynamax, cuthbert and pykalman.

Every library filters the same random stable linear-Gaussian model and the same data, in one
process, in float64. For each case the script checks that every library's log-likelihood agrees
with ours, then times each variant: the first call (for JAX code: trace + compile + run), then
repeated calls until a small time budget is spent; "time" is the median of those repeats and
"compile" is first call minus that median. Ratios are peer time / our time, so > 1 means we are
faster.

What is timed: one full filtering pass over data that is already in memory, with the model already
built (statsmodels: data bound and matrices set once; dynamax/cuthbert: parameters built once and
passed to a jitted function; ours: `bs.filter`, which checks its inputs and runs a jitted program).
JAX results are blocked on with `block_until_ready`.

Conventions: x_0 ~ N(m0, P0), y_t = H x_t + v_t for t = 0..T-1, x_{t+1} = A x_t + w_t. dynamax,
pykalman and statsmodels (known initialization a = m0, P = P0) use the same. cuthbert's prior is
for a state before the first observation, so y_0 is absorbed with cuthbert's own `filter_update`
and the filter is run on y_1..y_{T-1} from there (its log-likelihood term is added back).

The process pins itself to one CPU before JAX starts (see `pin_to_one_cpu`), so every library
runs single-core; `--all-cores` lifts that.

Usage:
    python bench/kalman.py             # full run (several minutes)
    python bench/kalman.py --quick     # T = 1000, D = 4, M = 2 only
    python bench/kalman.py --only statsmodels,dynamax   # ours is always run (the reference)
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import statistics
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

# XLA's concurrency-optimised CPU scheduler (jax 0.10.2) can deadlock on programs with many batched
# LAPACK calls; switch it off before JAX starts (see README, "Known issues").
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_enable_concurrency_optimized_scheduler=false")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

LIBRARIES = ("ours", "statsmodels", "dynamax", "cuthbert", "pykalman")
SIZES = ((4, 2), (20, 10))
LENGTHS = (1_000, 10_000, 100_000)
PYKALMAN_MAX_T = 10_000
BATCH = dict(num_series=1_000, T=1_000, D=4, M=2)
RTOL = 1e-7  # relative log-likelihood difference above which a library is flagged

# Repeats after the warm-up call: at least MIN_REPEATS and at least BUDGET_S seconds, at most
# MAX_REPEATS, and never a repeat that would take the total past CAP_S (at least one is run).
MIN_REPEATS, MAX_REPEATS, BUDGET_S, CAP_S = 3, 20, 1.0, 6.0
HANG_S = 120.0  # a variant (warm-up and repeats) still running after this long is abandoned
ABANDONED: list[str] = []  # variants whose worker thread hung
JAX_STUCK: list[str] = []  # non-empty once JAX stops completing even a trivial computation


# -- the problem ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """A linear-Gaussian model (numpy, float64) and data y of shape (T, M) or (N, T, M)."""

    A: np.ndarray
    Q: np.ndarray
    H: np.ndarray
    R: np.ndarray
    m0: np.ndarray
    P0: np.ndarray
    y: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.y.shape[-2], self.A.shape[0], self.H.shape[0]


def random_spd(rng: np.random.Generator, n: int, scale: float) -> np.ndarray:
    root = rng.normal(size=(n, n))
    return scale * (root @ root.T / n + 0.1 * np.eye(n))


def make_problem(T: int, D: int, M: int, num_series: int | None = None, seed: int = 0) -> Problem:
    """A random stable model (spectral radius 0.95) and data sampled from it."""
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(D, D))
    A *= 0.95 / np.max(np.abs(np.linalg.eigvals(A)))
    Q, R = random_spd(rng, D, 0.5), random_spd(rng, M, 1.0)
    H = rng.normal(size=(M, D)) / np.sqrt(D)
    m0, P0 = rng.normal(size=D), random_spd(rng, D, 1.0)
    batch = 1 if num_series is None else num_series
    x = m0 + rng.normal(size=(batch, D)) @ np.linalg.cholesky(P0).T
    w = rng.normal(size=(T, batch, D)) @ np.linalg.cholesky(Q).T
    v = rng.normal(size=(T, batch, M)) @ np.linalg.cholesky(R).T
    y = np.empty((T, batch, M))
    for t in range(T):
        y[t] = x @ H.T + v[t]
        x = x @ A.T + w[t]
    y = np.ascontiguousarray(y.transpose(1, 0, 2))
    return Problem(A, Q, H, R, m0, P0, y[0] if num_series is None else y)


# -- timing ---------------------------------------------------------------------------------


@dataclass
class Variant:
    """One way to run one library: `run()` filters once; `loglik(out)` reads its log-likelihood."""

    lib: str
    name: str
    run: Callable[[], Any]
    loglik: Callable[[Any], float]
    is_jax: bool = True
    kind: str = "seq"  # "seq" or "par": which of our filters it is compared with


@dataclass
class Row:
    lib: str
    name: str
    kind: str = "seq"
    time_s: float | None = None
    repeats: int = 0
    compile_s: float | None = None
    loglik: float | None = None
    rel: float | None = None  # relative difference of loglik from ours
    note: str = ""


def call(run: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = jax.block_until_ready(run())
    return out, time.perf_counter() - start


def measure(variant: Variant) -> Row:
    """`timed`, guarded against calls that never return (see `pin_to_one_cpu`).

    The variant runs in a worker thread; if it has no result after HANG_S it is abandoned and
    retried once, provided a tiny JAX computation still completes; if not, JAX variants are skipped.
    """
    if variant.is_jax and JAX_STUCK:
        return Row(variant.lib, variant.name, variant.kind, note="skipped: JAX stuck earlier")
    for attempt in range(2):
        row = in_thread(lambda: timed(variant), HANG_S)
        if row is not None:
            if attempt:
                row.note = (row.note + " (retried after a hung first attempt)").strip()
            return row
        ABANDONED.append(variant.name)
        if variant.is_jax and in_thread(lambda: float(jnp.ones(3).sum()), 30.0) is None:
            JAX_STUCK.append(variant.name)
            break
    note = f"no result within {HANG_S:.0f} s (hung), abandoned"
    return Row(variant.lib, variant.name, variant.kind, note=note)


def in_thread(function: Callable[[], Any], timeout_s: float) -> Any:
    """function() run in a daemon thread; None if it has not returned after timeout_s."""
    result = {}
    worker = threading.Thread(target=lambda: result.update(value=function()), daemon=True)
    worker.start()
    worker.join(timeout_s)
    return result.get("value")


def timed(variant: Variant) -> Row:
    """Warm-up call (also the log-likelihood check), then timed repeats."""
    row = Row(variant.lib, variant.name, variant.kind)
    try:
        out, first = call(variant.run)
        row.loglik = float(variant.loglik(out))
        del out
        times: list[float] = []
        while len(times) < MAX_REPEATS:
            enough = len(times) >= MIN_REPEATS and sum(times) >= BUDGET_S
            too_long = times and sum(times) + statistics.median(times) > CAP_S
            if enough or too_long:
                break
            times.append(call(variant.run)[1])
        row.time_s, row.repeats = statistics.median(times), len(times)
        if variant.is_jax:
            row.compile_s = max(first - row.time_s, 0.0)
    except Exception as error:  # a failing peer is reported, never fatal
        first_line = (str(error).splitlines() or [""])[0]
        row.note = f"error: {type(error).__name__}: {first_line[:120]}"
        traceback.print_exc(limit=3)
    return row


# -- the libraries ----------------------------------------------------------------------------
# Each returns the variants to time on problem `p`; an import error is caught by the caller.


def ours(p: Problem) -> list[Variant]:
    import bayesssm as bs

    model = bs.LinearGaussianSSM(A=p.A, Q=p.Q, H=p.H, R=p.R, m0=p.m0, P0=p.P0)
    y = jnp.asarray(p.y)

    def variant(verb, kind, **settings):
        engine = bs.Kalman(parallel=kind == "par", **settings)
        run = getattr(bs, verb)
        options = "".join(f", {key}={value}" for key, value in settings.items())
        name = f"bs.{verb} Kalman(parallel={kind == 'par'}{options})"
        read = float if verb == "log_marginal" else (lambda f: f.log_marginal)
        return Variant("ours", name, lambda: run(model, y, engine=engine), read, kind=kind)

    variants = [variant("filter", "seq"), variant("filter", "par"), variant("log_marginal", "seq")]
    # Like statsmodels' tolerance=0: the full recursion, without the steady-state shortcut.
    if "steady_state" in getattr(bs.Kalman, "__dataclass_fields__", {}):
        variants += [variant("filter", kind, steady_state=False) for kind in ("seq", "par")]
    return variants


def statsmodels_filter(p: Problem, **options):
    """A statsmodels KalmanFilter with the matrices set and the data bound (done once)."""
    from statsmodels.tsa.statespace.kalman_filter import KalmanFilter

    T, D, M = p.shape
    kf = KalmanFilter(k_endog=M, k_states=D, k_posdef=D, **options)
    kf["design"], kf["obs_cov"] = p.H, p.R
    kf["transition"], kf["selection"], kf["state_cov"] = p.A, np.eye(D), p.Q
    kf.initialize_known(p.m0, p.P0)
    kf.bind(np.ascontiguousarray(p.y))
    return kf


def statsmodels(p: Problem) -> list[Variant]:
    # By default statsmodels stops updating the covariance once it has converged (steady state);
    # tolerance=0 turns that off, which shows the cost of the full recursion.
    kf, full = statsmodels_filter(p), statsmodels_filter(p, tolerance=0.0)
    return [
        Variant("statsmodels", "KalmanFilter.loglike()", kf.loglike, float, is_jax=False),
        Variant(
            "statsmodels",
            "KalmanFilter(tolerance=0).loglike()",
            full.loglike,
            float,
            is_jax=False,
        ),
        Variant(
            "statsmodels",
            "KalmanFilter.filter()",
            kf.filter,
            lambda r: r.llf,
            is_jax=False,
        ),
    ]


def dynamax(p: Problem) -> list[Variant]:
    from dynamax.linear_gaussian_ssm import parallel_inference
    from dynamax.linear_gaussian_ssm.inference import lgssm_filter, make_lgssm_params

    params = make_lgssm_params(*map(jnp.asarray, (p.m0, p.P0, p.A, p.Q, p.H, p.R)))
    y = jnp.asarray(p.y)
    seq, par = jax.jit(lgssm_filter), jax.jit(parallel_inference.lgssm_filter)
    return [
        Variant(
            "dynamax",
            "jit(lgssm_filter)",
            lambda: seq(params, y),
            lambda r: r.marginal_loglik,
        ),
        Variant(
            "dynamax",
            "jit(parallel_inference.lgssm_filter)",
            lambda: par(params, y),
            lambda r: r.marginal_loglik,
            kind="par",
        ),
    ]


def cuthbert_filter(parallel: bool):
    """A jitted cuthbert Kalman filter (params, y) -> (filter states, log-likelihood)."""
    import cuthbert
    from cuthbertlib.kalman import filter_update

    def run(params, y):
        m0, chol_P0, A, chol_Q, H, chol_R = params
        c, d = jnp.zeros(A.shape[0]), jnp.zeros(H.shape[0])
        # cuthbert's prior is before the first observation: absorb y_0 with its own update.
        (m, chol), ll0 = filter_update(m0, chol_P0, H, d, chol_R, y[0])
        kf = cuthbert.gaussian.kalman.build_filter(
            m, chol, lambda _: (A, c, chol_Q), lambda y_t: (H, d, chol_R, y_t)
        )
        states = cuthbert.filter(kf, y[1:], kf.init_prepare(), parallel=parallel)
        return states, ll0 + states.log_normalizing_constant[-1]

    return jax.jit(run)


def cuthbertlib_scan():
    """A jitted lax.scan over cuthbertlib's square-root predict and update (y_0 observed first)."""
    from cuthbertlib.kalman import filter_update, predict

    def run(params, y):
        m0, chol_P0, A, chol_Q, H, chol_R = params
        c, d = jnp.zeros(A.shape[0]), jnp.zeros(H.shape[0])

        def step(carry, y_t):
            m, chol, ll = carry
            (m, chol), ll = filter_update(m, chol, H, d, chol_R, y_t, ll)
            moments = (m, chol)
            m, chol = predict(m, chol, A, c, chol_Q)
            return (m, chol, ll), moments

        (_, _, ll), moments = jax.lax.scan(step, (m0, chol_P0, jnp.zeros(())), y)
        return moments, ll

    return jax.jit(run)


def cuthbert(p: Problem) -> list[Variant]:
    chol = np.linalg.cholesky
    params = tuple(map(jnp.asarray, (p.m0, chol(p.P0), p.A, chol(p.Q), p.H, chol(p.R))))
    y = jnp.asarray(p.y)
    seq, par, scan = cuthbert_filter(False), cuthbert_filter(True), cuthbertlib_scan()
    return [
        Variant("cuthbert", "jit(cuthbert.filter, parallel=False)", lambda: seq(params, y), _ll),
        Variant(
            "cuthbert",
            "jit(cuthbert.filter, parallel=True)",
            lambda: par(params, y),
            _ll,
            kind="par",
        ),
        Variant("cuthbert", "jit(scan: cuthbertlib predict+update)", lambda: scan(params, y), _ll),
    ]


def _ll(out) -> float:
    return out[1]


def pykalman(p: Problem) -> list[Variant]:
    from pykalman import KalmanFilter

    T, D, M = p.shape
    if T > PYKALMAN_MAX_T:
        raise Skip(f"skipped at T > {PYKALMAN_MAX_T:.0e} (pure numpy, slow)")
    kf = KalmanFilter(
        transition_matrices=p.A,
        observation_matrices=p.H,
        transition_covariance=p.Q,
        observation_covariance=p.R,
        transition_offsets=np.zeros(D),
        observation_offsets=np.zeros(M),
        initial_state_mean=p.m0,
        initial_state_covariance=p.P0,
    )
    return [
        Variant(
            "pykalman",
            "KalmanFilter.loglikelihood",
            lambda: kf.loglikelihood(p.y),
            float,
            is_jax=False,
        )
    ]


class Skip(Exception):
    """A library that is deliberately not run for this case."""


SETUPS = {lib: globals()[lib] for lib in LIBRARIES}


# -- one case ---------------------------------------------------------------------------------


def run_case(p: Problem, libs: list[str]) -> list[Row]:
    rows: list[Row] = []
    for lib in libs:
        try:
            variants = SETUPS[lib](p)
        except Skip as skip:
            rows.append(Row(lib, "-", note=str(skip)))
            continue
        except Exception as error:
            rows.append(Row(lib, "-", note=f"unavailable: {type(error).__name__}: {error}"[:140]))
            continue
        rows.extend(measure(v) for v in variants)
    return rows


def reference(rows: list[Row], kind: str) -> Row | None:
    for row in rows:
        if row.lib == "ours" and row.kind == kind and row.name.startswith("bs.filter"):
            return row if row.time_s else None
    return None


def check(rows: list[Row]) -> str:
    """Compare every log-likelihood with our sequential filter's; flag the ones that disagree."""
    ref = reference(rows, "seq")
    if ref is None or ref.loglik is None:
        return "log-likelihood check: no reference (our sequential filter failed)"
    worst = 0.0
    for row in rows:
        if row.loglik is None:
            continue
        row.rel = rel = abs(row.loglik - ref.loglik) / abs(ref.loglik)
        worst = max(worst, rel)
        if rel > RTOL:
            row.note = (row.note + f" LOG-LIKELIHOOD MISMATCH ({row.loglik:.10g})").strip()
    status = "all agree" if worst <= RTOL else f"DISAGREEMENT above {RTOL:g}, see rows"
    return f"log-likelihood check: ours = {ref.loglik:.10g}; max rel diff {worst:.1e} ({status})"


def format_rows(rows: list[Row]) -> list[str]:
    seq, par = reference(rows, "seq"), reference(rows, "par")
    head = (
        f"  {'library':<12} {'variant':<52} {'time':>10} {'n':>3} {'compile':>9} "
        f"{'/ours-seq':>9} {'/ours-par':>9} {'rel diff':>8}  note"
    )
    lines = [head, "  " + "-" * (len(head) + 4)]
    for row in rows:
        lines.append(
            f"  {row.lib:<12} {row.name:<52} {fmt_time(row.time_s):>10} {row.repeats or '':>3} "
            f"{fmt_time(row.compile_s):>9} {ratio(row, seq):>9} {ratio(row, par):>9} "
            f"{fmt_rel(row.rel):>8}  {row.note}"
        )
    return lines


def fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def fmt_rel(rel: float | None) -> str:
    return "-" if rel is None else f"{rel:.0e}"


def ratio(row: Row, ref: Row | None) -> str:
    if ref is None or row.time_s is None or row is ref:
        return "-"
    return f"{row.time_s / ref.time_s:.2f}"


# -- the batch case ---------------------------------------------------------------------------


def batch_case(libs: list[str]) -> list[str]:
    """Throughput on many short series: ours vmapped under jit against statsmodels in a loop."""
    import bayesssm as bs

    n, T, D, M = BATCH["num_series"], BATCH["T"], BATCH["D"], BATCH["M"]
    p = make_problem(T, D, M, num_series=n, seed=1)
    model = bs.LinearGaussianSSM(A=p.A, Q=p.Q, H=p.H, R=p.R, m0=p.m0, P0=p.P0)
    engine = bs.Kalman(parallel=False)
    batched = jax.jit(jax.vmap(lambda y: bs.log_marginal(model, y, engine=engine)))
    ys = jnp.asarray(p.y)
    rows = [measure(Variant("ours", "jit(vmap(bs.log_marginal)), seq", lambda: batched(ys), _sum))]
    lls = {"ours": np.asarray(batched(ys))}
    if "statsmodels" in libs:
        rows.extend(batch_statsmodels(p, lls))
    if "dynamax" in libs:
        rows.append(batch_dynamax(p, lls))
    lines = [f"Batch: {n} series, T={T}, D={D}, M={M} (log-likelihood of each series)"]
    lines.append("  " + batch_check(lls))
    ours_row = rows[0]
    for row in rows:
        per_s = n / row.time_s if row.time_s else None
        speed = "-" if per_s is None else f"{per_s:,.0f} series/s"
        rel = "-" if not (row.time_s and ours_row.time_s) else f"{row.time_s / ours_row.time_s:.2f}"
        lines.append(
            f"  {row.lib:<12} {row.name:<36} {fmt_time(row.time_s):>10} n={row.repeats:<3} "
            f"compile {fmt_time(row.compile_s):>8}  {speed:>18}  "
            f"throughput ratio ours/peer = {rel}  {row.note}"
        )
    return lines


def batch_statsmodels(p: Problem, lls: dict) -> list[Row]:
    """A loop over the series. statsmodels keeps the data of a filter's first run even after
    `bind`, so each series needs its own filter: built outside the timing, or inside it."""
    try:
        filters = [statsmodels_filter(replace(p, y=y)) for y in p.y]
    except Exception as error:
        return [Row("statsmodels", "-", note=f"unavailable: {error}"[:140])]

    def loglikes():
        return np.array([kf.loglike() for kf in filters])

    def build_and_loglikes():
        return np.array([statsmodels_filter(replace(p, y=y)).loglike() for y in p.y])

    lls["statsmodels"] = loglikes()
    variants = [
        ("loop: loglike() (filters prebuilt)", loglikes),
        ("loop: build filter + loglike()", build_and_loglikes),
    ]
    return [measure(Variant("statsmodels", name, f, _sum, is_jax=False)) for name, f in variants]


def batch_dynamax(p: Problem, lls: dict) -> Row:
    try:
        from dynamax.linear_gaussian_ssm import lgssm_filter
        from dynamax.linear_gaussian_ssm.inference import make_lgssm_params
    except Exception as error:
        return Row("dynamax", "-", note=f"unavailable: {error}"[:140])
    params = make_lgssm_params(*map(jnp.asarray, (p.m0, p.P0, p.A, p.Q, p.H, p.R)))
    batched = jax.jit(jax.vmap(lambda y: lgssm_filter(params, y).marginal_loglik))
    ys = jnp.asarray(p.y)
    row = measure(Variant("dynamax", "jit(vmap(lgssm_filter))", lambda: batched(ys), _sum))
    if row.time_s is not None:
        lls["dynamax"] = np.asarray(batched(ys))
    return row


def _sum(values) -> float:
    return float(np.sum(values))


def batch_check(lls: dict) -> str:
    ref = lls["ours"]
    parts = []
    for lib, values in lls.items():
        if lib != "ours":
            rel = float(np.max(np.abs(values - ref) / np.abs(ref)))
            parts.append(f"{lib} {rel:.1e}" + (" MISMATCH" if rel > RTOL else ""))
    return "log-likelihood check, max rel diff over series vs ours: " + (", ".join(parts) or "-")


# -- main -------------------------------------------------------------------------------------


PEERS = ("bayesssm", "jax", "numpy", "statsmodels", "dynamax", "cuthbert", "pykalman")


def machine(packages: tuple[str, ...] = PEERS) -> list[str]:
    """The CPU, load, JAX backend and flags, and the versions of `packages`."""
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    versions = []
    for name in packages:
        try:
            versions.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{name} (not installed)")
    devices = ", ".join(str(d) for d in jax.devices())
    return [
        f"CPU: {cpu}; {os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f}; "
        f"{time.strftime('%Y-%m-%d %H:%M')}",
        f"JAX backend: {jax.default_backend()} ({devices}); x64 {jax.config.jax_enable_x64}; "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')}",
        "Versions: " + ", ".join(versions),
    ]


def pin_to_one_cpu() -> int:
    """Pin every thread of this process, and the threads JAX will start, to one CPU.

    On this 2-core VM XLA CPU (jaxlib 0.10.1 and 0.10.2) often never finishes programs at
    T >= 1e4 when it has two worker threads: dynamax's, cuthbert's and our parallel filters, and
    after one such hang every later large program too (all threads idle, the result never
    notified). With one CPU it has not hung. XLA sizes its thread pool when JAX first computes,
    so this must run before that.
    """
    cpu = min(os.sched_getaffinity(0))
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), {cpu})
        except OSError:  # a thread that has just exited
            pass
    return cpu


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="only T=1000 and (D, M) = (4, 2)")
    parser.add_argument(
        "--all-cores", action="store_true", help="do not pin to one CPU (XLA may hang)"
    )
    parser.add_argument(
        "--only",
        default=",".join(LIBRARIES),
        help=f"comma-separated libraries from {','.join(LIBRARIES)} (ours always runs)",
    )
    args = parser.parse_args()
    args.libs = ["ours"] + [lib for lib in args.only.split(",") if lib and lib != "ours"]
    unknown = set(args.libs) - set(LIBRARIES)
    if unknown:
        parser.error(f"unknown libraries {sorted(unknown)}; choose from {LIBRARIES}")
    return args


def main() -> None:
    args = parse_args()
    pinned = None if args.all_cores else pin_to_one_cpu()
    start = time.perf_counter()
    print("\n".join(machine()))
    if pinned is not None:
        print(f"Pinned to CPU {pinned}: every library runs on one core (--all-cores to lift).")
    print(
        f"Times: median of {MIN_REPEATS}-{MAX_REPEATS} repeats after a warm-up call (fewer for "
        f"calls over {CAP_S / MIN_REPEATS:.0f} s); compile = first call - median (JAX only). "
        "/ours-seq, /ours-par: peer time / our filter's time (> 1: we are faster). "
        "rel diff: |loglik - ours| / |ours|.\n",
        flush=True,
    )
    lengths, sizes = (LENGTHS[:1], SIZES[:1]) if args.quick else (LENGTHS, SIZES)
    compile_par = []
    for D, M in sizes:
        for T in lengths:
            rows = run_case(make_problem(T, D, M), args.libs)
            print(f"T={T}, D={D}, M={M}")
            print("  " + check(rows))
            print("\n".join(format_rows(rows)) + "\n", flush=True)
            par = reference(rows, "par")
            if T == 10_000 and par is not None:
                compile_par.append(f"D={D}, M={M}: {fmt_time(par.compile_s)}")
    print("\n".join(batch_case(args.libs)) + "\n")
    if compile_par:
        print("Our parallel filter's compile time at T=10000: " + "; ".join(compile_par))
    elapsed, load = time.perf_counter() - start, os.getloadavg()[0]
    print(f"Total wall time {elapsed:.0f} s; load average now {load:.2f}")
    if ABANDONED:  # their threads are stuck in XLA: do not wait for them at exit
        print("Abandoned after hanging: " + "; ".join(ABANDONED))
        sys.stdout.flush()
        os._exit(1)


if __name__ == "__main__":
    main()
