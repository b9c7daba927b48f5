"""Training runs of a data home: one run folder per published version, trained, evaluated and ranked in place.

``HOME/models/preference_model/<version>/`` holds the run on that version (resumable): ``best/`` (the
model), ``eval.json`` (tie-aware test accuracy), ``leaderboard.png``. Only a finished run is a model
(``metrics.json``, no ``training.json`` or ``diverged.json``: :func:`_finished`); a training that changes the
model removes what was written about it, and a stage writing about it publishes only what it wrote about the
model that is still there, holding the run's lock (:func:`publishing`). Ground truth is never looked up
here: a caller that has a simulation's truth passes its files in (``summary.json``, ``models.json``).

Run retention (``[models] keep_runs``): every training of `latest` is recorded, newest last, in
``HOME/models/preference_model.runs`` when it starts; when it has finished, the run folders beyond the newest
``keep_runs`` in that order are deleted (:func:`apply_run_retention`), never the run just trained, the run of
the version `latest` names, a run a trainer is writing, or anything that is not a run folder a trainer made.
"""
from __future__ import annotations

import array
import contextlib
import fcntl
import hashlib
import io
import json
import os
import pickle
import re
import secrets
import shutil
import stat
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping

from formats import dataset
from formats.files import is_real_folder, read_small_file, write_bytes_atomic
from formats.home import DataHome
from formats.locks import LockFileRefused, hold_lock, open_lock_file, try_lock
from formats.progress import Progress
from formats.settings import check_fields, knob
from training.config import (
    CONFIG_FILE,
    DIVERGED_FILE,
    METRICS_FILE,
    STAGING_PREFIX,
    TRAIN_LOCK_FILE,
    TRAINING_FILE,
    from_home,
    metrics_steps,
    parse_run_json,
    remove_run_path,
)

if TYPE_CHECKING:  # torch is slow to import; the functions import these when they run
    from training.config import TrainConfig
    from training.evaluate import EvalResult
    from training.leaderboard import LeaderboardResult
    from training.train import TrainResult

MODEL_NAME = "preference_model"
EVAL_FILE = "eval.json"   # the evaluation of a run's finished model (one of config.DERIVED_OUTPUTS)
# What only a trainer makes in a run folder (``python -m training`` accepts a non-empty output folder holding one).
RUN_MARKERS = tuple(f"{d}/train_config.json" for d in ("init", "best", "checkpoints/last")) + (
    ".init.tmp", ".best.tmp", "checkpoints/.last.tmp", TRAIN_LOCK_FILE, TRAINING_FILE)
RUNS_HEADER = b"# pickapic model runs: the versions a model was trained on, oldest first\n"
DELETING_PREFIX = ".deleting-"
RUNS_LOCK = "model-runs.lock"   # in HOME/.locks: shared by every training of `latest`, exclusive for retention


@dataclass(frozen=True)
class RunsConfig:
    """``[models]``: how many model run folders a home keeps (HOME/models/preference_model/<version>/)."""

    keep_runs: int = knob(3, "model run folders kept in HOME/models/preference_model: after each training of "
                             "`latest` the older runs beyond this many are deleted (never the run just trained "
                             "or the run of `latest`'s version); 0 = keep every run", min=0, output=False)

    def validate(self) -> "RunsConfig":
        check_fields(self)
        return self


@dataclass
class Retention:
    """What :func:`apply_run_retention` did: runs deleted, runs kept, and why a run it would delete was left."""

    deleted: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    left: dict[str, str] = field(default_factory=dict)


def run_dir(home: DataHome, version_dir: Path) -> Path:
    """The run folder of the model trained on ``version_dir`` (one per published version)."""
    return home.models / MODEL_NAME / Path(version_dir).name


def latest_version_dir(home: DataHome) -> Path:
    """The version folder `latest` points to, or a clear error when nothing is published."""
    try:
        return dataset.resolve_version(home)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"{error}; publish a dataset version first (pickapic build)") from None


def is_evaluated(home: DataHome) -> bool:
    """Whether the `latest` version has a trained (finished, not diverged) and evaluated model."""
    latest = dataset.latest_link(home)
    if not latest.exists():
        return False
    run = run_dir(home, latest.resolve())
    return (run / EVAL_FILE).is_file() and _finished(run) is None


