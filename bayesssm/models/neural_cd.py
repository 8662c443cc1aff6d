r"""Neural continuous-discrete state-space models (NCDSSM): a latent SDE, auxiliary variables and
neural encoders and decoders, trained by maximising a variational lower bound.

$$z(t_0) \sim N(m_0, P_0),\qquad \mathrm{d}z = f(z)\,\mathrm{d}t + L\,\mathrm{d}W,\qquad
    a_k \mid z(t_k) \sim N(H z(t_k) + d, R),\qquad y_k \mid a_k \sim p_\theta(y \mid a_k),$$

with an amortized encoder $q_\phi(a_k \mid y_k)$. The dynamic latent $z$ and the auxiliary
$a$ form a continuous-discrete model with a linear-Gaussian emission (`NCDSSM.prior`, a
`bs.ContinuousDiscreteSSM`), so $\log p(a_{1:K})$ is the marginal likelihood of a Gaussian
filter: exact (`bs.Kalman`) for linear dynamics, by the moment ODEs (`bs.GaussianFilter`) for
locally linear and nonlinear ones. The decoder and the encoder see single rows only; all the
temporal structure is in the prior of the $a$'s.

References:
    Ansari, A. F., Heng, A., Lim, A. and Soh, H. (2023). Neural continuous-discrete state space
    models for irregularly-sampled time series. ICML.
    Fraccaro, M., Kamronn, S., Paquet, U. and Winther, O. (2017). A disentangled recognition and
    nonlinear dynamics model for unsupervised learning. NeurIPS.
"""

from __future__ import annotations

from collections.abc import Callable

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._checks import check_positive_int
from .._jit import filter_jit
from .._types import Array, ArrayLike, Bool, Float, Key
from ..data import Observations, TimeSeries, observations
from ..inference._linearization import Cubature, Extended, _unit_points
from ..inference._square_root import tria
from ..inference.gaussian import GaussianFilter
from ..inference.kalman import Kalman
from ..params import Covariance, Positive
from ._deep import series_arrays
from .continuous_discrete import AffineDrift, ContinuousDiscreteSSM

_OWNER = "NCDSSM"
_DYNAMICS = ("linear", "locally_linear", "nonlinear")
_LOG_2PI = float(np.log(2 * np.pi))


# -- drift parameterisations --------------------------------------------------------------------


class LocallyLinearDrift(eqx.Module):
    r"""A locally linear drift $f(z) = F(z)\,z$ with $F(z) = \sum_k \alpha_k(z) F_k$,
    $\alpha(z) = \operatorname{softmax}(g(z))$ and $g$ a small MLP.

    A convex combination of K linear systems, chosen smoothly by where the state is: between
    linear dynamics (one base matrix) and a general MLP drift.

    Args:
        state_dim: D.
        num_bases: K, the number of base matrices $F_k$.
        key: PRNG key for the initial weights.
        hidden: width of the MLP $g$.
        depth: hidden layers of $g$.
        scale: the base matrices start as independent $N(0, \text{scale}^2 / D)$ entries.
        dtype: float dtype of the parameters.

    References:
        Ansari, A. F., Heng, A., Lim, A. and Soh, H. (2023). Neural continuous-discrete state
        space models for irregularly-sampled time series. ICML.
    """

    matrices: Float[Array, "K D D"]
    weights: eqx.nn.MLP

    def __init__(
        self,
        state_dim: int,
        num_bases: int = 4,
        *,
        key: Key,
        hidden: int = 32,
        depth: int = 1,
        scale: float = 0.5,
        dtype=None,
    ):
        check_positive_int("state_dim", state_dim)
        check_positive_int("num_bases", num_bases)
        dtype = jnp.result_type(float) if dtype is None else dtype
        k_mat, k_mlp = jax.random.split(key)
        shape = (num_bases, state_dim, state_dim)
        self.matrices = scale / np.sqrt(state_dim) * jax.random.normal(k_mat, shape, dtype)
        self.weights = eqx.nn.MLP(
            state_dim, num_bases, hidden, depth, activation=jnp.tanh, key=k_mlp, dtype=dtype
        )

    def matrix(self, z: Float[Array, " D"]) -> Float[Array, "D D"]:
        r"""$F(z)$, (D, D)."""
        alpha = jax.nn.softmax(self.weights(z))
        return jnp.einsum("k,kij->ij", alpha, self.matrices)

    def __call__(self, z: Float[Array, " D"], t: Float[Array, ""]) -> Float[Array, " D"]:
        return self.matrix(z) @ z


