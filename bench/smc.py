"""Particle filter benchmark: bayesssm against `particles` (NumPy) and cuthbert (JAX).

A bootstrap filter with systematic resampling at every step on the stochastic volatility model
$x_0 \\sim N(\\mu, \\sigma^2 / (1 - \\rho^2))$, $x_{t+1} = \\mu + \\rho (x_t - \\mu) + \\sigma
\\varepsilon_t$, $y_t \\sim N(0, e^{x_t})$ with mu = -1, rho = 0.9, sigma = 0.3, on the same
simulated data (T = 1000), for N in {1e3, 1e4, 1e5} particles, in one process, float64:

- ours: `bs.log_marginal` and `bs.filter` (which also computes the weighted means and variances)
  with `bs.ParticleFilter(num_particles=N, resampling="systematic", ess_threshold=1.0)`, and
  `bs.log_marginal` in float32 (model and data in float32);
- particles: `particles.SMC(fk=Bootstrap(ssm=StochVol(mu, rho, sigma), data=y), N=N,
  resampling="systematic", ESSrmin=1.0, store_history=False, collect=None)`; `pf.run()` is
  timed (the SMC object is built outside the timing). Its first call in the process compiles
  numba code (its resampling); that call is reported separately and not counted;
- cuthbert: `cuthbert.smc.particle_filter.build_filter` with the SV model written as its
  `init_sample`, `propagate_sample` and `log_potential` and `cuthbertlib.resampling.systematic`.
  Its prior is for a state before the first observation and its initial weights are uniform,
  so y_0 is absorbed by weighting the initial particles with log p(y_0 | x_0) (as `particles`
  and ours do). Two forms: `cuthbert.filter` (which returns every step's particles, weights and
  ancestors; run where N T fits in memory) and a `lax.scan` over its `filter_prepare` +
  `filter_combine` that keeps only the last state.

Times: every variant runs once as a warm-up (for JAX: trace + compile + run; "first" in the
table), then a few repeats with fresh seeds; "time" is the fastest repeat. Ratios are peer time /
our `bs.log_marginal` time (> 1: we are faster). Each run's log-likelihood is kept; at N = 1e4
(N = 1e3 with --quick) the means over runs of ours and each peer are compared against their
Monte Carlo standard errors.

Memory: a child process runs `bs.log_marginal` at N = 1e6, T = 1000 (T = 100 with --quick) and
reports its peak resident memory (`resource.getrusage`), next to a child that runs the same at
N = 1000 (the baseline: Python, JAX, the compiled program) and the T N 8 bytes a stored particle
history would need; XLA's own memory analysis of the compiled programs with and without
`store_history` is printed too.

Particle Gibbs: sweeps per second of `bs.particle_gibbs` (conditional bootstrap filter,
multinomial resampling at every step; ancestor sampling or backward simulation) against
`particles.mcmc.ParticleGibbs` with the parameters held fixed (`update_theta` returns theta)
and its conditional SMC set to resample at every step (ESSrmin=1; its path update is plain
ancestry tracing or, with `backward_step=True`, backward sampling), N = 100, T = 1000.

The process pins itself to one CPU before JAX starts (as `kalman.py`), so every library runs
single-core; `--all-cores` lifts that.

Usage:
    python bench/smc.py                     # full run (several minutes)
    python bench/smc.py --quick             # N = 1000 only, fewer repeats
    python bench/smc.py --only particles    # ours always runs (the reference)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from kalman import fmt_time, in_thread, machine, pin_to_one_cpu  # noqa: E402 (sets XLA_FLAGS first)

jax.config.update("jax_enable_x64", True)

LIBRARIES = ("ours", "particles", "cuthbert")
MU, RHO, SIGMA = -1.0, 0.9, 0.3
T = 1_000
SIZES = (1_000, 10_000, 100_000)
CHECK_N = 10_000  # where the log-likelihoods are compared (CHECK_N_QUICK with --quick)
CHECK_N_QUICK = 1_000
CHECK_RUNS = 10  # our runs for the agreement check (peers: their timing runs)
MEMORY_N = 1_000_000
CUTHBERT_FULL_MAX_N = 10_000  # cuthbert.filter stores T N particles, weights and ancestors
REPEATS, REPEATS_QUICK = 5, 3
CAP_S = 40.0  # no repeat that would take a variant's repeats past this (at least one runs)
HANG_S = 600.0  # a variant still running after this long is abandoned
Z_MAX = 4.0  # standard errors between means above which a library is flagged
PG_PARTICLES, PG_SWEEPS, PG_SWEEPS_PEER = 100, 50, 5
# versions printed with the machine
PACKAGES = ("bayesssm", "jax", "numpy", "particles", "numba", "cuthbert")
ABANDONED: list[str] = []


# -- the problem ------------------------------------------------------------------------------


def simulate(num_timesteps: int, seed: int = 0) -> np.ndarray:
    """y (T,) from the SV model, in NumPy."""
    rng = np.random.default_rng(seed)
    x = np.empty(num_timesteps)
    x[0] = MU + SIGMA / math.sqrt(1.0 - RHO**2) * rng.normal()
    for t in range(1, num_timesteps):
        x[t] = MU + RHO * (x[t - 1] - MU) + SIGMA * rng.normal()
    return np.exp(x / 2) * rng.normal(size=num_timesteps)


def our_model(dtype=jnp.float64):
    """The library's `bs.models.StochasticVolatility` with the benchmark's parameters."""
    import bayesssm as bs

    return bs.models.StochasticVolatility(*(jnp.asarray(v, dtype) for v in (MU, RHO, SIGMA)))


# -- timing -----------------------------------------------------------------------------------


@dataclass
class Variant:
    """`run(seed)` filters once (blocking) and returns the log-likelihood estimate, or
    (estimate, seconds) when it times only part of itself."""

    lib: str
    name: str
    run: Callable[[int], float]
    warm_up: bool = True  # the first call is not timed (compile, or numba's first call)


@dataclass
class Row:
    lib: str
    name: str
    num: int
    first_s: float | None = None
    time_s: float | None = None
    repeats: int = 0
    logliks: list[float] = field(default_factory=list)
    note: str = ""


def measure(variant: Variant, num: int, repeats: int) -> Row:
    """`timed` in a worker thread, abandoned after HANG_S (see `kalman.measure`)."""
    row = in_thread(lambda: timed(variant, num, repeats), HANG_S)
    if row is None:
        ABANDONED.append(f"{variant.name} N={num}")
        return Row(variant.lib, variant.name, num, note=f"no result within {HANG_S:.0f} s")
    return row


def timed(variant: Variant, num: int, repeats: int) -> Row:
    row = Row(variant.lib, variant.name, num)
    try:
        times: list[float] = []
        if variant.warm_up:
            row.first_s = _call(variant, 0, row.logliks)
        seed = 1
        while len(times) < repeats:
            if times and sum(times) + min(times) > CAP_S:
                break
            times.append(_call(variant, seed, row.logliks))
            seed += 1
        row.time_s, row.repeats = min(times), len(times)
    except Exception as error:  # a failing peer is reported, never fatal
        first_line = (str(error).splitlines() or [""])[0]
        row.note = f"error: {type(error).__name__}: {first_line[:120]}"
        traceback.print_exc(limit=3)
    return row


def _call(variant: Variant, seed: int, logliks: list[float]) -> float:
    start = time.perf_counter()
    out = variant.run(seed)
    elapsed = time.perf_counter() - start
    if isinstance(out, tuple):
        out, elapsed = out
    logliks.append(float(out))
    return elapsed


# -- the libraries ----------------------------------------------------------------------------


def ours(y: np.ndarray, num: int) -> list[Variant]:
    import bayesssm as bs

    engine = bs.ParticleFilter(num_particles=num, resampling="systematic", ess_threshold=1.0)
    variants = []
    for dtype in (jnp.float64, jnp.float32):
        model, data = our_model(dtype), jnp.asarray(y, dtype)
        bits = jnp.finfo(dtype).bits
        verbs = ("log_marginal", "filter") if dtype == jnp.float64 else ("log_marginal",)
        for verb in verbs:

            def run(seed, verb=verb, model=model, data=data):
                out = getattr(bs, verb)(model, data, engine=engine, key=jax.random.key(seed))
                return (out if verb == "log_marginal" else out.log_marginal).block_until_ready()

            variants.append(Variant("ours", f"bs.{verb} float{bits}", run))
    return variants


_PARTICLES_COMPILED: list[bool] = []  # whether numba's first call has happened


def particles(y: np.ndarray, num: int) -> list[Variant]:
    import particles as pt
    from particles import state_space_models as ssm

    fk = ssm.Bootstrap(ssm=ssm.StochVol(mu=MU, rho=RHO, sigma=SIGMA), data=y)

    def run(seed):
        np.random.seed(seed)  # noqa: NPY002 (particles draws from the global generator)
        pf = pt.SMC(
            fk=fk, N=num, resampling="systematic", ESSrmin=1.0, store_history=False, collect=None
        )
        start = time.perf_counter()
        pf.run()
        return pf.logLt, time.perf_counter() - start

    first = not _PARTICLES_COMPILED
    _PARTICLES_COMPILED.append(True)
    name = "SMC(Bootstrap(StochVol)).run()"
    return [Variant("particles", name, run, warm_up=first)]


def cuthbert_model(dtype=jnp.float64):
    """The SV model as cuthbert's Feynman-Kac functions (model inputs: y_t)."""
    sd0 = SIGMA / math.sqrt(1.0 - RHO**2)
    half_log_2pi = 0.5 * math.log(2 * math.pi)

    def init_sample(key):
        return MU + sd0 * jax.random.normal(key, (), dtype)

    def propagate_sample(key, x, y_t):
        return MU + RHO * (x - MU) + SIGMA * jax.random.normal(key, (), dtype)

    def log_likelihood(x, y_t):
        return -half_log_2pi - 0.5 * x - 0.5 * y_t**2 * jnp.exp(-x)

    def log_potential(x_prev, x, y_t):
        return log_likelihood(x, y_t)

    return init_sample, propagate_sample, log_likelihood, log_potential