def _finished(run: Path) -> str | None:
    """Why the run folder ``run`` holds no model of a finished training, or None when it finished.

    Finished is one fact the trainer keeps: ``metrics.json`` is there and neither ``training.json`` (written before
    a training changes the model, removed after it wrote ``metrics.json``: a training that was extended, started
    over, died or still runs) nor ``diverged.json`` (the trainer diverged) is."""
    if os.path.lexists(run / DIVERGED_FILE):
        data = read_small_file(run / DIVERGED_FILE, 1 << 20)
        try:
            record = parse_run_json(data, run / DIVERGED_FILE) if data is not None else {}
        except ValueError:
            record = {}
        step = record.get("step") if isinstance(record, dict) else None
        return (f"its training diverged{f' at step {step}' if type(step) is int else ''} ({run / DIVERGED_FILE}): "
                "change the recipe (a lower learning_rate, ...) and train it again")
    if os.path.lexists(run / TRAINING_FILE):
        return (f"its training did not finish ({run / TRAINING_FILE}: a training that changes its model started and "
                f"has not written {METRICS_FILE} for it: it stopped, failed or still runs; a {METRICS_FILE} there is "
                "of an earlier finish); train it to the end first (pickapic build --with-model)")
    if not (run / METRICS_FILE).is_file():
        return (f"its training did not finish (no {METRICS_FILE} in {run}: it stopped, failed or still runs); "
                "train it to the end first (pickapic build --with-model)")
    return _beyond_metrics(run)


def checkpoint_step(last: Path) -> int | None:
    """The step of the trainer state in ``last`` (``checkpoints/last/trainer_state.pt``), read without torch: only
    the state's pickle (``<archive>/data.pkl`` of torch's zip format, at most 64 MiB) is read, every class it names
    replaced by an inert stand-in and every tensor by None (nothing in it runs). None when it cannot be read."""
    path = Path(last) / "trainer_state.pt"
    try:
        with zipfile.ZipFile(path) as archive:
            names = [info for info in archive.infolist()
                     if info.filename.endswith("/data.pkl") and info.filename.count("/") == 1]
            if len(names) != 1 or names[0].file_size > 64 << 20:
                return None
            data = archive.read(names[0])
    except (OSError, zipfile.BadZipFile, RuntimeError, ValueError, EOFError):
        return None
    try:
        state = _InertUnpickler(io.BytesIO(data)).load()
    except Exception:   # noqa: BLE001 - anything a damaged or foreign pickle raises: the step is unknown
        return None
    step = state.get("step") if isinstance(state, dict) else None
    return step if type(step) is int else None


class _Inert:
    """What :func:`checkpoint_step` reads in place of any object the pickle names (tensors, optimizer classes)."""

    def __init__(self, *_args: Any, **_kwargs: Any) -> None:
        pass

    def __call__(self, *_args: Any, **_kwargs: Any) -> "_Inert":
        return _Inert()

    def __setstate__(self, _state: Any) -> None:
        pass

    def __setitem__(self, _key: Any, _value: Any) -> None:
        pass

    def append(self, _value: Any) -> None:
        pass

    def extend(self, _values: Any) -> None:
        pass


class _InertUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return dict
        return _Inert()

    def persistent_load(self, _pid: Any) -> Any:
        return None


def _beyond_metrics(run: Path) -> str | None:
    """Why ``run``'s model is past what its ``metrics.json`` describes (its ``checkpoints/last`` is at a later step
    than the ``steps`` there: a training, also one of a trainer that wrote no ``training.json``, extended the run
    and stopped before it wrote ``metrics.json``), or None (also when either step is unknown)."""
    steps = metrics_steps(run)
    step = checkpoint_step(run / "checkpoints" / "last") if steps is not None else None
    if step is None or step <= steps:
        return None
    return (f"its training did not finish (its checkpoints/last is at step {step}, past the {steps} steps "
            f"{run / METRICS_FILE} describes: a training that extended it stopped, failed or still runs); train it to "
            "the end first (pickapic build --with-model)")


def _finish_stamp(run: Path) -> tuple[Any, ...] | None:
    """What identifies the finished training of ``run``: the bytes of its ``metrics.json`` (every training that
    changes the model writes other ones: its steps, history or recipe differ) and its ``best/`` folder (replaced
    whole when the model changes); None when the run is not finished. A rerun that only evaluates again keeps it."""
    if _finished(run) is not None:
        return None
    data = read_small_file(run / METRICS_FILE, 256 << 20)
    try:
        best = os.stat(run / "best")
    except OSError:
        return None
    if data is None:
        return None
    return (hashlib.sha256(data).hexdigest(), best.st_dev, best.st_ino)


