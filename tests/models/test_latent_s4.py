"""bs.models.LatentS4: the ELBO against a plain Monte Carlo reference, the model protocol (a
bootstrap particle filter on irregular times) against importance sampling from the model's own
generator, imputation through bs.impute, training, bad input; and (slow) the irregular pendulum
task: LatentS4 imputes held-out rows better than a linear-Gaussian SSM fitted by bs.fit_mle."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from reference.numerics import imputation_mse
from scipy.special import logsumexp
from scipy.stats import norm

import bayesssm as bs


def small(key=0, **kwargs):
    settings = dict(width=8, depth=2, state_size=4, latent_dim=2)
    settings.update(kwargs)
    obs_dim = settings.pop("obs_dim", 1)
    return bs.models.LatentS4(obs_dim, key=jax.random.key(key), **settings)


def irregular_times(key, num):
    return np.cumsum(np.asarray(jax.random.uniform(key, (num,), minval=0.1, maxval=0.8)))


def _softplus(x):
    return np.log1p(np.exp(x))


def test_elbo_matches_a_plain_monte_carlo_reference():
    """The ELBO (each KL in closed form given z_{<t}) against
    E_q[log p(y | z) + sum_t log N(z_t; prior(z_{<t})) - log q(z)] with scipy's densities;
    both Monte Carlo averages, compared within 4 standard errors."""
    model = small(min_sd=0.2)
    times = irregular_times(jax.random.key(1), 12)
    y = np.array(model.generate(jax.random.key(2), times).values)
    y[5] = np.nan
    series = bs.TimeSeries(times, y)
    keys = jax.random.split(jax.random.key(3), 2000)
    ours = np.asarray(jax.vmap(lambda k: model.elbo(series, key=k))(keys))

    dt = np.concatenate([[times[1] - times[0]], np.diff(times)])
    mean, sd = (np.asarray(a) for a in model.encode(jnp.asarray(y), jnp.asarray(dt)))
    z = mean + sd * np.asarray(jax.random.normal(jax.random.key(4), (2000,) + mean.shape))
    prior = jax.vmap(lambda z_s: model.prior(z_s, jnp.asarray(dt)))(jnp.asarray(z))
    p_mean, p_sd = (np.asarray(a) for a in prior)
    raw = np.asarray(jax.vmap(lambda z_s: model.decode(z_s, jnp.asarray(dt)))(jnp.asarray(z)))
    dec_mean, dec_sd = raw[..., :1], _softplus(raw[..., 1:]) + 0.2
    observed = ~np.isnan(y)
    log_lik = np.where(observed, norm.logpdf(np.nan_to_num(y), dec_mean, dec_sd), 0.0)
    reference = (
        log_lik.sum(axis=(1, 2))
        + norm.logpdf(z, p_mean, p_sd).sum(axis=(1, 2))
        - norm.logpdf(z, mean, sd).sum(axis=(1, 2))
    )
    se = np.sqrt(ours.var() / ours.size + reference.var() / reference.size)
    assert abs(ours.mean() - reference.mean()) < 4 * se, (ours.mean(), reference.mean(), se)


def test_prior_is_causal_and_uses_the_gaps():
    """p(z_t | z_{<t}) does not move when z_t or later latents change, and does move with the
    time gaps (the layers' continuous-time discretisation)."""
    model = small()
    z = jax.random.normal(jax.random.key(1), (10, 2))
    dt = jnp.full(10, 0.5)
    base = model.prior(z, dt)[0]
    moved = model.prior(z.at[6].add(1.0), dt)[0]
    np.testing.assert_array_equal(base[:7], moved[:7])
    assert not np.allclose(base[7:], moved[7:])
    assert not np.allclose(model.prior(z, dt * 3)[0][1:], base[1:])


def test_particle_filter_on_the_model_protocol_matches_importance_sampling():
    """On irregular times, a bootstrap particle filter through initial / transition / emission
    and importance sampling from `generate` (latents one step at a time, decoded in parallel)
    are unbiased for the same p(y): their ratio averages to 1 within 3 standard errors."""
    model = small(min_sd=0.3)
    times = irregular_times(jax.random.key(1), 6)
    y = model.generate(jax.random.key(2), times).values
    series = bs.TimeSeries(times, y)
    engine = bs.ParticleFilter(num_particles=1000)
    runs = np.asarray(
        jax.vmap(lambda k: bs.log_marginal(model, series, engine=engine, key=k))(
            jax.random.split(jax.random.key(3), 16)
        )
    )
    K = 20_000
    z = jax.vmap(lambda k: model.generate(k, times).latents)(jax.random.split(jax.random.key(4), K))
    dt = jnp.concatenate([jnp.asarray(times[1:2] - times[:1]), jnp.diff(jnp.asarray(times))])
    raw = jax.vmap(lambda z_s: model.decode(z_s, dt))(z)
    log_w = np.asarray(jnp.sum(model.head.log_prob(raw, y, jnp.ones_like(y, bool)), axis=-1))
    log_is = logsumexp(log_w) - np.log(K)
    w = np.exp(log_w - log_w.max())
    rel_se_is = w.std() / (w.mean() * np.sqrt(K))
    ratio = np.exp(runs - log_is)
    se = np.sqrt(ratio.var(ddof=1) / ratio.size + rel_se_is**2)
    assert abs(ratio.mean() - 1.0) < 3 * se, (ratio.mean(), se)
    assert se < 0.05


def test_training_and_imputation():
    """A short bs.train on pendulum series raises the bound; bs.impute then answers at query
    times between and beyond the observations, with finite means and positive sds."""
    data = bs.datasets.damped_pendulum(jax.random.key(1), num_series=8, num_timesteps=20)
    model = small(obs_dim=2)
    fitted, history = bs.train(model, data.series(), num_steps=50, key=jax.random.key(2),
                               progress=False)  # fmt: skip
    elbo = np.asarray(history.elbo)
    assert np.mean(elbo[-10:]) > np.mean(elbo[:10]), (elbo[:10], elbo[-10:])
    series = data.series()[0]
    t = np.asarray(series.times)
    at = np.concatenate([(t[:-1] + t[1:]) / 2, [t[-1] + 0.5]])
    result = bs.impute(fitted, series, at=at)
    assert result.mean.shape == (len(at), 2)
    assert np.all(np.isfinite(result.mean)) and np.all(result.sd > 0)


def test_bad_input():
    with pytest.raises(ValueError, match="dt_min"):
        small(dt_min=0.0)
    with pytest.raises(ValueError, match="unknown likelihood"):
        small(likelihood="student")
    model = small()
    with pytest.raises(ValueError, match="1 columns"):
        model.elbo(np.zeros((5, 2)), key=jax.random.key(0))
    with pytest.raises(ValueError, match="engine"):
        model.posterior_predictive(bs.TimeSeries(np.arange(3.0), np.zeros(3)), [1],
                                   engine=bs.Kalman())  # fmt: skip


@pytest.mark.slow
def test_latent_s4_beats_a_linear_gaussian_baseline_on_held_out_imputation():
    """Pendulums observed at irregular times with half the rows missing: LatentS4 trained by
    bs.train imputes the held-out rows of new series with a lower MSE than a linear-Gaussian
    SSM (each coordinate a damped oscillator, a linear SDE discretised over the gaps) fitted by
    bs.fit_mle on the training series."""
    train = bs.datasets.damped_pendulum(jax.random.key(10), num_series=64, num_timesteps=40)
    test = bs.datasets.damped_pendulum(jax.random.key(11), num_series=16, num_timesteps=40)
    model = bs.models.LatentS4(2, 4, key=jax.random.key(12), width=32, depth=2, state_size=8)
    rate = optax.warmup_cosine_decay_schedule(0.0, 5e-3, 50, 1200, 2.5e-4)
    optimizer = optax.chain(optax.clip_by_global_norm(10.0), optax.adam(rate))
    model, _ = bs.train(model, train.series(), num_steps=1200, key=jax.random.key(13),
                        batch_size=16, optimizer=optimizer, progress=False)  # fmt: skip
    ours = imputation_mse(lambda s, at: bs.impute(model, s, at=at).mean, test)

    F1 = jnp.array([[0.0, 1.0], [-4.0, -0.2]])
    F = jax.scipy.linalg.block_diag(F1, F1)
    baseline = bs.ContinuousDiscreteSSM.linear(
        F, 0.5 * jnp.diag(jnp.array([0.0, 1.0, 0.0, 1.0])), m0=jnp.array([0.0, 0.0, -0.5, 0.0]),
        P0=jnp.eye(4), H=jnp.array([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]),
        R=0.01 * jnp.eye(2),
    )  # fmt: skip
    stacked = bs.TimeSeries.stack(train.series()[:32])
    fitted_leaves = lambda m: (m.drift_fn.F, m.drift_fn.c, m.diffusion_fn, m.emission_fn.R,  # noqa: E731
                               m.emission_fn.d, m.m0, m.P0)  # fmt: skip
    baseline, _ = bs.fit_mle(baseline, stacked, where=fitted_leaves, num_steps=300)
    theirs = imputation_mse(lambda s, at: bs.impute(baseline, s, at=at).mean, test)
    print(f"imputation MSE: LatentS4 {ours:.4f}, linear-Gaussian SSM {theirs:.4f}")
    assert ours < theirs, (ours, theirs)
