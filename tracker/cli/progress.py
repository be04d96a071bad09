"""Progress bars for long CLI work, on stderr and only when stderr is a terminal, so
scripts and pipes get exactly the output they got before."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID


def stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class ProgressBar:
    """One task's bar; every update is a no-op when no bar is shown, so callers never
    branch on it."""

    def __init__(self, progress: Progress | None = None, task: TaskID | None = None) -> None:
        self._progress = progress
        self._task = task

    def update(
        self,
        *,
        completed: float | None = None,
        advance: float | None = None,
        description: str | None = None,
        detail: str | None = None,
    ) -> None:
        if self._progress is None or self._task is None:
            return
        self._progress.update(self._task, completed=completed, advance=advance, description=description)
        if detail is not None:
            self._progress.update(self._task, detail=detail)


@contextmanager
def progress_bar(description: str, total: float | None, *, enabled: bool | None = None) -> Iterator[ProgressBar]:
    """A bar on stderr while the block runs, cleared at its end. ``total=None`` is an
    indeterminate (pulsing) bar. ``enabled=None``: only when stderr is a terminal."""
    if not (stderr_is_terminal() if enabled is None else enabled):
        yield ProgressBar()
        return
    # Imported only when a bar is shown: rich costs a tenth of a second at start-up.
    from rich.console import Console
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as progress:
        yield ProgressBar(progress, progress.add_task(description, total=total, detail=""))
