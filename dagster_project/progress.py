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


def _console():
    """rich's console on stdout, except that a closed stdout is not ``SystemExit(1)`` (rich's own answer, which
    hid a failed build's error and turned a finished build into exit 1, review rev25h): the console goes quiet,
    stdout's descriptor points at ``/dev/null`` (``formats.commands.quiet_stdout``) and the build's own outcome
    decides its exit status."""
    from rich.console import Console

    from formats.commands import quiet_stdout

    class QuietOnClosedStdout(Console):
        def on_broken_pipe(self) -> None:
            self.quiet = True
            quiet_stdout()

    return QuietOnClosedStdout()


@contextlib.contextmanager
def build_progress(total_steps: int | None) -> Iterator[BuildProgress]:
    """A rich progress bar over a build's runs; each call names the step that starts now. A closed stdout
    (``pickapic build | head``, a log pipe gone) silences the bar and the build goes on (:func:`_console`)."""
    from rich.progress import BarColumn, TextColumn, TimeElapsedColumn
    from rich.progress import Progress as RichProgress

    columns = (TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} runs"),
               TimeElapsedColumn())
    with RichProgress(*columns, transient=False, console=_console()) as bar:
        task = bar.add_task("planning", total=total_steps or 1)
        progress = BuildProgress(bar, task)
        yield progress
        if progress.started:
            bar.advance(progress.task)
        bar.update(task, description="done")
