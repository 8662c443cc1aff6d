#!/usr/bin/env bash
# The benchmarks on a lent GPU machine, in one call (docs/benchmarks.md, "GPU").
#
# That machine has its own Python (3.12) with JAX for CUDA, equinox, optax, numpyro, diffrax and
# statsmodels, and no network: the rest travels as wheels in .whl/ (see docs/benchmarks.md for the
# `pip download` line). Each benchmark runs with all cores and under its own time limit, so
# that one slow peer cannot starve the others; its output goes to $OUT/<name>.txt as it comes.
#
#   bash bench/device.sh                 # on the device machine, from the repository root
#   SKIP_INSTALL=1 PYTHON=.venv/bin/python OUT=/tmp/out bash bench/device.sh   # a dry run here
set -u
PYTHON=${PYTHON:-python3}
OUT=${OUT:-/tmp/bench-device}
mkdir -p "$OUT"
if [ -z "${SKIP_INSTALL:-}" ]; then
    $PYTHON -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$OUT/gpu.txt" 2>&1
$PYTHON -c "import jax, bayesssm; print(jax.__version__, jax.devices())" 2>&1 | tee -a "$OUT/gpu.txt"
[ "${PIPESTATUS[0]}" = 0 ] || exit 1

bench() {  # bench NAME SECONDS SCRIPT ARGS...
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit} s)"
    timeout "$limit" $PYTHON "$@" --all-cores >"$OUT/$name.txt" 2>&1
    echo "exit $? after $SECONDS s in all" | tee -a "$OUT/$name.txt"
    grep -E "^(N=|T=|D=|##|[|] [0-9])|ours |/ s|sweeps/s|[*][*]|Total wall" "$OUT/$name.txt" | head -60
}

# First the tests of the code that takes another form off CPU (prefix sums, binary searches):
# CI tests those forms alone on CPU, but only here do they run inside the particle methods.
echo "== tests (limit ${TESTS_S:-150} s)"
timeout "${TESTS_S:-150}" $PYTHON -m pytest -q -p no:cacheprovider tests/inference/test_resampling.py \
    tests/inference/test_particle_filter.py tests/inference/test_particle_gibbs.py \
    tests/inference/test_random.py >"$OUT/tests.txt" 2>&1
echo "exit $? after $SECONDS s in all" | tee -a "$OUT/tests.txt"
tail -3 "$OUT/tests.txt"

# Limits from the first run (docs/benchmarks.md, "GPU"): smc.py without the memory check took
# about 130 s with particle Gibbs, deep.py 70 s, nonlinear.py --quick 66 s (at T = 1e4 it had
# not finished its first model in 120 s: its sequential filters are latency-bound there). All
# slots add up to 530 s, one call inside the device's 600 s limit and 15 minutes a session.
bench smc "${SMC_S:-140}" bench/smc.py --no-memory
bench deep "${DEEP_S:-80}" bench/deep.py
bench nonlinear "${NONLINEAR_S:-70}" bench/nonlinear.py --quick
bench kalman "${KALMAN_S:-90}" bench/kalman.py --only dynamax,cuthbert
