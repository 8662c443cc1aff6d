r"""Continuous-discrete models: a latent SDE observed at discrete, possibly irregular, times.

$$\mathrm{d}x = f(x, t)\,\mathrm{d}t + L(x, t)\,\mathrm{d}W,\qquad y_k \sim p(y \mid x(t_k)).$$

The model only describes; how a gap between two observations is crossed depends on the engine:

- particle engines sample the SDE over the gap (`transition`): Euler-Maruyama with
  `num_substeps` substeps, or the exact Gaussian transition when the SDE is linear;
- Gaussian engines (`bs.GaussianFilter`, ...) propagate the mean and covariance by the moment
  ODEs (`bayesssm.inference._sde_moments`), or use the exact discretisation of a linear SDE;
- a linear SDE with a linear-Gaussian emission (`ContinuousDiscreteSSM.linear`) is also an
  `AbstractLinearGaussianSSM`, so `bs.Kalman` does exact inference on it.
"""

from __future__ import annotations

from collections.abc import Callable

import diffrax
import distrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._checks import check_covariance, check_finite, check_positive_int, check_shape
from .._types import Array, ArrayLike, Float, Key
from ..inference._square_root import tria
from ..kernels._linalg import semidefinite_cholesky, symmetrise
from ..params import Covariance
from ..ssm import AbstractContinuousDiscreteSSM, AbstractLinearGaussianSSM, StepInputs

_OWNER = "ContinuousDiscreteSSM"
# Squarings of the exact discretisation: the gap is halved until the block matrix's norm is
# <= 1/2, at most this many times (norms up to 2^39: ample for any gap in floating point).
_MAX_HALVINGS = 40


class AffineDrift(eqx.Module):
    r"""A linear (affine) drift $f(x, t) = F x + c$.

    With a constant diffusion matrix it makes the SDE linear time-invariant, which
    `ContinuousDiscreteSSM` then discretises exactly (no ODE solver, no substeps). Its arrays are
    parameters (fit them with `where=lambda m: m.drift_fn.F`).

    Args:
        F: the drift matrix, (D, D).
        c: the constant drift, (D,); default zero.
    """

    F: Float[Array, "D D"]
    c: Float[Array, " D"]

    def __init__(self, F: ArrayLike, c: ArrayLike | None = None):
        F = jnp.asarray(F)
        if not jnp.issubdtype(F.dtype, jnp.floating):
            F = F.astype(jnp.result_type(float))
        if F.ndim != 2 or F.shape[0] != F.shape[1]:
            raise ValueError(f"AffineDrift: F must be a square matrix (D, D), got shape {F.shape}.")
        c = jnp.zeros(F.shape[0], F.dtype) if c is None else jnp.asarray(c, F.dtype)
        check_shape("AffineDrift: c", c, (F.shape[0],), f" with D = {F.shape[0]} from F")
        check_finite("AffineDrift: F", F)
        check_finite("AffineDrift: c", c)
        self.F, self.c = F, c

    def __call__(self, x: Float[Array, " D"], t: Float[Array, ""]) -> Float[Array, " D"]:
        return self.F @ x + self.c


