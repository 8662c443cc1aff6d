"""`where=`: which leaves of a model are fitted, their names, constraints and priors.

The fitted leaves travel as a tuple of nodes, in the order `where` returns them: plain arrays, or
constrained parameters (`bs.AbstractConstrained`) whose `unconstrained` array is what optimisers and
samplers move. Everything else in the model stays as it is.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from numpyro.distributions import constraints

from .._types import Scalar
from ..params import AbstractConstrained


def _is_constrained(x) -> bool:
    return isinstance(x, AbstractConstrained)


def _as_tuple(selected) -> tuple:
    return selected if isinstance(selected, tuple) else (selected,)


class Selection:
    """The leaves `where(model)` picks, checked once in Python.

    Attributes:
        names: a readable path per fitted leaf ("Q", "kernel.lengthscale").
        priors: one prior (or None) per fitted leaf.
    """

    def __init__(self, model: eqx.Module, where: Callable, priors=None):
        if not callable(where):
            raise TypeError(
                "where must be a function of the model returning the leaves to fit, "
                "e.g. where=lambda m: (m.Q, m.R)."
            )
        try:
            selected = _as_tuple(where(model))
        except (AttributeError, IndexError, KeyError, TypeError) as error:
            raise ValueError(
                f"where failed on the model: {error}. It must return leaves of the model, "
                f"e.g. where=lambda m: (m.Q, m.R); fittable leaves: {_leaf_names(model)}."
            ) from error
        if not selected:
            raise ValueError("where selected nothing: return at least one leaf of the model.")
        paths = _paths_by_identity(model)
        names = []
        for node in selected:
            name = paths.get(id(node))
            if name is None:
                raise ValueError(
                    f"where returned {_describe(node)}, which is not a fittable leaf of the model. "
                    f"Fittable leaves: {_leaf_names(model)}."
                )
            if name in names:
                raise ValueError(f"where selects {name} twice.")
            names.append(name)
        self._where = where
        self.names: tuple[str, ...] = tuple(names)
        self.priors = self._check_priors(selected, priors)

    # Compiled fits are cached on the Selection (a static argument of jit): two selections made
    # with the same `where` function and the same prior objects compile once.
    def _key(self):
        return (self._where, self.names, tuple(id(p) for p in self.priors))

    def __eq__(self, other) -> bool:
        return isinstance(other, Selection) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def where(self, model) -> tuple:
        return _as_tuple(self._where(model))

    # -- moving between a model and its fitted leaves -----------------------------------------

    def params(self, model) -> tuple:
        """The fitted nodes of `model`: a pytree whose array leaves are the unconstrained values."""
        return self.where(model)

    def rebuild(self, model, params: tuple):
        """`model` with the fitted nodes replaced by `params`."""
        return eqx.tree_at(self.where, model, params)

    def values(self, params: tuple) -> tuple:
        """The fitted leaves in their natural (constrained) space."""
        return tuple(p.value() if _is_constrained(p) else p for p in params)

    def log_abs_det_jacobian(self, params: tuple) -> Scalar:
        """Change of variables from the unconstrained arrays to the values (zero for plain ones)."""
        terms = [p.log_abs_det_jacobian() for p in params if _is_constrained(p)]
        return sum(terms, jnp.zeros(()))

    def log_prior(self, params: tuple) -> Scalar:
        """Sum of the priors' log densities at the values (leaves without a prior add nothing);
        a prior with a smaller event shape than its leaf counts the entries as independent."""
        total = jnp.zeros(())
        for prior, value in zip(self.priors, self.values(params), strict=True):
            if prior is not None:
                total = total + jnp.sum(prior.log_prob(value))
        return total

    def require_priors(self, who: str) -> None:
        missing = [n for n, p in zip(self.names, self.priors, strict=True) if p is None]
        if missing:
            raise ValueError(
                f"{who} needs a prior for every fitted leaf; none given for {', '.join(missing)}. "
                "Pass priors= with one distribution per leaf of where, in the same order."
            )

    def non_finite(self, params: tuple) -> list[str]:
        """Names of the fitted leaves whose values have NaN or inf entries (concrete params)."""
        return [
            name
            for name, value in zip(self.names, _values(self, params), strict=True)
            if not np.all(np.isfinite(np.asarray(value)))
        ]

    # -- checks ---------------------------------------------------------------------------------

    def _check_priors(self, selected: tuple, priors) -> tuple:
        if priors is None:
            return (None,) * len(selected)
        priors = _as_tuple(priors) if not isinstance(priors, list) else tuple(priors)
        if len(priors) != len(selected):
            raise ValueError(
                f"priors must give one distribution (or None) per leaf of where "
                f"({', '.join(self.names)}): got {len(priors)} for {len(selected)}."
            )
        for name, node, prior in zip(self.names, selected, priors, strict=True):
            if prior is not None:
                _check_prior(name, node, prior)
        return priors


def _check_prior(name: str, node, prior) -> None:
    if not hasattr(prior, "log_prob"):
        raise TypeError(
            f"The prior for {name} must be a distrax or numpyro distribution, got {prior!r}."
        )
    expected = node.support if _is_constrained(node) else constraints.real
    got = _support_of(prior)
    if got is None or _compatible(expected, got, node):
        return
    raise ValueError(
        f"The prior for {name} has support {_constraint_name(got)}, but {name} is "
        f"{_describe(node)} whose values lie in {_constraint_name(expected)}. Use a prior on that "
        "support, or store the leaf with a matching constraint (bs.params.Positive, Covariance, "
        "Correlation, Simplex, Stable)."
    )


def _support_of(prior):
    """The prior's support as a numpyro constraint, or None when it cannot be told."""
    support = getattr(prior, "support", None)
    if isinstance(support, constraints.Constraint):
        return support
    return _DISTRAX_SUPPORTS.get(type(prior).__name__)


