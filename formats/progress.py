"""The one progress callback every long step reports to.

``progress(message)`` says which step starts now (a line for a log or a bar's label);
``progress(phase, done, total)`` says how far a countable phase is. A callback accepts both forms;
:func:`silent` ignores them. Training's metric events are not progress: ``training.train`` sends them
to its own ``on_event`` callback.
"""
from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def __call__(self, message: str, done: int | None = None, total: int | None = None) -> None: ...


def silent(message: str, done: int | None = None, total: int | None = None) -> None:
    """A progress callback that reports nowhere."""


def printing(message: str, done: int | None = None, total: int | None = None) -> None:
    """A progress callback that prints each message (and each count) on its own line."""
    print(message if done is None else f"{message}: {done}/{total}", flush=True)