class LinearGaussianEmission(eqx.Module):
    r"""A linear-Gaussian emission $y = H x + d + v$, $v \sim N(0, R)$, as a callable
    x -> `distrax.MultivariateNormalTri`.

    Args:
        H: (M, D).
        R: (M, M) covariance (singular allowed), or a `bs.Covariance`.
        d: (M,) offset; default zero.
    """

    H: Float[Array, "M D"]
    R: Covariance
    d: Float[Array, " M"]

    def __init__(self, H: ArrayLike, R: ArrayLike | Covariance, d: ArrayLike | None = None):
        H = jnp.asarray(H)
        if not jnp.issubdtype(H.dtype, jnp.floating):
            H = H.astype(jnp.result_type(float))
        if H.ndim != 2:
            raise ValueError(f"LinearGaussianEmission: H must have shape (M, D), got {H.shape}.")
        M = H.shape[0]
        check_finite("LinearGaussianEmission: H", H)
        if isinstance(R, Covariance):
            check_finite("LinearGaussianEmission: R", R.unconstrained)
        else:
            R = jnp.asarray(R, H.dtype)
            check_covariance("LinearGaussianEmission: R", R)
            R = Covariance.from_matrix(R)
        check_shape("LinearGaussianEmission: R", jnp.zeros(R.shape), (M, M), f" with M = {M}")
        d = jnp.zeros(M, H.dtype) if d is None else jnp.asarray(d, H.dtype)
        check_shape("LinearGaussianEmission: d", d, (M,), f" with M = {M} from H")
        check_finite("LinearGaussianEmission: d", d)
        self.H, self.R, self.d = H, R, d

    def params(self) -> tuple[Float[Array, "M D"], Float[Array, " M"], Float[Array, "M M"]]:
        """(H, d, chol R)."""
        return self.H, self.d, self.R.cholesky.astype(self.H.dtype)

    def __call__(self, x: Float[Array, " D"]) -> distrax.Distribution:
        H, d, chol_R = self.params()
        return distrax.MultivariateNormalTri(H @ x + d, chol_R)


class EulerMaruyama(distrax.Distribution):
    r"""The law of an SDE's state after a gap, sampled by Euler-Maruyama with K substeps.

    $x_{j+1} = x_j + f(x_j, s_j)\,h + L(x_j, s_j)\sqrt{h}\,z_j$, $z_j \sim N(0, I)$,
    $h = \Delta / K$, $s_j = t_0 + j h$. Sampling is all it offers: after more than one substep
    the law has no closed-form density, so `log_prob` (and `mean`) raise NotImplementedError.
    The bootstrap particle filter (`bs.ParticleFilter()` with its default proposal) needs
    samples only.

    Args:
        model: the `ContinuousDiscreteSSM` whose drift and diffusion are used.
        x: the state at the start of the gap, (D,).
        t0: the time at the start of the gap.
        dt: the gap $\Delta \ge 0$.
        num_substeps: K.
    """

    def __init__(self, model, x, t0, dt, num_substeps: int):
        self.model = model
        self.x = x
        self.t0 = t0
        self.dt = dt
        self.num_substeps = num_substeps

    @property
    def event_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape)

    def _sample_n(self, key: Key, n: int) -> Array:
        K, dtype = self.num_substeps, self.x.dtype
        h = self.dt / K
        drift = jax.vmap(self.model.drift, in_axes=(0, None))
        diffusion = jax.vmap(self.model.diffusion, in_axes=(0, None))

        def substep(x, args):  # x: (n, D), all draws at once; one key per substep
            j, k = args
            s = self.t0 + j * h
            dw = jax.random.normal(k, x.shape, dtype) * jnp.sqrt(h)
            return x + drift(x, s) * h + jnp.einsum("nij,nj->ni", diffusion(x, s), dw), None

        start = jnp.broadcast_to(self.x, (n,) + self.x.shape)
        steps = (jnp.arange(K, dtype=dtype), jax.random.split(key, K))
        return jax.lax.scan(substep, start, steps)[0]

    def _unavailable(self, what: str):
        raise NotImplementedError(
            f"the {what} of a ContinuousDiscreteSSM transition over {self.num_substeps} "
            "Euler-Maruyama substeps has no closed form. Engines that need it (the particle "
            "filter with a guided, locally optimal or auxiliary proposal; particle smoothers and "
            "particle Gibbs, which weigh backward moves by the transition density) need "
            "num_substeps=1 (one Gaussian Euler-Maruyama step per gap) or a linear SDE "
            "(ContinuousDiscreteSSM.linear, exact). bs.ParticleFilter() with the default "
            "bootstrap proposal needs samples only; Gaussian engines use the moment ODEs."
        )

    def log_prob(self, value: Array) -> Array:
        self._unavailable("density (log_prob)")

    def mean(self) -> Array:
        self._unavailable("mean")


