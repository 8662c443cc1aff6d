"""bs.models.VSSM: parallel and recurrent generation give the same samples, resumed generation
equals uninterrupted generation, the autoregressive prior after a prefix is the one it was
trained as, the ELBO against a plain Monte Carlo reference, the model protocol (a bootstrap
particle filter) against importance sampling, training, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy.special import logsumexp
from scipy.stats import norm

import bayesssm as bs


def small(key=0, **kwargs):
    settings = dict(width=8, depth=2, state_size=4)
    settings.update(kwargs)
    obs_dim = settings.pop("obs_dim", 2)
    latent = settings.pop("latent_dim", 3)
    return bs.models.VSSM(obs_dim, latent, key=jax.random.key(key), **settings)


LIKELIHOODS = [
    dict(likelihood="gaussian"),
    dict(likelihood="bernoulli"),
    dict(likelihood="categorical", num_classes=5),
]


@pytest.mark.parametrize("autoregressive", [False, True])
@pytest.mark.parametrize("likelihood", LIKELIHOODS, ids=lambda d: d["likelihood"])
def test_parallel_and_recurrent_generation_give_the_same_samples(likelihood, autoregressive):
    """Generation at once (FFT convolutions, or parallel scans) and step by step."""
    model = small(autoregressive=autoregressive, **likelihood)
    key = jax.random.key(3)
    rec = model.generate(key, 37, mode="recurrent")
    for mode in ("conv", "parallel"):
        par = model.generate(key, 37, mode=mode)
        np.testing.assert_allclose(par.latents, rec.latents, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(par.means, rec.means, rtol=1e-9, atol=1e-11)
        if likelihood["likelihood"] == "gaussian":
            np.testing.assert_allclose(par.values, rec.values, rtol=1e-9, atol=1e-11)
        else:  # discrete draws: the very same values
            np.testing.assert_array_equal(par.values, rec.values)
        assert par.values.shape == (37, 2) and par.latents.shape == (37, 3)
        assert int(par.state.step) == int(rec.state.step) == 37


@pytest.mark.parametrize("autoregressive", [False, True])
def test_resumed_generation_equals_uninterrupted_generation(autoregressive):
    model = small(autoregressive=autoregressive, likelihood="categorical", num_classes=4)
    key = jax.random.key(5)
    whole = model.generate(key, 30)
    for first_mode, second_mode in [("conv", "conv"), ("recurrent", "parallel"),
                                    ("parallel", "recurrent"), ("conv", "recurrent")]:  # fmt: skip
        first = model.generate(key, 12, mode=first_mode)
        rest = model.generate(key, 18, state=first.state, mode=second_mode)
        np.testing.assert_array_equal(np.concatenate([first.values, rest.values]), whole.values)
        np.testing.assert_allclose(
            np.concatenate([first.latents, rest.latents]), whole.latents, rtol=1e-10, atol=1e-12
        )
        for a, b in zip(rest.state.decoder, whole.state.decoder, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_autoregressive_prior_after_a_prefix_is_the_trained_prior():
    """After condition(prefix of length c), the generated latents are p_mean + p_sd * eps with
    (p_mean, p_sd) the prior the ELBO uses with prefix_length = c on the padded series, and eps
    the documented per-step noise (fold_in(key, step), first half of its split)."""
    model = small(autoregressive=True)
    c, L = 9, 14
    prefix = np.array(jax.random.normal(jax.random.key(1), (c, 2)))
    prefix[3, 1] = np.nan
    state = model.condition(prefix, key=jax.random.key(2))
    key = jax.random.key(7)
    out = model.generate(key, L, state=state)
    padded = jnp.concatenate([jnp.asarray(prefix), jnp.full((L, 2), jnp.nan)])
    p_mean, p_sd = model.prior(padded, c)
    step_keys = jax.vmap(lambda s: jax.random.split(jax.random.fold_in(key, s))[0])(
        jnp.arange(c, c + L)
    )
    eps = jax.vmap(lambda k: jax.random.normal(k, (3,)))(step_keys)
    np.testing.assert_allclose(out.latents, p_mean[c:] + p_sd[c:] * eps, rtol=1e-9, atol=1e-11)


def test_elbo_matches_a_plain_monte_carlo_reference():
    """The ELBO (KL in closed form) against E_q[log p(y | z) + log N(z; 0, I) - log q(z)]
    computed with scipy's densities from the encoder's and decoder's outputs; both are Monte
    Carlo averages, compared within 4 standard errors."""
    model = small(obs_dim=1, latent_dim=2)
    y = np.array(model.generate(jax.random.key(1), 10).values)
    y[4] = np.nan  # a missing row adds no likelihood term
    keys = jax.random.split(jax.random.key(2), 2000)
    ours = np.asarray(jax.vmap(lambda k: model.elbo(y, key=k))(keys))

    mean, sd = (np.asarray(a) for a in model.encode(jnp.asarray(y)))
    eps = np.asarray(jax.random.normal(jax.random.key(3), (2000,) + mean.shape))
    z = mean + sd * eps
    raw = np.asarray(jax.vmap(model.decode)(jnp.asarray(z)))
    dec_mean = raw[..., :1]
    dec_sd = np.log1p(np.exp(raw[..., 1:])) + 1e-3  # softplus + min_sd, as documented
    observed = ~np.isnan(y)
    log_lik = np.where(observed, norm.logpdf(np.nan_to_num(y), dec_mean, dec_sd), 0.0)
    log_prior = norm.logpdf(z).sum(axis=(1, 2))
    log_q = norm.logpdf(z, mean, sd).sum(axis=(1, 2))
    reference = log_lik.sum(axis=(1, 2)) + log_prior - log_q
    se = np.sqrt(ours.var() / ours.size + reference.var() / reference.size)
    assert abs(ours.mean() - reference.mean()) < 4 * se, (ours.mean(), reference.mean(), se)


def test_particle_filter_on_the_model_protocol_matches_importance_sampling():
    """The VSSM as initial / transition / emission: a bootstrap particle filter's likelihood
    estimate and importance sampling from the prior (z iid N(0, I), decoded in parallel) are
    unbiased for the same p(y): their ratio averages to 1 within 3 standard errors."""
    model = small(obs_dim=1, latent_dim=2, min_sd=0.3)
    y = model.generate(jax.random.key(1), 6).values
    engine = bs.ParticleFilter(num_particles=1000)
    runs = jax.vmap(lambda k: bs.log_marginal(model, y, engine=engine, key=k))(
        jax.random.split(jax.random.key(2), 16)
    )
    runs = np.asarray(runs)

    K = 100_000
    z = jax.random.normal(jax.random.key(3), (K, 6, 2))
    raw = jax.vmap(model.decode)(z)
    observed = jnp.ones_like(y, bool)
    log_w = np.asarray(jnp.sum(model.head.log_prob(raw, y, observed), axis=-1))
    log_is = logsumexp(log_w) - np.log(K)
    w = np.exp(log_w - log_w.max())
    rel_se_is = w.std() / (w.mean() * np.sqrt(K))

    ratio = np.exp(runs - log_is)
    rel_se_pf = ratio.std(ddof=1) / np.sqrt(ratio.size)
    se = np.sqrt(rel_se_pf**2 + rel_se_is**2)
    assert abs(ratio.mean() - 1.0) < 3 * se, (ratio.mean(), se)
    assert se < 0.05  # the check has power


def test_training_improves_the_bound():
    t = np.arange(48)
    data = np.stack([np.sin(0.3 * t + p)[:, None] for p in np.linspace(0, 3, 16)])
    model = small(obs_dim=1, latent_dim=2)
    fitted, history = bs.train(model, data, num_steps=60, key=jax.random.key(1), progress=False)
    elbo = np.asarray(history.elbo)
    assert np.mean(elbo[-10:]) > np.mean(elbo[:10]) + 10.0, (elbo[:10], elbo[-10:])
    sample = fitted.generate(jax.random.key(2), 48)
    assert np.all(np.isfinite(sample.values))


def test_float32_model():
    model = small(dtype=jnp.float32)
    out = model.generate(jax.random.key(0), 8)
    assert out.values.dtype == jnp.float32
    y = jnp.asarray(out.values)
    assert model.elbo(y, key=jax.random.key(1)).dtype == jnp.float32


def test_bad_input():
    with pytest.raises(ValueError, match="unknown likelihood"):
        small(likelihood="poisson")
    with pytest.raises(ValueError, match="num_classes"):
        small(likelihood="categorical")
    with pytest.raises(ValueError, match="width"):
        small(width=0)
    model = small()
    with pytest.raises(ValueError, match="2 columns"):
        model.elbo(np.zeros((5, 3)), key=jax.random.key(0))
    with pytest.raises(ValueError, match="unknown mode"):
        model.generate(jax.random.key(0), 4, mode="fast")
    with pytest.raises(ValueError, match="num_steps"):
        model.generate(jax.random.key(0), 0)
    with pytest.raises(TypeError, match="autoregressive"):
        bs.filter(small(autoregressive=True), np.zeros((4, 2)), engine=bs.ParticleFilter(10),
                  key=jax.random.key(0))  # fmt: skip
    with pytest.raises(ValueError, match="autoregressive=False"):
        small(autoregressive=True).generate(jax.random.key(0), 3, state=model.init_state())
    with pytest.raises(ValueError, match="same length"):
        bs.train(model, [np.zeros((5, 2)), np.zeros((6, 2))], num_steps=1,
                 key=jax.random.key(0), progress=False)  # fmt: skip


@pytest.mark.slow
def test_digits_training_improves_the_held_out_elbo_and_beats_independent_pixels():
    """scikit-learn's digits as 64-pixel sequences (dequantised): over 1200 steps the held-out
    ELBO (297 digits, fixed draws) rises at every evaluation, and ends above the held-out
    log-likelihood of independent per-pixel Gaussians fitted to the training digits."""
    f32 = jnp.float32
    digits = bs.datasets.digits_sequences(jax.random.key(0), dtype=f32)
    train, test = digits.values[:1500], digits.values[1500:]
    mu, sd = train.mean(axis=0), train.std(axis=0)
    baseline = float(jnp.mean(jnp.sum(norm.logpdf(test, mu, sd), axis=(1, 2))))
    model = bs.models.VSSM(1, 8, key=jax.random.key(1), width=32, depth=2, state_size=16,
                           dtype=f32)  # fmt: skip
    rate = optax.warmup_cosine_decay_schedule(0.0, 5e-3, 50, 1200, 2.5e-4)
    optimizer = optax.chain(optax.clip_by_global_norm(10.0), optax.adam(rate))
    _, history = bs.train(model, train, num_steps=1200, batch_size=32, key=jax.random.key(2),
                          optimizer=optimizer, eval_data=test, eval_every=200,
                          progress=False)  # fmt: skip
    held_out = np.asarray(history.eval_elbo)
    print("held-out ELBO", held_out, "independent pixels", baseline)
    assert np.all(np.diff(held_out) > 0), held_out
    assert held_out[-1] > baseline + 10.0, (held_out, baseline)
