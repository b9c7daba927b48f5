"""The uids the byte search finds in a raw images file (:func:`pipelines.ingest.lines.tap_image_uids`), held with
bounded memory: up to ``MAX_MEMORY_UIDS`` in a set, the rest written in sorted runs to a spill folder.

Review rev33i: a day's ingest kept every ``"image_uid"`` member of its images file in one set, those of quarantined
lines (line_too_long ones too) included, so memory grew about 290 bytes a uid of bad input (800,000 uids nested in 40
bad lines: +230 MiB). The set is read in two ways only, both streamed here: which of a bounded set of wanted uids it
holds (:meth:`UidSet.intersection`: the reference check, the wanted set being the references of the accepted rows), and
all of them in order (:meth:`UidSet.sorted`: the uid index and the record of the day's export).
"""
from __future__ import annotations

import heapq
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Iterator

MAX_MEMORY_UIDS = 8_192      # uids held in memory (a few MiB) before a sorted run is written
UID_BYTES = 36               # a canonical uid: 36 ASCII characters (what the byte search and the decode both give)
_READ_UIDS = 1_024           # uids read from a run at a time
MERGE_FAN = 32               # runs merged at once: more are merged in passes (memory: MERGE_FAN blocks)


class UidSet:
    """A set of canonical uids that spills: ``add``/``update`` as a set's; ``intersection(wanted)`` and ``sorted()``
    read the runs back a block at a time. ``spill``: the folder for the runs (or a function giving it, called at the
    first spill); None keeps every uid in memory. ``allowance``: uids held in memory beyond the bound, which the
    reader raises by one per accepted images row (those rows are held anyway, so a clean day never spills: only the
    uids of bad lines do); a worker of ``ingest.workers`` taps every line but accepts only the rows routed to it
    (about 1/n of them, by a hash of the key), so it raises the allowance by n per row: a clean day spills in no
    worker unless its share falls short of 1/n of the rows by more than ``MAX_MEMORY_UIDS`` / n (review rev34a).
    Picklable (a worker's set travels to the parent with its run paths); the runs live as long as the spill folder
    (the ingest's scratch folder, removed after)."""

    def __init__(self, spill: Path | Callable[[], Path] | None, max_memory: int | None = None):
        self.memory: set[str] = set()
        self.runs: list[str] = []
        self.max_memory = max_memory or MAX_MEMORY_UIDS
        self.allowance = 0
        self._spill = spill

    def add(self, uid: str) -> None:
        self.memory.add(uid)
        if len(self.memory) >= self.max_memory + self.allowance:
            self._flush()

    def update(self, uids: Iterable[str]) -> None:
        self.memory.update(uids)
        if len(self.memory) >= self.max_memory + self.allowance:
            self._flush()

    def _flush(self) -> None:
        if self._spill is None:
            return
        folder = self._spill() if callable(self._spill) else self._spill
        self._spill = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.runs.append(self._write_run(folder, [sorted(self.memory)]))
        self.memory = set()

    @staticmethod
    def _write_run(folder: Path, parts: Iterable[Iterable[str]]) -> str:
        handle, name = tempfile.mkstemp(dir=folder, prefix="image-uids-", suffix=".run")
        with os.fdopen(handle, "wb") as out:
            for part in parts:
                for block in _batches(part):
                    out.write("".join(block).encode("ascii"))
        return name

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        if callable(state["_spill"]):
            state["_spill"] = None     # a function is not sent: the set keeps what it holds
        return state

    def _blocks(self, run: str) -> Iterator[list[str]]:
        with open(run, "rb") as spilled:   # our own run, written above
            while block := spilled.read(UID_BYTES * _READ_UIDS):
                text = block.decode("ascii")
                yield [text[i:i + UID_BYTES] for i in range(0, len(text), UID_BYTES)]

    def _run(self, run: str) -> Iterator[str]:
        for block in self._blocks(run):
            yield from block

    def intersection(self, wanted: Iterable[str]) -> set[str]:
        """The uids of ``wanted`` held (memory: ``wanted``)."""
        wanted = wanted if isinstance(wanted, (set, frozenset)) else set(wanted)
        found = self.memory & wanted
        for run in self.runs:
            for block in self._blocks(run):
                found.update(wanted.intersection(block))
        return found

    def sorted(self) -> Iterator[str]:
        """Every uid held, once, in order (the runs merged: one block of each in memory; more than ``MERGE_FAN`` runs
        are first merged ``MERGE_FAN`` at a time into longer ones, in passes)."""
        while len(self.runs) > MERGE_FAN:
            folder = Path(self.runs[0]).parent
            merged = [self._write_run(folder, [heapq.merge(*(self._run(run) for run in self.runs[i:i + MERGE_FAN]))])
                      for i in range(0, len(self.runs), MERGE_FAN)]
            for run in self.runs:
                os.unlink(run)
            self.runs = merged
        last = None
        for uid in heapq.merge(sorted(self.memory), *(self._run(run) for run in self.runs)):
            if uid != last:
                yield uid
                last = uid


def sorted_uids(uids: set[str] | UidSet) -> Iterator[str]:
    """The uids of a set or a :class:`UidSet`, in order, once each."""
    if isinstance(uids, UidSet) and uids.runs:
        return uids.sorted()
    return iter(sorted(uids.memory if isinstance(uids, UidSet) else uids))


def in_memory(uids: set[str] | UidSet) -> set[str] | None:
    """The uids as a set where they are all in memory (a set, or a :class:`UidSet` that never spilled), else None."""
    if isinstance(uids, UidSet):
        return None if uids.runs else uids.memory
    return uids


def _batches(items: Iterable[str]) -> Iterator[list[str]]:
    batch: list[str] = []
    size = _READ_UIDS
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
