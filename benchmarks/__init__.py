"""Hand-run benchmarks, each printing ratios against a baseline measured in the same run."""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Iterator


def report(result: dict, json_out: str | Path | None, indent: int = 1) -> None:
    """Print ``result`` as JSON, and write it to ``json_out`` too when given."""
    text = json.dumps(result, indent=indent)
    print(text)
    if json_out:
        Path(json_out).write_text(text + "\n")


def in_child(function, *args):
    """``function(*args)`` run in a forked child (a fresh process state, its own peak memory): returns its result
    (JSON-able) and the child's peak RSS in KiB (``ru_maxrss``). A child that fails prints its traceback and this
    raises ``RuntimeError``."""
    import resource
    import traceback

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(read)
            result = function(*args)
            os.write(write, json.dumps([result, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss]).encode())
            code = 0
        except BaseException:   # noqa: BLE001 - printed, then the child ends
            traceback.print_exc()
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    if status != 0 or not data:
        raise RuntimeError("a benchmark child failed (its error is above)")
    result, peak = json.loads(data)
    return result, peak


# --- work folders: what a benchmark may delete --------------------------------------------------------------
#
# A benchmark given ``--dir D`` works in folders under D that it wipes or reuses on the next run (D/home,
# D/clean, D/snapshot-3, ...). It deletes only a folder that holds its mark, written right after it made the
# folder: a folder of the same name that it did not make (an operator's own data home called ``home``, or
# ``/home`` under ``--dir /``) is refused, never deleted, and so is a symlink or a file there. With no
# ``--dir`` the benchmark works in a fresh temporary folder that is removed however the run ends.

OWNER_MARK = ".pickapic-benchmark"


def _owned(path: Path, legacy_marks: tuple[str, ...] = ()) -> bool:
    return any((path / name).is_file() for name in (OWNER_MARK, *legacy_marks))


def remove_owned(path: str | Path, legacy_marks: tuple[str, ...] = ()) -> None:
    """Delete ``path`` if this benchmark made it (it holds :data:`OWNER_MARK` or one of ``legacy_marks``, the
    marks of earlier versions) or it is an empty folder; nothing there is fine; anything else raises
    ``ValueError`` and is left as it is. Removed by :func:`formats.trees.remove_folder` (no recursion limit, and a
    file system mounted inside is left whole), as the tool's own folders are."""
    from formats.trees import remove_folder

    path = Path(path)
    if not os.path.lexists(path):
        return
    if path.is_symlink() or not path.is_dir():
        raise ValueError(f"{path} exists and is not a folder this benchmark made (a symlink or a file): "
                         f"refusing to replace it; choose another --dir or remove it yourself")
    if not _owned(path, legacy_marks) and any(path.iterdir()):
        raise ValueError(f"{path} exists and was not made by a benchmark (no {OWNER_MARK} in it): refusing to "
                         f"delete it; choose another --dir or remove it yourself")
    remove_folder(path)


def claim(path: str | Path, legacy_marks: tuple[str, ...] = ()) -> Path:
    """A fresh, empty (but for its mark) folder at ``path``: an earlier run's is deleted first
    (:func:`remove_owned`, which refuses a folder the benchmark did not make)."""
    path = Path(path)
    remove_owned(path, legacy_marks)
    path.mkdir(parents=True)
    mark(path)
    return path


def mark(path: str | Path) -> None:
    """Write the mark that lets a later run of a benchmark delete or reuse the folder ``path``."""
    (Path(path) / OWNER_MARK).write_text("made by a pickapic benchmark; a later run may delete this folder\n")


@contextlib.contextmanager
def work_folder(root: str | Path | None, prefix: str, keep: bool = False) -> Iterator[Path]:
    """The benchmark's work folder: ``root`` (created if missing, kept) when given, else a new temporary
    folder (``tempfile.mkdtemp``) removed when the block ends, by an exception or Ctrl-C too (unless ``keep``)."""
    import shutil
    import tempfile

    if root is not None:
        Path(root).mkdir(parents=True, exist_ok=True)
        yield Path(root)
        return
    base = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield base
    finally:
        if not keep:
            shutil.rmtree(base, ignore_errors=True)


def history_marker(config) -> str:
    """What marks a simulated history a benchmark keeps under ``--dir`` and reuses (``benchmarks.nightly``'s
    ``snapshot-N/.built``, ``benchmarks.nightly_publish``'s history): the whole simulator configuration ``config``
    (a ``SimConfig``: its fields at the top level), the stages' code versions (``dagster_project.versions``) and a
    digest of the simulator's own code (it has no version). A history is reused only when its marker is this one:
    one built by an older version of a stage (or of the simulator) is built again, so the first nightly after an
    upgrade does not time a code-version rebuild of every day (review rev33k, noticed). The configuration is
    ``config.as_dict()``: every knob but ``workers`` (the number of rendering processes, which the simulated
    history does not depend on: ``tests/unit/test_simulator_determinism.py``), so a change of it alone rebuilds
    nothing (review rev33t, noticed)."""
    import hashlib

    import simulator
    from dagster_project.versions import code_versions

    digest = hashlib.sha256()
    code = Path(simulator.__file__).resolve().parent
    for path in sorted(code.rglob("*.py")):
        digest.update(path.relative_to(code).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return json.dumps({**config.as_dict(), "pickapic_code_versions": code_versions(),
                       "simulator_code_sha256": digest.hexdigest()}, sort_keys=True, default=str) + "\n"
