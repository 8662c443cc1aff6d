"""One jit for the library's entry points."""

from __future__ import annotations

import functools
from collections.abc import Callable

import equinox as eqx
import jax

try:  # JAX has no public way to ask whether we are being traced by an outer transformation.
    from jax._src.core import trace_state_clean as _at_top_level
except ImportError:  # pragma: no cover - a JAX without it just loses the compile-time option

    def _at_top_level() -> bool:
        return False


# XLA's newer CPU fusion emitters compile our programs 2 to 2.5x more slowly for the same run time
# (parallel filter at T = 1e4 on one core: 2.7 s -> 1.2 s; the run stays at 4.8 ms). XLA asks
# LLVM for 256-bit vectors by default; where the CPU has 512-bit ones (AVX-512), preferring them
# makes the particle filter's vectorised loops (random numbers, weights) about 20% faster
# (N = 1000: 18.7 -> 14.6 ms); on CPUs without them the preference changes nothing. The options
# are per compilation, so nothing global changes, and only XLA's CPU backend reads them.
_CPU_COMPILER_OPTIONS = {"xla_cpu_use_fusion_emitters": False, "xla_cpu_prefer_vector_width": 512}


def filter_jit(fn: Callable) -> Callable:
    """`equinox.filter_jit`, compiled with `_CPU_COMPILER_OPTIONS` on the CPU backend.

    JAX accepts compiler options only on a top-level jit; inside a user's `jax.jit` or `jax.vmap`
    the function is traced into the user's program and the user's options apply.
    """
    top_level_cpu = eqx.filter_jit(fn, compiler_options=_CPU_COMPILER_OPTIONS)
    nested = eqx.filter_jit(fn)

    @functools.wraps(fn)
    def call(*args, **kwargs):
        use_options = jax.default_backend() == "cpu" and _at_top_level()
        return (top_level_cpu if use_options else nested)(*args, **kwargs)

    return call
