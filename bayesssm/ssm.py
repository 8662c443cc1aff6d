"""The model protocol: a model describes, an engine infers.

A model is an `equinox.Module` whose array leaves are its parameters. It gives three distributions
(distrax): p(x_0), p(x_{t+1} | x_t) and p(y_t | x_t). Extra structure that exact engines need is a
capability class the model also inherits; engines ask for it with `require_capability`.
"""

from __future__ import annotations

import abc
from typing import NamedTuple

import distrax
import equinox as eqx
import jax
import jax.numpy as jnp

from ._checks import check_positive_int
from ._types import Array, Float, Int, Key


class StepInputs(NamedTuple):
    """What an engine hands a model at step t.

    Attributes:
        index: the step t (an integer scalar).
        control: the control input u_t, or None.
        dt: time to the next step, t_{t+1} - t_t, for models on irregular times; None otherwise.
        time: the step's own time t_t (for data given as a `bs.TimeSeries`), for models whose
            dynamics depend on absolute time (an SDE's drift f(x, t)); None otherwise (plain
            arrays: a model that needs a time then uses its own convention, e.g. t_t = t).
    """

    index: Int[Array, ""]
    control: Float[Array, " U"] | None = None
    dt: Float[Array, ""] | None = None
    time: Float[Array, ""] | None = None


class AbstractSSM(eqx.Module):
    r"""A state-space model: $x_0 \sim p(x_0)$, $x_{t+1} \sim p(\cdot \mid x_t)$,
    $y_t \sim p(\cdot \mid x_t)$.

    Subclasses give three distrax distributions. `inputs` is the `StepInputs` of the step the
    distribution belongs to (for `transition`, the step the state moves *from*); user models may
    ignore it.
    """

    @abc.abstractmethod
    def initial(self, inputs: StepInputs | None = None) -> distrax.Distribution:
        """p(x_0)."""

    @abc.abstractmethod
    def transition(self, x: Array, inputs: StepInputs | None = None) -> distrax.Distribution:
        """p(x_{t+1} | x_t = x)."""

    @abc.abstractmethod
    def emission(self, x: Array, inputs: StepInputs | None = None) -> distrax.Distribution:
        """p(y_t | x_t = x)."""

    def check_data(
        self, num_timesteps: int, obs_dim: int | None, controls: Float[Array, "T U"] | None
    ) -> None:
        """Raise a ValueError if data of this shape cannot go with this model (default: accept).

        `obs_dim` is None when there are no observations yet (sampling).
        """

    def sample(
        self, key: Key, num_timesteps: int, inputs: Float[Array, "T U"] | None = None
    ) -> tuple[Array, Array]:
        """Draw a latent path and observations: x of shape (T, ...), y of shape (T, ...)."""
        check_positive_int("num_timesteps", num_timesteps)
        if inputs is not None:
            inputs = jnp.asarray(inputs)
        self.check_data(num_timesteps, None, inputs)
        steps = step_inputs(num_timesteps, inputs)
        first = jax.tree.map(lambda a: a[0], steps)
        key0, key_emit0, key_rest = jax.random.split(key, 3)
        x0 = self.initial(first).sample(seed=key0)
        y0 = self.emission(x0, first).sample(seed=key_emit0)

        def step(x, args):
            key_t, prev, here = args
            key_move, key_emit = jax.random.split(key_t)
            x_new = self.transition(x, prev).sample(seed=key_move)
            return x_new, (x_new, self.emission(x_new, here).sample(seed=key_emit))

        prev = jax.tree.map(lambda a: a[:-1], steps)
        here = jax.tree.map(lambda a: a[1:], steps)
        keys = jax.random.split(key_rest, num_timesteps - 1)
        _, (xs, ys) = jax.lax.scan(step, x0, (keys, prev, here))
        return jnp.concatenate([x0[None], xs]), jnp.concatenate([y0[None], ys])


def step_inputs(
    num_timesteps: int,
    controls: Float[Array, "T U"] | None = None,
    dts: Float[Array, " T"] | None = None,
    times: Float[Array, " T"] | None = None,
) -> StepInputs:
    """`StepInputs` for every step, stacked along a leading T axis."""
    return StepInputs(index=jnp.arange(num_timesteps), control=controls, dt=dts, time=times)


class AbstractLinearGaussianEmission(AbstractSSM):
    r"""Capability: a linear-Gaussian emission $y_t = H_t x_t + d_t + v_t$,
    $v_t \sim N(0, L_{R,t} L_{R,t}^\top)$, whatever the transition.

    The particle filter's locally optimal proposal needs it (with Gaussian transitions). For a
    scalar state (shape ()), H has one column.
    """

    @abc.abstractmethod
    def emission_params(
        self, inputs: StepInputs
    ) -> tuple[Float[Array, "M D"], Float[Array, " M"], Float[Array, "M M"]]:
        """(H_t, d_t, chol R_t) at step t."""

    def emission(self, x: Array, inputs: StepInputs | None = None) -> distrax.Distribution:
        H, d, chol_R = self.emission_params(_or_first(inputs))
        return distrax.MultivariateNormalTri(H @ jnp.reshape(x, (-1,)) + d, chol_R)


