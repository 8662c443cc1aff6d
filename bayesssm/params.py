r"""Constrained parameters: stored so that unconstrained optimisation and sampling keep them valid.

A constrained leaf is an `equinox.Module` whose one array field, `unconstrained`, is a *minimal*
real array (other fields, such as `Interval`'s bounds, are static): every real value is valid and
no entry is ignored, so an optimiser may step anywhere and a sampler (NUTS) sees no flat
directions. Its `bijector` (a `distrax.Bijector`) maps `unconstrained` to the constrained value,
and `log_abs_det_jacobian()` is the change-of-variables term that a density over `unconstrained`
adds to the log prior of the value:

$$\log p(u) = \log p_\text{prior}(f(u))
    + \log\left|\det \frac{\partial\, \mathrm{free}(f(u))}{\partial u}\right|.$$

| leaf | one value | `unconstrained` | free coordinates of the value |
|---|---|---|---|
| `Positive` | $x > 0$ (any shape) | $\log x$ (same shape) | $x$ |
| `Interval` | $a < x < b$ (any shape) | $\log\frac{x - a}{b - x}$ (same shape) | $x$ |
| `Covariance` | $(n, n)$ positive definite | $(n(n+1)/2,)$ | lower triangle with the diagonal |
| `Correlation` | $(n, n)$ correlation matrix | $(n(n-1)/2,)$ | strict lower triangle |
| `Simplex` | $(K,)$ probabilities | $(K-1,)$ | the first $K-1$ entries |
| `Stable` | $(n, n)$ with $\|A\|_2 < 1$ | $(n, n)$ | all entries |

Every leaf also takes leading batch axes (for example a time axis) in front of these shapes.
Lower triangles are packed row by row, in the order of `numpy.tril_indices(n)`.

`unwrap` replaces every constrained leaf of a pytree by its value, so `bs.unwrap(model).Q` is the
plain covariance matrix while `model.Q` is what an optimiser updates.
"""

from __future__ import annotations

import abc
import functools
import math
from typing import ClassVar, Self

import distrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from numpyro.distributions import constraints

from ._checks import check_covariance, is_concrete
from ._types import Array, ArrayLike, Float, Scalar

# -- helpers ------------------------------------------------------------------------------------


def _float_array(x: ArrayLike) -> Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    return x


def _safe_log(x: Array) -> Array:
    # log of a non-negative array, with 0 sent to log(smallest normal float) of its dtype: exp()
    # of it is positive again, so boundary values (a zero variance or probability) stay finite.
    return jnp.log(jnp.maximum(x, jnp.finfo(x.dtype).tiny))


def _triangle_side(length: int, *, strict: bool, owner: str) -> int:
    """n such that `length` = n(n+1)/2 (`strict`: n(n-1)/2)."""
    m = int(round((np.sqrt(8 * length + 1) - 1) / 2))
    if m * (m + 1) // 2 != length:
        what = "n(n-1)/2" if strict else "n(n+1)/2"
        raise ValueError(
            f"{owner}.unconstrained must have a last axis of length {what} (a packed triangle of "
            f"an (n, n) matrix), got {length}. Build it with {owner}.from_value."
        )
    return m + 1 if strict else m


@functools.cache
def _gather_index(n: int, strict: bool) -> np.ndarray:
    """(n, n) positions into the packed vector; entries outside the triangle point one past its
    end, where `_fill_lower` appends a zero."""
    rows, cols = np.tril_indices(n, -1 if strict else 0)
    index = np.full((n, n), len(rows), dtype=np.int32)
    index[rows, cols] = np.arange(len(rows))
    return index


def _fill_lower(packed: Array, n: int, *, strict: bool) -> Array:
    """(..., k) packed row by row -> (..., n, n) lower-triangular."""
    # A gather rather than a scatter: cheaper on accelerators, and its gradient is a plain sum.
    zero = jnp.zeros(packed.shape[:-1] + (1,), packed.dtype)
    return jnp.concatenate([packed, zero], axis=-1)[..., _gather_index(n, strict)]


def _pack_lower(matrix: Array, *, strict: bool) -> Array:
    """(..., n, n) -> (..., k), the lower triangle row by row."""
    rows, cols = np.tril_indices(matrix.shape[-1], -1 if strict else 0)
    return matrix[..., rows, cols]


def _diagonal_positions(n: int) -> np.ndarray:
    """Where (i, i) sits in a packed lower triangle with diagonal: i(i+1)/2 + i."""
    i = np.arange(n)
    return i * (i + 3) // 2


def _eye_like(x: Array) -> Array:
    return jnp.eye(x.shape[-1], dtype=x.dtype)


def _transpose(x: Array) -> Array:
    return jnp.swapaxes(x, -1, -2)


