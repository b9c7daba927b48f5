"""The warnings a build's steps give its user, told apart from Dagster's own messages.

A step of the project warns through ``step_warning`` (or the callable ``step_warner`` gives a pipeline function):
the message goes to the run's log (``context.log.warning``, what ``pickapic ui`` shows) behind ``MARK``, the
project's origin tag. ``pickapic build`` (and ``pickapic demo``) run Dagster with its console logger silenced and
show a step's warnings on stderr by reading the run's log back (``build._step_warnings``): only an entry logged at
WARNING whose text begins with ``MARK`` is one, the tag taken off. Dagster logs messages of its own in a step's log
at that level and above ("Dependencies for step X failed ... Not executing.", about steps it skipped after a
failure; a check result it lets through; ...) and a step's errors repeat what the build's error line says (the
"not enough data" refusal): neither is a warning of the project's, and neither carries the tag (review rev31i).
"""
from __future__ import annotations

import logging
import sys
from typing import Any, Callable

MARK = "[pickapic] "


def step_warning(log: Any, message: str) -> None:
    """Log ``message`` as a warning of the project's own to a step's ``context.log``."""
    log.warning(MARK + message)


def step_warner(log: Any) -> Callable[[str], None]:
    """A ``warn(message)`` for a pipeline function run by a step: each message a warning of the project's own."""
    return lambda message: step_warning(log, message)


def step_progress(log: Any) -> Callable[..., None]:
    """A ``progress`` (:mod:`formats.progress`) for a pipeline function run by a step: a message beginning
    ``warning: `` (the feature stage's fallback from an unusable ``HOME/cache/tmp``, its sweeps' notes) is a
    warning of the project's own (:func:`step_warning`, so ``pickapic build`` shows it on stderr), any other
    message goes to the run's log at INFO, a count (``progress(phase, done, total)``) nowhere (review rev36d,
    noticed: the feature asset gave the stage the ``silent`` progress, so its warnings reached no log)."""
    def progress(message: str, done: int | None = None, total: int | None = None) -> None:
        if done is not None:
            return
        if message.startswith("warning: "):
            step_warning(log, message.removeprefix("warning: "))
        else:
            log.info(message)

    return progress


def project_warning(level: int | str, message: str | None) -> str | None:
    """The text of a warning a step of the project logged (``step_warning``), or None for any other log entry: one
    at another level (an error, info), one without the tag (Dagster's own), an empty one."""
    if not message or not message.startswith(MARK):
        return None
    if level != logging.WARNING and str(level).upper() not in ("WARNING", "WARN"):
        return None
    return message[len(MARK):] or None


def stderr_warner() -> Callable[[str], None]:
    """The ``warn`` of a command: each message printed once, as ``warning: ...`` on stderr, its escape and control
    characters shown, never acting on the terminal (a raw-zone entry's name, a step's note may hold any)."""
    shown: set[str] = set()

    def warn(message: str) -> None:
        from formats.text import terminal_text

        if message not in shown:
            shown.add(message)
            print(f"warning: {terminal_text(message)}", file=sys.stderr)

    return warn