def cuthbert_runs(num: int):
    """Jitted (key, y) -> log-likelihood: `cuthbert.filter`, and a scan keeping the last state."""
    import cuthbert
    from cuthbert.smc import particle_filter
    from cuthbertlib.resampling import systematic

    init_sample, propagate_sample, log_likelihood, log_potential = cuthbert_model()
    pf = particle_filter.build_filter(
        init_sample, propagate_sample, log_potential, num, systematic.resampling
    )

    def initial(key, y0):
        # cuthbert starts from uniform weights before any observation: weigh by y_0 here.
        state = pf.init_prepare(key=key)
        log_weights = jax.vmap(log_likelihood, (0, None))(state.particles, y0)
        total = jax.nn.logsumexp(log_weights) - math.log(num)
        return state._replace(
            log_weights=log_weights, log_normalizing_constant=total, model_inputs=y0
        )

    def full(key, y):
        key_init, key_filter = jax.random.split(key)
        states = cuthbert.filter(pf, y[1:], initial(key_init, y[0]), key=key_filter)
        return states.log_normalizing_constant[-1]

    def last_only(key, y):
        key_init, key_filter = jax.random.split(key)

        def step(state, args):
            y_t, k = args
            return pf.filter_combine(state, pf.filter_prepare(y_t, key=k)), None

        keys = jax.random.split(key_filter, y.shape[0] - 1)
        state, _ = jax.lax.scan(step, initial(key_init, y[0]), (y[1:], keys))
        return state.log_normalizing_constant

    return jax.jit(full), jax.jit(last_only)