@contextlib.contextmanager
def hold_run(run: Path) -> Iterator[None]:
    """Hold ``run/.train.lock`` shared while a stage publishes into the run folder: no trainer (which holds it
    exclusive for its whole training) changes the model meanwhile, and stages do not exclude each other. Refused
    in one line, without waiting, while a trainer holds it."""
    path = run / TRAIN_LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    except OSError as exc:
        raise ValueError(f"cannot lock {path}: {exc.strerror or exc}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError(f"cannot lock {path}: not a regular file")
        if not try_lock(fd, fcntl.LOCK_SH):
            raise ValueError(f"a trainer is writing {run} (it holds {path}): nothing is written about its model; "
                             "run this stage again once the training finished")
        yield
    finally:
        os.close(fd)


@dataclass
class Publication:
    """What :func:`publishing` yields to a stage: the run, its model, and where to write each output."""

    run: Path
    best: Path
    staged: dict[str, Path]
    version_dir: Path | None = None

    def path(self, name: str) -> Path:
        """Where the stage writes the output ``name`` (a staging name, or its place while the lock is held)."""
        return self.staged[name]

    def final(self, path: Any) -> Any:
        """``path`` (a str or Path the stage holds) with a staging name replaced by the published one."""
        text = str(path)
        for name, staged in self.staged.items():
            if text == str(staged) or text.startswith(str(staged) + os.sep):
                text = str(self.run / name) + text[len(str(staged)):]
                break
        return type(path)(text) if isinstance(path, (str, Path)) else text


@contextlib.contextmanager
def publishing(run: Path, *outputs: str, hold: bool = False) -> Iterator[Publication]:
    """Let a stage write ``outputs`` (names in the run folder ``run``: ``eval.json``, ``best_of_n``, ...) about the
    model of ``run`` (refused unless its training finished: :func:`_finished`).

    ``hold=False``: the stage computes without the run's lock and writes each output under a staging name
    (:meth:`Publication.path`); then, holding the lock (:func:`hold_run`), the run is checked to be the same
    finished training it was when the stage started (:func:`_finish_stamp`) and only then are the outputs renamed
    into place. When it is not (a training changed the model meanwhile) the staged outputs are removed and the
    stage fails: a stale stage never replaces or removes a published output, and a stage killed before the rename
    leaves only a staging name (removed by the next training). ``hold=True``: the lock is held for the whole stage
    (no training starts meanwhile) and the outputs are written in place."""
    why = _finished(run)
    if why is not None:
        raise ValueError(f"nothing written about the model in {run}: {why}")
    best = run / "best"
    if hold:
        with hold_run(run):
            why = _finished(run)
            if why is not None:
                raise ValueError(f"nothing written about the model in {run}: {why}")
            yield Publication(run, best, {name: run / name for name in outputs})
        return
    stamp = _finish_stamp(run)
    token = f"{os.getpid()}.{secrets.token_hex(4)}"
    staged = {name: run / f"{STAGING_PREFIX}{name}.{token}" for name in outputs}
    publication = Publication(run, best, staged)
    try:
        yield publication
        with hold_run(run):
            if stamp is None or _finish_stamp(run) != stamp:
                raise ValueError(f"the model in {run} changed while {', '.join(outputs)} was written about it (a "
                                 "training started or finished meanwhile): nothing published; run this stage again "
                                 "once the training finished")
            for name, path in staged.items():
                if os.path.lexists(path):
                    final = run / name
                    if os.path.isdir(path) and os.path.isdir(final) and not os.path.islink(final):
                        old = run / f"{STAGING_PREFIX}{name}.{token}.old"
                        final.rename(old)
                        path.rename(final)
                        remove_run_path(old, ignore_errors=True)
                    else:
                        path.rename(final)
    finally:
        for path in staged.values():
            remove_run_path(path, ignore_errors=True)


@contextlib.contextmanager
def publishing_for_model(home: DataHome, *outputs: str, hold: bool = False) -> Iterator[Publication]:
    """:func:`publishing` into the run of the model trained on `latest` (:func:`trained_model`); the publication's
    ``version_dir`` is `latest`'s version."""
    version_dir, best = trained_model(home)
    with publishing(best.parent, *outputs, hold=hold) as publication:
        publication.version_dir = version_dir
        yield publication


def trained_model(home: DataHome) -> tuple[Path, Path]:
    """(version folder, ``best/`` model folder) of the model trained on `latest`; an error when there is none,
    or when its run did not finish (diverged, stopped, or still training): its ``best/`` is no trained model."""
    version_dir = latest_version_dir(home)
    run = run_dir(home, version_dir)
    best = run / "best"
    if not best.is_dir():
        raise FileNotFoundError(f"no trained model for {version_dir.name} at {best}; train one first "
                                "(pickapic build --with-model)")
    why = _finished(run)
    if why is not None:
        raise ValueError(f"no trained model for {version_dir.name} in {run}: {why}")
    return version_dir, best


def runs_folder(home: DataHome) -> Path:
    """``HOME/models/preference_model``: one run folder per version a model was trained on."""
    return home.models / MODEL_NAME


def runs_file(home: DataHome) -> Path:
    """``HOME/models/preference_model.runs``: the versions a model was trained on, oldest first."""
    return home.models / f"{MODEL_NAME}.runs"


def read_runs(home: DataHome) -> list[str]:
    """The versions of the record of runs, oldest first (a version trained twice counts where it was last);
    empty when there is no record this tool wrote."""
    order: dict[str, None] = {}
    for name in dataset.read_names(runs_file(home), RUNS_HEADER) or []:
        order.pop(name, None)
        order[name] = None
    return list(order)


def _write_runs(home: DataHome, names: list[str], new: str | None = None) -> str | None:
    """Replace the record of runs with ``names`` (those with a run folder) and then ``new`` (a run about to
    start, whose folder the trainer makes); why it was not written, or None. Something at its path this tool
    did not write is left as it is."""
    path = runs_file(home)
    if dataset.read_names(path, RUNS_HEADER) is None and os.path.lexists(path):
        return (f"{path} is not a record of runs this tool wrote: left as it is, so runs are ordered by their "
                "version names; remove it to let training keep the record again")
    folder = runs_folder(home)
    try:
        dataset.write_names(path, RUNS_HEADER, [n for n in names if n != new and is_real_folder(folder / n)]
                            + ([new] if new else []), fsync=True)
    except OSError as exc:
        what = ("was written but its folder was not synced" if isinstance(exc, dataset.RecordNotSynced)
                else "was not written")
        return f"the record of runs {path} {what} ({exc.strerror or exc})"
    return None


@contextlib.contextmanager
def _runs_lock(home: DataHome, progress: Progress | None = None) -> Iterator[int]:
    """Hold ``HOME/.locks/model-runs.lock`` shared (every training of `latest` holds it while it trains; retention
    takes it exclusive, without waiting) and yield its descriptor. While a retention holds it, say so through
    ``progress`` and wait."""
    fd = open_lock_file(home.locks / RUNS_LOCK, "the model runs")
    try:
        if not try_lock(fd, fcntl.LOCK_SH):
            if progress is not None:
                progress(f"waiting for a model run retention to finish (it holds {home.locks / RUNS_LOCK})")
            fcntl.flock(fd, fcntl.LOCK_SH)
        yield fd
    finally:
        os.close(fd)


def _record_run(home: DataHome, version: str) -> str | None:
    """Record ``version`` as the newest run (before its training starts); why it was not recorded, or None."""
    with hold_lock(home.locks / f"{RUNS_LOCK}.record", "the record of model runs", lambda _holder: None):  # waits
        return _write_runs(home, read_runs(home), new=version)


# --------------------------------------------------------------------------- retention
DEPTH_LIMIT = 8            # a trainer's run folder is 3 folders deep (checkpoints/.last.tmp/<files>)
ENTRY_LIMIT = 100_000      # files and folders in one run (a trainer writes a few dozen)
HIDDEN_RUN = re.compile(re.escape(DELETING_PREFIX) + dataset.VERSION_NAME.pattern + r"(\.[0-9]{1,2})?")
FS_IOC_GETFLAGS = 0x80086601                 # <linux/fs.h>, _IOR('f', 1, long)
PINNED_FLAGS = 0x10 | 0x20                   # FS_IMMUTABLE_FL, FS_APPEND_FL: no name in or of it may go


def _mount_points() -> list[str] | None:
    """The mount points of this process's mount namespace (``/proc/self/mountinfo``), or None where unreadable."""
    try:
        text = Path("/proc/self/mountinfo").read_text(encoding="utf-8", errors="surrogateescape")
    except OSError:
        return None
    points = []
    for line in text.splitlines():
        fields = line.split(" ")
        if len(fields) > 4:
            points.append(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4]))
    return points