class ContinuousDiscreteSSM(AbstractContinuousDiscreteSSM):
    r"""A latent SDE observed at discrete times.

    $$x(t_0) \sim N(m_0, P_0),\qquad \mathrm{d}x = f(x, t)\,\mathrm{d}t + L(x, t)\,
        \mathrm{d}W,\qquad y_k \sim p(y \mid x(t_k)),$$

    with $W$ a standard D-dimensional Wiener process, so that $L L^\top$ is the diffusion
    (covariance rate). Observations come at the times of a `bs.TimeSeries`: step k's
    transition is the law of $x(t_{k+1})$ given $x(t_k)$ over the gap
    $\Delta_k = t_{k+1} - t_k$ (`StepInputs.dt`), started at $t_k$ (`StepInputs.time`). For a
    plain array y (no times) step k is at $t_k = k\,\delta$ and every gap is $\delta$ =
    `step_size` (default 1).

    How a gap is crossed:

    - **linear SDE** (`drift` an `AffineDrift` $F x + c$, `diffusion` a constant matrix): exact,
      $A = e^{F\Delta}$, $b = \int_0^\Delta e^{Fs} c\,\mathrm{d}s$,
      $Q = \int_0^\Delta e^{Fs} L L^\top e^{F^\top s}\,\mathrm{d}s$ (Van Loan's block
      exponential on a halved gap, then doubled back), for every engine;
    - **particle engines**: `transition(x, inputs)` samples the SDE by Euler-Maruyama with
      `num_substeps` substeps. One substep is a Gaussian (a `distrax.MultivariateNormalTri`
      with a density); more give an `EulerMaruyama` distribution that can only be sampled;
    - **Gaussian engines**: the moment ODEs over the gap, solved by diffrax with `solver` and
      a PID step-size controller with tolerances `rtol`, `atol` (see
      `bayesssm.inference._sde_moments.linearize_sde_transition`).

    `drift` and `diffusion` are callables `(x, t)`; an `equinox.Module` works too and its array
    leaves are then parameters (fit them with e.g. `where=lambda m: m.drift_fn.theta`). Both
    are checked at construction with `jax.eval_shape`: the drift must return (D,), the
    diffusion (D, D) (for fewer noise sources than states, pad L with zero columns).

    Args:
        drift: $f(x, t)$, (D,), (D,) scalar t -> (D,); or an `AffineDrift`.
        diffusion: $L(x, t)$ -> (D, D), or a constant (D, D) array (a parameter).
        emission: $p(y \mid x)$: a callable x (D,) -> distrax distribution over one row y
            (event shape (M,); or () for scalar y; or a batch of M scalar distributions); or
            None with `H` and `R` given.
        m0: the initial mean $m_0$, (D,).
        P0: the initial covariance $P_0$, (D, D) (singular allowed), or a `bs.Covariance`.
        H, R, d: a linear-Gaussian emission $y = H x + d + v$, $v \sim N(0, R)$, instead of
            `emission` (a `LinearGaussianEmission`).
        num_substeps: Euler-Maruyama substeps per gap for particle engines.
        rtol, atol: the moment-ODE solver's tolerances (raised to at least $100\epsilon$ of the
            dtype, so that float32 stays solvable).
        max_steps: the most ODE solver steps per gap (an error is raised beyond).
        step_size: $\delta$, the time between the rows of a plain array y.
        solver: a diffrax ODE solver (default `diffrax.Tsit5()`).

    Raises:
        ValueError: shapes that do not fit (naming the function at fault), non-finite or
            non-PSD parameters, non-positive settings.
        TypeError: an emission that does not return a distrax distribution.

    References:
        Jazwinski, A. H. (1970). Stochastic Processes and Filtering Theory. Academic Press.
        Särkkä, S. and Solin, A. (2019). Applied Stochastic Differential Equations. Cambridge
        University Press (chapters 6 and 8-10).
        Ansari, A. F., Heng, A., Lim, A. and Soh, H. (2023). Neural continuous-discrete state
        space models for irregularly-sampled time series. ICML.
    """

    drift_fn: Callable
    diffusion_fn: Callable | Float[Array, "D D"]
    emission_fn: Callable
    m0: Float[Array, " D"]
    P0: Covariance
    num_substeps: int = eqx.field(static=True)
    rtol: float = eqx.field(static=True)
    atol: float = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)
    step_size: float = eqx.field(static=True)
    solver: diffrax.AbstractSolver

    def __init__(
        self,
        drift: Callable,
        diffusion: Callable | ArrayLike,
        emission: Callable | None = None,
        m0: ArrayLike | None = None,
        P0: ArrayLike | Covariance | None = None,
        *,
        H: ArrayLike | None = None,
        R: ArrayLike | Covariance | None = None,
        d: ArrayLike | None = None,
        num_substeps: int = 10,
        rtol: float = 1e-6,
        atol: float = 1e-9,
        max_steps: int = 4096,
        step_size: float = 1.0,
        solver: diffrax.AbstractSolver | None = None,
    ):
        if m0 is None or P0 is None:
            raise ValueError(f"{_OWNER}: give the initial mean m0 (D,) and covariance P0 (D, D).")
        m0 = jnp.asarray(m0)
        if not jnp.issubdtype(m0.dtype, jnp.floating):
            m0 = m0.astype(jnp.result_type(float))
        check_shape(f"{_OWNER}: m0", m0, (None,), " (the state dimension D)")
        check_finite(f"{_OWNER}: m0", m0)
        dtype, D = m0.dtype, m0.shape[0]
        if isinstance(P0, Covariance):
            check_finite(f"{_OWNER}: P0", P0.unconstrained)
        else:
            P0 = jnp.asarray(P0, dtype)
            check_covariance(f"{_OWNER}: P0", P0)
            P0 = Covariance.from_matrix(P0)
        check_shape(f"{_OWNER}: P0", jnp.zeros(P0.shape), (D, D), f" with D = {D} from m0")

        if emission is None:
            if H is None or R is None:
                raise ValueError(
                    f"{_OWNER}: give an emission (a callable x -> distrax distribution), or H "
                    "and R for a linear-Gaussian one."
                )
            emission = LinearGaussianEmission(jnp.asarray(H, dtype), R, d)
        elif H is not None or R is not None or d is not None:
            raise ValueError(f"{_OWNER}: give either emission or H, R (and d), not both.")
        if isinstance(emission, LinearGaussianEmission) and emission.H.shape[1] != D:
            raise ValueError(
                f"{_OWNER}: H must have D = {D} columns (the state dimension, from m0), got "
                f"shape {emission.H.shape}."
            )
        if not callable(diffusion):
            diffusion = jnp.asarray(diffusion, dtype)
            _check_diffusion_shape(diffusion.shape, D, "the constant diffusion matrix")
            check_finite(f"{_OWNER}: diffusion", diffusion)
        if not callable(drift):
            raise TypeError(
                f"{_OWNER}: drift must be a callable f(x, t) -> (D,) (or an AffineDrift), got "
                f"{type(drift).__name__}."
            )
        if not callable(emission):
            raise TypeError(
                f"{_OWNER}: emission must be a callable x -> distrax distribution, got "
                f"{type(emission).__name__}."
            )
        check_positive_int("num_substeps", num_substeps)
        check_positive_int("max_steps", max_steps)
        for name, value in (("rtol", rtol), ("atol", atol), ("step_size", step_size)):
            if not (np.isscalar(value) and np.isfinite(value) and value > 0):
                raise ValueError(f"{_OWNER}: {name} must be a finite number > 0, got {value!r}.")

        self.drift_fn, self.diffusion_fn, self.emission_fn = drift, diffusion, emission
        self.m0, self.P0 = m0, P0
        self.num_substeps, self.max_steps = int(num_substeps), int(max_steps)
        self.rtol, self.atol, self.step_size = float(rtol), float(atol), float(step_size)
        self.solver = diffrax.Tsit5() if solver is None else solver
        self._check_functions()

    @classmethod
    def linear(
        cls,
        F: ArrayLike,
        L: ArrayLike,
        emission: Callable | None = None,
        m0: ArrayLike | None = None,
        P0: ArrayLike | Covariance | None = None,
        *,
        c: ArrayLike | None = None,
        H: ArrayLike | None = None,
        R: ArrayLike | Covariance | None = None,
        d: ArrayLike | None = None,
        step_size: float = 1.0,
    ) -> ContinuousDiscreteSSM:
        r"""A linear time-invariant SDE $\mathrm{d}x = (F x + c)\,\mathrm{d}t + L\,\mathrm{d}W$,
        discretised exactly over every gap.

        With a linear-Gaussian emission (`H`, `R`) the result is a
        `LinearContinuousDiscreteSSM`, which is also an `AbstractLinearGaussianSSM`: `bs.Kalman`
        (the default engine) does exact inference on it, as for `bs.GPStateSpace`.

        Args:
            F: (D, D) drift matrix.
            L: (D, D) diffusion matrix (pad with zero columns for fewer noise sources).
            emission: a callable x -> distrax distribution, or None with `H`, `R`.
            m0, P0: the initial mean and covariance.
            c: (D,) constant drift; default zero.
            H, R, d: the linear-Gaussian emission.
            step_size: the time between the rows of a plain array y.
        """
        if m0 is not None and jnp.issubdtype(jnp.asarray(m0).dtype, jnp.floating):
            F = jnp.asarray(F, jnp.asarray(m0).dtype)  # the state's dtype (float32 stays float32)
        drift = AffineDrift(F, c)
        target = LinearContinuousDiscreteSSM if emission is None else ContinuousDiscreteSSM
        return target(drift, L, emission, m0, P0, H=H, R=R, d=d, step_size=step_size)

    # -- checks ---------------------------------------------------------------------------------

    def _check_functions(self) -> None:
        D = self.m0.shape[0]
        x = jax.ShapeDtypeStruct((D,), self.m0.dtype)
        t = jax.ShapeDtypeStruct((), self.m0.dtype)
        out = _eval_shape("drift(x, t)", self.drift_fn, x, t)
        if not isinstance(out, jax.ShapeDtypeStruct) or out.shape != (D,):
            raise ValueError(
                f"{_OWNER}: drift(x, t) must return an array of shape (D,) = ({D},), the shape of "
                f"the state x (from m0), but it returned {_describe(out)}."
            )
        if callable(self.diffusion_fn):
            out = _eval_shape("diffusion(x, t)", self.diffusion_fn, x, t)
            if not isinstance(out, jax.ShapeDtypeStruct):
                raise ValueError(
                    f"{_OWNER}: diffusion(x, t) must return a (D, D) array, got {_describe(out)}."
                )
            _check_diffusion_shape(out.shape, D, "diffusion(x, t)")
        out = _eval_shape("emission(x)", self.emission_fn, x)
        if not isinstance(out, distrax.Distribution):
            raise TypeError(
                f"{_OWNER}: emission(x) must return a distrax distribution over y, got "
                f"{_describe(out)}."
            )
        if len(_emission_shape(out)) > 1:
            raise ValueError(
                f"{_OWNER}: emission(x) must give one row y of M values: a distribution of event "
                f"shape (M,) or (), or a batch of M scalar ones; got batch shape "
                f"{out.batch_shape} and event shape {out.event_shape}."
            )

    @property
    def state_dim(self) -> int:
        return self.m0.shape[0]

    @property
    def obs_dim(self) -> int:
        """M, the number of values per observation."""
        x = jax.ShapeDtypeStruct((self.state_dim,), self.m0.dtype)
        shape = _emission_shape(jax.eval_shape(self.emission_fn, x))
        return 1 if shape == () else shape[0]

    @property
    def is_linear(self) -> bool:
        """True when the SDE is linear time-invariant (an `AffineDrift` and a constant
        diffusion matrix): every engine then uses the exact discretisation."""
        return isinstance(self.drift_fn, AffineDrift) and not callable(self.diffusion_fn)

    def check_data(self, num_timesteps: int, obs_dim: int | None, controls) -> None:
        if obs_dim is not None and obs_dim != self.obs_dim:
            raise ValueError(
                f"{_OWNER}: the emission gives y with M = {self.obs_dim} values per step, but y "
                f"has {obs_dim} columns."
            )
        if controls is not None:
            raise ValueError(f"{_OWNER} takes no control inputs (inputs=).")

    # -- the SDE --------------------------------------------------------------------------------

    def drift(self, x: Float[Array, " D"], t: Float[Array, ""]) -> Float[Array, " D"]:
        r"""$f(x, t)$, (D,)."""
        return self.drift_fn(x, t)

    def diffusion(self, x: Float[Array, " D"], t: Float[Array, ""]) -> Float[Array, "D D"]:
        r"""$L(x, t)$, (D, D)."""
        if callable(self.diffusion_fn):
            return self.diffusion_fn(x, t)
        return self.diffusion_fn

    def gap(self, inputs: StepInputs | None) -> tuple[Float[Array, ""], Float[Array, ""]]:
        r"""$(t_k, \Delta_k)$: the start time and the length of step k's gap.

        From `inputs.time` and `inputs.dt` when the data are a `bs.TimeSeries`; otherwise
        $t_k = k\,\delta$ and $\Delta_k = \delta$ (`step_size`). A negative gap raises an error
        (at run time under jit); a zero gap is the identity.
        """
        dtype = self.m0.dtype
        index = jnp.asarray(0 if inputs is None else inputs.index)
        if inputs is None or inputs.time is None:
            t0 = index.astype(dtype) * jnp.asarray(self.step_size, dtype)
        else:
            t0 = jnp.asarray(inputs.time, dtype)
        if inputs is None or inputs.dt is None:
            dt = jnp.asarray(self.step_size, dtype)
        else:
            dt = jnp.asarray(inputs.dt, dtype)
            dt = eqx.error_if(
                dt,
                dt < 0,
                f"{_OWNER}: a time gap (StepInputs.dt) is negative; the times must increase.",
            )
        return t0, dt

    def ode_settings(self) -> tuple[diffrax.AbstractSolver, float, float, int]:
        """(solver, rtol, atol, max_steps) for the moment ODEs, tolerances floored at 100 eps."""
        floor = 100 * float(jnp.finfo(self.m0.dtype).eps)
        return self.solver, max(self.rtol, floor), max(self.atol, floor), self.max_steps

    def exact_transition(
        self, inputs: StepInputs | None
    ) -> tuple[Float[Array, "D D"], Float[Array, " D"], Float[Array, "D D"]] | None:
        """(A, b, chol Q) of a linear SDE's exact transition over the gap; None when the SDE is
        not linear (see `is_linear`)."""
        if not self.is_linear:
            return None
        _, dt = self.gap(inputs)
        return discretise_linear_sde(self.drift_fn.F, self.drift_fn.c, self.diffusion_fn, dt)

    # -- the three distributions ----------------------------------------------------------------

    def initial(self, inputs: StepInputs | None = None) -> distrax.Distribution:
        return distrax.MultivariateNormalTri(self.m0, self.P0.cholesky.astype(self.m0.dtype))

    def transition(self, x: Array, inputs: StepInputs | None = None) -> distrax.Distribution:
        """p(x(t_{k+1}) | x(t_k) = x): exact for a linear SDE; otherwise Euler-Maruyama with
        `num_substeps` substeps (a Gaussian for one substep, sample-only for more)."""
        exact = self.exact_transition(inputs)
        if exact is not None:
            A, b, chol_Q = exact
            return distrax.MultivariateNormalTri(A @ x + b, chol_Q)
        t0, dt = self.gap(inputs)
        if self.num_substeps == 1:
            scale = tria(jnp.sqrt(dt) * self.diffusion(x, t0))
            return distrax.MultivariateNormalTri(x + self.drift(x, t0) * dt, scale)
        return EulerMaruyama(self, x, t0, dt, self.num_substeps)

    def emission(self, x: Array, inputs: StepInputs | None = None) -> distrax.Distribution:
        return self.emission_fn(x)