def _fail(cls, message: str):
    raise ValueError(f"{cls.__name__}.from_value: {message}")


def _check_square(cls, name: str, value: Array) -> None:
    if value.ndim < 2 or value.shape[-1] != value.shape[-2]:
        raise ValueError(
            f"{cls.__name__}: {name} must be a square matrix (..., n, n), got shape {value.shape}."
        )


def _check_finite(cls, name: str, value: Array) -> None:
    if is_concrete(value) and not np.all(np.isfinite(np.asarray(value))):
        raise ValueError(f"{cls.__name__}: {name} has non-finite entries (NaN or inf).")


# -- bijectors ----------------------------------------------------------------------------------


class _Bijector(distrax.Bijector):
    """Shared plumbing: subclasses give `forward`, `inverse` and `forward_log_det_jacobian`.

    None of these bijectors has parameters (sizes come from the input's shape), so two of the same
    class are the same map.
    """

    def forward_and_log_det(self, x: Array) -> tuple[Array, Array]:
        return self.forward(x), self.forward_log_det_jacobian(x)

    def inverse_and_log_det(self, y: Array) -> tuple[Array, Array]:
        x = self.inverse(y)
        return x, -self.forward_log_det_jacobian(x)

    def inverse_log_det_jacobian(self, y: Array) -> Array:
        return -self.forward_log_det_jacobian(self.inverse(y))

    def same_as(self, other: distrax.Bijector) -> bool:
        return type(other) is type(self)


class ExpBijector(_Bijector):
    r"""Elementwise $x \mapsto e^x$; $\log|\det J| = \sum x$ (per element here, event rank 0)."""

    def __init__(self):
        super().__init__(event_ndims_in=0)

    def forward(self, x: Array) -> Array:
        return jnp.exp(x)

    def inverse(self, y: Array) -> Array:
        return _safe_log(y)

    def forward_log_det_jacobian(self, x: Array) -> Array:
        return x


class IntervalBijector(_Bijector):
    r"""Elementwise $u \mapsto a + (b - a)\,\sigma(u)$ onto $(a, b)$, $\sigma$ the logistic
    sigmoid; $\log|\det J| = \log(b - a) - \operatorname{softplus}(u) - \operatorname{softplus}(-u)$
    (per element, event rank 0).

    For $(a, b) = (-1, 1)$ this is $\tanh(u / 2)$. The value is computed from the nearer bound
    ($b - (b - a)\,\sigma(-u)$ for $u > 0$), so that the small distance to that bound is exact
    before the one final rounding, and it is clipped to the open interval: where $|u|$ is so large
    that the value would round onto a bound (about $|u| > 17$ in float32, $37$ in float64), it is
    the float next to the bound instead, with zero derivative.

    Args:
        low: $a$, a finite Python float.
        high: $b > a$, a finite Python float.
    """

    def __init__(self, low: float, high: float):
        super().__init__(event_ndims_in=0)
        self.low = float(low)
        self.high = float(high)

    @property
    def _width(self) -> float:
        return self.high - self.low

    def forward(self, x: Array) -> Array:
        from_low = self.low + self._width * jax.nn.sigmoid(x)
        from_high = self.high - self._width * jax.nn.sigmoid(-x)
        y = jnp.where(x < 0, from_low, from_high)
        low, high = jnp.asarray(self.low, y.dtype), jnp.asarray(self.high, y.dtype)
        return jnp.clip(y, jnp.nextafter(low, high), jnp.nextafter(high, low))

    def inverse(self, y: Array) -> Array:
        # Each difference is exact near its bound (Sterbenz's lemma), so a value close to a bound
        # keeps its distance to it; a value on a bound maps to -inf or +inf.
        return jnp.log(y - self.low) - jnp.log(self.high - y)

    def forward_log_det_jacobian(self, x: Array) -> Array:
        return math.log(self._width) - jax.nn.softplus(x) - jax.nn.softplus(-x)

    def same_as(self, other: distrax.Bijector) -> bool:
        return type(other) is type(self) and (other.low, other.high) == (self.low, self.high)