def _pinned(fd: int) -> bool:
    """Whether the open file or folder is immutable or append-only (then no name in it, or of it, can go)."""
    flags = array.array("i", [0])
    try:
        fcntl.ioctl(fd, FS_IOC_GETFLAGS, flags, True)
    except OSError:
        return False             # a file system without these flags
    return bool(flags[0] & PINNED_FLAGS)


def _undeletable(path: Path) -> str | None:
    """Why this account could not delete the whole of the real folder ``path`` (read with its run's lock held),
    or None. Checked before anything is renamed, so a run is deleted whole or left whole: no mount point in it
    (``/proc/self/mountinfo``, so a bind mount of the same file system counts), no folder it may not change, no
    immutable or append-only file or folder, no other account's file in a sticky folder (unless this account
    owns that folder), at most :data:`DEPTH_LIMIT` folders deep and :data:`ENTRY_LIMIT` entries (a trainer's
    run is 3 deep with a few dozen files). Walked with a list, never by recursion."""
    real = os.path.realpath(path)
    mounts = _mount_points()
    if mounts is not None:
        inside = [point for point in mounts if point == real or point.startswith(real + "/")]
        if inside:
            return f"{inside[0]} is a mount point (another file system or a bind mount)"
    euid = os.geteuid()
    device = os.lstat(path).st_dev
    stack, entries = [(path, 0)], 0
    while stack:
        folder, depth = stack.pop()
        if depth > DEPTH_LIMIT:
            return f"{folder} is more than {DEPTH_LIMIT} folders deep: not a trainer's run"
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            info = os.fstat(fd)
            if info.st_dev != device:
                return f"{folder} is another file system (a mount point)"
            if not os.access(folder, os.R_OK | os.W_OK | os.X_OK, effective_ids=os.access in os.supports_effective_ids):
                return f"this account may not delete the files in {folder}"
            if _pinned(fd):
                return f"{folder} is immutable or append-only"
            sticky = bool(info.st_mode & stat.S_ISVTX) and euid != 0 and info.st_uid != euid
            with os.scandir(fd) as listing:
                for entry in listing:
                    entries += 1
                    if entries > ENTRY_LIMIT:
                        return f"more than {ENTRY_LIMIT} files and folders: not a trainer's run"
                    item = entry.stat(follow_symlinks=False)
                    if sticky and item.st_uid != euid:
                        return f"{folder}/{entry.name} is another account's, in a sticky folder"
                    if stat.S_ISDIR(item.st_mode):
                        stack.append((folder / entry.name, depth + 1))
                    elif stat.S_ISREG(item.st_mode):
                        try:
                            file_fd = os.open(entry.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                                              dir_fd=fd)
                        except OSError as exc:   # its flags cannot be read: an immutable file would stay
                            return f"{folder}/{entry.name} cannot be checked ({exc.strerror or exc})"
                        try:
                            if _pinned(file_fd):
                                return f"{folder}/{entry.name} is immutable or append-only"
                        finally:
                            os.close(file_fd)
        finally:
            os.close(fd)
    return None