def cuthbert(y: np.ndarray, num: int) -> list[Variant]:
    full, last_only = cuthbert_runs(num)
    data = jnp.asarray(y)
    variants = [
        Variant(
            "cuthbert",
            "jit(scan: filter_combine, last state)",
            lambda seed: last_only(jax.random.key(seed), data).block_until_ready(),
        )
    ]
    if num <= CUTHBERT_FULL_MAX_N:
        variants.append(
            Variant(
                "cuthbert",
                "jit(cuthbert.filter)",
                lambda seed: full(jax.random.key(seed), data).block_until_ready(),
            )
        )
    return variants


SETUPS = {lib: globals()[lib] for lib in LIBRARIES}


# -- the table and the checks -----------------------------------------------------------------


def reference(rows: list[Row]) -> Row | None:
    for row in rows:
        if row.lib == "ours" and row.name == "bs.log_marginal float64" and row.time_s:
            return row
    return None


def format_rows(rows: list[Row]) -> list[str]:
    ref = reference(rows)
    head = (
        f"  {'library':<10} {'variant':<40} {'time':>9} {'n':>2} {'first':>9} {'/ours':>6} "
        f"{'ns/particle-step':>16} {'mean loglik':>12}  note"
    )
    lines = [head, "  " + "-" * (len(head) + 4)]
    for row in rows:
        ratio = "-" if ref is None or row.time_s is None else f"{row.time_s / ref.time_s:.2f}"
        per = "-" if row.time_s is None else f"{row.time_s / (T * row.num) * 1e9:.1f}"
        mean = f"{np.mean(row.logliks):.2f}" if row.logliks else "-"
        lines.append(
            f"  {row.lib:<10} {row.name:<40} {fmt_time(row.time_s):>9} {row.repeats or '':>2} "
            f"{fmt_time(row.first_s):>9} {ratio:>6} {per:>16} {mean:>12}  {row.note}"
        )
    return lines


