r"""The univariate nonlinear growth model, the classic benchmark for particle filters."""

from __future__ import annotations

import distrax
import jax.numpy as jnp

from .._types import Array, ArrayLike, Float, Int
from ..params import Positive
from ..ssm import AbstractSSM, StepInputs
from ._scalar import check_scalar_data, float_dtype, positive


class NonlinearGrowth(AbstractSSM):
    r"""The nonlinear growth model (Kitagawa 1996; Gordon, Salmond and Smith 1993).

    $$x_0 \sim N(0, \sigma_0^2),\quad
        x_{t+1} = \frac{x_t}{2} + \frac{25\, x_t}{1 + x_t^2} + 8 \cos\big(1.2\,(t + 1)\big)
        + w_t,\quad w_t \sim N(0, \sigma_w^2),$$
    $$y_t = \frac{x_t^2}{20} + v_t,\quad v_t \sim N(0, \sigma_v^2).$$

    **Time index.** The forcing term uses the index of the step the state moves *to*: the move
    from step $t$ (`inputs.index` $= t$ in `transition`, as for every bayesssm model) to step
    $t + 1$ adds $8 \cos(1.2\,(t + 1))$, so $x_1$ gets $8 \cos(1.2)$. This is Kitagawa's
    $x_n = f(x_{n-1}) + 8\cos(1.2\, n)$, with $x_0$ the first state (which carries an
    observation, as always here). `particles.state_space_models.Gordon_etal` instead adds
    $8 \cos(1.2\,(t - 1))$ to $x_t$, with the index of the step moved *from*, and gives $x_0$
    variance 4: its move into step $t$ gets the forcing that this model gives the move into step
    $t - 1$, so the two do not have the same likelihood. `transition(x)` without inputs is the
    move from step 0. The phase $1.2\,(t + 1)$ is computed in the model's dtype,
    so in float32 it loses precision for very long series ($t \gtrsim 10^5$).

    The observation $x_t^2 / 20$ does not tell the sign of $x_t$, so the filtering distribution
    is often bimodal; the transition is strongly nonlinear. Both state and observation are
    scalars (event shape ()); y may be given as (T,) or (T, 1). The constants $1/2$, $25$, $8$,
    $1.2$ and $1/20$ are those of the benchmark and fixed; the three variances are parameters,
    stored as `bs.Positive` (fit them with `where=lambda m: (m.transition_variance,
    m.observation_variance)`) and keeping their dtype.

    Args:
        transition_variance: $\sigma_w^2 > 0$ (default 10).
        observation_variance: $\sigma_v^2 > 0$ (default 1).
        initial_variance: $\sigma_0^2 > 0$, the variance of $x_0$ (default 5).

    Raises:
        ValueError: a variance that is not a finite positive scalar.

    References:
        Gordon, N. J., Salmond, D. J. and Smith, A. F. M. (1993). Novel approach to
        nonlinear/non-Gaussian Bayesian state estimation. IEE Proceedings F 140(2).
        Kitagawa, G. (1996). Monte Carlo filter and smoother for non-Gaussian nonlinear state
        space models. Journal of Computational and Graphical Statistics 5(1).
        Andrieu, C., Doucet, A. and Holenstein, R. (2010). Particle Markov chain Monte Carlo
        methods. Journal of the Royal Statistical Society B 72(3), section 3.1.
    """

    transition_variance: Positive
    observation_variance: Positive
    initial_variance: Positive

    def __init__(
        self,
        transition_variance: ArrayLike | Positive = 10.0,
        observation_variance: ArrayLike | Positive = 1.0,
        initial_variance: ArrayLike | Positive = 5.0,
    ) -> None:
        dtype = float_dtype(transition_variance, observation_variance, initial_variance)
        owner = "NonlinearGrowth"
        self.transition_variance = positive(
            owner, "transition_variance", transition_variance, dtype
        )
        self.observation_variance = positive(
            owner, "observation_variance", observation_variance, dtype
        )
        self.initial_variance = positive(owner, "initial_variance", initial_variance, dtype)

    @property
    def _dtype(self):
        return self.transition_variance.unconstrained.dtype

    def initial(self, inputs: StepInputs | None = None) -> distrax.Distribution:
        r"""$N(0, \sigma_0^2)$; event shape ()."""
        scale = jnp.sqrt(self.initial_variance.value())
        return distrax.Normal(jnp.zeros_like(scale), scale)

    def transition_mean(
        self, x: Float[Array, ""], index: Int[Array, ""] | int = 0
    ) -> Float[Array, ""]:
        r"""$x/2 + 25 x / (1 + x^2) + 8 \cos(1.2\,(t + 1))$, the mean of the move from step
        $t$ = `index` to step $t + 1$."""
        x = jnp.asarray(x, jnp.result_type(x, self._dtype))
        step = jnp.asarray(index).astype(x.dtype)
        return 0.5 * x + 25.0 * x / (1.0 + x * x) + 8.0 * jnp.cos(1.2 * (step + 1.0))

    def transition(
        self, x: Float[Array, ""], inputs: StepInputs | None = None
    ) -> distrax.Distribution:
        r"""$N(x/2 + 25 x / (1 + x^2) + 8 \cos(1.2\,(t + 1)), \sigma_w^2)$ for the move from
        step $t$ = `inputs.index` (0 without inputs); event shape ()."""
        index = 0 if inputs is None else inputs.index
        return distrax.Normal(
            self.transition_mean(x, index), jnp.sqrt(self.transition_variance.value())
        )

    def emission(
        self, x: Float[Array, ""], inputs: StepInputs | None = None
    ) -> distrax.Distribution:
        r"""$N(x^2 / 20, \sigma_v^2)$; event shape ()."""
        x = jnp.asarray(x, jnp.result_type(x, self._dtype))
        return distrax.Normal(x * x / 20.0, jnp.sqrt(self.observation_variance.value()))

    def check_data(self, num_timesteps: int, obs_dim: int | None, controls) -> None:
        check_scalar_data("NonlinearGrowth", obs_dim, controls)