def _remove_hidden(hidden: Path) -> str | None:
    """Delete a run already renamed out of the way; why some of it stayed, or None."""
    errors: list[str] = []
    shutil.rmtree(hidden, onerror=lambda _f, name, exc: errors.append(f"{name}: {exc[1]}"))
    return f"partly deleted, {hidden} stays: {errors[0]}" if errors else None


def _delete_run(folder: Path, name: str) -> str | None:
    """Delete the run folder ``folder/name`` unless a trainer writes it; why it was left, or None when deleted.

    It must be a real folder (never a link) holding something only a trainer makes (:data:`RUN_MARKERS`). Its
    lock file is taken without waiting (created when missing, so a trainer that opens it after this sees the
    same file), then, with the lock held, the run is checked whole (:func:`_undeletable`) and renamed to a hidden
    ``.deleting-<name>``; the hidden folder is then deleted (a crash leaves it for the next retention, never a
    half run under the version's name)."""
    path = folder / name
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return "gone already"
    if not stat.S_ISDIR(info.st_mode):
        return "not a folder (left as it is)"
    if not any(os.path.lexists(path / marker) for marker in RUN_MARKERS):
        return "not a run folder a trainer made (no train_config.json or lock file in it): left as it is"
    try:
        dir_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        return f"not deleted: {exc.strerror or exc}"
    try:
        try:
            fd = os.open(TRAIN_LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                         0o666, dir_fd=dir_fd)
        except OSError as exc:
            return f"not deleted: its {TRAIN_LOCK_FILE} cannot be opened ({exc.strerror or exc})"
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return f"not deleted: its {TRAIN_LOCK_FILE} is not a regular file"
            try:
                if not try_lock(fd):
                    return "a trainer is writing it (it holds its lock): kept for now"
            except OSError as exc:
                return f"not deleted: its {TRAIN_LOCK_FILE} cannot be locked ({exc.strerror or exc})"
            try:
                here, locked = os.lstat(path), os.fstat(dir_fd)
                same = (here.st_dev, here.st_ino) == (locked.st_dev, locked.st_ino)
                problem = _undeletable(path) if same else "another folder was put in its place while it was locked"
            except (OSError, RecursionError) as exc:
                problem = f"it changed while it was checked ({getattr(exc, 'strerror', None) or exc})"
            if problem:
                return f"left whole: {problem}"
            hidden = next((candidate for candidate in (folder / f"{DELETING_PREFIX}{name}",
                                                       *(folder / f"{DELETING_PREFIX}{name}.{n}" for n in range(1, 100)))
                           if not os.path.lexists(candidate)), None)
            if hidden is None:
                return f"not deleted: 100 earlier {DELETING_PREFIX}{name} folders are still there"
            try:
                os.rename(path, hidden)    # the run disappears at once, whole, then its files go
            except OSError as exc:
                return f"not deleted: {exc.strerror or exc}"
        finally:
            os.close(fd)
    finally:
        os.close(dir_fd)
    return _remove_hidden(hidden)


def _has_model(run: Path) -> bool:
    """Whether ``run`` holds the model of a finished training (a diverged or unfinished run's best/ is none)."""
    return (run / "best" / CONFIG_FILE).is_file() and _finished(run) is None