def agreement(rows: list[Row], extra: list[float]) -> list[str]:
    """Means over runs of each variant against ours, in Monte Carlo standard errors."""
    ref = reference(rows)
    if ref is None:
        return ["  no reference (our log_marginal failed)"]
    ours_ll = np.array(ref.logliks + extra)
    mean, se = ours_ll.mean(), ours_ll.std(ddof=1) / math.sqrt(len(ours_ll))
    lines = [
        f"  ours bs.log_marginal float64: mean {mean:.3f}, sd {ours_ll.std(ddof=1):.3f} over "
        f"{len(ours_ll)} runs (se {se:.3f})"
    ]
    for row in rows:
        if row is ref or len(row.logliks) < 2:
            continue
        values = np.array(row.logliks)
        se_row = values.std(ddof=1) / math.sqrt(len(values))
        z = (values.mean() - mean) / math.sqrt(se**2 + se_row**2)
        flag = "agree" if abs(z) <= Z_MAX else f"DISAGREE (|z| > {Z_MAX:g})"
        lines.append(
            f"  {row.lib} {row.name}: mean {values.mean():.3f}, sd {values.std(ddof=1):.3f} over "
            f"{len(values)} runs; difference {values.mean() - mean:+.3f} = {z:+.1f} se ({flag})"
        )
    return lines


def linearity(all_rows: list[Row]) -> list[str]:
    """Time ratios between successive N for each variant (10 means linear in N)."""
    by_name: dict[tuple[str, str], list[Row]] = {}
    for row in all_rows:
        if row.time_s:
            by_name.setdefault((row.lib, row.name), []).append(row)
    lines = []
    for (lib, name), rows in by_name.items():
        steps = [
            f"N {a.num:.0e} -> {b.num:.0e}: x{b.time_s / a.time_s:.1f}"
            for a, b in zip(rows, rows[1:], strict=False)
        ]
        if steps:
            lines.append(f"  {lib} {name}: " + ", ".join(steps))
    return lines


# -- memory -----------------------------------------------------------------------------------


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1]) * 1024  # kB


