"""`bayesssm.diagnostics`: posterior draws -> arviz.InferenceData, and the plots.

Expected numbers are computed here independently (scipy's normal quantiles, numpy quantiles,
logsumexp of the pointwise log-likelihoods), never read off the module under test.
"""

from __future__ import annotations

import arviz as az
import equinox as eqx
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import pytest
from scipy.special import logsumexp
from scipy.stats import norm

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import bayesssm as bs  # noqa: E402
from bayesssm.diagnostics import (  # noqa: E402
    draws_to_dict,
    plot_posterior_predictive,
    plot_states,
    to_arviz,
)

C, S, T, D, M = 2, 50, 12, 2, 3


@pytest.fixture(autouse=True)
def _close_figures(monkeypatch):
    # A plot must return its figure, never show it.
    def no_show(*args, **kwargs):
        raise AssertionError("plt.show was called")

    monkeypatch.setattr(plt, "show", no_show)
    yield
    plt.close("all")


def lg_draws(rng, chains=C, draws=S):
    """Draws of every linear-Gaussian parameter, (chains, draws, *event)."""
    shapes = {
        "A": (D, D),
        "Q": (D, D),
        "H": (M, D),
        "R": (M, M),
        "m0": (D,),
        "P0": (D, D),
        "b": (D,),
        "d": (M,),
    }
    return {k: rng.normal(size=(chains, draws, *s)) for k, s in shapes.items()}


# -- to_arviz: groups, shapes, dims -------------------------------------------------------------


def test_groups_shapes_and_default_dims():
    rng = np.random.default_rng(0)
    post = lg_draws(rng)
    post["phi"] = rng.normal(size=(C, S, 4))  # not a linear-Gaussian name
    post["Qt"] = rng.normal(size=(C, S, T, D, D))
    post["Q"] = rng.normal(size=(C, S, T, D, D))  # time-varying Q replaces the static one
    stats = {
        "is_divergent": rng.uniform(size=(C, S)) < 0.1,  # blackjax's name
        "step_size": np.full((C, S), 0.3),
        "acceptance_rate": rng.uniform(size=(C, S)),
        "lp": rng.normal(size=(C, S)),
    }
    y = rng.normal(size=(T, M))
    idata = to_arviz(
        post,
        sample_stats=stats,
        log_likelihood=rng.normal(size=(C, S, T)),
        observed_data=y,
        posterior_predictive=rng.normal(size=(C, S, T, M)),
        prior={"Q": rng.normal(size=(1, 7, D, D))},  # the prior keeps its own (chains, draws)
    )
    assert isinstance(idata, az.InferenceData)
    assert set(idata.groups()) == {
        "posterior",
        "sample_stats",
        "log_likelihood",
        "observed_data",
        "posterior_predictive",
        "prior",
    }
    p = idata.posterior
    expected = {
        "A": ("state", "state_prev"),
        "Q": ("time", "state", "state_bis"),
        "H": ("obs", "state"),
        "R": ("obs", "obs_bis"),
        "m0": ("state",),
        "P0": ("state", "state_bis"),
        "b": ("state",),
        "d": ("obs",),
        "phi": ("phi_dim_0",),
        "Qt": ("Qt_dim_0", "Qt_dim_1", "Qt_dim_2"),
    }
    for name, dims in expected.items():
        assert p[name].dims == ("chain", "draw", *dims), name
        np.testing.assert_array_equal(p[name].values, post[name])
    assert dict(p.sizes) == {
        "chain": C,
        "draw": S,
        "state": D,
        "state_prev": D,
        "state_bis": D,
        "obs": M,
        "obs_bis": M,
        "time": T,
        "phi_dim_0": 4,
        "Qt_dim_0": T,
        "Qt_dim_1": D,
        "Qt_dim_2": D,
    }
    assert set(idata.sample_stats.data_vars) == {"diverging", "step_size", "acceptance_rate", "lp"}
    assert idata.sample_stats["diverging"].dtype == bool
    np.testing.assert_array_equal(idata.sample_stats["diverging"], stats["is_divergent"])
    assert idata.log_likelihood["y"].dims == ("chain", "draw", "time")
    assert idata.observed_data["y"].dims == ("time", "obs")
    np.testing.assert_array_equal(idata.observed_data["y"], y)
    assert idata.posterior_predictive["y"].dims == ("chain", "draw", "time", "obs")
    assert idata.prior["Q"].dims == ("chain", "draw", "state", "state_bis")
    assert idata.prior["Q"].shape == (1, 7, D, D)


