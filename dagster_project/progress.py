"""The progress bar a build reports to: `pickapic build` and `pickapic demo` both show it.

Every progress callback of the project has one signature, :class:`formats.progress.Progress`: here each
call is one human-readable line, called when the step it names starts.
"""
from __future__ import annotations

import contextlib
from typing import Iterator


class BuildProgress:
    """The ``progress`` callable of a build: each call names the run that starts now. The bar appears with the
    first run (``start``: a function making the rich bar and its task), so a build that runs nothing shows none
    (fix35b: an up-to-date build printed ``done 0/1 runs`` above its "up to date ... nothing ran" line)."""

    def __init__(self, start) -> None:
        self._start, self.bar, self.task, self.started, self.steps = start, None, None, False, 1

    def __call__(self, message: str, done: int | None = None, total: int | None = None) -> None:
        if self.started:
            self.bar.advance(self.task)
        else:
            self.bar, self.task = self._start(self.steps)
        self.started = True
        self.bar.update(self.task, description=message)

    def total(self, steps: int) -> None:
        """Set the number of runs once the plan is known."""
        self.steps = max(steps, 1)
        if self.bar is not None:
            self.bar.update(self.task, total=self.steps)


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
    """A rich progress bar over a build's runs, shown from the first run on; each call names the step that starts
    now. A build that starts no run (up to date, or refused before its first run) prints nothing here. A closed
    stdout (``pickapic build | head``, a log pipe gone) silences the bar and the build goes on (:func:`_console`)."""
    from rich.progress import BarColumn, TextColumn, TimeElapsedColumn
    from rich.progress import Progress as RichProgress

    columns = (TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} runs"),
               TimeElapsedColumn())
    with contextlib.ExitStack() as stack:
        def start(steps: int):
            bar = stack.enter_context(RichProgress(*columns, transient=False, console=_console()))
            return bar, bar.add_task("planning", total=steps)

        progress = BuildProgress(start)
        if total_steps:
            progress.total(total_steps)
        yield progress
        if progress.started:
            progress.bar.advance(progress.task)
            progress.bar.update(progress.task, description="done")
