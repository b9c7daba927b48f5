"""The progress bar a build reports to: `pickapic build` and `pickapic demo` both show it.

Every progress callback of the project has one signature, :class:`formats.progress.Progress`: here each
call is one human-readable line, called when the step it names starts.
"""
from __future__ import annotations

import contextlib
from typing import Iterator


class BuildProgress:
    """The ``progress`` callable of a build: each call names the run that starts now."""

    def __init__(self, bar, task) -> None:
        self.bar, self.task, self.started = bar, task, False

    def __call__(self, message: str, done: int | None = None, total: int | None = None) -> None:
        if self.started:
            self.bar.advance(self.task)
        self.started = True
        self.bar.update(self.task, description=message)

    def total(self, steps: int) -> None:
        """Set the number of runs once the plan is known."""
        self.bar.update(self.task, total=max(steps, 1))


@contextlib.contextmanager
def build_progress(total_steps: int | None) -> Iterator[BuildProgress]:
    """A rich progress bar over a build's runs; each call names the step that starts now."""
    from rich.progress import BarColumn, TextColumn, TimeElapsedColumn
    from rich.progress import Progress as RichProgress

    columns = (TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} runs"),
               TimeElapsedColumn())
    with RichProgress(*columns, transient=False) as bar:
        task = bar.add_task("planning", total=total_steps or 1)
        progress = BuildProgress(bar, task)
        yield progress
        if progress.started:
            bar.advance(progress.task)
        bar.update(task, description="done")