class LinearContinuousDiscreteSSM(ContinuousDiscreteSSM, AbstractLinearGaussianSSM):
    r"""A linear time-invariant SDE with a linear-Gaussian emission: exact for `bs.Kalman`.

    Built by `ContinuousDiscreteSSM.linear(F, L, m0=..., P0=..., H=..., R=...)`. Every gap
    $\Delta$ gets the exact $(A, b, Q)$ of the SDE (see `discretise_linear_sde`), so this is the
    state-space form of a Gaussian process with a rational spectrum, on any time grid.
    """

    def __check_init__(self):
        if not self.is_linear or not isinstance(self.emission_fn, LinearGaussianEmission):
            raise ValueError(
                "LinearContinuousDiscreteSSM needs an AffineDrift, a constant diffusion matrix "
                "and a LinearGaussianEmission; use ContinuousDiscreteSSM for other models."
            )

    def initial_params(self, inputs: StepInputs):
        return self.m0, self.P0.cholesky.astype(self.m0.dtype)

    def transition_params(self, inputs: StepInputs):
        return self.exact_transition(inputs)

    def emission_params(self, inputs: StepInputs):
        return self.emission_fn.params()


def discretise_linear_sde(
    F: Float[Array, "D D"],
    c: Float[Array, " D"],
    L: Float[Array, "D D"],
    dt: Float[Array, ""],
) -> tuple[Float[Array, "D D"], Float[Array, " D"], Float[Array, "D D"]]:
    r"""Exact $(A, b, \operatorname{chol} Q)$ of $\mathrm{d}x = (F x + c)\,\mathrm{d}t + L\,
    \mathrm{d}W$ over a gap $\Delta \ge 0$:

    $$A = e^{F\Delta},\quad b = \int_0^\Delta e^{Fs} c\,\mathrm{d}s,\quad
        Q = \int_0^\Delta e^{Fs} L L^\top e^{F^\top s}\,\mathrm{d}s.$$

    Van Loan's block exponential on $h = \Delta / 2^s$, with $s$ the least number of halvings
    that brings the block matrix's 1-norm to $\le 1/2$ (where the $e^{-F h}$ block it contains is
    harmless and a Taylor polynomial of degree 14 is exact to rounding: the remainder is below
    $0.5^{15} e^{0.5} / 15! < 4 \cdot 10^{-17}$), then $s$ doublings
    $Q \leftarrow A Q A^\top + Q$, $b \leftarrow A b + b$, $A \leftarrow A^2$, which stay
    accurate over gaps of many time constants. $Q$ is factored by a pivoted Cholesky and a QR
    (lower triangular; singular $Q$, e.g. $L$ of low rank or $\Delta = 0$, is fine and
    differentiable).

    References:
        Van Loan, C. F. (1978). Computing integrals involving the matrix exponential. IEEE
        Transactions on Automatic Control 23(3).
    """
    D = F.shape[0]
    dtype = F.dtype
    dt = jnp.asarray(dt, dtype)
    # [[-F, L L^T, 0], [0, F^T, 0], [0, c^T, 0]]: its exponential holds A^T, b^T and A^{-1} Q.
    zero_col = jnp.zeros((D, 1), dtype)
    top = jnp.concatenate([-F, L @ L.T, zero_col], axis=1)
    middle = jnp.concatenate([jnp.zeros((D, D), dtype), F.T, zero_col], axis=1)
    bottom = jnp.concatenate([jnp.zeros((1, D), dtype), c[None, :], jnp.zeros((1, 1), dtype)], 1)
    generator = jnp.concatenate([top, middle, bottom], axis=0)
    norm = jnp.max(jnp.sum(jnp.abs(generator), axis=0)) * dt
    halvings = jnp.clip(jnp.ceil(jnp.log2(jnp.maximum(2 * norm, 1.0))), 0, _MAX_HALVINGS)
    block = _taylor_expm(generator * (dt / 2.0**halvings))
    A = block[D : 2 * D, D : 2 * D].T
    b = block[2 * D, D : 2 * D]
    Q = symmetrise(A @ block[:D, D : 2 * D])

    def double(carry, i):
        A, b, Q = carry
        doubled = (A @ A, A @ b + b, symmetrise(A @ Q @ A.T + Q))
        keep = i < halvings
        return jax.tree.map(lambda new, old: jnp.where(keep, new, old), doubled, carry), None

    steps = jnp.arange(_MAX_HALVINGS, dtype=dtype)
    (A, b, Q), _ = jax.lax.scan(double, (A, b, Q), steps)
    return A, b, psd_factor(Q)


