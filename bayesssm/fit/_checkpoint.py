"""The checkpoint file of `bs.train`: format, fingerprints, atomic save and checked load.

A checkpoint is one file in two parts:

1. a header: one line of UTF-8 JSON (an object with no newline inside) ending in ``\\n``::

       {"format": "bayesssm.train checkpoint", "version": 1, "step": 40, "num_steps": 60,
        "num_evals": 2, "fingerprint": {"model": {...}, "optimizer": {...}, "data": {...}},
        "settings": {...}}

   ``step`` is the number of optimiser steps taken, ``num_steps`` the run's target when the file
   was written, ``num_evals`` the number of held-out evaluations so far. The fingerprint of the
   model (its trainable arrays) and of the optimizer state is ``{"hash": sha256, "leaves":
   [[path, shape, dtype], ...]}`` over their leaves in order (path as `jax.tree_util.keystr`
   writes it); the data's is ``{"shape": [B, T, M]}``. ``settings`` (batch size, draws,
   intervals) is informative only and is not checked.
2. the leaves, written right after the header by `equinox.tree_serialise_leaves` (one
   `numpy.save` record each) of the tuple ``(params, opt_state, history)``, where
   ``history = (elbo, ok, eval_steps, eval_elbo)``: float64 (step,), bool (step,), int64
   (num_evals,), float64 (num_evals,). They are read back with
   `equinox.tree_deserialise_leaves`, the current trainable arrays and optimizer state (and
   arrays of the lengths in the header) as the template.

Files are written to a temporary file in the same directory, flushed to disk, and moved over
the old file with `os.replace`, so an interruption while saving leaves the previous checkpoint
whole.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

import equinox as eqx
import jax
import numpy as np

FORMAT = "bayesssm.train checkpoint"
VERSION = 1
# A header longer than this is not one of ours (it would be a model of ~100k arrays).
_MAX_HEADER_BYTES = 64 * 2**20


class History(NamedTuple):
    """The record of a run so far, as NumPy arrays."""

    elbo: np.ndarray  # float64 (step,), NaN where skipped
    ok: np.ndarray  # bool (step,)
    eval_steps: np.ndarray  # int64 (E,)
    eval_elbo: np.ndarray  # float64 (E,)

    @classmethod
    def empty(cls) -> History:
        return cls(np.zeros(0, np.float64), np.zeros(0, bool), np.zeros(0, np.int64), np.zeros(0))

    def normalised(self) -> History:
        return History(
            np.asarray(self.elbo, np.float64),
            np.asarray(self.ok, bool),
            np.asarray(self.eval_steps, np.int64),
            np.asarray(self.eval_elbo, np.float64),
        )


class Checkpoint(NamedTuple):
    header: dict
    params: Any
    opt_state: Any
    history: History


def tree_fingerprint(tree) -> dict:
    """The structure, shapes and dtypes of a pytree's array leaves, and their sha256."""
    leaves = [
        [jax.tree_util.keystr(path), [int(n) for n in np.shape(leaf)], str(_dtype(leaf))]
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    ]
    text = json.dumps(leaves, separators=(",", ":"))
    return {"hash": hashlib.sha256(text.encode()).hexdigest(), "leaves": leaves}


def _dtype(leaf):
    return leaf.dtype if hasattr(leaf, "dtype") else np.result_type(leaf)


def fingerprint(params, opt_state, data_shape) -> dict:
    return {
        "model": tree_fingerprint(params),
        "optimizer": tree_fingerprint(opt_state),
        "data": {"shape": [int(n) for n in data_shape]},
    }


def check_path(path) -> Path:
    """The checkpoint path as a `Path`, after checking that it can be written."""
    if not isinstance(path, str | os.PathLike):
        raise ValueError(
            f"checkpoint must be a file path (str or os.PathLike), got {type(path).__name__}."
        )
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"checkpoint={str(path)!r} is a directory; give a file path in it.")
    parent = path.parent
    if not parent.is_dir():
        raise ValueError(
            f"the directory of checkpoint={str(path)!r} does not exist; create {str(parent)!r} "
            "first or give a path in an existing directory."
        )
    return path