def test_user_dims_and_coords_override_and_name_summary_rows():
    rng = np.random.default_rng(1)
    post = {"Q": rng.normal(size=(C, S, D, D)), "m0": rng.normal(size=(C, S, D))}
    post["phi"] = rng.normal(size=(C, S, D))
    idata = to_arviz(
        post,
        coords={"state": ["level", "slope"]},  # also labels state_bis
        dims={"phi": ("state",)},
    )
    assert idata.posterior["phi"].dims == ("chain", "draw", "state")
    assert list(idata.posterior["state_bis"].values) == ["level", "slope"]
    rows = list(az.summary(idata, kind="stats").index)
    assert rows == [
        "Q[level, level]",
        "Q[level, slope]",
        "Q[slope, level]",
        "Q[slope, slope]",
        "m0[level]",
        "m0[slope]",
        "phi[level]",
        "phi[slope]",
    ]
    # A user's dims for an observation apply to its pointwise log-likelihood, truncated.
    idata = to_arviz(
        post,
        observed_data={"obs_y": rng.normal(size=(T, M))},
        log_likelihood={"obs_y": rng.normal(size=(C, S, T))},
        dims={"obs_y": ("t", "channel")},
        coords={"channel": ["u", "v", "w"]},
    )
    assert idata.observed_data["obs_y"].dims == ("t", "channel")
    assert idata.log_likelihood["obs_y"].dims == ("chain", "draw", "t")
    assert list(idata.observed_data["channel"].values) == ["u", "v", "w"]


def test_draws_to_dict_unwraps_a_batched_model():
    Qs = np.array([[0.5, 1.0, 2.0], [3.0, 4.0, 5.0]])  # (chains, draws)

    base = bs.LinearGaussianSSM(A=[[1.0]], Q=[[1.0]], H=[[1.0]], R=[[2.0]], m0=[0.0], P0=[[1.0]])

    def with_q(q):
        return eqx.tree_at(lambda m: m.Q, base, bs.Covariance.from_matrix(q.reshape(1, 1)))

    batched = jax.vmap(jax.vmap(with_q))(jnp.asarray(Qs))
    out = draws_to_dict(batched, ["Q", "R"])
    assert set(out) == {"Q", "R"}
    assert out["Q"].shape == (2, 3, 1, 1)
    np.testing.assert_allclose(out["Q"][..., 0, 0], Qs, rtol=1e-12)
    np.testing.assert_allclose(out["R"], 2.0, rtol=1e-12)
    assert to_arviz(out).posterior["Q"].dims == ("chain", "draw", "state", "state_bis")
    with pytest.raises(ValueError, match="no leaf named 'Z'"):
        draws_to_dict(batched, ["Z"])
    with pytest.raises(ValueError, match="'B'.*None"):
        draws_to_dict(batched, ["B"])
    assert draws_to_dict({"x": np.ones((1, 2))}, "x")["x"].shape == (1, 2)


# -- to_arviz: errors -----------------------------------------------------------------------------