def _taylor_expm(M: Float[Array, "n n"], degree: int = 14) -> Float[Array, "n n"]:
    """exp(M) by its Taylor polynomial in Horner form, for |M|_1 <= 1/2."""
    eye = jnp.eye(M.shape[0], dtype=M.dtype)
    result = eye
    for k in range(degree, 0, -1):
        result = eye + (M @ result) / k
    return result


def psd_factor(matrix: Float[Array, "D D"]) -> Float[Array, "D D"]:
    """A lower-triangular L with L L^T = matrix, for a PSD matrix that may be singular or
    slightly indefinite from rounding (pivoted Cholesky, then QR; differentiable)."""
    return tria(semidefinite_cholesky(symmetrise(matrix)))


def _check_diffusion_shape(shape: tuple, D: int, what: str) -> None:
    if shape != (D, D):
        hint = ""
        if len(shape) == 2 and shape[0] == D and shape[1] < D:
            hint = (
                f" For {shape[1]} noise source(s), pad L with zero columns to ({D}, {D}): "
                "W has D independent components."
            )
        raise ValueError(
            f"{_OWNER}: {what} must be a square (D, D) = ({D}, {D}) matrix for the state of "
            f"dimension D = {D} (from m0), got shape {tuple(shape)}.{hint}"
        )


def _eval_shape(call: str, fn: Callable, *args):
    try:
        return jax.eval_shape(fn, *args)
    except Exception as err:  # a user's function: say which one failed, and how it was called
        shapes = ", ".join(f"{a.shape}" for a in args)
        raise ValueError(
            f"{_OWNER}: calling {call} with arguments of shapes {shapes} failed: "
            f"{type(err).__name__}: {err}"
        ) from err


def _emission_shape(dist: distrax.Distribution) -> tuple[int, ...]:
    return tuple(dist.batch_shape) + tuple(dist.event_shape)


def _describe(out) -> str:
    if isinstance(out, jax.ShapeDtypeStruct):
        return f"an array of shape {out.shape}"
    return f"a {type(out).__name__}"


__all__ = [
    "AffineDrift",
    "ContinuousDiscreteSSM",
    "EulerMaruyama",
    "LinearContinuousDiscreteSSM",
    "LinearGaussianEmission",
    "discretise_linear_sde",
]