class CovarianceBijector(_Bijector):
    r"""Packed log-Cholesky vector $(\dots, n(n+1)/2)$ -> covariance $L L^\top$ $(\dots, n, n)$.

    $L$'s lower triangle is packed row by row with $\log L_{ii}$ in place of $L_{ii}$. The
    log-determinant is taken with respect to the lower triangle of $\Sigma = L L^\top$: ordering
    $\Sigma_{ij}$ ($i \ge j$) with $L_{ij}$ makes $\partial \Sigma / \partial L$ triangular with
    diagonal $2 L_{ii}$ (for $i = j$) and $L_{jj}$ (for $i > j$), and $L_{jj} = e^{u_{jj}}$ adds
    one more factor $L_{jj}$, so (0-based $j$)
    $$\log|\det J| = n \log 2 + \sum_j (n + 1 - j)\, u_{jj}.$$
    """

    def __init__(self):
        super().__init__(event_ndims_in=1, event_ndims_out=2)

    def forward(self, x: Array) -> Array:
        chol = _log_cholesky_to_cholesky(x)
        return chol @ _transpose(chol)

    def inverse(self, y: Array) -> Array:
        return _cholesky_to_log_cholesky(psd_cholesky(y))

    def forward_log_det_jacobian(self, x: Array) -> Array:
        n = _triangle_side(x.shape[-1], strict=False, owner="Covariance")
        weights = np.arange(n + 1, 1, -1).astype(x.dtype)
        return n * float(np.log(2.0)) + jnp.sum(x[..., _diagonal_positions(n)] * weights, axis=-1)


class CorrelationBijector(_Bijector):
    r"""Packed vector $(\dots, n(n-1)/2)$ -> correlation matrix $(\dots, n, n)$.

    The vector fills the strict lower triangle of $Z$ (with $Z_{ii} = 1$); each row of $Z$ is
    divided by its norm $s_i = \sqrt{1 + |x_i|^2}$, giving the Cholesky factor $L$ of a
    correlation matrix (unit rows, positive diagonal $1/s_i$), and $C = L L^\top$. This is the
    map of TFP's `CorrelationCholesky`, followed by the outer product.

    The log-determinant is taken with respect to the strict lower triangle of $C$. Row $i$'s
    map $x_i \mapsto x_i / s_i$ has determinant $s_i^{-(i+2)}$; the strict lower triangle of
    $L L^\top$ with unit rows depends on $L$'s row $i$ through $C_{ij} = \sum_{k \le j} L_{ik}
    L_{jk}$ only, a triangular Jacobian with diagonal $L_{jj} = 1/s_j$ ($n - 1 - j$ times).
    Together (0-based rows; row 0 is empty):
    $$\log|\det J| = -\frac{n+1}{2} \sum_i \log(1 + |x_i|^2).$$

    References:
        Lewandowski, Kurowicka, Joe (2009), Generating random correlation matrices based on
        vines and extended onion method. J. Multivariate Analysis 100(9).
    """

    def __init__(self):
        super().__init__(event_ndims_in=1, event_ndims_out=2)

    def forward(self, x: Array) -> Array:
        chol = _correlation_cholesky(x)
        corr = chol @ _transpose(chol)
        # Exactly symmetric with an exactly unit diagonal (they hold up to rounding anyway).
        corr = 0.5 * (corr + _transpose(corr))
        return jnp.where(jnp.eye(corr.shape[-1], dtype=bool), jnp.ones((), x.dtype), corr)

    def inverse(self, y: Array) -> Array:
        chol = jnp.linalg.cholesky(y)
        diag = jnp.diagonal(chol, axis1=-2, axis2=-1)
        # Row i of the factor divided by L_ii undoes the normalisation (and any row scaling).
        return _pack_lower(chol / diag[..., :, None], strict=True)

    def forward_log_det_jacobian(self, x: Array) -> Array:
        n = _triangle_side(x.shape[-1], strict=True, owner="Correlation")
        strict = _fill_lower(x, n, strict=True)
        return -0.5 * (n + 1) * jnp.sum(jnp.log1p(jnp.sum(strict * strict, axis=-1)), axis=-1)


class SimplexBijector(_Bijector):
    r"""$(\dots, K-1)$ reals -> $(\dots, K)$ probabilities, $p = \mathrm{softmax}(x_1, \dots,
    x_{K-1}, 0)$ (the inverse additive log-ratio map; $x_k = \log p_k - \log p_K$).

    With respect to the first $K-1$ entries, $J = \mathrm{diag}(p') - p' p'^\top$ with
    $p' = (p_1, \dots, p_{K-1})$, so $\det J = \prod_{k=1}^{K-1} p_k \, (1 - \sum p') =
    \prod_{k=1}^{K} p_k$ and $\log|\det J| = \sum_{k=1}^K \log p_k$.
    """

    def __init__(self):
        super().__init__(event_ndims_in=1)

    def forward(self, x: Array) -> Array:
        return jax.nn.softmax(_simplex_logits(x), axis=-1)

    def inverse(self, y: Array) -> Array:
        # Differences of logs: a probability vector off by a common factor maps to the same x.
        log_p = _safe_log(y)
        return log_p[..., :-1] - log_p[..., -1:]

    def forward_log_det_jacobian(self, x: Array) -> Array:
        # log_softmax, not log(softmax): stays finite when a probability underflows.
        return jnp.sum(jax.nn.log_softmax(_simplex_logits(x), axis=-1), axis=-1)