def test_errors_name_the_variable():
    rng = np.random.default_rng(2)
    Q = rng.normal(size=(4, 500, D, D))
    with pytest.raises(
        ValueError, match=r"posterior variable 'R' has \(chains, draws\) = \(4, 400\)"
    ):
        to_arviz({"Q": Q, "R": rng.normal(size=(4, 400, M, M))})
    with pytest.raises(ValueError, match="log_likelihood variable 'y'.*'Q'"):
        to_arviz({"Q": Q}, log_likelihood=rng.normal(size=(2, 500, T)))
    with pytest.raises(ValueError, match="sample_stats variable 'lp'"):
        to_arviz({"Q": Q}, sample_stats={"lp": rng.normal(size=(4, 499))})
    with pytest.raises(ValueError, match=r"dims\['Q'\].*1 names.*2 event axes"):
        to_arviz({"Q": Q}, dims={"Q": ("a",)})
    with pytest.raises(ValueError, match="repeat"):
        to_arviz({"Q": Q}, dims={"Q": ("a", "a")})
    with pytest.raises(ValueError, match=r"coords\['state'\] has 3 labels.*'Q'"):
        to_arviz({"Q": Q}, coords={"state": ["a", "b", "c"]})
    with pytest.raises(ValueError, match="Dim 'state' has length 3 in posterior variable 'm0'"):
        to_arviz({"Q": Q, "m0": rng.normal(size=(4, 500, 3))})
    with pytest.raises(
        ValueError, match="Dim 'time' has length 12 in observed_data.*5 in posterior_predictive"
    ):
        to_arviz(
            {"Q": Q},
            observed_data=rng.normal(size=(T, M)),
            posterior_predictive=rng.normal(size=(4, 500, 5, M)),
        )
    with pytest.raises(ValueError, match="posterior variable 'x' must have leading"):
        to_arviz({"x": np.ones(3)})
    with pytest.raises(ValueError, match="twice"):
        to_arviz(
            {"Q": Q}, sample_stats={"diverging": Q[..., 0, 0] > 0, "is_divergent": Q[..., 0, 0] > 0}
        )
    with pytest.raises(TypeError, match="draws_to_dict"):
        to_arviz(
            bs.LinearGaussianSSM(A=[[1.0]], Q=[[1.0]], H=[[1.0]], R=[[1.0]], m0=[0.0], P0=[[1.0]])
        )


# -- to_arviz on a real posterior: loo and summary ------------------------------------------------


def test_loo_and_summary_on_a_local_level_posterior():
    """Posterior of (Q, R) of a local-level model on a grid; loo over per-step log-likelihoods."""
    base = bs.LinearGaussianSSM(A=[[1.0]], Q=[[0.3]], H=[[1.0]], R=[[1.0]], m0=[0.0], P0=[[10.0]])
    num_steps = 60
    _, y = base.sample(jax.random.key(3), num_timesteps=num_steps)

    def with_qr(q, r):
        covs = (
            bs.Covariance.from_matrix(q.reshape(1, 1)),
            bs.Covariance.from_matrix(r.reshape(1, 1)),
        )
        return eqx.tree_at(lambda m: (m.Q, m.R), base, covs)

    # Flat prior on (log q, log r): posterior weights on a grid, then draws jittered within cells.
    log_grid = np.linspace(-4.0, 1.5, 25)
    lq, lr = np.meshgrid(log_grid, log_grid, indexing="ij")
    loglik = jax.vmap(lambda q, r: bs.filter(with_qr(q, r), y).log_marginal)(
        jnp.exp(lq.ravel()), jnp.exp(lr.ravel())
    )
    w = np.exp(np.asarray(loglik) - np.max(loglik))
    rng = np.random.default_rng(4)
    idx = rng.choice(w.size, size=(4, 100), p=w / w.sum())
    half = (log_grid[1] - log_grid[0]) / 2
    q = np.exp(lq.ravel()[idx] + rng.uniform(-half, half, idx.shape))
    r = np.exp(lr.ravel()[idx] + rng.uniform(-half, half, idx.shape))

    models = jax.vmap(jax.vmap(with_qr))(jnp.asarray(q), jnp.asarray(r))
    pointwise = jax.vmap(jax.vmap(lambda m: bs.filter(m, y).log_marginals))(models)
    pointwise = np.asarray(pointwise)
    assert pointwise.shape == (4, 100, num_steps)

    idata = to_arviz(draws_to_dict(models, ["Q", "R"]), log_likelihood=pointwise, observed_data=y)
    loo = az.loo(idata)
    assert loo.n_data_points == num_steps
    assert loo.n_samples == 400
    # lppd = elpd_loo + p_loo, with lppd computed here from the same draws.
    lppd = np.sum(logsumexp(pointwise.reshape(400, num_steps), axis=0) - np.log(400))
    np.testing.assert_allclose(loo.elpd_loo + loo.p_loo, lppd, rtol=1e-10)
    assert 0.0 < loo.p_loo < 6.0  # two parameters
    assert np.all(loo.pareto_k.values < 0.7)

    summary = az.summary(idata)
    assert list(summary.index) == ["Q[0, 0]", "R[0, 0]"]
    np.testing.assert_allclose(summary.loc["Q[0, 0]", "mean"], q.mean(), atol=1e-3)
    np.testing.assert_allclose(summary.loc["R[0, 0]", "mean"], r.mean(), atol=1e-3)


