"""Tests run in float64 (the library itself never changes JAX's global configuration)."""

import jax

jax.config.update("jax_enable_x64", True)