class ContractionBijector(_Bijector):
    r"""Real $S$ $(\dots, n, n)$ -> strict contraction $A = L^{-1} S$, $L L^\top = I + S S^\top$.

    $A A^\top = I - (L^\top L)^{-1} \prec I$, so $\|A\|_2 < 1$; the map is onto the strict
    contractions, with inverse $S = C^{-1} A$ where $C C^\top = I - A A^\top$ ($C = L^{-1}$).

    Row $i$ of $A$ depends on rows $0..i$ of $S$ only, so the Jacobian is block-triangular. With
    the earlier rows held fixed, $a_i = M s_i / \sqrt{1 + s_i^\top M s_i}$ where
    $M = I - A_{<i}^\top A_{<i}$ and $L_{ii}^2 = 1 + s_i^\top M s_i$; that block has determinant
    $\det M \, L_{ii}^{-(n+2)}$ and $\det M = \prod_{k<i} L_{kk}^{-2}$. Summing (0-based $i$):
    $$\log|\det J| = -\sum_i (3n - 2i) \log L_{ii}.$$
    """

    def __init__(self):
        super().__init__(event_ndims_in=2)

    def forward(self, x: Array) -> Array:
        return _contraction(x)[0]

    def inverse(self, y: Array) -> Array:
        chol = jnp.linalg.cholesky(_eye_like(y) - y @ _transpose(y))
        return jax.scipy.linalg.solve_triangular(chol, y, lower=True)

    def forward_log_det_jacobian(self, x: Array) -> Array:
        return _contraction_log_det(_contraction(x)[1])

    def forward_and_log_det(self, x: Array) -> tuple[Array, Array]:
        a, chol = _contraction(x)  # one factorisation for both
        return a, _contraction_log_det(chol)


def _log_cholesky_to_cholesky(packed: Array) -> Array:
    n = _triangle_side(packed.shape[-1], strict=False, owner="Covariance")
    on_diagonal = np.zeros(packed.shape[-1], dtype=bool)
    on_diagonal[_diagonal_positions(n)] = True
    # exp() of the diagonal entries only: an off-diagonal entry that would overflow exp() must not
    # reach it, or its (unused) infinite derivative turns the gradient into NaN.
    exp_diagonal = jnp.exp(jnp.where(on_diagonal, packed, 0.0))
    return _fill_lower(jnp.where(on_diagonal, exp_diagonal, packed), n, strict=False)


def _cholesky_to_log_cholesky(chol: Array) -> Array:
    diag = jnp.diagonal(chol, axis1=-2, axis2=-1)
    # Flipping a column's sign leaves L L^T unchanged: make every pivot non-negative first.
    chol = chol * jnp.where(diag < 0, -1.0, 1.0).astype(chol.dtype)[..., None, :]
    eye = jnp.eye(chol.shape[-1], dtype=bool)
    return _pack_lower(jnp.where(eye, _safe_log(jnp.abs(diag))[..., None, :], chol), strict=False)


def _correlation_cholesky(packed: Array) -> Array:
    n = _triangle_side(packed.shape[-1], strict=True, owner="Correlation")
    z = _fill_lower(packed, n, strict=True) + jnp.eye(n, dtype=packed.dtype)
    # Row norms are >= 1 (the unit diagonal), so the division is always safe.
    return z / jnp.sqrt(jnp.sum(z * z, axis=-1, keepdims=True))


def _simplex_logits(x: Array) -> Array:
    return jnp.concatenate([x, jnp.zeros(x.shape[:-1] + (1,), x.dtype)], axis=-1)


def _contraction(s: Array) -> tuple[Array, Array]:
    chol = jnp.linalg.cholesky(_eye_like(s) + s @ _transpose(s))
    return jax.scipy.linalg.solve_triangular(chol, s, lower=True), chol


def _contraction_log_det(chol: Array) -> Array:
    n = chol.shape[-1]
    weights = (3 * n - 2 * np.arange(n)).astype(chol.dtype)
    return -jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)) * weights, axis=-1)


# -- leaves -------------------------------------------------------------------------------------