# distrax distributions carry no support; the common ones, by class name.
_DISTRAX_SUPPORTS = {
    "Normal": constraints.real,
    "MultivariateNormalDiag": constraints.real_vector,
    "MultivariateNormalTri": constraints.real_vector,
    "MultivariateNormalFullCovariance": constraints.real_vector,
    "Laplace": constraints.real,
    "Logistic": constraints.real,
    "Gamma": constraints.positive,
    "LogNormal": constraints.positive,
    "Beta": constraints.unit_interval,
    "Dirichlet": constraints.simplex,
}


def _base(constraint):
    """Strip independent/event wrappers: real_vector and real_matrix are `real` underneath."""
    while isinstance(constraint, constraints.independent):
        constraint = constraint.base_constraint
    return constraint


def _compatible(expected, got, node) -> bool:
    expected, got = _base(expected), _base(got)
    if type(expected) is type(got):
        return True
    # A 1 x 1 covariance is a positive scalar.
    if type(expected) is type(constraints.positive_definite) and type(got) is type(
        constraints.positive
    ):
        return getattr(node, "shape", (None,))[-2:] == (1, 1)
    return False


def _constraint_name(constraint) -> str:
    return type(_base(constraint)).__name__.lstrip("_")


def _describe(node) -> str:
    if _is_constrained(node):
        return f"a {type(node).__name__} parameter"
    if isinstance(node, jax.Array | np.ndarray):
        return f"an unconstrained array of shape {tuple(node.shape)}"
    return f"{type(node).__name__} {node!r}"


def _paths_by_identity(model) -> dict[int, str]:
    """id(node) -> readable path, for every inexact array and constrained parameter."""
    out: dict[int, str] = {}
    leaves, _ = jax.tree_util.tree_flatten_with_path(model, is_leaf=_is_constrained)
    for path, leaf in leaves:
        fittable = _is_constrained(leaf) or (
            eqx.is_array(leaf) and jnp.issubdtype(leaf.dtype, jnp.inexact)
        )
        if fittable:
            out[id(leaf)] = jax.tree_util.keystr(path, simple=True, separator=".")
    return out


def _leaf_names(model) -> str:
    return ", ".join(_paths_by_identity(model).values())


@eqx.filter_jit
def _values(selection: Selection, params: tuple) -> tuple:
    """`selection.values` as one compiled program (eagerly it would compile one per operation)."""
    return selection.values(params)


def perturbed_starts(start: tuple, num: int, scale: float, key, keep_first: bool = False) -> tuple:
    """`num` copies of the fitted arrays stacked on a leading axis, each jittered by `scale` times
    a standard normal (copy 0 left as given when `keep_first`): restarts, or chains' starts."""
    leaves, treedef = jax.tree.flatten(start)
    if keep_first and num == 1:  # nothing to draw (and no sampler to compile)
        return jax.tree.unflatten(treedef, [leaf[None] for leaf in leaves])
    keys = jax.random.split(key, len(leaves))
    stacked = []
    for leaf, k in zip(leaves, keys, strict=True):
        noise = jax.random.normal(k, (num, *leaf.shape), leaf.dtype)
        if keep_first:
            noise = noise.at[0].set(0.0)
        stacked.append(leaf[None] + scale * noise)
    return jax.tree.unflatten(treedef, stacked)
