"""Demo: track a noisy, partly missing 2-D trajectory with a constant-velocity model.

Simulates a series, hides 15% of the entries and a block of whole rows, filters and smooths it
with the exact square-root Kalman engine, prints the log-likelihood and writes a plot of the
smoothed states with 95% bands to demo.png (or the path given as the first argument).
"""

import os
import sys

# Works around a deadlock in XLA's CPU scheduler (jax 0.10.2); see README, "Known issues".
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_enable_concurrency_optimized_scheduler=false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import bayesssm as bs  # noqa: E402

jax.config.update("jax_enable_x64", True)  # the demo's choice; the library never sets it


def constant_velocity_model(dt: float = 0.1, accel_sd: float = 1.0, obs_sd: float = 0.5):
    """State (position x, position y, velocity x, velocity y); positions observed with noise."""
    A = jnp.block([[jnp.eye(2), dt * jnp.eye(2)], [jnp.zeros((2, 2)), jnp.eye(2)]])
    Q = accel_sd**2 * jnp.block(
        [
            [dt**3 / 3 * jnp.eye(2), dt**2 / 2 * jnp.eye(2)],
            [dt**2 / 2 * jnp.eye(2), dt * jnp.eye(2)],
        ]
    )
    H = jnp.concatenate([jnp.eye(2), jnp.zeros((2, 2))], axis=1)
    R = obs_sd**2 * jnp.eye(2)
    return bs.LinearGaussianSSM(A=A, Q=Q, H=H, R=R, m0=jnp.zeros(4), P0=jnp.eye(4))


def main(out: str = "demo.png") -> None:
    model = constant_velocity_model()
    key_sim, key_mask = jax.random.split(jax.random.key(0))
    x, y = model.sample(key_sim, num_timesteps=200)
    hidden = jax.random.uniform(key_mask, y.shape) < 0.15
    y = jnp.where(hidden, jnp.nan, y).at[120:140].set(jnp.nan)

    filtered = bs.filter(model, y)
    smoothed = bs.smooth(model, y)
    print(f"log-likelihood: {float(filtered.log_marginal):.3f}")
    rmse = jnp.sqrt(jnp.mean((smoothed.means - x) ** 2, axis=0))
    print("smoother RMSE per state (pos x, pos y, vel x, vel y):", jnp.round(rmse, 3))

    t = jnp.arange(y.shape[0])
    names = ["position x", "position y", "velocity x", "velocity y"]
    fig, axes = plt.subplots(4, 1, figsize=(9, 9), sharex=True)
    for i, ax in enumerate(axes):
        mean, sd = smoothed.means[:, i], jnp.sqrt(smoothed.covs[:, i, i])
        ax.fill_between(t, mean - 1.96 * sd, mean + 1.96 * sd, alpha=0.3, label="95% band")
        ax.plot(t, mean, label="smoothed mean")
        ax.plot(t, x[:, i], "k--", lw=1, label="true state")
        if i < 2:
            ax.plot(t, y[:, i], ".", ms=3, color="C3", label="observed")
        ax.axvspan(120, 139, color="grey", alpha=0.15)
        ax.set_ylabel(names[i])
    axes[0].legend(loc="upper left", ncol=4, fontsize=8)
    axes[-1].set_xlabel("time step (grey: rows missing)")
    fig.suptitle("Square-root Kalman smoother, 95% bands")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(*sys.argv[1:])
