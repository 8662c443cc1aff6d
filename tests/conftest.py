"""Tests run in float64 (the library itself never changes JAX's global configuration).

XLA's concurrency-optimised CPU scheduler (jax 0.10.2) can deadlock on programs with many batched
LAPACK QR calls, such as the parallel Kalman filter at T ~ 1e4: every thread idles and the call
never returns. It is switched off here, before JAX starts; README says how users do the same.
"""

import os

_FLAGS = [
    "--xla_cpu_enable_concurrency_optimized_scheduler=false",
    # Most tests compile far longer than they run: LLVM's optimisation passes (which change no
    # floating-point semantics) are skipped, which takes about a sixth off the suite's time. The
    # notebooks, which run long samplers, keep the default (tests/test_notebooks.py); so do the
    # benchmarks and the demo's own command.
    "--xla_backend_optimization_level=0",
]
for _flag in _FLAGS:
    if _flag.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()

import jax  # noqa: E402


def _stamp_arviz_daily_warning() -> None:
    """ArviZ 0.23 writes a once-a-day stamp on import through one fixed temporary name, so two
    workers importing it together on a machine's first run race, and one fails with
    FileNotFoundError (seen on a fresh clone). Writing today's stamp first, atomically under a
    name of this process's own, leaves ArviZ nothing to write."""
    import datetime

    from platformdirs import user_cache_dir

    folder = user_cache_dir("arviz", "arviz")
    stamp = os.path.join(folder, "daily_warning")
    temporary = f"{stamp}.{os.getpid()}"
    try:
        os.makedirs(folder, exist_ok=True)
        with open(temporary, "w") as file:
            file.write(datetime.date.today().isoformat())
        os.replace(temporary, stamp)
    except OSError:
        pass  # a read-only cache: ArviZ then only warns


_stamp_arviz_daily_warning()
jax.config.update("jax_enable_x64", True)
# A second guard against the same hang (jax-ml/jax#25861): run CPU programs synchronously.
jax.config.update("jax_cpu_enable_async_dispatch", False)


# The longest tests (each notebook runs for one to two minutes) go first: under pytest-xdist the
# workers then finish on short tests together, instead of one running the last notebook alone.
_LONGEST_FIRST = ("tests/test_notebooks.py", "tests/test_demo.py")


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: not item.nodeid.startswith(_LONGEST_FIRST))


def pytest_runtest_teardown(item, nextitem):
    """Drop JAX's compiled programs at the end of each test file.

    Every compiled XLA CPU program holds memory maps of its own, and a worker process that
    compiled the programs of half the suite went past the kernel's limit (vm.max_map_count,
    65,530): the next compilation's mmap failed and XLA crashed the worker. Programs are rarely
    shared between files, so little is compiled twice.
    """
    if nextitem is None or nextitem.path != item.path:
        jax.clear_caches()
