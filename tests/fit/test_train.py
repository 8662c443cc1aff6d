"""bs.train's held-out evaluation, checkpoints and resuming: an interrupted run resumed from its
checkpoint, and a finished run extended, equal the uninterrupted run bit for bit; mismatched
checkpoints are refused; the held-out ELBO equals its recomputation from the documented keys and
improves with training; saving is atomic; bad settings are refused."""

import importlib
import os

import equinox as eqx
import jax
import numpy as np
import optax
import pytest

import bayesssm as bs
from bayesssm.fit import _checkpoint

# `bayesssm.fit.train` the attribute is the function; the module is needed to patch its chunks.
train_module = importlib.import_module("bayesssm.fit.train")

KEY = jax.random.key(2)


def small_model(hidden=8):
    return bs.NCDSSM(obs_dim=2, state_dim=2, aux_dim=2, dynamics="linear", hidden=hidden,
                     key=jax.random.key(1))  # fmt: skip


@pytest.fixture(scope="module")
def model():
    return small_model()


@pytest.fixture(scope="module")
def data():
    return bs.datasets.damped_pendulum(jax.random.key(0), num_series=4, num_timesteps=12).series()


@pytest.fixture(scope="module")
def held_out():
    return bs.datasets.damped_pendulum(jax.random.key(5), num_series=3, num_timesteps=10).series()


def run(model, data, **kwargs):
    return bs.train(model, data, key=KEY, progress=False, **kwargs)


def assert_same_run(a, b):
    """Models (every array leaf) and histories exactly equal."""
    (model_a, history_a), (model_b, history_b) = a, b
    leaves_a = jax.tree.leaves(eqx.filter(model_a, eqx.is_array))
    leaves_b = jax.tree.leaves(eqx.filter(model_b, eqx.is_array))
    assert len(leaves_a) == len(leaves_b)
    for x, y in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert history_a.num_skipped == history_b.num_skipped
    for field in ("elbo", "eval_steps", "eval_elbo"):
        np.testing.assert_array_equal(getattr(history_a, field), getattr(history_b, field))


def interrupt_at_call(monkeypatch, n):
    """Make the n-th compiled chunk raise KeyboardInterrupt; returns the list of calls."""
    calls = []
    original = train_module._run_chunk

    def chunk(*args, **kwargs):
        calls.append(int(args[6]))  # the chunk's first step
        if len(calls) == n:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(train_module, "_run_chunk", chunk)
    return calls


def held_out_elbo(model, held_out, key=KEY, num_samples=1):
    """The documented held-out ELBO, recomputed series by series."""
    _, eval_key = jax.random.split(key)
    keys = jax.random.split(eval_key, len(held_out))
    values = [
        model.elbo(s, key=k, num_samples=num_samples) for s, k in zip(held_out, keys, strict=True)
    ]
    return float(np.mean(values))


def test_resumed_run_equals_the_uninterrupted_run(model, data, held_out, tmp_path, monkeypatch):
    """Interrupted in the chunk after the checkpoint at step 40 (checkpoints every 20 steps,
    evaluations every 30: chunks end at 20, 30, 40, 60), the file holds step 40 and the history
    so far; run again with the same arguments, bs.train runs only steps 40-59 and gives exactly
    the uninterrupted run (without checkpoints, whose chunks end at 25, 30, 55, 60)."""
    path = tmp_path / "run.ckpt"
    settings = dict(num_steps=60, eval_data=held_out, eval_every=30)
    calls = interrupt_at_call(monkeypatch, 4)
    with pytest.raises(KeyboardInterrupt):
        run(model, data, checkpoint=path, checkpoint_every=20, **settings)
    assert calls == [0, 20, 30, 40]
    header = _checkpoint.read_header(path)
    assert header["step"] == 40 and header["num_steps"] == 60 and header["num_evals"] == 1
    assert os.listdir(tmp_path) == ["run.ckpt"]  # no temporary file left behind
    monkeypatch.undo()

    calls = interrupt_at_call(monkeypatch, 0)  # count the chunks, interrupt none
    resumed = run(model, data, checkpoint=path, checkpoint_every=20, **settings)
    assert calls == [40]
    assert _checkpoint.read_header(path)["step"] == 60
    uninterrupted = run(model, data, **settings)
    assert calls == [40, 0, 25, 30, 55]
    assert_same_run(resumed, uninterrupted)
    np.testing.assert_array_equal(resumed[1].eval_steps, [30, 60])
    assert resumed[1].elbo.shape == (60,)