class AbstractConstrained(eqx.Module):
    """A parameter stored as a minimal unconstrained real array.

    Subclasses hold exactly one array field, `unconstrained` (any other field is static, part of
    the tree structure, as `Interval`'s bounds are), and say how it maps to the value
    (`bijector`), which set the value lives in (`support`, a numpyro constraint, so that a prior's
    support can be checked against it), and how many trailing axes one value has (`event_ndim`;
    any axes in front are batch axes).
    """

    unconstrained: eqx.AbstractVar[Array]
    support: eqx.AbstractClassVar[constraints.Constraint]
    event_ndim: eqx.AbstractClassVar[int]

    @property
    @abc.abstractmethod
    def bijector(self) -> distrax.Bijector:
        """The map from `unconstrained` to the value, with its log-determinant."""

    @property
    @abc.abstractmethod
    def shape(self) -> tuple[int, ...]:
        """Shape of `value()` (batch axes first), read off `unconstrained` without computing it."""

    @classmethod
    @abc.abstractmethod
    def from_value(cls, value: ArrayLike) -> Self:
        """The leaf whose `value()` is `value`; raises ValueError if `value` is outside the support.

        Checks run when `value` is concrete (not under `jax.jit`).
        """

    @property
    def ndim(self) -> int:
        """Number of axes of `value()`."""
        return len(self.shape)

    @property
    def batch_shape(self) -> tuple[int, ...]:
        """The leading axes of `value()` in front of one value's `event_ndim` axes."""
        return self.shape[: self.ndim - self.event_ndim]

    def value(self) -> Array:
        """The parameter in its natural (constrained) space, of shape `shape`."""
        return self.bijector.forward(self.unconstrained)

    def log_abs_det_jacobian(self) -> Scalar:
        r"""$\log|\det \partial\,\mathrm{free}(\text{value}) / \partial\,\text{unconstrained}|$,
        summed over batch axes.

        The free coordinates of the value are the entries that determine it (see the module
        docstring). A density over `unconstrained` is `log_prior(value()) +
        log_abs_det_jacobian()`.
        """
        return jnp.sum(self.bijector.forward_log_det_jacobian(self.unconstrained))


class Positive(AbstractConstrained):
    r"""Positive numbers $x = e^u$, of any shape.

    `exp` rather than softplus: the parameters that must be positive here (variances, scales,
    length-scales, rates) are scale parameters that may span orders of magnitude, and with $u =
    \log x$ a step in $u$ is a relative change in $x$ whatever its units, which suits both
    optimisers and NUTS's step size. The log-determinant is simply $\sum u$; softplus is linear for
    large $x$, so it would give large values tiny relative steps. It matches `Covariance`'s
    log-diagonal.

    Build it with `Positive.from_value`; `unconstrained` has the value's shape.
    """

    unconstrained: Float[Array, "*shape"]
    support: ClassVar[constraints.Constraint] = constraints.positive
    event_ndim: ClassVar[int] = 0

    @property
    def bijector(self) -> distrax.Bijector:
        return ExpBijector()

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(np.shape(self.unconstrained))

    @classmethod
    def from_value(cls, value: ArrayLike) -> Positive:
        """From positive numbers (of any shape).

        A zero is accepted as a boundary value: it is stored as the log of the smallest normal
        float, so `value()` gives back that tiny positive number rather than 0.
        """
        value = _float_array(value)
        _check_finite(cls, "value", value)
        if is_concrete(value) and np.any(np.asarray(value) < 0):
            _fail(cls, "value must be positive, but it has negative entries.")
        return cls(ExpBijector().inverse(value))


def _bound(value) -> float:
    """A bound of `Interval`: a finite Python float (static, part of the tree structure)."""
    if isinstance(value, jax.core.Tracer):
        raise ValueError(
            "Interval: low and high are fixed (static) Python floats and cannot be traced; to fit "
            "the bounds themselves, build the model's parameters from plain arrays instead."
        )
    if np.shape(value) != ():
        raise ValueError(f"Interval: low and high must be scalars, got shape {np.shape(value)}.")
    bound = float(value)
    if not math.isfinite(bound):
        raise ValueError(
            f"Interval: low and high must be finite numbers, got {bound!r}; for a half-line use "
            "Positive (for x > a, store x - a)."
        )
    return bound