class AbstractLinearGaussianSSM(AbstractLinearGaussianEmission):
    r"""Capability: affine-Gaussian transition and emission, in square-root form.

    Kalman engines need it.

    $x_0 \sim N(m_0, L_0 L_0^\top)$, $x_{t+1} = A_t x_t + b_t + w_t$,
    $w_t \sim N(0, L_{Q,t} L_{Q,t}^\top)$,
    $y_t = H_t x_t + d_t + v_t$, $v_t \sim N(0, L_{R,t} L_{R,t}^\top)$.

    Subclasses give the three `*_params` methods for one step (`inputs.index` is t; control inputs
    and time gaps arrive in `inputs` too). The generic distributions are derived from them, so
    particle engines run on a linear-Gaussian model unchanged.
    """

    @abc.abstractmethod
    def initial_params(self, inputs: StepInputs) -> tuple[Float[Array, " D"], Float[Array, "D D"]]:
        """(m_0, chol P_0)."""

    @abc.abstractmethod
    def transition_params(
        self, inputs: StepInputs
    ) -> tuple[Float[Array, "D D"], Float[Array, " D"], Float[Array, "D D"]]:
        """(A_t, b_t, chol Q_t) of the move from step t to t + 1."""

    def transition_covariance_params(
        self, inputs: StepInputs
    ) -> tuple[Float[Array, "D D"], Float[Array, " D"], Float[Array, "D D"]]:
        """(A_t, b_t, Q_t) with the noise covariance itself, for covariance-form engines.

        Defaults to chol Q chol Q^T from `transition_params`; a model that has Q directly
        overrides it and skips the factorisation.
        """
        A, b, chol_Q = self.transition_params(inputs)
        return A, b, chol_Q @ chol_Q.T

    @property
    def time_invariant_factors(self) -> bool:
        """True when A, chol Q, H and chol R do not depend on the step (b, d and controls may).

        Engines then know the covariance recursion reaches a steady state and may exploit it.
        """
        return False

    def initial(self, inputs: StepInputs | None = None) -> distrax.Distribution:
        m0, chol_P0 = self.initial_params(_or_first(inputs))
        return distrax.MultivariateNormalTri(m0, chol_P0)

    def transition(self, x: Array, inputs: StepInputs | None = None) -> distrax.Distribution:
        A, b, chol_Q = self.transition_params(_or_first(inputs))
        return distrax.MultivariateNormalTri(A @ x + b, chol_Q)


class AbstractContinuousDiscreteSSM(AbstractSSM):
    r"""Capability: a latent SDE $dx = f(x, t)\,dt + L(x, t)\,dW$ observed at discrete times.

    The transition of step t is the SDE's law over the gap `inputs.dt` to the next observation.
    Gaussian approximate engines propagate its mean and covariance over the gap (moment ODEs);
    particle engines sample it. `drift` returns (D,), `diffusion` returns (D, D) (W has D
    independent components; pad with zero columns for fewer noise sources).

    Three more methods have defaults that a model may override (`bs.ContinuousDiscreteSSM`
    does; the Gaussian engines use them, see `bayesssm.inference._sde_moments`): `gap`,
    `ode_settings` and `exact_transition`.
    """

    @abc.abstractmethod
    def drift(self, x: Float[Array, " D"], t: Float[Array, ""]) -> Float[Array, " D"]:
        """f(x, t)."""

    @abc.abstractmethod
    def diffusion(self, x: Float[Array, " D"], t: Float[Array, ""]) -> Float[Array, "D D"]:
        """L(x, t)."""

    def gap(self, inputs: StepInputs | None) -> tuple[Float[Array, ""], Float[Array, ""]]:
        """(t_k, dt_k): the start time and the length of step k's gap. Default: `inputs.time`
        (else the step index) and `inputs.dt` (else 1)."""
        inputs = _or_first(inputs)
        t0 = inputs.index if inputs.time is None else inputs.time
        dt = 1.0 if inputs.dt is None else inputs.dt
        return jnp.asarray(t0), jnp.asarray(dt)

    def ode_settings(self) -> tuple:
        """(diffrax solver, rtol, atol, max_steps) for the moment ODEs over a gap. Default:
        Tsit5, 1e-6, 1e-9, 4096 (the engines raise the tolerances to at least 100 eps of the
        dtype)."""
        import diffrax

        return diffrax.Tsit5(), 1e-6, 1e-9, 4096

    def exact_transition(
        self, inputs: StepInputs | None
    ) -> tuple[Float[Array, "D D"], Float[Array, " D"], Float[Array, "D D"]] | None:
        """(A, b, chol Q) of the exact transition over the gap, when the model has one (a
        linear SDE); None (the default) makes Gaussian engines solve the moment ODEs."""
        return None


def _or_first(inputs: StepInputs | None) -> StepInputs:
    return StepInputs(index=jnp.asarray(0)) if inputs is None else inputs


def require_capability(model, capability: type, engine_name: str) -> None:
    """Raise a TypeError naming what is missing when `model` lacks `capability`."""
    if not isinstance(model, capability):
        raise TypeError(
            f"{engine_name} needs a model that is a {capability.__name__}, but got "
            f"{type(model).__name__}. Use an engine for general models (e.g. bs.ParticleFilter) or "
            f"subclass {capability.__name__} and implement its methods."
        )