class MLPDrift(eqx.Module):
    r"""A nonlinear drift $f(z) = g(z)$, $g$ an MLP with tanh activations.

    Args:
        state_dim: D.
        key: PRNG key for the initial weights.
        hidden: width of the MLP.
        depth: hidden layers.
        dtype: float dtype of the parameters.
    """

    mlp: eqx.nn.MLP

    def __init__(self, state_dim: int, *, key: Key, hidden: int = 32, depth: int = 2, dtype=None):
        check_positive_int("state_dim", state_dim)
        dtype = jnp.result_type(float) if dtype is None else dtype
        self.mlp = eqx.nn.MLP(
            state_dim, state_dim, hidden, depth, activation=jnp.tanh, key=key, dtype=dtype
        )

    def __call__(self, z: Float[Array, " D"], t: Float[Array, ""]) -> Float[Array, " D"]:
        return self.mlp(z)


# -- encoder and decoder ------------------------------------------------------------------------


class GaussianEncoder(eqx.Module):
    r"""The amortized posterior $q(a_k \mid y_k) = N(\mu(y_k), \operatorname{diag}\sigma(y_k)^2)$
    of one row: an MLP on the row with its missing entries set to zero, and its mask.

    Call it as `encoder(y, observed) -> (mean (A,), sd (A,))`; `sd` is
    $\operatorname{softplus}(\cdot) + $ `min_sd`.

    Args:
        obs_dim: M.
        aux_dim: A.
        key: PRNG key for the initial weights.
        hidden: width of the MLP.
        depth: hidden layers.
        min_sd: a floor on the standard deviations.
        dtype: float dtype of the parameters.
    """

    mlp: eqx.nn.MLP
    min_sd: float = eqx.field(static=True)

    def __init__(
        self,
        obs_dim: int,
        aux_dim: int,
        *,
        key: Key,
        hidden: int = 32,
        depth: int = 2,
        min_sd: float = 1e-3,
        dtype=None,
    ):
        dtype = jnp.result_type(float) if dtype is None else dtype
        self.mlp = eqx.nn.MLP(
            2 * obs_dim, 2 * aux_dim, hidden, depth, activation=jnp.tanh, key=key, dtype=dtype
        )
        self.min_sd = float(min_sd)

    def __call__(
        self, y: Float[Array, " M"], observed: Bool[Array, " M"]
    ) -> tuple[Float[Array, " A"], Float[Array, " A"]]:
        mask = observed.astype(y.dtype)
        out = self.mlp(jnp.concatenate([jnp.where(observed, y, 0.0), mask]))
        mean, raw = jnp.split(out, 2)
        return mean, jax.nn.softplus(raw) + self.min_sd


class GaussianDecoder(eqx.Module):
    r"""The emission $p(y_k \mid a_k) = N(g(a_k), \operatorname{diag}(\sigma^2))$: an MLP for
    the mean and one learned noise scale per output.

    Call it as `decoder(a) -> (mean (M,), sd (M,))`.

    Args:
        aux_dim: A.
        obs_dim: M.
        key: PRNG key for the initial weights.
        hidden: width of the MLP.
        depth: hidden layers (0: an affine decoder).
        sd: the initial noise scale(s), a number or (M,).
        dtype: float dtype of the parameters.
    """

    mlp: eqx.nn.MLP
    sd: Positive

    def __init__(
        self,
        aux_dim: int,
        obs_dim: int,
        *,
        key: Key,
        hidden: int = 32,
        depth: int = 2,
        sd: ArrayLike = 0.1,
        dtype=None,
    ):
        dtype = jnp.result_type(float) if dtype is None else dtype
        self.mlp = eqx.nn.MLP(
            aux_dim, obs_dim, hidden, depth, activation=jnp.tanh, key=key, dtype=dtype
        )
        self.sd = Positive.from_value(jnp.broadcast_to(jnp.asarray(sd, dtype), (obs_dim,)))

    def __call__(self, a: Float[Array, " A"]) -> tuple[Float[Array, " M"], Float[Array, " M"]]:
        return self.mlp(a), self.sd.value().astype(a.dtype)