class Interval(AbstractConstrained):
    r"""Numbers in an open interval, $a < x < b$, of any shape: $x = a + (b - a)\,\sigma(u)$.

    `unconstrained` is $u = \operatorname{logit}\frac{x - a}{b - a} = \log\frac{x - a}{b - x}$,
    of the value's shape; $u = 0$ is the midpoint. The default $(a, b) = (-1, 1)$ suits
    autoregressive coefficients and correlations, where $x = \tanh(u / 2)$. The log-determinant
    is $\log(b - a) + \log\sigma(u) + \log\sigma(-u)$ per entry, computed with softplus so that
    it stays finite for any $u$ (see `IntervalBijector`, also for how values next to a bound are
    kept inside).

    The bounds `low` and `high` are static Python floats (part of the tree structure, not
    parameters): `unconstrained` stays the one array leaf, so optimisers, samplers and `jax.vmap`
    see only it. `support` is numpyro's `constraints.interval(low, high)`.

    Build it with `Interval.from_value(value, low=-1.0, high=1.0)`.

    Args:
        unconstrained: $u$, real numbers of any shape.
        low: $a$, a finite number (default -1).
        high: $b > a$, a finite number (default 1).
    """

    unconstrained: Float[Array, "*shape"]
    low: float = eqx.field(static=True, default=-1.0, converter=_bound)
    high: float = eqx.field(static=True, default=1.0, converter=_bound)
    event_ndim: ClassVar[int] = 0

    def __check_init__(self):
        if not self.low < self.high:
            raise ValueError(
                f"Interval: low must be smaller than high, got low={self.low!r}, "
                f"high={self.high!r}."
            )

    @property
    def support(self) -> constraints.Constraint:
        return constraints.interval(self.low, self.high)

    # The base class asks for a class variable; the support depends on the bounds, so it is the
    # property above (an instance's `support` is what prior checks read), declared as ClassVar so
    # that it is no dataclass field.
    support: ClassVar[constraints.Constraint]

    @property
    def bijector(self) -> distrax.Bijector:
        return IntervalBijector(self.low, self.high)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(np.shape(self.unconstrained))

    @classmethod
    def from_value(cls, value: ArrayLike, low: float = -1.0, high: float = 1.0) -> Interval:
        """From numbers strictly between `low` and `high` (of any shape).

        A value on a bound is refused: it lies infinitely far away in the unconstrained space
        (and for an autoregressive coefficient of +-1 the process is not stationary).

        Args:
            value: the numbers, any shape.
            low: the lower bound, a finite number.
            high: the upper bound, a finite number larger than `low`.
        """
        low, high = _bound(low), _bound(high)
        if not low < high:
            _fail(cls, f"low must be smaller than high, got low={low!r}, high={high!r}.")
        value = _float_array(value)
        _check_finite(cls, "value", value)
        if is_concrete(value):
            v = np.asarray(value)
            outside = ~((v > low) & (v < high))
            if np.any(outside):
                first = float(v[outside].flat[0])
                _fail(
                    cls,
                    f"value must lie strictly inside ({low!r}, {high!r}), but it has the entry "
                    f"{first!r}; values on a bound are infinitely far away in the unconstrained "
                    "space.",
                )
        return cls(IntervalBijector(low, high).inverse(value), low=low, high=high)


class Covariance(AbstractConstrained):
    r"""A covariance matrix $\Sigma = L L^\top$ stored as the packed log-Cholesky factor.

    `unconstrained` has shape $(\dots, n(n+1)/2)$: the lower triangle of $L$ row by row (in the
    order of `numpy.tril_indices(n)`), with $\log L_{ii}$ in place of $L_{ii}$. Any real vector is
    a valid covariance and every entry counts. Leading batch axes (for example a time axis) are
    allowed.

    Build it with `Covariance.from_matrix`, `Covariance.from_cholesky` or `Covariance.from_value`.
    A singular matrix is accepted: a zero pivot is stored as the log of the smallest normal float,
    so `unconstrained` stays finite and `value()` gives the matrix back up to that tiny amount.
    """

    unconstrained: Float[Array, "*batch k"]
    support: ClassVar[constraints.Constraint] = constraints.positive_definite
    event_ndim: ClassVar[int] = 2

    @property
    def bijector(self) -> distrax.Bijector:
        return CovarianceBijector()

    @property
    def shape(self) -> tuple[int, ...]:
        batch, length = _split_last(self, self.unconstrained)
        n = _triangle_side(length, strict=False, owner="Covariance")
        return batch + (n, n)

    @classmethod
    def from_cholesky(cls, chol: ArrayLike) -> Covariance:
        r"""From a lower-triangular factor $L$, $(\dots, n, n)$ (a column with a negative or zero
        pivot is allowed: its sign is flipped, which leaves $L L^\top$ unchanged)."""
        chol = _float_array(chol)
        _check_square(cls, "chol", chol)
        _check_finite(cls, "chol", chol)
        if is_concrete(chol) and np.any(np.triu(np.asarray(chol), 1) != 0):
            raise ValueError(
                "Covariance.from_cholesky: chol must be lower-triangular, but its strict upper "
                "triangle has non-zero entries. Pass the full matrix to Covariance.from_matrix."
            )
        return cls(_cholesky_to_log_cholesky(chol))

    @classmethod
    def from_matrix(cls, matrix: ArrayLike) -> Covariance:
        r"""From a symmetric positive semi-definite matrix $(\dots, n, n)$; a singular one is
        allowed.

        No value checks: the matrix is symmetrised and tiny negative eigenvalues (rounding) are
        clipped to zero. Use `from_value` to have the matrix checked.
        """
        matrix = _float_array(matrix)
        _check_square(cls, "matrix", matrix)
        return cls(CovarianceBijector().inverse(matrix))

    @classmethod
    def from_value(cls, value: ArrayLike) -> Covariance:
        r"""From a symmetric positive semi-definite matrix $(\dots, n, n)$, checked (finite,
        symmetric, no negative eigenvalue beyond rounding); a singular one is allowed."""
        value = _float_array(value)
        check_covariance("value", value)
        return cls.from_matrix(value)

    @property
    def cholesky(self) -> Float[Array, "*batch n n"]:
        """Lower-triangular factor with positive diagonal."""
        return _log_cholesky_to_cholesky(self.unconstrained)