def _started_from(home: DataHome, run: Path) -> set[str]:
    """The run folders (names) of this home that ``run``'s ``init_from`` points into: a warm start from an
    earlier run's ``best/`` (the run's evaluation builds its untrained model from there again)."""
    folder = os.path.realpath(runs_folder(home))
    names = set()
    for sub in ("init", "best", "checkpoints/last"):
        data = read_small_file(run / sub / CONFIG_FILE, 1 << 20)
        if data is None:
            continue
        try:
            stored = parse_run_json(data, run / sub / CONFIG_FILE).get("init_from")
        except (ValueError, AttributeError):
            continue
        if not isinstance(stored, str) or stored in ("", "scratch"):
            continue
        try:
            path = os.path.realpath(from_home(stored, home.root))
        except ValueError:
            continue
        if path.startswith(folder + "/"):
            names.add(Path(path).relative_to(folder).parts[0])
    return names


def apply_run_retention(home: DataHome, keep: int, protect: Iterable[str] = ()) -> Retention:
    """Delete recorded run folders beyond the newest ``keep`` that hold a model (0: none deleted); never one named
    in ``protect`` (the run just trained, `latest`'s version), one a kept run started from (``init_from``), one a
    trainer writes, or a run the record of runs does not name.

    Only runs a training of `latest` recorded when it started (:func:`read_runs`, newest last) are ever deleted:
    a run trained before the record began, one trained by hand into a folder there (``python -m training
    --output-dir``), or any other folder stays (reported in ``kept``). A recorded run without a model (a training
    that died before its first checkpoint, or before it finished: no ``metrics.json``; one that diverged) newer
    than the oldest kept model stays too, without counting: it may be resumed or trained over. Leftovers of a
    retention that died while deleting (``.deleting-<version>``) go first. The record is rewritten without the
    deleted runs. Never raises for a run it cannot delete: ``left`` says why."""
    result = Retention()
    folder = runs_folder(home)
    if not is_real_folder(folder):
        return result
    fd = open_lock_file(home.locks / RUNS_LOCK, "the model runs")
    try:
        if not try_lock(fd):
            result.left["*"] = "another training of `latest` is running: runs are deleted after the next one"
            return result
        protect = set(protect)
        with contextlib.suppress(OSError, FileNotFoundError):
            protect.add(dataset.resolve_version(home).name)   # `latest` now, read with the runs lock held
        entries = sorted(os.listdir(folder))
        for name in entries:   # an earlier retention's leftovers (it died while deleting)
            if HIDDEN_RUN.fullmatch(name) and is_real_folder(folder / name):
                try:
                    problem = _undeletable(folder / name)
                except (OSError, RecursionError) as exc:
                    problem = str(exc)
                why = f"left whole: {problem}" if problem else _remove_hidden(folder / name)
                if why:
                    result.left[name] = why
        runs = [name for name in entries if dataset.VERSION_NAME.fullmatch(name) and is_real_folder(folder / name)]
        run_set = set(runs)
        recorded = [name for name in read_runs(home) if name in run_set]   # oldest first
        if keep <= 0:
            result.kept = runs
            return result
        protected = set(protect) & run_set
        kept, budget = set(protected), keep - len(protected)
        for name in reversed(recorded):      # newest first
            if name not in protected and budget > 0:
                kept.add(name)
                budget -= _has_model(folder / name)
        kept |= run_set - set(recorded)
        # a run that stays keeps the run it started from (its evaluation builds the untrained model there again);
        # one level only, so a chain of weekly warm starts does not keep every run for good
        starts = {name: _started_from(home, folder / name) & run_set for name in kept}
        kept |= set().union(*starts.values())
        deleted: list[str] = []
        for name in reversed(recorded):      # newest first: a run left in place keeps its warm start
            if name in kept:
                continue
            why = _delete_run(folder, name)
            if why is None:
                deleted.append(name)
                continue
            result.left[name] = why
            kept.add(name)
            kept |= _started_from(home, folder / name) & (run_set - set(deleted))
        result.deleted = sorted(deleted)
        result.kept = [name for name in runs if name not in deleted]
        if result.deleted:
            problem = _write_runs(home, [name for name in read_runs(home) if name not in result.deleted])
            if problem:
                result.left["record"] = problem
        return result
    finally:
        os.close(fd)


@dataclass
class TrainedLatest:
    """What :func:`train_latest` did: the version trained on, the config the run used, its result, and the run
    retention after it (None when the run was not in the home's run folders)."""

    version_dir: Path
    config: "TrainConfig"
    result: "TrainResult"
    retention: Retention | None = None