# -- the model ----------------------------------------------------------------------------------


class NCDSSM(eqx.Module):
    r"""A neural continuous-discrete state-space model.

    $$z(t_0) \sim N(m_0, P_0),\quad \mathrm{d}z = f(z)\,\mathrm{d}t + L\,\mathrm{d}W,\quad
        a_k \sim N(H z(t_k) + d, R),\quad y_k \sim N(g(a_k), \operatorname{diag}\sigma^2),$$

    with an amortized encoder $q(a_k \mid y_k)$ and the drift parameterised by `dynamics`:

    - `"linear"`: $f(z) = F z + c$, discretised exactly; $\log p(a)$ by `bs.Kalman`;
    - `"locally_linear"`: $f(z) = \sum_k \alpha_k(z) F_k\, z$ (`LocallyLinearDrift`);
    - `"nonlinear"`: $f(z) = $ an MLP (`MLPDrift`);
    - or any callable `drift(z, t) -> (D,)` (an `equinox.Module`: its arrays are parameters).

    The last three go through `bs.GaussianFilter` (default `bs.Extended()`: the moment ODEs
    with the drift's Jacobian, solved by diffrax at the tolerances `rtol`, `atol`).

    Training maximises the evidence lower bound over the auxiliary variables (`elbo`, and
    `bs.train` for a batch of series); `bs.impute(model, series, at=times)` gives the posterior
    predictive of y at any times (imputation between points, forecasts past the last one; see
    `posterior_predictive`).

    The array leaves are the parameters: `prior` (the model of the $a$'s, a
    `bs.ContinuousDiscreteSSM` whose drift is `prior.drift_fn`, diffusion `prior.diffusion_fn`,
    emission `prior.emission_fn` with $H$, $R$, $d$, and $m_0$, $P_0$), `encoder` and `decoder`.

    Args:
        obs_dim: M, the values per observation row.
        state_dim: D, the dimension of the dynamic latent $z$.
        aux_dim: A, the dimension of the auxiliary variable $a$.
        dynamics: `"linear"`, `"locally_linear"`, `"nonlinear"`, or a drift callable.
        key: PRNG key for the initial weights.
        hidden: width of every MLP.
        depth: hidden layers of the encoder's, decoder's and nonlinear drift's MLPs.
        num_bases: K, base matrices of the locally linear drift.
        encoder: a callable `(y (M,), observed (M,) bool) -> (mean (A,), sd (A,))`; default a
            `GaussianEncoder`.
        decoder: a callable `a (A,) -> (mean (M,), sd (M,))`; default a `GaussianDecoder`.
        diffusion: the initial diffusion $L$: a number (times the identity) or (D, D).
        aux_sd: the initial $R = $ `aux_sd`$^2 I$.
        obs_sd: the default decoder's initial noise scale.
        engine: the Gaussian engine for $z$ given the $a$'s; default `bs.Kalman()` for linear
            dynamics, `bs.GaussianFilter(bs.Extended())` otherwise.
        rtol, atol, max_steps, solver: the moment-ODE solver's settings (see
            `bs.ContinuousDiscreteSSM`); loose defaults, as training needs gradients more than
            digits.
        dtype: float dtype of the parameters (default: JAX's default float).

    Raises:
        ValueError: non-positive sizes, an unknown `dynamics` name, a drift, encoder or
            decoder whose outputs do not have the shapes above.

    References:
        Ansari, A. F., Heng, A., Lim, A. and Soh, H. (2023). Neural continuous-discrete state
        space models for irregularly-sampled time series. ICML.
    """

    prior: ContinuousDiscreteSSM
    encoder: Callable
    decoder: Callable
    engine: eqx.Module
    dynamics: str = eqx.field(static=True)
    obs_dim: int = eqx.field(static=True)
    state_dim: int = eqx.field(static=True)
    aux_dim: int = eqx.field(static=True)

    def __init__(
        self,
        obs_dim: int,
        state_dim: int,
        aux_dim: int,
        dynamics: str | Callable = "locally_linear",
        *,
        key: Key,
        hidden: int = 32,
        depth: int = 2,
        num_bases: int = 4,
        encoder: Callable | None = None,
        decoder: Callable | None = None,
        diffusion: ArrayLike = 0.3,
        aux_sd: float = 0.1,
        obs_sd: float = 0.1,
        engine: eqx.Module | None = None,
        rtol: float = 1e-3,
        atol: float = 1e-5,
        max_steps: int = 512,
        solver: diffrax.AbstractSolver | None = None,
        dtype=None,
    ):
        for name, value in (
            ("obs_dim", obs_dim),
            ("state_dim", state_dim),
            ("aux_dim", aux_dim),
            ("hidden", hidden),
            ("num_bases", num_bases),
        ):
            check_positive_int(f"{_OWNER}: {name}", value)
        if isinstance(depth, bool) or not isinstance(depth, int | np.integer) or depth < 0:
            raise ValueError(f"{_OWNER}: depth must be an int >= 0, got {depth!r}.")
        if isinstance(dynamics, str) and dynamics not in _DYNAMICS:
            raise ValueError(
                f"{_OWNER}: unknown dynamics {dynamics!r}; use one of "
                f"{', '.join(repr(d) for d in _DYNAMICS)}, or a drift callable (z, t) -> (D,)."
            )
        if not isinstance(dynamics, str) and not callable(dynamics):
            raise ValueError(
                f"{_OWNER}: dynamics must be one of {', '.join(repr(d) for d in _DYNAMICS)} or "
                f"a drift callable (z, t) -> (D,), got {type(dynamics).__name__}."
            )
        M, D, A = int(obs_dim), int(state_dim), int(aux_dim)
        dtype = jnp.dtype(jnp.result_type(float) if dtype is None else dtype)
        k_drift, k_enc, k_dec, k_H = jax.random.split(key, 4)

        if isinstance(dynamics, str):
            name = dynamics
            drift = _default_drift(name, D, k_drift, hidden, depth, num_bases, dtype)
        else:
            name, drift = "custom", dynamics
            _check_drift(drift, D, dtype)
        encoder = (
            GaussianEncoder(M, A, key=k_enc, hidden=hidden, depth=depth, dtype=dtype)
            if (encoder is None)
            else encoder
        )
        decoder = (
            GaussianDecoder(A, M, key=k_dec, hidden=hidden, depth=depth, sd=obs_sd, dtype=dtype)
            if decoder is None
            else decoder
        )
        _check_encoder(encoder, M, A, dtype)
        _check_decoder(decoder, M, A, dtype)

        L = jnp.asarray(diffusion, dtype)
        L = L * jnp.eye(D, dtype=dtype) if L.ndim == 0 else L
        if L.shape != (D, D):
            raise ValueError(
                f"{_OWNER}: diffusion must be a number or a (D, D) = ({D}, {D}) matrix, got "
                f"shape {L.shape}."
            )
        H = jax.random.normal(k_H, (A, D), dtype) / np.sqrt(D)
        R = Covariance.from_matrix(aux_sd**2 * jnp.eye(A, dtype=dtype))
        P0 = Covariance.from_matrix(jnp.eye(D, dtype=dtype))
        m0 = jnp.zeros(D, dtype)
        if isinstance(drift, AffineDrift):
            prior = ContinuousDiscreteSSM.linear(drift.F, L, m0=m0, P0=P0, c=drift.c, H=H, R=R)
        else:
            prior = ContinuousDiscreteSSM(
                drift,
                L,
                m0=m0,
                P0=P0,
                H=H,
                R=R,
                rtol=rtol,
                atol=atol,
                max_steps=max_steps,
                solver=solver,
            )
        if engine is None:
            engine = Kalman() if name == "linear" else GaussianFilter(linearization=Extended())
        engine.check(prior)

        self.prior, self.encoder, self.decoder, self.engine = prior, encoder, decoder, engine
        self.dynamics = name
        self.obs_dim, self.state_dim, self.aux_dim = M, D, A

    # -- pieces ---------------------------------------------------------------------------------

    @property
    def dtype(self):
        """The float dtype of the parameters."""
        return self.prior.m0.dtype

    def encode(
        self, values: Float[Array, "T M"]
    ) -> tuple[Float[Array, "T A"], Float[Array, "T A"], Bool[Array, " T"]]:
        """The encoder on every row: means (T, A), sds (T, A), and which rows have any observed
        entry (T,) (a row with none has no $a$: it is missing for the filter)."""
        observed = ~jnp.isnan(values)
        y = jnp.where(observed, values, 0.0)
        mean, sd = jax.vmap(self.encoder)(y, observed)
        return mean, sd, jnp.any(observed, axis=-1)

    def decode(self, a: Float[Array, "*batch A"]) -> tuple[Array, Array]:
        """The decoder on any batch of $a$'s: means and sds of y, (*batch, M) each."""
        flat = a.reshape(-1, self.aux_dim)
        mean, sd = jax.vmap(self.decoder)(flat)
        batch = a.shape[:-1]
        return mean.reshape(batch + (self.obs_dim,)), sd.reshape(batch + (self.obs_dim,))

    def aux_log_marginal(self, a: TimeSeries | Float[Array, "T A"]) -> Float[Array, ""]:
        r"""$\log p(a_{1:K})$ under the prior of the auxiliary variables: the marginal
        likelihood of `engine` (exact for linear dynamics). NaN marks missing entries; a plain
        array is at times 0, 1, ..., T-1. Differentiable."""
        times, values = self._arrays(a, self.aux_dim, "a")
        observed = ~jnp.isnan(values)
        return self._log_prior(times, jnp.where(observed, values, 0.0), observed)

    def _log_prior(self, times, values, observed) -> Float[Array, ""]:
        return self.engine.log_marginal(self.prior, _observations(times, values, observed))

    # -- the bound ------------------------------------------------------------------------------

    def elbo(
        self, series: TimeSeries | Float[Array, "T M"], *, key: Key, num_samples: int = 1
    ) -> Float[Array, ""]:
        r"""A reparameterised Monte Carlo estimate of the evidence lower bound of one series,

        $$\mathcal{L} = E_{q}\Big[\sum_{k \in O} \log p(y_k \mid a_k) + \log p(a_O)
            - \sum_{k \in O} \log q(a_k \mid y_k)\Big] \le \log p(y),$$

        $O$ the rows with at least one observed entry ($\log p(y_k \mid a_k)$ counts the observed
        entries only; the other rows have no $a$ and the filter just predicts over them), and
        $\log p(a_O)$ the filter's marginal likelihood. The draws are
        $a^{(s)}_k = \mu_k + \sigma_k \epsilon^{(s)}_k$ with
        $\epsilon$ = `jax.random.normal(key, (num_samples, T, A))`; the estimate averages
        over the `num_samples` draws. Differentiable, and works under `jax.jit` / `jax.vmap`.

        Args:
            series: a `bs.TimeSeries` (T, M), or an array (T, M) (or (T,) when M = 1) at times
                0, 1, ..., T-1. NaN marks missing entries.
            key: PRNG key for the draws.
            num_samples: S, the number of draws.

        Returns:
            The estimate, a scalar.

        References:
            Ansari, A. F., Heng, A., Lim, A. and Soh, H. (2023). Neural continuous-discrete
            state space models for irregularly-sampled time series. ICML.
        """
        check_positive_int("num_samples", num_samples)
        times, values = self._arrays(series, self.obs_dim, "y")
        return _elbo(self, times, values, key, num_samples)

    # -- imputation -----------------------------------------------------------------------------

    def posterior_predictive(
        self,
        series: TimeSeries,
        rows,
        *,
        key: Key | None = None,
        num_samples: int | None = None,
        engine=None,
    ) -> tuple[Float[Array, "Q M"], Float[Array, "Q M"], Float[Array, "Q M"]]:
        r"""Mean and variances of y at the rows `rows` of `series` (the hook `bs.impute` uses).

        Under the variational posterior $q(a_O \mid y)\,p(a_{\bar O} \mid a_O)$: at a row with
        observations, $a_k$ is the encoder's; elsewhere it is the smoothed
        $N(H m_k + d, H P_k H^\top + R)$ from the Gaussian smoother of $z$ given the $a$'s
        (`engine`, default the model's), which interpolates between observations and forecasts
        past the last one. Each $a$'s law is pushed through the decoder by the cubature rule
        ($2A$ points): mean $E[g(a)]$, signal variance $\operatorname{Var}[g(a)]$, and y's
        variance adds $E[\sigma(a)^2]$. With `key=None` the $a$'s at observed rows are the
        encoder's means (deterministic); with a key, `num_samples` draws (default 32) from the
        encoder are smoothed each, and the moments are those of the mixture.

        Args:
            series: the series with the query times merged in (as missing rows), (T, M).
            rows: (Q,) indices of the query rows.
            key: PRNG key for draws from the encoder, or None.
            num_samples: draws with a key.
            engine: the engine for the smoother of $z$.

        Returns:
            mean (Q, M), variance of y (Q, M), variance of the signal $g(a)$ (Q, M).
        """
        if key is None and num_samples is not None:
            raise ValueError(
                "num_samples needs key=jax.random.key(...): without a key the encoder's means "
                "are used (one deterministic pass)."
            )
        if num_samples is None:
            num_samples = 32
        check_positive_int("num_samples", num_samples)
        engine = self.engine if engine is None else engine
        engine.check(self.prior)
        times, values = self._arrays(series, self.obs_dim, "y")
        return _predictive(self, engine, times, values, jnp.asarray(rows), key, num_samples)

    # -- checks ---------------------------------------------------------------------------------

    def _arrays(self, series, width: int, name: str):
        """(times (T,), values (T, width)) in the model's dtype, after shape checks."""
        return series_arrays(_OWNER, series, width, name, self.dtype)