def save(
    path: Path,
    *,
    step: int,
    num_steps: int,
    fingerprint: dict,
    settings: dict,
    params,
    opt_state,
    history: History,
) -> None:
    """Write a checkpoint atomically (temporary file in the same directory, then `os.replace`)."""
    history = history.normalised()
    if not (len(history.elbo) == len(history.ok) == step) or len(history.eval_steps) != len(
        history.eval_elbo
    ):
        raise ValueError("the history does not match the step count (a bug in bs.train).")
    header = {
        "format": FORMAT,
        "version": VERSION,
        "step": int(step),
        "num_steps": int(num_steps),
        "num_evals": len(history.eval_steps),
        "fingerprint": fingerprint,
        "settings": settings,
    }
    line = json.dumps(header, separators=(",", ":"), allow_nan=False).encode() + b"\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(line)
            eqx.tree_serialise_leaves(f, (params, opt_state, tuple(history)))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _not_ours(path: Path, why: str) -> ValueError:
    return ValueError(
        f"{str(path)!r} is not a bs.train checkpoint that can be read ({why}). Delete the file, "
        "or pass resume=False to overwrite it, or give another checkpoint path."
    )


def read_header(path) -> dict:
    """The header of a checkpoint file (ValueError if the file is not a checkpoint)."""
    path = Path(path)
    with open(path, "rb") as f:
        return _read_header(f, path)


def _read_header(f, path: Path) -> dict:
    line = f.readline(_MAX_HEADER_BYTES)
    try:
        header = json.loads(line.decode())
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _not_ours(path, "no header") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise _not_ours(path, "no header")
    if header.get("version") != VERSION:
        raise _not_ours(
            path, f"format version {header.get('version')!r}; this bayesssm reads {VERSION}"
        )
    return header


def _first_difference(stored: list, current: list) -> str:
    for k, (a, b) in enumerate(zip(stored, current, strict=False)):
        if a != b:
            if a[0] != b[0]:
                return f"array {k} is {a[0]} in the checkpoint but {b[0]} here"
            return (
                f"{a[0]} has shape {tuple(a[1])} and dtype {a[2]} in the checkpoint but shape "
                f"{tuple(b[1])} and dtype {b[2]} here"
            )
    return f"the checkpoint has {len(stored)} arrays, this one {len(current)}"


def check_fingerprint(path: Path, header: dict, current: dict) -> None:
    """ValueError, saying which part differs, unless the checkpoint was written for this model,
    optimizer and data."""
    stored = header.get("fingerprint", {})
    how = (
        "Pass the same model, optimizer and data as the run that wrote it to resume; or delete "
        "the file, or pass resume=False, to start afresh (overwriting it)."
    )
    for part, what in (("model", "model's trainable arrays"), ("optimizer", "optimizer state")):
        old, new = stored.get(part, {}), current[part]
        if old.get("hash") != new["hash"]:
            raise ValueError(
                f"the checkpoint {str(path)!r} was written for a different {part}: the "
                f"{what} differ in structure, shape or dtype "
                f"({_first_difference(old.get('leaves', []), new['leaves'])}). {how}"
            )
    old, new = stored.get("data", {}).get("shape"), current["data"]["shape"]
    if old != new:
        old = "?" if old is None else tuple(old)
        raise ValueError(
            f"the checkpoint {str(path)!r} was written for different data: series of shape "
            f"(B, T, M) = {old}, these have {tuple(new)}. {how}"
        )


def load(path: Path, params_like, opt_state_like, current_fingerprint: dict) -> Checkpoint:
    """Read a checkpoint written for this model, optimizer and data (ValueError otherwise)."""
    with open(path, "rb") as f:
        header = _read_header(f, path)
        check_fingerprint(path, header, current_fingerprint)
        step, num_evals = header.get("step"), header.get("num_evals")
        if not (isinstance(step, int) and step >= 0 and isinstance(num_evals, int)):
            raise _not_ours(path, "bad step count in the header")
        like = History(
            np.zeros(step, np.float64),
            np.zeros(step, bool),
            np.zeros(num_evals, np.int64),
            np.zeros(num_evals, np.float64),
        )
        try:
            params, opt_state, history = eqx.tree_deserialise_leaves(
                f, (params_like, opt_state_like, tuple(like))
            )
        except (RuntimeError, ValueError, EOFError, OSError) as e:
            raise _not_ours(path, f"its arrays cannot be read: {e}") from None
    return Checkpoint(header, params, opt_state, History(*history))


__all__ = [
    "FORMAT",
    "VERSION",
    "Checkpoint",
    "History",
    "check_fingerprint",
    "check_path",
    "fingerprint",
    "load",
    "read_header",
    "save",
    "tree_fingerprint",
]
