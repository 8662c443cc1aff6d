"""Deep latent SSM benchmark: parallel against recurrent generation, and training speed against a
recurrent (GRU) VAE of equal parameter count.

Part 1, generation. One `bs.models.VSSM` (M = 1, Z = 8, width 64, depth 2, state size 32,
Gaussian likelihood, float32 as a user would train it), untrained (speed does not depend on
the weights), `generate(key, L, mode=...)` at L in {1024, 4096, 16384}: "parallel" (all
latents drawn at once, the decoder's SSM layers as parallel scans) against "recurrent" (a
`lax.scan` of the decoder's one-step recurrence). Both give the same samples (tested in
tests/models/test_vssm.py). Times: compiled, warm, fastest of 3 calls.

Part 2, training. Digits as 64-pixel sequences (`bs.datasets.digits_sequences`), minibatches of
32, Adam: seconds per step of `bs.train`'s step for the VSSM (its ELBO with one draw) against a
GRU VAE written here with Equinox: a bidirectional GRU encoder giving q(z_t | y), z_t ~ N(0, I)
a priori, a GRU decoder over z_{1:t} with the same Gaussian head, hidden size chosen so that its
parameter count is the VSSM's (within 5%). Both steps are one jitted value-and-gradient plus an
optax update on the same batch, run as a compiled scan of 10 steps; fastest of 3.

Usage:
    python bench/deep.py            # L in {1024, 4096, 16384}
    python bench/deep.py --quick    # L in {1024, 4096}
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

if "--all-cores" not in sys.argv:
    pin_to_one_cpu()  # before anything computes (see bench/hmc_smc.py)

import equinox as eqx  # noqa: E402
import optax  # noqa: E402

import bayesssm as bs  # noqa: E402
from bayesssm.models._deep import diagonal_gaussian, kl_diagonal  # noqa: E402


def best_time(fn, repeats: int = 3) -> float:
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return min(times)


def count(module) -> int:
    """Trainable (float) parameters of a module, or of its shapes from `eqx.filter_eval_shape`."""
    leaves = jax.tree.leaves(module)
    return sum(
        x.size for x in leaves if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.inexact)
    )


# -- part 1 ---------------------------------------------------------------------------------------


def generation(lengths, dtype, width: int) -> list[str]:
    model = bs.models.VSSM(1, 8, key=jax.random.key(0), width=width, depth=2, state_size=32,
                           dtype=dtype)  # fmt: skip
    lines = [
        f"VSSM: {count(model):,} parameters ({jnp.dtype(dtype).name}); decoder depth 2, width "
        f"{width}, state size 32",
        "| L | parallel (FFT conv) | parallel (assoc. scan) | recurrent | recurrent / conv | "
        "recurrent / scan | max difference |",
        "|---|---|---|---|---|---|---|",
    ]
    print("\n".join(lines), flush=True)
    for L in lengths:
        key = jax.random.key(1)
        t = {
            mode: best_time(lambda L=L, m=mode, k=key: model.generate(k, L, mode=m).values)
            for mode in ("conv", "parallel", "recurrent")
        }
        a = model.generate(key, L, mode="conv").values
        b = model.generate(key, L, mode="recurrent").values
        gap = float(jnp.max(jnp.abs(a - b)))
        lines.append(
            f"| {L:,} | {t['conv'] * 1e3:.1f} ms | {t['parallel'] * 1e3:.1f} ms | "
            f"{t['recurrent'] * 1e3:.1f} ms | **{t['recurrent'] / t['conv']:.1f}** | "
            f"{t['recurrent'] / t['parallel']:.1f} | {gap:.1e} |"
        )
        print(lines[-1], flush=True)
    return lines


# -- part 2 ---------------------------------------------------------------------------------------


class GRUVAE(eqx.Module):
    """A recurrent VAE: bidirectional GRU encoder, GRU decoder over the latents, N(0, I) prior."""

    forward: eqx.nn.GRUCell
    backward: eqx.nn.GRUCell
    to_q: eqx.nn.Linear
    decoder: eqx.nn.GRUCell
    to_y: eqx.nn.Linear
    hidden: int = eqx.field(static=True)

    def __init__(self, obs_dim: int, latent_dim: int, hidden: int, key):
        k = jax.random.split(key, 5)
        self.forward = eqx.nn.GRUCell(2 * obs_dim, hidden, key=k[0])
        self.backward = eqx.nn.GRUCell(2 * obs_dim, hidden, key=k[1])
        self.to_q = eqx.nn.Linear(2 * hidden, 2 * latent_dim, key=k[2])
        self.decoder = eqx.nn.GRUCell(latent_dim, hidden, key=k[3])
        self.to_y = eqx.nn.Linear(hidden, 2 * obs_dim, key=k[4])
        self.hidden = hidden

    def _run(self, cell, inputs):
        def step(h, u):
            h = cell(u, h)
            return h, h

        return jax.lax.scan(step, jnp.zeros(self.hidden, inputs.dtype), inputs)[1]

    def elbo(self, y, key):
        u = jnp.concatenate([y, jnp.ones_like(y)], axis=-1)
        h = jnp.concatenate(
            [self._run(self.forward, u), self._run(self.backward, u[::-1])[::-1]], -1
        )
        mean, sd = diagonal_gaussian(jax.vmap(self.to_q)(h))
        z = mean + sd * jax.random.normal(key, mean.shape, mean.dtype)
        raw = jax.vmap(self.to_y)(self._run(self.decoder, z))
        m, s = raw[:, :1], jax.nn.softplus(raw[:, 1:]) + 1e-3
        log_lik = jnp.sum(-0.5 * ((y - m) / s) ** 2 - jnp.log(s) - 0.5 * np.log(2 * np.pi))
        return log_lik - jnp.sum(kl_diagonal(mean, sd, jnp.zeros_like(mean), jnp.ones_like(sd)))


def train_step_time(model, elbo_fn, data, batch: int, steps: int = 10) -> float:
    optimizer = optax.adam(1e-3)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    state = optimizer.init(params)

    def loss(p, y, key):
        m = eqx.combine(p, static)
        keys = jax.random.split(key, y.shape[0])
        return -jnp.mean(jax.vmap(lambda y_b, k: elbo_fn(m, y_b, k))(y, keys))

    @jax.jit
    def run(params, state, key):
        def one(carry, k):
            p, s = carry
            k_batch, k_elbo = jax.random.split(k)
            index = jax.random.choice(k_batch, data.shape[0], (batch,), replace=False)
            value, grad = jax.value_and_grad(loss)(p, data[index], k_elbo)
            updates, s = optimizer.update(grad, s, p)
            return (eqx.apply_updates(p, updates), s), value

        return jax.lax.scan(one, (params, state), jax.random.split(key, steps))[1]

    return best_time(lambda: run(params, state, jax.random.key(0))) / steps


def _gru_parameters(hidden: int) -> int:
    # shapes only (no arrays are built): constructing hundreds of real models compiled a random
    # program per new shape, and the process ran out of memory maps and hung
    return count(eqx.filter_eval_shape(GRUVAE, 1, 8, hidden, jax.random.key(0)))


def _matching_hidden(target: int) -> int:
    """The GRU hidden size whose VAE has the parameter count nearest `target` (counts grow with
    the size, so bisect)."""
    low, high = 1, 1024
    while high - low > 1:
        mid = (low + high) // 2
        if _gru_parameters(mid) < target:
            low = mid
        else:
            high = mid
    return min((low, high), key=lambda h: abs(_gru_parameters(h) - target))


def training(dtype) -> list[str]:
    data = bs.datasets.digits_sequences(jax.random.key(0), dtype=dtype).values
    vssm = bs.models.VSSM(1, 8, key=jax.random.key(0), width=64, depth=2, state_size=32,
                          dtype=dtype)  # fmt: skip
    target = count(vssm)
    hidden = _matching_hidden(target)
    gru = GRUVAE(1, 8, hidden, jax.random.key(0))
    gru = jax.tree.map(lambda x: x.astype(dtype) if eqx.is_inexact_array(x) else x, gru)
    ours = train_step_time(vssm, lambda m, y, k: m.elbo(y, key=k), data, 32)
    theirs = train_step_time(gru, lambda m, y, k: m.elbo(y, k), data, 32)
    return [
        f"Training on digits (T = 64, batch 32): VSSM {count(vssm):,} parameters, GRU VAE "
        f"(hidden {hidden}) {count(gru):,} parameters",
        "| model | ms / step | steps / s |",
        "|---|---|---|",
        f"| VSSM (FFT convolutions) | {ours * 1e3:.1f} | {1 / ours:.1f} |",
        f"| GRU VAE (recurrent) | {theirs * 1e3:.1f} | {1 / theirs:.1f} |",
        f"VSSM steps / s over the GRU VAE's: **{theirs / ours:.2f}x**",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--all-cores", action="store_true", help="do not pin to one CPU")
    parser.add_argument("--float64", action="store_true")
    parser.add_argument("--widths", type=int, nargs="*", default=[32, 64])
    parser.add_argument("--no-training", action="store_true")
    args = parser.parse_args()
    if args.float64:
        jax.config.update("jax_enable_x64", True)
    dtype = jnp.float64 if args.float64 else jnp.float32
    for line in machine(("jax", "equinox", "optax")):
        print(line)
    lengths = (1024, 4096) if args.quick else (1024, 4096, 16384)
    for width in args.widths:
        print(f"\n## Generation, width {width}")
        generation(lengths, dtype, width)
        # Every compiled XLA CPU program holds memory maps; a process that keeps them all
        # reached the kernel's limit (vm.max_map_count) and LLVM could not allocate.
        jax.clear_caches()
    if not args.no_training:
        print("\n## Training", flush=True)
        for line in training(dtype):
            print(line, flush=True)


if __name__ == "__main__":
    main()