class Correlation(AbstractConstrained):
    r"""A correlation matrix (unit diagonal, positive definite) from $n(n-1)/2$ reals.

    `unconstrained` $(\dots, n(n-1)/2)$ fills the strict lower triangle (row by row) of a matrix
    with unit diagonal; each row is normalised to unit length, which gives the Cholesky factor
    $L$ of the correlation matrix $L L^\top$ (see `CorrelationBijector`). Entry $x_{ij}$ is
    $L_{ij} / L_{ii}$, so $x = 0$ is the identity.

    Build it with `Correlation.from_value`.
    """

    unconstrained: Float[Array, "*batch k"]
    support: ClassVar[constraints.Constraint] = constraints.corr_matrix
    event_ndim: ClassVar[int] = 2

    @property
    def bijector(self) -> distrax.Bijector:
        return CorrelationBijector()

    @property
    def shape(self) -> tuple[int, ...]:
        batch, length = _split_last(self, self.unconstrained)
        n = _triangle_side(length, strict=True, owner="Correlation")
        return batch + (n, n)

    @classmethod
    def from_value(cls, value: ArrayLike) -> Correlation:
        r"""From a positive-definite correlation matrix $(\dots, n, n)$.

        A singular one (a correlation of $\pm 1$) lies on the boundary, infinitely far away in
        the unconstrained space, and is refused.
        """
        value = _float_array(value)
        _check_square(cls, "value", value)
        _check_finite(cls, "value", value)
        if is_concrete(value):
            v = np.asarray(value, dtype=np.float64)
            tol = np.sqrt(np.finfo(value.dtype).eps)
            if not np.allclose(np.diagonal(v, axis1=-2, axis2=-1), 1.0, rtol=0, atol=tol):
                _fail(cls, "value must have a unit diagonal (it is a correlation matrix).")
            if not np.allclose(v, np.swapaxes(v, -1, -2), rtol=0, atol=tol):
                _fail(cls, "value must be symmetric.")
            _require_positive_definite(cls, v)
        return cls(CorrelationBijector().inverse(value))

    @property
    def cholesky(self) -> Float[Array, "*batch n n"]:
        """Lower-triangular factor with positive diagonal and unit-length rows."""
        return _correlation_cholesky(self.unconstrained)


class Simplex(AbstractConstrained):
    r"""$K$ probabilities (non-negative, summing to one) from $K - 1$ reals.

    $p = \mathrm{softmax}(u_1, \dots, u_{K-1}, 0)$, so $u_k = \log(p_k / p_K)$ (the additive
    log-ratio); $u = 0$ is the uniform distribution. Chosen over stick-breaking for its closed
    forms: the log-determinant is $\sum_k \log p_k$, computed stably by `log_softmax`.

    Build it with `Simplex.from_value`. A zero probability is accepted as a boundary value: it is
    stored as a ratio to the smallest normal float, so `value()` gives back a tiny positive number.
    """

    unconstrained: Float[Array, "*batch K-1"]
    support: ClassVar[constraints.Constraint] = constraints.simplex
    event_ndim: ClassVar[int] = 1

    @property
    def bijector(self) -> distrax.Bijector:
        return SimplexBijector()

    @property
    def shape(self) -> tuple[int, ...]:
        batch, length = _split_last(self, self.unconstrained)
        return batch + (length + 1,)

    @classmethod
    def from_value(cls, value: ArrayLike) -> Simplex:
        r"""From probability vectors $(\dots, K)$, $K \ge 1$; the sum must be one to within the
        square root of machine precision (the result is renormalised)."""
        value = _float_array(value)
        if value.ndim < 1 or value.shape[-1] < 1:
            _fail(cls, f"value must have shape (..., K) with K >= 1, got {value.shape}.")
        _check_finite(cls, "value", value)
        if is_concrete(value):
            v = np.asarray(value, dtype=np.float64)
            if np.any(v < 0):
                _fail(cls, "value must be non-negative (probabilities).")
            tol = np.sqrt(np.finfo(value.dtype).eps)
            total = v.sum(axis=-1)
            if not np.allclose(total, 1.0, rtol=0, atol=tol):
                worst = float(total.flat[np.argmax(np.abs(total - 1.0))])
                _fail(cls, f"value must sum to one over its last axis, but a sum is {worst!r}.")
        return cls(SimplexBijector().inverse(value))