def train_latest(home: DataHome, config: "TrainConfig", progress: Progress | None = None,
                 keep_runs: int = 0, warn: Callable[[str], None] | None = None) -> TrainedLatest:
    """Train (or resume) on `latest` into its run folder unless ``config`` names other folders.

    ``progress`` hears one line per logged step. ``warn`` (``progress`` when None) hears the notes that are
    problems: what run retention could not do, a run the record of runs does not hold, a diverged run trained over
    (review rev31l: the Dagster step logged them at INFO, so ``pickapic build --with-model`` showed none). A run
    into the home's own run folder (``config`` names no ``output_dir``) is recorded as the newest run before it
    starts, and once it has finished the runs beyond the newest ``keep_runs`` are deleted
    (:func:`apply_run_retention`; 0 keeps them all). Retention never fails a training that finished: what it could
    not do is in the result's ``retention.left``.

    A ``data_dir`` names the version trained on (`latest` otherwise): without an ``output_dir`` the run folder is
    that version's own (``HOME/models/preference_model/<its name>``: a run folder always holds a model of the
    version it is named after), and such a ``data_dir`` must be a version of this home. An ``output_dir`` is
    checked as ``pickapic train --output-dir`` checks it (:func:`check_run_output_dir`) before anything is read
    or written.
    """
    from training.train import train

    note = warn if warn is not None else progress

    def on_event(event: dict[str, Any]) -> None:
        if progress is not None and "step" in event and "loss" in event:
            progress(f"step {event['step']}: loss {event['loss']:.4f}")
        elif note is not None and event.get("event") in ("restart", "warning"):   # a diverged run trained over;
            note(str(event["message"]))                                          # a selection split of ties only

    with contextlib.ExitStack() as reading:
        if config.output_dir:
            check_run_output_dir(config.output_dir, home)
            version_dir = _version_to_read(home, config, reading)
            check_run_folder_version(config.output_dir, home, version_dir)
            config = config.replace(data_dir=str(version_dir))
            return TrainedLatest(version_dir, config, train(config, on_event=on_event))
        with _runs_lock(home, progress):   # `latest` read with the lock held: no retention between it and the record
            version_dir = _version_to_read(home, config, reading)
            if config.data_dir and version_dir.parent != home.datasets.resolve():
                raise ValueError(f"data_dir {config.data_dir} is {version_dir}, not a dataset version of the data "
                                 f"home {home.root}: a run folder of {runs_folder(home)} is named after the version "
                                 "it trains on; give output_dir too (a folder outside the home's pipeline folders)")
            config = config.replace(data_dir=str(version_dir), output_dir=str(run_dir(home, version_dir)))
            problem = _record_run(home, version_dir.name)
            if problem and note is not None:
                note(problem)
            result = train(config, on_event=on_event)
    try:   # retention protects `latest`'s run itself, read with the runs lock held (it may have moved meanwhile)
        retention = apply_run_retention(home, keep_runs, {version_dir.name})
    except (OSError, LockFileRefused, RecursionError) as exc:   # the training succeeded: this fails nothing
        why = f"{exc.strerror} ({exc.filename})" if isinstance(exc, OSError) and exc.strerror else str(exc)
        retention = Retention(left={"*": f"no model run was deleted: {why}"})
    if progress is not None:
        for name in retention.deleted:
            progress(f"deleted the model run {name} (models.keep_runs = {keep_runs})")
    if note is not None:   # what retention could not do: the runs are no longer bounded by keep_runs
        for name, why in retention.left.items():
            note(why if name in ("*", "record") else f"model run {name}: {why}")
    return TrainedLatest(version_dir, config, result, retention)


def check_run_output_dir(output_dir: str | os.PathLike, home: DataHome, flag: str = "output_dir") -> Path:
    """A run folder a caller names (run config, the settings file's ``train.output_dir``) checked as ``pickapic
    train --output-dir`` is (:func:`formats.outputs.check_output_dir`): a new or empty folder or an earlier run's
    (:data:`RUN_MARKERS`), never a symbolic link, a device or a file, and inside a data home only under its
    ``models/`` (never a published version, the warehouse, ...); a :class:`formats.outputs.RefusedOutput`
    (a ``ValueError``) naming ``flag`` otherwise. Returns the absolute path."""
    from formats.outputs import check_output_dir

    return check_output_dir(output_dir, [home.root], flag, in_home=True, markers=list(RUN_MARKERS))


def check_run_folder_version(output_dir: str | os.PathLike, home: DataHome, version_dir: Path,
                             flag: str = "output_dir") -> None:
    """Refuse an ``output_dir`` inside the home's :func:`runs_folder` other than the run folder of the version
    trained on (``version_dir``): a run folder holds only a model of the version it is named after (review rev28e:
    an older version trained into `latest`'s run folder was published as `latest`'s model), and the folder itself,
    another version's run folder, a folder inside a run folder and retention's ``.deleting-<version>`` are never a
    run's output. A :class:`formats.outputs.RefusedOutput` naming ``flag``; links are resolved as the check of the
    output folder resolves them."""
    from formats.outputs import RefusedOutput

    final = Path(os.path.realpath(Path(output_dir).expanduser()))    # a relative one against the working folder
    folder = Path(os.path.realpath(runs_folder(home)))
    if final != folder and folder not in final.parents:
        return
    own = folder / Path(version_dir).name
    if final != own:
        raise RefusedOutput(f"{flag} {output_dir}: {final} is {'the' if final == folder else 'inside the'} folder of "
                            f"the home's model runs, where a run folder is named after the version it trains on and "
                            f"holds only its model; this training reads {Path(version_dir).name}: give {own} or a "
                            "folder outside it")


