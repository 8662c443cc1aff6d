"""Progress bars for long fits (tqdm), or nothing."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class _Bar:
    def __init__(self, bar, label: str):
        self._bar = bar
        self._label = label

    def update(self, steps: int, value: float | None = None, **more: float) -> None:
        if self._bar is None:
            return
        shown = {} if value is None else {self._label: f"{value:.6g}"}
        shown.update({k: f"{v:.3g}" for k, v in more.items()})
        if shown:
            self._bar.set_postfix(shown, refresh=False)
        self._bar.update(steps)


@contextlib.contextmanager
def progress_bar(total: int, show: bool, description: str, label: str = "objective") -> Iterator:
    """A bar of `total` steps that shows the latest value of `label`; a no-op if not `show`."""
    if not show:
        yield _Bar(None, label)
        return
    from tqdm.auto import tqdm

    with tqdm(total=total, desc=description, leave=False) as bar:
        yield _Bar(bar, label)