def test_extending_a_finished_run(model, data, held_out, tmp_path, monkeypatch):
    """A finished 40-step run, called again with num_steps=60 and the same checkpoint, equals a
    fresh 60-step run; called with num_steps <= the stored count, it returns the stored run at
    once."""
    path = tmp_path / "run.ckpt"
    settings = dict(eval_data=held_out, eval_every=20)
    first = run(model, data, num_steps=40, checkpoint=path, **settings)
    calls = interrupt_at_call(monkeypatch, 0)
    extended = run(model, data, num_steps=60, checkpoint=path, **settings)
    assert calls == [40]
    fresh = run(model, data, num_steps=60, **settings)
    assert_same_run(extended, fresh)
    np.testing.assert_array_equal(fresh[1].eval_steps, [20, 40, 60])
    del calls[:]
    again = run(model, data, num_steps=60, checkpoint=path, **settings)
    fewer = run(model, data, num_steps=30, checkpoint=path, **settings)
    assert calls == []
    assert_same_run(again, fresh)
    assert_same_run(fewer, fresh)  # the stored 60 steps, not 30
    assert first[1].elbo.shape == (40,)
    np.testing.assert_array_equal(first[1].elbo, fresh[1].elbo[:40])


def test_mismatched_checkpoints_are_refused_and_resume_false_overwrites(
    model, data, tmp_path, monkeypatch
):
    path = tmp_path / "run.ckpt"
    # A fresh run writes its starting state at once: a checkpoint of a wider model.
    interrupt_at_call(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        run(small_model(hidden=9), data, num_steps=20, checkpoint=path)
    monkeypatch.undo()
    assert _checkpoint.read_header(path)["step"] == 0
    with pytest.raises(ValueError, match=r"different model.*encoder.*resume=False"):
        run(model, data, num_steps=20, checkpoint=path)
    with pytest.raises(ValueError, match="different model"):
        run(model, data, num_steps=20, checkpoint=path, resume=True)

    # resume=False runs from scratch and overwrites.
    overwritten = run(model, data, num_steps=20, checkpoint=path, resume=False)
    assert_same_run(overwritten, run(model, data, num_steps=20))
    assert _checkpoint.read_header(path)["step"] == 20

    shorter = [bs.TimeSeries(s.times[:11], s.values[:11]) for s in data]
    with pytest.raises(ValueError, match=r"different data.*\(4, 12, 2\).*\(4, 11, 2\)"):
        run(model, shorter, num_steps=20, checkpoint=path)
    with pytest.raises(ValueError, match="different optimizer"):
        run(model, data, num_steps=20, checkpoint=path, optimizer=optax.sgd(1e-3))

    garbage = tmp_path / "notes.txt"
    garbage.write_text("not a checkpoint\n")
    with pytest.raises(ValueError, match="not a bs.train checkpoint.*resume=False"):
        run(model, data, num_steps=20, checkpoint=garbage)


def test_held_out_elbo_at_the_documented_steps_and_keys(model, data, held_out, monkeypatch):
    """Evaluations after steps 20, 40 and the last (50); each equals the mean of model.elbo
    over the held-out series with keys split from jax.random.split(key)[1], at the parameters
    of its step (those of a run of that many steps); the progress bar shows the latest."""
    shown = []

    class Bar:
        def update(self, steps, value=None, **more):
            shown.append((steps, more))

    class Progress:
        def __init__(self, *args, **kwargs):
            pass

        def __enter__(self):
            return Bar()

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(train_module, "progress_bar", Progress)
    trained, history = run(model, data, num_steps=50, eval_data=held_out, eval_every=20)
    np.testing.assert_array_equal(history.eval_steps, [20, 40, 50])
    assert sum(steps for steps, _ in shown) == 50
    assert shown[0][1] == {"eval_elbo": float(history.eval_elbo[0])}
    assert shown[-1][1] == {"eval_elbo": float(history.eval_elbo[-1])}
    assert history.eval_elbo.shape == (3,) and history.eval_elbo.dtype == np.float64
    np.testing.assert_allclose(
        float(history.eval_elbo[-1]), held_out_elbo(trained, held_out), rtol=1e-10, atol=1e-10
    )
    at_20, _ = run(model, data, num_steps=20)
    np.testing.assert_allclose(
        float(history.eval_elbo[0]), held_out_elbo(at_20, held_out), rtol=1e-10, atol=1e-10
    )

    # Default: every 100 steps, and after the last; no evaluation without eval_data.
    _, history = run(model, data, num_steps=30, eval_data=held_out)
    np.testing.assert_array_equal(history.eval_steps, [30])
    _, history = run(model, data, num_steps=20)
    assert history.eval_steps.shape == (0,) and history.eval_elbo.shape == (0,)


def test_evaluation_in_batches_equals_all_at_once(model, held_out):
    """3 held-out series in batches of 2 (the last padded) give the mean of all 3."""
    t = np.stack([np.asarray(s.times) for s in held_out])
    v = np.stack([np.asarray(s.values) for s in held_out])
    params, static = eqx.partition(model, eqx.is_inexact_array)
    key = jax.random.key(3)
    batched = train_module._Evaluator(t, v, key, np.float64, 1, 2)
    assert batched.values.shape == (2, 2, 10, 2)
    keys = jax.random.split(key, 3)
    expected = np.mean([model.elbo(s, key=k) for s, k in zip(held_out, keys, strict=True)])
    np.testing.assert_allclose(batched(params, static), expected, rtol=1e-10)


def test_held_out_elbo_improves_with_training(model, data, held_out):
    """The starting model fits the pendulums badly: 60 steps raise the held-out ELBO (the same
    draws at each evaluation) by far more than its noise."""
    _, history = run(model, data, num_steps=60, eval_data=held_out, eval_every=20)
    first, last = np.asarray(history.eval_elbo)[[0, -1]]
    assert last > first + 5.0, history.eval_elbo


def test_interrupted_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "state.ckpt"
    params = {"w": np.arange(3.0)}
    fingerprint = _checkpoint.fingerprint(params, (), (1, 2, 3))
    common = dict(num_steps=10, fingerprint=fingerprint, settings={}, opt_state=())

    def history(step):
        return _checkpoint.History(np.arange(step) - 10.0, np.ones(step, bool), [4], [-3.0])

    _checkpoint.save(path, step=4, params=params, history=history(4), **common)

    def interrupted(f, tree):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(_checkpoint.eqx, "tree_serialise_leaves", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _checkpoint.save(path, step=8, params={"w": np.ones(3)}, history=history(8), **common)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["state.ckpt"]
    stored = _checkpoint.load(path, params, (), fingerprint)
    assert stored.header["step"] == 4
    np.testing.assert_array_equal(stored.params["w"], np.arange(3.0))
    for x, y in zip(stored.history, history(4), strict=True):
        np.testing.assert_array_equal(x, y)


def test_bad_settings_are_refused(model, data, held_out, tmp_path):
    for name in ("eval_every", "checkpoint_every"):
        for bad in (0, -5, 2.5, True, "10"):
            with pytest.raises(ValueError, match=f"{name} must be a positive int"):
                run(model, data, num_steps=5, eval_data=held_out, checkpoint=tmp_path / "c",
                    **{name: bad})  # fmt: skip
    wide = [bs.TimeSeries(s.times, np.concatenate([s.values, s.values[:, :1]], 1)) for s in data]
    with pytest.raises(ValueError, match="eval_data must have as many columns M as data"):
        run(model, data, num_steps=5, eval_data=wide)
    with pytest.raises(ValueError, match="eval_data: bs.train needs series of the same length"):
        run(model, data, num_steps=5, eval_data=[held_out[0], data[0]])
    with pytest.raises(ValueError, match="eval_times must have shape"):
        run(model, data, num_steps=5, eval_data=np.zeros((2, 6, 2)), eval_times=np.arange(5.0))
    with pytest.raises(ValueError, match="eval_every is given but eval_data is None"):
        run(model, data, num_steps=5, eval_every=10)
    with pytest.raises(ValueError, match="checkpoint_every is given but checkpoint is None"):
        run(model, data, num_steps=5, checkpoint_every=10)
    with pytest.raises(ValueError, match="does not exist"):
        run(model, data, num_steps=5, checkpoint=tmp_path / "missing" / "run.ckpt")
    with pytest.raises(ValueError, match="is a directory"):
        run(model, data, num_steps=5, checkpoint=tmp_path)
    with pytest.raises(ValueError, match="eval_num_samples must be a positive int"):
        run(model, data, num_steps=5, eval_data=held_out, eval_num_samples=0)
    assert os.listdir(tmp_path) == []  # nothing written