# -- plots --------------------------------------------------------------------------------------


def band_edges(collection, times):
    """Lower and upper edge of a fill_between polygon at each x in `times`."""
    verts = collection.get_paths()[0].vertices
    lo = np.array([verts[verts[:, 0] == t, 1].min() for t in times])
    hi = np.array([verts[verts[:, 0] == t, 1].max() for t in times])
    return lo, hi


def small_smoother():
    A = np.array([[1.0, 0.1], [0.0, 1.0]])
    model = bs.LinearGaussianSSM(
        A=A, Q=np.diag([0.01, 0.2]), H=[[1.0, 0.0]], R=[[0.5]], m0=[0.0, 1.0], P0=np.eye(2)
    )
    x, y = model.sample(jax.random.key(5), num_timesteps=30)
    y = y.at[10:14].set(jnp.nan)
    return bs.smooth(model, y), np.asarray(x), np.asarray(y)


@pytest.mark.parametrize("level", [0.95, 0.8])
def test_plot_states_band_is_the_marginal_normal_interval(level):
    result, x, y = small_smoother()
    times = 0.5 * np.arange(30) + 2.0
    fig = plot_states(result, times=times, truth=x, y=y, level=level, state_names=["pos", "vel"])
    assert isinstance(fig, matplotlib.figure.Figure)
    axes = fig.get_axes()
    assert len(axes) == 2
    means = np.asarray(result.means)
    sds = np.sqrt(np.asarray(result.covs)[:, [0, 1], [0, 1]])
    z = norm.ppf(0.5 + level / 2)
    for i, ax in enumerate(axes):
        (band,) = ax.collections
        lo, hi = band_edges(band, times)
        np.testing.assert_allclose(lo, means[:, i] - z * sds[:, i], rtol=0, atol=1e-12)
        np.testing.assert_allclose(hi, means[:, i] + z * sds[:, i], rtol=0, atol=1e-12)
        mean_line = ax.lines[0]
        np.testing.assert_allclose(mean_line.get_ydata(), means[:, i], atol=0)
        np.testing.assert_allclose(mean_line.get_xdata(), times, atol=0)
        np.testing.assert_allclose(ax.lines[1].get_ydata(), x[:, i], atol=0)
    assert [ax.get_ylabel() for ax in axes] == ["pos", "vel"]
    # Observations (one column) on the first panel only, the 4 missing rows skipped.
    assert len(axes[0].lines) == 3 and len(axes[1].lines) == 2
    observed = axes[0].lines[2]
    assert len(observed.get_ydata()) == 26
    np.testing.assert_allclose(observed.get_ydata(), y[np.isfinite(y[:, 0]), 0], atol=0)