def child_memory(num: int, num_timesteps: int) -> None:
    """In a child process: compile bs.log_marginal (inside jax.jit, ahead of time), reset the
    peak-RSS mark, run it once, print RSS before, peak during and the run time as JSON."""
    import bayesssm as bs

    y = jnp.asarray(simulate(num_timesteps))
    engine = bs.ParticleFilter(num_particles=num, resampling="systematic", ess_threshold=1.0)
    model = our_model()
    key = jax.random.key(0)

    def run(y, key):
        return bs.log_marginal(model, y, engine=engine, key=key)

    compiled = jax.jit(run).lower(y, key).compile()
    before = _status_bytes("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM (the peak) to the current RSS
    start = time.perf_counter()
    ll = float(compiled(y, key))
    elapsed = time.perf_counter() - start
    peak = _status_bytes("VmHWM")
    overall = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(dict(before=before, peak=peak, overall=overall, seconds=elapsed, loglik=ll)))


def run_child(num: int, num_timesteps: int, pin: bool) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--child-memory", str(num)]
    command += ["--child-T", str(num_timesteps)] + ([] if pin else ["--all-cores"])
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=HANG_S)
    except subprocess.TimeoutExpired:
        return dict(error=f"no result within {HANG_S:.0f} s")
    if done.returncode != 0:
        return dict(error=(done.stderr.strip().splitlines() or ["?"])[-1][:160])
    return json.loads(done.stdout.strip().splitlines()[-1])


def xla_memory(num: int, num_timesteps: int, store_history: bool) -> str:
    """XLA's temp + output bytes for bs.filter's compiled program (compiled, never run)."""
    import bayesssm as bs

    engine = bs.ParticleFilter(num_particles=num, ess_threshold=1.0, store_history=store_history)
    y = jnp.zeros(num_timesteps)
    model = our_model()

    def run(y):
        return bs.filter(model, y, engine=engine, key=jax.random.key(0))

    try:
        analysis = jax.jit(run).lower(y).compile().memory_analysis()
        temp, out = analysis.temp_size_in_bytes, analysis.output_size_in_bytes
        return f"temp {temp / 1e6:,.0f} MB + outputs {out / 1e6:,.0f} MB"
    except Exception as error:
        return f"unavailable ({type(error).__name__})"


def memory_section(num_timesteps: int, pin: bool) -> list[str]:
    history = num_timesteps * MEMORY_N * 8
    lines = [
        f"Memory: bs.log_marginal at N={MEMORY_N:.0e}, T={num_timesteps}, float64, in a child "
        "process: resident memory before the run (after import and compile) and its peak during"
    ]
    for num in (1_000, MEMORY_N):
        out = run_child(num, num_timesteps, pin)
        if "error" in out:
            lines.append(f"  N={num:.0e}: failed: {out['error']}")
            continue
        growth = out["peak"] - out["before"]
        lines.append(
            f"  N={num:.0e}: RSS before {out['before'] / 1e6:,.0f} MB, peak during the run "
            f"{out['peak'] / 1e6:,.0f} MB (+{growth / 1e6:,.0f} MB; process peak "
            f"{out['overall'] / 1e6:,.0f} MB); run {fmt_time(out['seconds'])} "
            f"({out['seconds'] / (num_timesteps * num) * 1e9:.0f} ns/particle-step), "
            f"loglik {out['loglik']:.2f}"
        )
        if num == MEMORY_N:
            lines.append(
                f"  a stored particle history alone (T N 8 bytes) would be {history / 1e9:.1f} "
                f"GB, {history / max(growth, 1):,.0f}x the run's growth; one step's particles "
                f"are N 8 = {num * 8 / 1e6:.0f} MB"
            )
    for store in (False, True):
        lines.append(
            f"  XLA memory analysis, bs.filter store_history={store}: "
            + xla_memory(MEMORY_N, num_timesteps, store)
        )
    return lines


# -- particle Gibbs ---------------------------------------------------------------------------


