"""Hamiltonian SMC benchmark: log-likelihood variance x wall time, and SMC-sampler evidence rate.

Part 1, filters. A linear-Gaussian model with D-dimensional state and informative observations,
x_t = 0.9 x_{t-1} + N(0, 0.5 I), y_t = x_t + N(0, 0.1 I), D in {5, 20, 50}, T = 20 (10 with
--quick), one simulated series, float64. Each method runs R independent times (compiled once,
called once per key after a warm-up call; the time per run is the total / R); the
table gives the variance of the log-likelihood estimate over the runs, its mean error against
the exact (Kalman) value, the time per run, and variance x time (lower is better: the variance
one second of computing buys, as variance falls like 1 / cost). Methods: the bootstrap particle
filter (`bs.ParticleFilter(N)`), the guided particle filter with the locally optimal proposal
(`proposal="optimal"`, the best guided filter there is for this model), and `bs.HamiltonianSMC`
with its defaults (adaptive tempering, 2 HMC steps of 5 leapfrog steps per stage, metric from
the Kalman filter's covariances).

Part 2, SMC samplers. The posterior of Q in an AR(1)-plus-noise model (A = 0.8, R = 0.5,
T = 50, Q ~ LogNormal(log 0.5, 1.5)), exact Kalman likelihood, 512 particles, HMC moves
(5 steps of 10 leapfrog steps), target ESS 0.5: `bs.sample_smc` (R runs under `vmap`, step size
and metric adapted between stages) against blackjax's `adaptive_tempered_smc` used directly
(the same log-likelihood as a function of log q, the same prior, HMC with a fixed step size
0.5 and unit metric, its stages in a `lax.while_loop`, R runs one after another). Reported: the
log-evidence (mean over runs and its standard error), time per run, and evidence estimates per
second.

Usage:
    python bench/hmc_smc.py            # D in {5, 20, 50}
    python bench/hmc_smc.py --quick    # D in {5, 20}, T = 10, fewer runs
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from kalman import machine, pin_to_one_cpu  # noqa: E402 (sets XLA_FLAGS first)

jax.config.update("jax_enable_x64", True)
# Pin before anything computes: importing bayesssm evaluates a few JAX constants, which starts
# XLA's thread pool, and its two threads pinned to one CPU afterwards ran the particle filters
# 30-60x slower.
if "--all-cores" not in sys.argv:
    pin_to_one_cpu()

import blackjax  # noqa: E402
import numpyro.distributions as nd  # noqa: E402

import bayesssm as bs  # noqa: E402


def model_of(dim: int) -> bs.LinearGaussianSSM:
    return bs.LinearGaussianSSM(
        A=0.9 * np.eye(dim),
        Q=0.5 * np.eye(dim),
        H=np.eye(dim),
        R=0.1 * np.eye(dim),
        m0=np.zeros(dim),
        P0=np.eye(dim),
    )


def timed_runs(fn, num_runs: int, seed: int):
    """(results of R runs, seconds per run) of a compiled fn(key), one call per run after a
    warm-up call. One run at a time: under `vmap` over runs Hamiltonian SMC's HMC moves ran
    10-100x slower on CPU, and under `lax.map` the particle filters carried a fixed ~80 ms a
    run; a run's own time is the honest measure for every method."""
    compiled = jax.jit(fn)
    # keys made alike (a key from indexing an array of keys is typed differently from a fresh
    # one, and the first call with it would compile again)
    base = jax.random.key(seed)
    keys = [jax.random.fold_in(base, i) for i in range(num_runs + 1)]
    jax.block_until_ready(compiled(keys[-1]))
    out = []
    start = time.perf_counter()
    for key in keys[:-1]:
        out.append(jax.block_until_ready(compiled(key)))
    seconds = (time.perf_counter() - start) / num_runs
    return np.asarray(out), seconds