def _observations(times, values, observed) -> Observations:
    return observations(TimeSeries(times, jnp.where(observed, values, jnp.nan)))


@filter_jit
def _elbo(model: NCDSSM, times, values, key, num_samples: int) -> Float[Array, ""]:
    observed = ~jnp.isnan(values)
    y = jnp.where(observed, values, 0.0)
    mean, sd, rows = model.encode(values)
    T, A = mean.shape
    eps = jax.random.normal(key, (num_samples, T, A), mean.dtype)
    a = mean + sd * eps  # (S, T, A)
    log_q = jnp.sum(-0.5 * eps**2 - jnp.log(sd) - 0.5 * _LOG_2PI, axis=-1)  # (S, T)
    dec_mean, dec_sd = model.decode(a)
    z = (y - dec_mean) / dec_sd
    log_lik = jnp.sum(
        jnp.where(observed, -0.5 * z**2 - jnp.log(dec_sd) - 0.5 * _LOG_2PI, 0.0), axis=-1
    )
    a_observed = jnp.broadcast_to(rows[:, None], (T, A))

    def log_prior(a_s):
        return model._log_prior(times, jnp.where(a_observed, a_s, 0.0), a_observed)

    log_pa = jax.vmap(log_prior)(a)  # (S,)
    per_row = jnp.where(rows, log_lik - log_q, 0.0)
    return jnp.mean(log_pa + jnp.sum(per_row, axis=-1))


