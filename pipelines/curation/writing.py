"""The curation stage's table writes, one process at a time per home, each first removing what killed ones left.

``duplicate_clusters``, ``decisions`` and ``pairs`` are each written under a temporary name and renamed into place
(:func:`formats.files.write_parquet_atomic`); a writer killed before its rename left that file for good (review
rev29b: one the size of the table per crash). Each write now holds the home's curation lock
(``.locks/curation.lock``, :mod:`formats.locks`: an exclusive ``flock``, waiting for another curation's write to
end) and, holding it, first removes the temporary files of the table it writes: only those writes make those names,
and only under this lock, so none of them is being written now. The lock covers the write, not the computation
before it: two runs of a stage still compute side by side, and the last one to write wins, as before.
"""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Iterator

from formats.files import sweep_temps_of
from formats.home import DataHome
from formats.locks import hold_lock
from formats.text import terminal_text


def curation_lock_file(home: DataHome) -> Path:
    """The lock file of the home's curation writes (``.locks/curation.lock``, outside the disposable cache)."""
    return home.locks / "curation.lock"


@contextlib.contextmanager
def writing_table(home: DataHome, table: str) -> Iterator[Path]:
    """Hold the curation lock (waiting, and saying so on stderr, while another process writes a curation table),
    remove the temporary files killed writers of ``table`` left, and yield the table's file to write."""
    path = curation_lock_file(home)

    def busy(holder: str) -> None:
        print(f"waiting for another curation run on this home (pid {holder} holds {path}) to write its table",
              file=sys.stderr, flush=True)

    final = home.table_file(table)
    with hold_lock(path, "the curation tables", busy):
        for note in sweep_temps_of([final]):
            print(f"warning: {terminal_text(note)}", file=sys.stderr, flush=True)
        yield final