def filters(dims, length: int, num_runs: int) -> None:
    print(f"\n## Filters: T = {length}, R = {num_runs} runs each")
    print("| D | method | N | mean error | variance | time/run | variance x time |")
    print("|---|---|---|---|---|---|---|")
    for dim in dims:
        model = model_of(dim)
        _, y = model.sample(jax.random.key(0), length)
        exact = float(bs.log_marginal(model, y))
        methods = [
            ("bootstrap", 1000, bs.ParticleFilter(1000)),
            ("bootstrap", 10000, bs.ParticleFilter(10000)),
            ("bootstrap", 100000, bs.ParticleFilter(100000)),
            ("guided (optimal)", 1000, bs.ParticleFilter(1000, proposal="optimal")),
            ("guided (optimal)", 10000, bs.ParticleFilter(10000, proposal="optimal")),
            ("Hamiltonian SMC", 64, bs.HamiltonianSMC(64)),
            ("Hamiltonian SMC", 256, bs.HamiltonianSMC(256)),
        ]
        best = {}
        for name, num, engine in methods:
            runs = num_runs if num < 100000 else max(4, num_runs // 4)

            def one(key, engine=engine, model=model, y=y):
                return bs.log_marginal(model, y, engine=engine, key=key)

            log_liks, seconds = timed_runs(one, runs, seed=dim)
            variance = float(np.var(log_liks, ddof=1))
            score = variance * seconds
            best[name] = min(best.get(name, np.inf), score)
            print(
                f"| {dim} | {name} | {num} | {log_liks.mean() - exact:.2f} | {variance:.3g} | "
                f"{seconds * 1e3:.1f} ms | {score:.3g} |",
                flush=True,
            )
        hamiltonian = best["Hamiltonian SMC"]
        for name in ("bootstrap", "guided (optimal)"):
            print(
                f"D = {dim}: best variance x time, {name} / Hamiltonian SMC = "
                f"{best[name] / hamiltonian:.3g}"
            )


def prior():
    return nd.LogNormal(np.log(0.5), 1.5)


def ar1(q: float) -> bs.LinearGaussianSSM:
    return bs.LinearGaussianSSM(A=[[0.8]], Q=[[q]], H=[[1.0]], R=[[0.5]], m0=[0.0], P0=[[1.0]])


def samplers(num_runs: int, num_particles: int = 512) -> None:
    model = ar1(0.3)
    _, y = model.sample(jax.random.key(3), 50)
    PRIOR = prior()  # noqa: N806
    print(f"\n## SMC samplers: posterior of Q, N = {num_particles}, R = {num_runs} runs")
    print("| sampler | log-evidence | se | time/run | estimates/s |")
    print("|---|---|---|---|---|")

    def ours(key):
        return bs.sample_smc(
            model,
            y,
            where=lambda m: m.Q,
            priors=PRIOR,
            key=key,
            num_particles=num_particles,
            num_runs=num_runs,
            num_mcmc_steps=5,
            num_integration_steps=10,
            progress=False,
        )

    ours(jax.random.key(1))  # compile
    start = time.perf_counter()
    result = ours(jax.random.key(2))
    seconds = (time.perf_counter() - start) / num_runs
    print(
        f"| bs.sample_smc | {result.log_evidence:.4f} | {result.log_evidence_se:.4f} | "
        f"{seconds * 1e3:.1f} ms | {1 / seconds:.2f} |"
    )

    def log_likelihood(log_q):
        return bs.log_marginal(ar1(jnp.exp(log_q[0])), y)

    def log_prior(log_q):  # the density of log q
        return PRIOR.log_prob(jnp.exp(log_q[0])) + log_q[0]

    def initial(key):
        return jnp.log(PRIOR.sample(key, (num_particles,)))[:, None]

    kernel = blackjax.hmc.build_kernel()
    algorithm = blackjax.adaptive_tempered_smc(
        log_prior,
        log_likelihood,
        kernel,
        blackjax.hmc.init,
        {  # a leading axis of length 1: shared by all particles
            "step_size": jnp.array([0.5]),
            "inverse_mass_matrix": jnp.ones((1, 1)),
            "num_integration_steps": jnp.array([10]),
        },
        blackjax.smc.resampling.systematic,
        0.5,
        num_mcmc_steps=5,
    )

    def one_run(key):
        key_init, key_run = jax.random.split(key)
        state = algorithm.init(initial(key_init))

        def go_on(carry):
            return carry[0].tempering_param < 1

        def stage(carry):
            state, log_z, key = carry
            key, step_key = jax.random.split(key)
            state, info = algorithm.step(step_key, state)
            return state, log_z + info.log_likelihood_increment, key

        return jax.lax.while_loop(go_on, stage, (state, jnp.zeros(()), key_run))[1]

    log_z, seconds = timed_runs(one_run, num_runs, seed=4)
    combined = np.log(np.mean(np.exp(log_z - log_z.max()))) + log_z.max()
    z = np.exp(log_z - log_z.max())
    se = np.std(z, ddof=1) / np.sqrt(num_runs) / np.mean(z)
    print(
        f"| blackjax adaptive_tempered_smc | {combined:.4f} | {se:.4f} | "
        f"{seconds * 1e3:.1f} ms | {1 / seconds:.2f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="D in {5, 20}, T = 10")
    parser.add_argument("--all-cores", action="store_true", help="do not pin to one CPU")
    parser.add_argument("--samplers-only", action="store_true", help="skip the filters")
    parser.add_argument("--dims", help="comma-separated state dimensions, e.g. 50")
    args = parser.parse_args()
    for line in machine(("jax", "blackjax", "numpyro")):
        print(line)
    dims = (5, 20) if args.quick else (5, 20, 50)
    if args.dims:
        dims = tuple(int(d) for d in args.dims.split(","))
    if not args.samplers_only:
        filters(dims, 10 if args.quick else 20, 8 if args.quick else 16)
    samplers(4 if args.quick else 8)


if __name__ == "__main__":
    main()