def _version_to_read(home: DataHome, config: "TrainConfig", reading: contextlib.ExitStack) -> Path:
    """The version the training reads: its ``data_dir`` resolved (a version folder, or a folder holding ``latest``),
    else `latest`'s version; held for reading from now on (:func:`formats.dataset.reading_resolved`, until
    ``reading`` closes): the publish's retention keeps it, and a `latest` it deleted between the two is resolved
    again."""
    if config.data_dir:
        return reading.enter_context(dataset.reading_data_dir(config.data_dir))
    return reading.enter_context(dataset.reading_resolved(lambda: latest_version_dir(home), True))


def evaluate_latest(home: DataHome, summary: Path | None = None) -> tuple["EvalResult", Path]:
    """Evaluate the model trained on `latest` and write its ``eval.json``: the tie threshold chosen on the run's
    own ``eval_split`` (where its checkpoint was selected), the accuracy reported on its ``test_split``, as its
    ``metrics.json``; refused in one line when the two are one split (the checkpoint's own selection split is no
    held-out report).

    ``summary``: a simulation's ``summary.json``, for the Bayes-optimal accuracy (None: not reported).
    """
    from training.config import home_relative
    from training.evaluate import evaluate_model

    with publishing_for_model(home, EVAL_FILE) as published:   # staged, published once the model is unchanged
        selection, held_out = run_splits(published.best)
        result = evaluate_model(published.best, published.version_dir, selection, held_out, ground_truth=summary)
        result.model_dir = home_relative(str(published.best), home.root)  # as metrics.json: no absolute path
        write_bytes_atomic(published.path(EVAL_FILE),
                           (json.dumps(result.to_dict(), indent=1, sort_keys=True) + "\n").encode())
    return result, published.run / EVAL_FILE


def run_splits(best: Path) -> tuple[str, str]:
    """(eval_split, test_split) the run of the model ``best`` trained with (its ``train_config.json``; the
    defaults, validation_unique and test_unique, for a model without one); a ``ValueError`` when they are one split
    (a ``*_unique`` split repeats rows of its plain one)."""
    from training.config import HELD_OUT, TrainConfig

    if (Path(best) / CONFIG_FILE).is_file():
        config = TrainConfig.load(Path(best), resolve=False)
        selection, held_out = config.eval_split, config.test_split
    else:
        selection, held_out = "validation_unique", "test_unique"
    if selection.removesuffix(HELD_OUT) == held_out.removesuffix(HELD_OUT) or "train" in (selection, held_out):
        raise ValueError(f"the model in {best} chose its checkpoint and tie threshold on the split {selection!r} and "
                         f"its run reports on {held_out!r}: not two different held-out splits, so no held-out "
                         "accuracy can be reported for it; train it again with eval_split and test_split two "
                         "different held-out splits")
    return selection, held_out


def true_quality_table(models_json: Path, pair_name: Callable[[str], str], out: Path) -> Path:
    """A simulation's ``models.json`` keyed by the names pairs use (``pair_name(model_id)``), written to ``out``."""
    models: Mapping[str, Any] = json.loads(Path(models_json).read_text(encoding="utf-8"))
    table = {pair_name(model_id): {"quality": entry["true_quality"], "model_id": model_id}
             for model_id, entry in sorted(models.items()) if entry.get("true_quality") is not None}
    write_bytes_atomic(out, (json.dumps(table, indent=1, sort_keys=True) + "\n").encode())
    return out


def rank_latest(home: DataHome, true_quality: Path | None = None, models_json: Path | None = None,
                pair_name: Callable[[str], str] | None = None) -> "LeaderboardResult":
    """The generator leaderboard of the model trained on `latest` (``true_quality``: a ``true_quality_table``; or
    ``models_json`` and ``pair_name``: a simulation's ``models.json``, published beside it as ``true_quality.json``).
    Both are staged and published together once the model is known unchanged (:func:`publishing`)."""
    from training.leaderboard import generator_leaderboard

    outputs = ("leaderboard.png",) + (("true_quality.json",) if models_json is not None else ())
    with publishing_for_model(home, *outputs) as published:   # staged, published once the model is unchanged
        if models_json is not None:
            true_quality = true_quality_table(models_json, pair_name or str, published.path("true_quality.json"))
        result = generator_leaderboard(published.version_dir, published.best, true_quality,
                                       chart_path=published.path("leaderboard.png"))
    result.chart_path = published.final(result.chart_path) if result.chart_path else None
    return result