def test_plot_states_on_given_axes_and_obs_states():
    result, _, y = small_smoother()
    fig, axes = plt.subplots(1, 2)
    assert plot_states(result, y=y, ax=axes, obs_states=[1]) is fig
    assert len(axes[0].lines) == 1 and len(axes[1].lines) == 2


def test_plot_states_errors():
    result, x, y = small_smoother()
    with pytest.raises(ValueError, match="level"):
        plot_states(result, level=1.5)
    with pytest.raises(ValueError, match="truth"):
        plot_states(result, truth=x[:-1])
    with pytest.raises(ValueError, match="times"):
        plot_states(result, times=np.arange(29))
    with pytest.raises(ValueError, match="obs_states"):
        plot_states(result, y=np.zeros((30, 3)))
    with pytest.raises(ValueError, match="one Axes per state"):
        plot_states(result, ax=plt.subplots(1, 3)[1])
    with pytest.raises(TypeError, match=r"\.means"):
        plot_states(np.zeros((30, 2)))


@pytest.mark.parametrize("chains", [None, 3])
def test_plot_posterior_predictive_band_and_median(chains):
    rng = np.random.default_rng(6)
    num_steps, draws = 20, 400
    y = rng.normal(size=(num_steps, 2))
    y[[3, 7], 1] = np.nan
    shape = (draws, num_steps, 2) if chains is None else (chains, draws, num_steps, 2)
    pred = rng.normal(size=shape) * np.arange(1, num_steps + 1)[:, None]
    fig = plot_posterior_predictive(y, pred, level=0.5, obs_names=["a", "b"])
    axes = fig.get_axes()
    assert len(axes) == 2
    pooled = pred.reshape(-1, num_steps, 2)
    times = np.arange(num_steps)
    for j, ax in enumerate(axes):
        lo, hi = band_edges(ax.collections[0], times)
        np.testing.assert_allclose(lo, np.quantile(pooled[:, :, j], 0.25, axis=0), atol=1e-12)
        np.testing.assert_allclose(hi, np.quantile(pooled[:, :, j], 0.75, axis=0), atol=1e-12)
        median, observed = ax.lines
        np.testing.assert_allclose(median.get_ydata(), np.median(pooled[:, :, j], axis=0))
        seen = np.isfinite(y[:, j])
        np.testing.assert_array_equal(observed.get_xdata(), times[seen])
        np.testing.assert_array_equal(observed.get_ydata(), y[seen, j])
    assert len(axes[1].lines[1].get_ydata()) == num_steps - 2


def test_plot_posterior_predictive_vector_series_and_errors():
    rng = np.random.default_rng(7)
    y = rng.normal(size=15)
    fig = plot_posterior_predictive(y, rng.normal(size=(2, 30, 15)))
    assert len(fig.get_axes()) == 1
    with pytest.raises(ValueError, match="predictive must have shape"):
        plot_posterior_predictive(y, rng.normal(size=(30, 14)))
    with pytest.raises(ValueError, match="predictive must have shape"):
        plot_posterior_predictive(y[:, None], rng.normal(size=(30, 15)))
    with pytest.raises(ValueError, match="level"):
        plot_posterior_predictive(y, rng.normal(size=(30, 15)), level=0.0)


def test_predictive_of_a_scalar_series_may_keep_its_unit_axis():
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(0)
    y = rng.normal(size=20)
    draws = rng.normal(size=(2, 30, 20))
    fig_flat = bs.plot_posterior_predictive(y, draws)
    fig_unit = bs.plot_posterior_predictive(y, draws[..., None])
    flat = fig_flat.axes[0].collections[0].get_paths()[0].vertices
    unit = fig_unit.axes[0].collections[0].get_paths()[0].vertices
    np.testing.assert_array_equal(flat, unit)
    plt.close("all")