@filter_jit
def _predictive(model: NCDSSM, engine, times, values, rows, key, num_samples: int):
    mean, sd, observed_rows = model.encode(values)
    T, A = mean.shape
    if key is None:
        draws = mean[None]
    else:
        draws = mean + sd * jax.random.normal(key, (num_samples, T, A), mean.dtype)
    a_observed = jnp.broadcast_to(observed_rows[:, None], (T, A))
    H, d, chol_R = model.prior.emission_fn.params()
    unit, _, _ = _unit_points(Cubature(), A, mean.dtype)  # (2A, A), equal weights
    q_observed = observed_rows[rows]

    def one_draw(a):
        data = _observations(times, jnp.where(a_observed, a, 0.0), a_observed)
        smoothed = engine.smooth(model.prior, data)
        m, chol = smoothed.means[rows], smoothed.chols[rows]  # (Q, D), (Q, D, D)

        def at_row(m_q, chol_q, a_q, is_observed):
            centre = jnp.where(is_observed, a_q, H @ m_q + d)
            root = tria(jnp.concatenate([H @ chol_q, chol_R], axis=1))
            root = jnp.where(is_observed, 0.0, root)
            points = centre + unit @ root.T  # (2A, A)
            g, s = model.decode(points)
            g_mean = jnp.mean(g, axis=0)
            g_var = jnp.mean((g - g_mean) ** 2, axis=0)
            return g_mean, g_var + jnp.mean(s**2, axis=0), g_var

        return jax.vmap(at_row)(m, chol, a[rows], q_observed)

    means, y_vars, g_vars = jax.vmap(one_draw)(draws)  # (S, Q, M) each
    # Moments of the mixture over the draws.
    mean_y = jnp.mean(means, axis=0)
    spread = jnp.mean((means - mean_y) ** 2, axis=0)
    return mean_y, jnp.mean(y_vars, axis=0) + spread, jnp.mean(g_vars, axis=0) + spread