class Stable(AbstractConstrained):
    r"""A square matrix with spectral norm $\|A\|_2 < 1$, hence stable (spectral radius $< 1$).

    $A = L^{-1} S$ with $L L^\top = I + S S^\top$ ($L$ the Cholesky factor), from any real
    $S$ = `unconstrained`, $(\dots, n, n)$. This reaches exactly the strict contractions, a
    subset of the stable matrices: a stable transition matrix with $\|A\|_2 \ge 1$ (for example
    a strongly non-normal one) cannot be represented; keep such a matrix as a plain array.

    `support` is numpyro's `constraints.real_matrix`, the closest set numpyro has; the values are
    the stricter set of contractions. A prior given on real matrices is thereby truncated to that
    set (its normalising constant changes, which MCMC does not need).

    Build it with `Stable.from_value`. $S = 0$ is $A = 0$.
    """

    unconstrained: Float[Array, "*batch n n"]
    support: ClassVar[constraints.Constraint] = constraints.real_matrix
    event_ndim: ClassVar[int] = 2

    @property
    def bijector(self) -> distrax.Bijector:
        return ContractionBijector()

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(np.shape(self.unconstrained))

    @classmethod
    def from_value(cls, value: ArrayLike) -> Stable:
        r"""From square matrices $(\dots, n, n)$ with spectral norm (largest singular value) < 1."""
        value = _float_array(value)
        _check_square(cls, "value", value)
        _check_finite(cls, "value", value)
        concrete = is_concrete(value)
        if concrete and value.size:
            norm = float(np.max(np.linalg.norm(np.asarray(value), ord=2, axis=(-2, -1))))
            if norm >= 1.0:
                _fail(
                    cls,
                    f"value must have spectral norm (largest singular value) < 1, got {norm:.6g}. "
                    "Stable represents only strict contractions, a subset of the stable matrices "
                    "(spectral radius < 1); keep a matrix outside it as a plain array.",
                )
        unconstrained = ContractionBijector().inverse(value)
        if concrete and not np.all(np.isfinite(np.asarray(unconstrained))):
            _fail(
                cls,
                "value's spectral norm is too close to 1 to be inverted in this precision "
                f"({value.dtype}); move it slightly inside the unit ball.",
            )
        return cls(unconstrained)


def _split_last(leaf: AbstractConstrained, unconstrained) -> tuple[tuple[int, ...], int]:
    shape = tuple(np.shape(unconstrained))
    if not shape:
        raise ValueError(
            f"{type(leaf).__name__}.unconstrained must have at least one axis, got a scalar."
        )
    return shape[:-1], shape[-1]


def _require_positive_definite(cls, matrix: np.ndarray) -> None:
    try:
        np.linalg.cholesky(matrix)
    except np.linalg.LinAlgError:
        _fail(
            cls,
            "value must be positive definite; a singular one (for example a correlation of +-1) "
            "lies on the boundary and has no unconstrained value.",
        )


def psd_cholesky(matrix: Float[Array, "*batch n n"]) -> Float[Array, "*batch n n"]:
    """Cholesky factor of a PSD matrix that may be singular (where plain Cholesky gives NaN).

    Falls back to a symmetric eigen-square-root triangularised by QR, which is exact for singular
    matrices; the result has a non-negative diagonal.
    """
    matrix = 0.5 * (matrix + jnp.swapaxes(matrix, -1, -2))
    chol = jnp.linalg.cholesky(matrix)

    def from_eigh(m):
        w, v = jnp.linalg.eigh(m)
        root = v * jnp.sqrt(jnp.maximum(w, 0.0))[..., None, :]
        r = jnp.linalg.qr(jnp.swapaxes(root, -1, -2), mode="r")
        lower = jnp.swapaxes(r, -1, -2)
        sign = jnp.where(jnp.diagonal(lower, axis1=-2, axis2=-1) < 0, -1.0, 1.0)
        return lower * sign[..., None, :]

    ok = jnp.all(jnp.isfinite(chol), axis=(-2, -1), keepdims=True)
    # Both branches are evaluated. Where Cholesky succeeds the fallback gets a matrix with
    # distinct eigenvalues: eigh's derivative is NaN at repeated ones (every periodic kernel's
    # P_inf has them), and a NaN would leak through the unselected branch into gradients.
    distinct = jnp.diag(jnp.arange(1, matrix.shape[-1] + 1, dtype=matrix.dtype))
    return jnp.where(ok, chol, from_eigh(jnp.where(ok, distinct, matrix)))


def _is_constrained(x) -> bool:
    return isinstance(x, AbstractConstrained)


def unwrap(tree):
    """Replace every constrained leaf in `tree` by its plain value.

    Example:
        >>> Q_hat = bs.unwrap(fitted).Q   # a (D, D) matrix, not a Covariance
    """
    return jax.tree.map(
        lambda x: x.value() if _is_constrained(x) else x, tree, is_leaf=_is_constrained
    )