def particle_gibbs_section(y: np.ndarray, libs: list[str]) -> list[str]:
    head = f"Particle Gibbs: N={PG_PARTICLES}, T={T}, parameters fixed; sweeps per second"
    lines = [head]
    import bayesssm as bs

    model, data = our_model(), jnp.asarray(y)
    for method in ("ancestor", "backward"):

        def run(seed, num_samples, method=method):
            key = jax.random.key(seed)
            out = bs.particle_gibbs(
                model,
                data,
                key=key,
                num_samples=num_samples,
                num_particles=PG_PARTICLES,
                method=method,
            )
            return jax.block_until_ready(out)

        name = f"ours bs.particle_gibbs(method={method!r})"
        lines.append(pg_line(name, run, PG_SWEEPS, compiles=True))
    if "particles" in libs:
        for backward in (False, True):
            name = f"particles ParticleGibbs(backward_step={backward}), CSMC ESSrmin=1"
            lines.append(pg_line(name, particles_gibbs(y, backward), PG_SWEEPS_PEER))
    return lines


def pg_line(name: str, run: Callable[[int, int], object], sweeps: int, compiles=False) -> str:
    """Sweeps per second from two runs of different length (removes start-up and compile).

    JAX compiles one program per chain length, so both lengths are warmed up first."""

    def go():
        run(0, 1)  # compile (JAX) or numba's first call
        if compiles:
            run(0, 1 + sweeps)
        start = time.perf_counter()
        run(1, 1)
        one = time.perf_counter() - start
        start = time.perf_counter()
        run(2, 1 + sweeps)
        many = time.perf_counter() - start
        return one, many

    try:
        result = in_thread(go, HANG_S)
    except Exception as error:
        return f"  {name}: error {type(error).__name__}: {error}"[:200]
    if result is None:
        return f"  {name}: no result within {HANG_S:.0f} s"
    one, many = result
    per_sweep = (many - one) / sweeps
    return (
        f"  {name}: {1 / per_sweep:,.1f} sweeps/s ({fmt_time(per_sweep)} a sweep; "
        f"a 1-sweep call {fmt_time(one)})"
    )


def particles_gibbs(y: np.ndarray, backward: bool) -> Callable[[int, int], object]:
    import particles as pt
    from particles import distributions as dists
    from particles import mcmc
    from particles import state_space_models as ssm

    class FixedThetaPG(mcmc.ParticleGibbs):
        """Parameters held fixed; conditional SMC resampling at every step, like ours."""

        def update_theta(self, theta, x):
            return theta

        def update_states(self, theta, x):
            fk = self.fk_mod(theta)
            if x is None:
                cpf = pt.SMC(fk=fk, N=self.Nx, store_history=True)
            else:
                cpf = mcmc.CSMC(fk=fk, N=self.Nx, xstar=x, ESSrmin=1.0)
            cpf.run()
            if self.backward_step:
                return cpf.hist.backward_sampling_ON2(1)
            return cpf.hist.extract_one_trajectory()

    prior = dists.StructDist(
        {"mu": dists.Normal(), "rho": dists.Uniform(-1.0, 1.0), "sigma": dists.Gamma()}
    )
    theta0 = np.array([(MU, RHO, SIGMA)], dtype=prior.dtype)[0]

    def run(seed, num_samples):
        np.random.seed(seed)  # noqa: NPY002 (particles draws from the global generator)
        pg = FixedThetaPG(
            niter=num_samples,
            ssm_cls=ssm.StochVol,
            prior=prior,
            data=y,
            theta0=theta0,
            Nx=PG_PARTICLES,
            backward_step=backward,
        )
        pg.run()
        return pg.x

    return run