# -- construction helpers -----------------------------------------------------------------------


def _default_drift(name: str, D: int, key, hidden: int, depth: int, num_bases: int, dtype):
    if name == "linear":
        return AffineDrift(0.5 / np.sqrt(D) * jax.random.normal(key, (D, D), dtype))
    if name == "locally_linear":
        return LocallyLinearDrift(D, num_bases, key=key, hidden=hidden, depth=1, dtype=dtype)
    return MLPDrift(D, key=key, hidden=hidden, depth=max(depth, 1), dtype=dtype)


def _shape_of(call: str, fn, *args):
    try:
        return jax.eval_shape(fn, *args)
    except Exception as err:  # a user's function: say which one failed and with what
        shapes = ", ".join(str(a.shape) for a in args)
        raise ValueError(
            f"{_OWNER}: calling {call} with arguments of shapes {shapes} failed: "
            f"{type(err).__name__}: {err}"
        ) from err


def _check_drift(drift, D: int, dtype) -> None:
    z = jax.ShapeDtypeStruct((D,), dtype)
    t = jax.ShapeDtypeStruct((), dtype)
    out = _shape_of("the drift f(z, t)", drift, z, t)
    if not isinstance(out, jax.ShapeDtypeStruct) or out.shape != (D,):
        got = out.shape if isinstance(out, jax.ShapeDtypeStruct) else type(out).__name__
        raise ValueError(
            f"{_OWNER}: the drift f(z, t) must return an array of shape (D,) = ({D},), the shape "
            f"of the state z (state_dim), but it returned {got}."
        )


