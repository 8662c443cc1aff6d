"""`bs.fit_em`: expectation-maximisation for `bs.LinearGaussianSSM`.

- One M-step equals a plain computation from the dense oracle's joint posterior of all states *and*
  all observations (so the missing entries' imputed moments are checked too), for many choices of
  `where`, with correlated R, offsets and control inputs.
- The likelihood, computed independently with `bs.log_marginal`, never decreases.
- EM's fixed point is a stationary point of the likelihood and agrees with L-BFGS on it.
- Bad `where` and time-varying selected leaves are refused before any computation.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
from reference import dense_gaussian as dense

import bayesssm as bs
import bayesssm.fit.em as em
from bayesssm.data import observations
from bayesssm.fit import fit_em

ALL = ("A", "b", "Q", "H", "d", "R", "m0", "P0")


def pick(*names):
    return lambda m: tuple(getattr(m, name) for name in names)


def simulate(rng, T, *, A, Q, H, R, m0, P0, b=None, d=None, B=None, D=None, inputs=None):
    """Observations of a linear-Gaussian model in plain numpy (H may carry a leading T axis)."""
    A, Q, H, R, m0, P0 = (np.asarray(v, float) for v in (A, Q, H, R, m0, P0))
    b = np.zeros(len(m0)) if b is None else np.asarray(b, float)
    d = np.zeros(H.shape[-2]) if d is None else np.asarray(d, float)
    x = rng.multivariate_normal(m0, P0)
    y = []
    for t in range(T):
        H_t = H[t] if H.ndim == 3 else H
        mean = H_t @ x + d + (0.0 if D is None else np.asarray(D) @ inputs[t])
        y.append(rng.multivariate_normal(mean, R))
        x = rng.multivariate_normal(
            A @ x + b + (0.0 if B is None else np.asarray(B) @ inputs[t]), Q
        )
    return np.array(y)


def with_missing(y, rng, fraction=0.15, rows=()):
    y = np.array(y)
    y[rng.random(y.shape) < fraction] = np.nan
    y[list(rows)] = np.nan
    return y


# -- one M-step against the dense oracle ------------------------------------------------------


def small_model(controls: bool):
    rng = np.random.default_rng(3)
    D, M, U = 3, 2, 2
    params = dict(
        A=np.array([[0.8, 0.2, 0.0], [-0.1, 0.7, 0.2], [0.1, 0.0, 0.6]]),
        b=np.array([0.3, -0.2, 0.1]),
        Q=np.array([[0.5, 0.1, 0.0], [0.1, 0.4, 0.1], [0.0, 0.1, 0.3]]),
        H=rng.normal(size=(M, D)),
        d=np.array([1.0, -0.5]),
        R=np.array([[0.6, 0.25], [0.25, 0.4]]),  # correlated: missing entries borrow from others
        m0=np.array([0.5, -1.0, 0.2]),
        P0=np.array([[1.0, 0.3, 0.0], [0.3, 0.8, 0.1], [0.0, 0.1, 0.5]]),
    )
    if controls:
        params["B"] = rng.normal(size=(D, U))
        params["D"] = rng.normal(size=(M, U))
    return params


def dense_m_step(params, y, names, inputs=None):
    """The M-step written plainly from the dense joint posterior of (x_0..x_{T-1}, y_0..y_{T-1})."""
    T = y.shape[0]
    joint = dense.joint_gaussian(T, **params, inputs=inputs)
    post = dense.condition(joint, y)
    mean, cov = post.mean, post.cov
    xs = [joint.state_index(t) for t in range(T)]
    ys = [joint.obs_index(t) for t in range(T)]

    def second(i, j):  # E[v_i v_j^T]
        return cov[np.ix_(i, j)] + np.outer(mean[i], mean[j])

    def residual_second(out, inp, coef, offset):  # E[(out - coef inp - offset)(...)^T]
        L = np.concatenate([np.eye(len(out)), -coef], axis=1)
        index = np.concatenate([out, inp])
        r = L @ mean[index] - offset
        return L @ cov[np.ix_(index, index)] @ L.T + np.outer(r, r)

    def regression(pairs, coef, offset, fit_coef, fit_offset, extra):
        """pairs: (out, inp) index pairs; extra[k]: the known offset of pair k besides `offset`."""
        if fit_coef and fit_offset:
            lhs = sum(
                np.concatenate(
                    [second(o, i) - np.outer(e, mean[i]), (mean[o] - e)[:, None]], axis=1
                )
                for (o, i), e in zip(pairs, extra, strict=True)
            )
            gram = sum(
                np.block([[second(i, i), mean[i][:, None]], [mean[i][None, :], np.ones((1, 1))]])
                for _, i in pairs
            )
            both = lhs @ np.linalg.inv(gram)
            return both[:, :-1], both[:, -1]
        if fit_coef:
            lhs = sum(
                second(o, i) - np.outer(offset + e, mean[i])
                for (o, i), e in zip(pairs, extra, strict=True)
            )
            return lhs @ np.linalg.inv(sum(second(i, i) for _, i in pairs)), offset
        if fit_offset:
            shift = np.mean(
                [mean[o] - coef @ mean[i] - e for (o, i), e in zip(pairs, extra, strict=True)],
                axis=0,
            )
            return coef, shift
        return coef, offset

    p = {k: np.asarray(v, float) for k, v in params.items()}
    c = inputs @ p["B"].T if "B" in p else np.zeros((T, 3))
    e = inputs @ p["D"].T if "D" in p else np.zeros((T, 2))
    new = {}
    new["m0"] = mean[xs[0]] if "m0" in names else p["m0"]
    diff = mean[xs[0]] - new["m0"]
    new["P0"] = cov[np.ix_(xs[0], xs[0])] + np.outer(diff, diff) if "P0" in names else p["P0"]

    moves = [(xs[t + 1], xs[t]) for t in range(T - 1)]
    new["A"], new["b"] = regression(moves, p["A"], p["b"], "A" in names, "b" in names, c[:-1])
    new["Q"] = p["Q"]
    if "Q" in names:
        new["Q"] = np.mean(
            [residual_second(o, i, new["A"], new["b"] + c[t]) for t, (o, i) in enumerate(moves)],
            axis=0,
        )
    emits = [(ys[t], xs[t]) for t in range(T)]
    new["H"], new["d"] = regression(emits, p["H"], p["d"], "H" in names, "d" in names, e)
    new["R"] = p["R"]
    if "R" in names:
        new["R"] = np.mean(
            [residual_second(o, i, new["H"], new["d"] + e[t]) for t, (o, i) in enumerate(emits)],
            axis=0,
        )
    return new, post.log_likelihood


# Between them the cases cover every branch of the M-step: (A, b) jointly and each alone, (H, d)
# jointly and each alone, Q and R after a fitted or a fixed regression, m0 and P0 together and
# each alone; with and without control inputs.
M_STEP_CASES = {
    "all-controls": (ALL, True),
    "A,d,R,P0-controls": (("A", "d", "R", "P0"), True),
    "b,H,Q,m0": (("b", "H", "Q", "m0"), False),
}


@pytest.mark.parametrize("names, controls", list(M_STEP_CASES.values()), ids=list(M_STEP_CASES))
def test_one_m_step_matches_dense(names, controls):
    params = small_model(controls)
    T = 10
    inputs = np.random.default_rng(5).normal(size=(T, 2)) if controls else None
    model = bs.LinearGaussianSSM(**params)
    rng = np.random.default_rng(0)
    y = with_missing(simulate(rng, T, **params, inputs=inputs), rng, 0.2, rows=[0, 6])
    fitted, history = fit_em(
        model, y, where=pick(*names), num_steps=1, inputs=inputs, progress=False
    )
    expected, log_likelihood = dense_m_step(params, y, names, inputs)
    assert history.num_steps == 1
    np.testing.assert_allclose(history.log_marginals, [log_likelihood], rtol=1e-10)
    got = bs.unwrap(fitted)
    for name in ALL:
        np.testing.assert_allclose(getattr(got, name), expected[name], rtol=1e-8, atol=1e-12)
    if controls:
        np.testing.assert_array_equal(got.B, params["B"])  # control matrices stay fixed


# -- monotone likelihood ------------------------------------------------------------------


def simulated(T=300, seed=0):
    rng = np.random.default_rng(seed)
    D, M = 3, 2
    truth = dict(
        A=np.array([[0.9, 0.1, 0.0], [-0.1, 0.8, 0.1], [0.0, 0.05, 0.7]]),
        Q=np.diag([0.3, 0.2, 0.1]),
        H=rng.normal(size=(M, D)),
        R=np.array([[0.5, 0.2], [0.2, 0.4]]),
        m0=np.zeros(D),
        P0=np.eye(D),
    )
    y = simulate(rng, T, **truth)
    y = with_missing(y, rng, 0.15, rows=rng.choice(T, T // 15, replace=False))
    start = bs.LinearGaussianSSM(
        A=0.5 * np.eye(D) + 0.1 * rng.normal(size=(D, D)),
        Q=np.eye(D),
        H=truth["H"] + 0.3 * rng.normal(size=(M, D)),
        R=np.eye(M),
        m0=np.ones(D),
        P0=2 * np.eye(D),
    )
    return start, y


MONOTONE_CASES = {"default": None, "Q,R": ("Q", "R"), "A": ("A",)}


@pytest.mark.parametrize("names", list(MONOTONE_CASES.values()), ids=list(MONOTONE_CASES))
def test_log_likelihood_never_decreases(names):
    model, y = simulated()
    where = None if names is None else pick(*names)
    lls = [float(bs.log_marginal(model, y))]
    for _ in range(25):
        model, history = fit_em(model, y, where=where, num_steps=1, progress=False)
        assert float(history.log_marginals[0]) == pytest.approx(lls[-1], rel=1e-12)
        lls.append(float(bs.log_marginal(model, y)))
    lls = np.array(lls)
    assert np.all(np.diff(lls) >= -1e-9 * np.abs(lls[:-1])), np.diff(lls)
    assert lls[-1] > lls[0] + 1.0  # and it actually climbs
    if names is None:
        # The Python loop (with a progress bar) runs the same iterations as the compiled one.
        start, _ = simulated()
        _, history = fit_em(start, y, num_steps=25, progress=True)
        assert history.num_steps == 25 and not history.converged
        np.testing.assert_allclose(history.log_marginals, lls[:-1], rtol=1e-10)


# -- the fixed point is the maximum-likelihood estimate --------------------------------------


def test_fixed_point_is_gradient_mle():
    # H fixed with full column rank pins the state basis, so (A, Q, R) are identifiable.
    rng = np.random.default_rng(1)
    D, M, T = 2, 3, 300
    H = np.array([[1.0, 0.0], [0.5, 1.0], [-0.3, 0.8]])
    truth = dict(
        A=np.array([[0.8, 0.2], [-0.2, 0.7]]),
        Q=np.array([[0.3, 0.05], [0.05, 0.2]]),
        H=H,
        R=np.diag([0.3, 0.4, 0.5]) + 0.1,
        m0=np.zeros(D),
        P0=np.eye(D),
    )
    y = simulate(rng, T, **truth)
    y = with_missing(y, rng, 0.15, rows=rng.choice(T, 20, replace=False))
    start = bs.LinearGaussianSSM(
        A=0.5 * np.eye(D) + 0.1 * rng.normal(size=(D, D)),
        Q=np.eye(D),
        H=H,
        R=np.eye(M),
        m0=np.zeros(D),
        P0=np.eye(D),
    )
    fitted, history = fit_em(
        start, y, where=lambda m: (m.A, m.Q, m.R), num_steps=3000, tol=1e-12, progress=False
    )
    assert history.converged and history.num_steps < 3000
    assert isinstance(history.converged, bool) and isinstance(history.num_steps, int)
    assert history.log_marginals.shape == (history.num_steps,)
    last, before = history.log_marginals[-1], history.log_marginals[-2]
    assert abs(last - before) <= 1e-12 * abs(before)

    low_q, low_r = np.tril_indices(D), np.tril_indices(M)

    def pack(model):
        u = bs.unwrap(model)
        chol_q, chol_r = np.linalg.cholesky(u.Q), np.linalg.cholesky(u.R)
        return np.concatenate([np.ravel(u.A), chol_q[low_q], chol_r[low_r]])

    def log_likelihood(theta):
        A = theta[: D * D].reshape(D, D)
        chol_q = jnp.zeros((D, D)).at[low_q].set(theta[D * D : D * D + len(low_q[0])])
        chol_r = jnp.zeros((M, M)).at[low_r].set(theta[D * D + len(low_q[0]) :])
        model = bs.LinearGaussianSSM(
            A=A, Q=chol_q @ chol_q.T, H=H, R=chol_r @ chol_r.T, m0=np.zeros(D), P0=np.eye(D)
        )
        return bs.log_marginal(model, y)

    value_and_grad = jax.jit(jax.value_and_grad(lambda theta: -log_likelihood(theta)))
    theta_em = pack(fitted)
    value, grad = value_and_grad(jnp.asarray(theta_em))
    ll_em = -float(value)
    # EM's result is a stationary point: the gradient is tiny against the likelihood's scale.
    assert np.max(np.abs(grad)) < 1e-5 * abs(ll_em), grad

    result = scipy.optimize.minimize(
        lambda theta: tuple(np.asarray(v, float) for v in value_and_grad(jnp.asarray(theta))),
        theta_em,
        jac=True,
        method="L-BFGS-B",
        options=dict(gtol=1e-9, ftol=1e-15, maxiter=500),
    )
    ll_mle = -float(result.fun)
    assert ll_mle == pytest.approx(ll_em, rel=1e-4)
    assert ll_mle - ll_em < 1e-6 * abs(ll_em)  # L-BFGS finds essentially nothing more
    np.testing.assert_allclose(result.x, theta_em, atol=1e-3)
    # The returned model is one M-step past the last recorded likelihood.
    assert ll_em >= float(history.log_marginals[-1]) - 1e-9 * abs(ll_em)


# -- what is accepted and what is refused ---------------------------------------------------


def controlled_model():
    return bs.LinearGaussianSSM(
        A=0.9 * np.eye(2),
        Q=np.eye(2),
        H=np.ones((1, 2)),
        R=np.eye(1),
        m0=np.zeros(2),
        P0=np.eye(2),
        B=np.ones((2, 1)),
    )


BAD_WHERE = {
    "control matrix": lambda m: m.B,
    "control matrix in a tuple": lambda m: (m.A, m.B),
    "new array": lambda m: jnp.zeros((2, 2)),
    "computed from a leaf": lambda m: m.A + 1.0,
    "inside a covariance": lambda m: m.Q.cholesky,
    "nothing": lambda m: (),
    "not a function": "A",
}


@pytest.mark.parametrize("where", list(BAD_WHERE.values()), ids=list(BAD_WHERE))
def test_bad_where_raises_before_any_computation(where, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("computation started before `where` was checked")

    monkeypatch.setattr(em, "check_observations", fail)
    monkeypatch.setattr(em, "_em_update", fail)
    y = np.zeros((5, 1))
    with pytest.raises(ValueError, match=r"model\.A, model\.b, model\.Q"):
        fit_em(controlled_model(), y, where=where, inputs=np.zeros((5, 1)))


def test_where_names_the_control_matrix():
    with pytest.raises(ValueError, match=r"selected model\.B"):
        fit_em(controlled_model(), np.zeros((5, 1)), where=lambda m: m.B, inputs=np.zeros((5, 1)))


def test_aliased_leaves_stay_distinct():
    # The same array object given for b and m0, and one Covariance for Q and P0.
    zeros, cov = jnp.zeros(2), bs.Covariance.from_matrix(jnp.eye(2))
    model = bs.LinearGaussianSSM(
        A=0.9 * np.eye(2), Q=cov, H=np.ones((1, 2)), R=np.eye(1), m0=zeros, P0=cov, b=zeros
    )
    assert model.b is model.m0 and model.Q is model.P0
    y = np.sin(np.arange(20.0))[:, None]
    fitted, _ = fit_em(model, y, where=lambda m: (m.m0, m.Q), num_steps=2, progress=False)
    got = bs.unwrap(fitted)
    np.testing.assert_array_equal(got.b, np.zeros(2))
    np.testing.assert_allclose(got.P0, np.eye(2), rtol=1e-12)
    assert not np.allclose(got.m0, 0.0) and not np.allclose(got.Q, np.eye(2))


def time_varying_params(T):
    H = np.stack([np.array([[1.0, 0.5 * np.sin(t)]]) for t in range(T)])  # (T, 1, 2)
    return dict(
        A=0.9 * np.eye(2), Q=0.5 * np.eye(2), H=H, R=np.eye(1), m0=np.zeros(2), P0=np.eye(2)
    )


def time_varying_model(T):
    return bs.LinearGaussianSSM(**time_varying_params(T))


def test_time_varying_selected_leaf_is_refused():
    model = time_varying_model(30)
    y = np.zeros((30, 1))
    with pytest.raises(ValueError, match="model.H is time-varying"):
        fit_em(model, y, where=lambda m: m.H)
    with pytest.raises(ValueError, match="model.H is time-varying"):
        fit_em(model, y)  # the default where includes H
    tv_noise = bs.LinearGaussianSSM(
        A=0.9 * np.eye(2),
        Q=np.stack([np.eye(2)] * 30),
        H=np.ones((1, 2)),
        R=np.eye(1),
        m0=np.zeros(2),
        P0=np.eye(2),
    )
    with pytest.raises(ValueError, match="time-invariant Q"):
        fit_em(tv_noise, y, where=lambda m: m.A)


def test_time_varying_fixed_leaves_are_fine():
    T = 60
    params, rng = time_varying_params(T), np.random.default_rng(2)
    y = with_missing(simulate(rng, T, **params), rng, 0.1)
    start = bs.LinearGaussianSSM(
        A=0.5 * np.eye(2), Q=np.eye(2), H=params["H"], R=3 * np.eye(1), m0=np.zeros(2), P0=np.eye(2)
    )
    fitted, history = fit_em(
        start, y, where=lambda m: (m.A, m.Q, m.R), num_steps=10, progress=False
    )
    assert np.all(np.diff(history.log_marginals) > 0)
    np.testing.assert_array_equal(fitted.H, params["H"])


def test_too_short_for_the_transition():
    model = time_varying_model(1)
    with pytest.raises(ValueError, match="T >= 2"):
        fit_em(model, np.zeros((1, 1)), where=lambda m: m.Q)


@pytest.mark.parametrize(
    "y, match",
    [
        (np.full((10, 2), np.nan), "all NaN"),
        (np.zeros((10, 3)), "M = 2"),
        (np.zeros((2, 5, 2)), "shape"),
    ],
    ids=["all-nan", "wrong-width", "3d"],
)
def test_bad_data(y, match):
    model, _ = simulated(T=10)
    with pytest.raises(ValueError, match=match):
        fit_em(model, y)


def test_jit_vmap_and_float32():
    # Same shapes and `where` as a monotonicity case above, so the single runs reuse its program.
    model, y = simulated()
    _, y2 = simulated(seed=6)
    where = pick("Q", "R")

    def run(series):
        return fit_em(model, series, where=where, num_steps=4, progress=False)

    batched, history = jax.vmap(run)(jnp.stack([jnp.asarray(y), jnp.asarray(y2)]))
    assert history.log_marginals.shape == (2, 4)
    for k, series in enumerate((y, y2)):
        single, single_history = run(series)
        np.testing.assert_allclose(history.log_marginals[k], single_history.log_marginals)
        np.testing.assert_allclose(
            bs.unwrap(batched).Q[k], bs.unwrap(single).Q, rtol=1e-9, atol=1e-12
        )

    # Under jit, even with everything closed over as constants (progress=True falls back to
    # the compiled loop, as no Python loop can read the values there).
    jitted = jax.jit(lambda: fit_em(model, y, where=where, num_steps=4)[1].log_marginals)()
    np.testing.assert_allclose(jitted, history.log_marginals[0], rtol=1e-12)

    model32 = jax.tree.map(lambda a: a.astype(jnp.float32), model)
    fitted32, history32 = fit_em(model32, y.astype(np.float32), num_steps=3, progress=False)
    assert history32.log_marginals.dtype == jnp.float32
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(fitted32))
    assert np.all(np.isfinite(history32.log_marginals))
    assert np.all(np.diff(history32.log_marginals) > 0)


def test_non_finite_likelihood_stops_with_the_last_good_model(monkeypatch):
    model, y = simulated(T=300)
    y = y[:17]  # a length no other test uses: the loop is compiled afresh with the patch below
    names = ("Q", "R")
    # Two EM iterations by hand, outside the loop.
    data, step = observations(y), eqx.filter_jit(em._em_update)
    first, ll0 = step(model, data, names, bs.Kalman())
    second, ll1 = step(first, data, names, bs.Kalman())
    _, ll2 = step(second, data, names, bs.Kalman())
    threshold = 0.5 * float(ll1 + ll2)
    real = em._em_update

    def breaks_at_step_2(*args):  # log p(y) of the model after two M-steps reads as NaN
        fitted, ll = real(*args)
        return fitted, jnp.where(ll > threshold, jnp.nan, ll)

    monkeypatch.setattr(em, "_em_update", breaks_at_step_2)
    for progress in (False, True):
        with pytest.warns(RuntimeWarning, match="not finite at iteration 2"):
            fitted, history = fit_em(model, y, where=pick(*names), num_steps=10, progress=progress)
        assert history.num_steps == 3 and not history.converged
        np.testing.assert_allclose(history.log_marginals[:2], [ll0, ll1], rtol=1e-10)
        assert np.isnan(history.log_marginals[2])
        # The last model whose likelihood was finite: the one after the first M-step.
        np.testing.assert_allclose(bs.unwrap(fitted).Q, bs.unwrap(first).Q, rtol=1e-10)