# -- main -------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="N=1000 only, fewer repeats")
    parser.add_argument(
        "--all-cores", action="store_true", help="do not pin to one CPU (XLA may hang)"
    )
    parser.add_argument(
        "--only",
        default=",".join(LIBRARIES),
        help=f"comma-separated libraries from {','.join(LIBRARIES)} (ours always runs)",
    )
    parser.add_argument(
        "--sizes", help=f"comma-separated N of the filter timings (default {SIZES})"
    )
    parser.add_argument("--no-filter", action="store_true", help="skip the filter timings")
    parser.add_argument("--no-memory", action="store_true", help="skip the N=1e6 memory check")
    parser.add_argument(
        "--memory-T", type=int, help="T of the memory check (default 1000; 100 with --quick)"
    )
    parser.add_argument("--no-gibbs", action="store_true", help="skip particle Gibbs")
    parser.add_argument("--child-memory", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child-T", type=int, default=T, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.libs = ["ours"] + [lib for lib in args.only.split(",") if lib and lib != "ours"]
    unknown = set(args.libs) - set(LIBRARIES)
    if unknown:
        parser.error(f"unknown libraries {sorted(unknown)}; choose from {LIBRARIES}")
    return args


def main() -> None:
    args = parse_args()
    pinned = None if args.all_cores else pin_to_one_cpu()
    if args.child_memory:
        child_memory(args.child_memory, args.child_T)
        return
    start = time.perf_counter()
    print("\n".join(machine(PACKAGES)))
    if pinned is not None:
        print(f"Pinned to CPU {pinned}: every library runs on one core (--all-cores to lift).")
    repeats = REPEATS_QUICK if args.quick else REPEATS
    print(
        f"SV model mu={MU}, rho={RHO}, sigma={SIGMA}; T={T}; bootstrap filter, systematic "
        f"resampling at every step. time: fastest of up to {repeats} repeats after a warm-up "
        f"(fewer when they pass {CAP_S:.0f} s); first: the warm-up call (JAX: trace + compile + "
        "run; particles: its first call compiles numba code); /ours: time / ours "
        "bs.log_marginal float64 (> 1: we are faster).\n",
        flush=True,
    )
    y = simulate(T)
    sizes = SIZES[:1] if args.quick else SIZES
    if args.sizes:
        sizes = tuple(int(float(n)) for n in args.sizes.split(","))
    check_n = CHECK_N_QUICK if args.quick else CHECK_N
    all_rows: list[Row] = []
    for num in () if args.no_filter else sizes:
        rows: list[Row] = []
        for lib in args.libs:
            try:
                variants = SETUPS[lib](y, num)
            except Exception as error:
                rows.append(Row(lib, "-", num, note=f"unavailable: {type(error).__name__}"))
                traceback.print_exc(limit=2)
                continue
            rows.extend(measure(v, num, repeats) for v in variants)
        print(f"N={num}")
        print("\n".join(format_rows(rows)))
        if num == check_n:
            extra = []
            ref = reference(rows)
            if ref is not None:
                run = ours(y, num)[0].run
                extra = [float(run(100 + i)) for i in range(max(CHECK_RUNS - len(ref.logliks), 0))]
            print(f"Log-likelihood agreement at N={num} (means over runs, Monte Carlo error):")
            print("\n".join(agreement(rows, extra)))
        print(flush=True)
        all_rows += rows
    if len(sizes) > 1 and not args.no_filter:
        print("Cost against N (time ratios; x10 is linear):")
        print("\n".join(linearity(all_rows)) + "\n", flush=True)
    if not args.no_memory:
        memory_T = args.memory_T or (100 if args.quick else T)
        print("\n".join(memory_section(memory_T, pinned is not None)) + "\n", flush=True)
    if not args.no_gibbs:
        print("\n".join(particle_gibbs_section(y, args.libs)) + "\n", flush=True)
    elapsed, load = time.perf_counter() - start, os.getloadavg()[0]
    print(f"Total wall time {elapsed:.0f} s; load average now {load:.2f}")
    if ABANDONED:
        print("Abandoned after hanging: " + "; ".join(ABANDONED))
        sys.stdout.flush()
        os._exit(1)


if __name__ == "__main__":
    main()