def _check_pair(what: str, out, size: int, letter: str) -> None:
    ok = (
        isinstance(out, tuple)
        and len(out) == 2
        and all(isinstance(o, jax.ShapeDtypeStruct) and o.shape == (size,) for o in out)
    )
    if not ok:
        got = (
            tuple(getattr(o, "shape", type(o).__name__) for o in out)
            if isinstance(out, tuple)
            else type(out).__name__
        )
        raise ValueError(
            f"{_OWNER}: {what} must return (mean, sd), two arrays of shape ({letter},) = "
            f"({size},), got {got}."
        )


def _check_encoder(encoder, M: int, A: int, dtype) -> None:
    y = jax.ShapeDtypeStruct((M,), dtype)
    mask = jax.ShapeDtypeStruct((M,), jnp.bool_)
    _check_pair("the encoder(y, observed)", _shape_of("the encoder", encoder, y, mask), A, "A")


def _check_decoder(decoder, M: int, A: int, dtype) -> None:
    a = jax.ShapeDtypeStruct((A,), dtype)
    _check_pair("the decoder(a)", _shape_of("the decoder", decoder, a), M, "M")


__all__ = ["NCDSSM", "GaussianDecoder", "GaussianEncoder", "LocallyLinearDrift", "MLPDrift"]
