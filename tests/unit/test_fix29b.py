"""Fixes of review rev29b (tests/unit/test_hostile_rev29b.py): a Ctrl-C / SIGTERM between a build's Dagster runs
stops the build; each stage sweeps the temporary files its killed writers left, under the lock they write under.

The end-to-end crash and signal runs are the review's own tests; here: the signal path with a hook that fires in
this Dagster (its run-success event is ``PIPELINE_SUCCESS``), and fast checks of each sweep, of what it leaves
(other names, links, folders, a live writer's file), and of the JPEG writer that finds its temporary file swept.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from formats.files import create_temp, sweep_temps_of
from formats.home import DataHome
from formats.locks import CACHE_WRITERS_LOCK, sweep_exclusively, writing_shared
from formats.settings import write_settings
from simulator import SimConfig, simulate
from tests.conftest import default_signals
from tests.fast_tmp import fast_folder

REPO = Path(__file__).resolve().parents[2]
HEX = "0123456789ab"

# `pickapic build` that signals itself (FIX29B_SIG) the moment its first Dagster run has succeeded; Dagster names
# that event PIPELINE_SUCCESS (DagsterEventType.RUN_SUCCESS's value), so the enum is compared, not a string
SIGNAL_AFTER_FIRST_RUN = r"""
import os, signal, sys
from dagster._core.events import DagsterEventType
from dagster._core.instance import DagsterInstance
original, sent = DagsterInstance.handle_new_event, []
def handle_new_event(self, event, *args, **kwargs):
    result = original(self, event, *args, **kwargs)
    dagster_event = getattr(event, "dagster_event", None)
    if dagster_event is not None and dagster_event.event_type == DagsterEventType.RUN_SUCCESS and not sent:
        sent.append(True)
        with open(os.environ["FIX29B_SENT"], "w") as marker:
            marker.write("sent")
        os.kill(os.getpid(), getattr(signal, os.environ["FIX29B_SIG"]))
    return result
DagsterInstance.handle_new_event = handle_new_event
from dagster_project.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PICKAPIC_FAULT", "PICKAPIC_HOME", "DAGSTER_HOME")}
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(extra)
    return env


@pytest.mark.parametrize("sig, code, word", [("SIGINT", 130, "interrupted"), ("SIGTERM", 143, "terminated")])
def test_a_signal_as_a_run_ends_stops_the_build(tmp_path: Path, sig: str, code: int, word: str) -> None:
    sim = SimConfig(days=1, users=12, rankings_per_day=25, image_size=64, seed=3)
    with fast_folder(tmp_path) as folder:
        home = DataHome(folder / "home")
        simulate(home, sim)
        write_settings(home.root, {"splits.min_users": 3, "splits.min_unique_rows": 1})
        sent = folder / "sent"
        proc = subprocess.run([sys.executable, "-c", SIGNAL_AFTER_FIRST_RUN, "build", "--home", str(home.root)],
                              cwd=REPO, env=_env(FIX29B_SIG=sig, FIX29B_SENT=str(sent)), capture_output=True,
                              text=True, timeout=300, start_new_session=True, check=False,
                              preexec_fn=default_signals)
        output = proc.stdout + proc.stderr
        assert sent.read_text() == "sent", "the hook never signalled the build"
        assert proc.returncode == code, f"exit {proc.returncode}:\n{output[-3000:]}"
        assert output.rstrip().endswith(word) and "Traceback" not in output, output[-3000:]
        assert "built" not in output, output[-3000:]
        assert not os.path.lexists(home.datasets / "latest"), "a build that was stopped published a version"
        # the day's ingest finished before the signal; the rebuild (curation .. publish) never started
        assert home.partition_file("image_features", sim.day(0)).is_file()
        assert not home.table_file("duplicate_clusters").exists()


def test_signals_seen_reads_what_a_recording_handler_swallowed() -> None:
    """What Dagster does for a run (its handler records SIGINT / SIGTERM, then it puts SIGINT's handler back on both):
    the signal is still seen, and each handler is the one before the run again."""
    from dagster_project.build import signals_seen

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    with signals_seen() as stopped:
        recorded = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda signum, frame: recorded.append(signum))
        assert stopped() is None
        os.kill(os.getpid(), signal.SIGTERM)
        while not recorded:        # the handler runs at the next bytecode boundary of the main thread
            pass
        signal.signal(signal.SIGINT, before[signal.SIGINT])
        signal.signal(signal.SIGTERM, before[signal.SIGINT])   # as dagster's capture_interrupts leaves it
        assert stopped() == signal.SIGTERM
    assert {sig: signal.getsignal(sig) for sig in before} == before
    with signals_seen() as stopped:
        assert stopped() is None   # a new watch: nothing from before


def test_cli_says_terminated_for_a_sigterm_the_build_saw(monkeypatch, capsys) -> None:
    from dagster_project import cli
    from dagster_project.build import BuildInterrupted

    def stopped(args):
        raise BuildInterrupted(signal.SIGTERM)

    monkeypatch.setattr(cli, "_cmd_build", stopped)
    assert cli.main(["build", "--home", "/nonexistent-fix29b"]) == 143
    assert capsys.readouterr().err.strip() == "terminated"

    def interrupted(args):
        raise BuildInterrupted(signal.SIGINT)

    monkeypatch.setattr(cli, "_cmd_build", interrupted)
    assert cli.main(["build", "--home", "/nonexistent-fix29b"]) == 130
    assert capsys.readouterr().err.strip() == "interrupted"


def _temp(folder: Path, name: str, token: str = HEX) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f".{name}.{token}.tmp"
    path.write_bytes(b"partial")
    return path


def test_sweep_temps_of_removes_exactly_the_named_finals_temporary_files(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    gone = [_temp(a, "data.parquet"), _temp(a, "data.parquet", "ba9876543210"), _temp(b, "x.jpg")]
    kept = [_temp(a, "other.parquet"), _temp(b, "y.jpg"), b / "x.jpg", a / ".data.parquet.0123.tmp",
            a / ".data.parquet.0123456789ab.tmp.bak"]
    for path in kept[2:]:
        path.write_bytes(b"keep")
    link = a / f".data.parquet.{'c' * 12}.tmp"
    link.symlink_to(b / "y.jpg")
    folder = a / f".data.parquet.{'d' * 12}.tmp"
    folder.mkdir()
    notes = sweep_temps_of([a / "data.parquet", b / "x.jpg", tmp_path / "absent" / "z"])
    assert [p for p in gone if os.path.lexists(p)] == []
    assert all(p.exists() for p in kept) and link.is_symlink() and folder.is_dir()
    assert len(notes) == 2 and all("left as it is" in n for n in notes)
    # a link at the folder: followed only when asked (the writers write through it), never with follow=False
    linked = tmp_path / "linked"
    linked.symlink_to(b)
    again = _temp(b, "y.jpg", "e" * 12)
    assert sweep_temps_of([linked / "y.jpg"], follow=False) == [] and again.exists()
    assert sweep_temps_of([linked / "y.jpg"]) == [] and not again.exists()


def test_splits_sweep_takes_its_own_writers_files_only(tmp_path: Path) -> None:
    from pipelines.splits.assign import sweep_split_temps
    from pipelines.splits.coverage import LEDGER_VERSIONS_FILE, salts_file

    home = DataHome(tmp_path / "home")
    own = [_temp(home.table_dir(t), "data.parquet") for t in ("split_pairs", "split_rejects", "split_ledger",
                                                               "split_key_owners")]
    own += [_temp(salts_file(home).parent, salts_file(home).name), _temp(home.cache, LEDGER_VERSIONS_FILE)]
    others = [_temp(home.table_dir("pairs"), "data.parquet"), _temp(home.datasets.parent, "pickapic.history"),
              _temp(home.cache, "raw_day_digests.json")]
    assert sweep_split_temps(home) == []
    assert [p for p in own if p.exists()] == [] and all(p.exists() for p in others)


def test_curation_write_sweeps_its_table_only_and_never_a_live_writers_file(tmp_path: Path, monkeypatch) -> None:
    """A process that writes ``decisions`` holds the curation lock with its temporary file there; another run's
    write of the table waits for it (saying so) and only then sweeps: the live file is renamed into place by its
    writer, never removed; a killed writer's file of the table is removed, another table's is not."""
    from pipelines.curation.writing import writing_table

    home = DataHome(tmp_path / "home")
    dead = _temp(home.table_dir("decisions"), "data.parquet", "f" * 12)
    other = _temp(home.table_dir("pairs"), "data.parquet", "f" * 12)
    child = subprocess.Popen([sys.executable, "-c", r"""
import os, sys
from pathlib import Path
from formats.files import create_temp
from formats.home import DataHome
from pipelines.curation.writing import writing_table
home = DataHome(Path(sys.argv[1]))
with writing_table(home, "decisions") as final:
    fd, name = create_temp(final.parent, final.name)
    os.write(fd, b"live")
    os.close(fd)
    print(name, flush=True)
    sys.stdin.readline()
    os.replace(final.parent / name, final)
"""[1:], str(home.root)], cwd=REPO, env=_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        live = home.table_dir("decisions") / child.stdout.readline().strip()
        assert live.is_file() and not dead.exists(), "the writer's own sweep did not run first"
        dead = _temp(home.table_dir("decisions"), "data.parquet", "e" * 12)   # killed meanwhile
        waiting, done = threading.Event(), threading.Event()

        class Stderr:
            def write(self, text: str) -> int:
                if "waiting for another curation run" in text:
                    waiting.set()
                return len(text)

            def flush(self) -> None:
                pass

        monkeypatch.setattr(sys, "stderr", Stderr())

        def write() -> None:
            with writing_table(home, "decisions") as final:
                done.set()
                assert final == home.table_file("decisions")

        thread = threading.Thread(target=write)
        thread.start()
        assert waiting.wait(120), "the second write did not wait for the lock"
        assert live.is_file() and dead.exists() and not done.is_set()
        child.stdin.write("go\n")
        child.stdin.flush()
        thread.join(120)
        assert done.is_set()
    finally:
        child.stdin.close()
        child.wait(60)
    assert child.returncode == 0
    assert home.table_file("decisions").read_bytes() == b"live"      # the live writer's file, renamed by it
    assert not dead.exists() and other.exists()


def test_ingest_sweep_leaves_a_live_cache_writers_file(tmp_path: Path) -> None:
    """The caches' writers hold no stage lock: a sweep while one holds the cache-writers lock (shared) removes
    none of the caches' temporary files; once it is free, the killed writers' ones go. raw_zone_problems' (written
    only under the ingest lock, which the caller holds) goes at once."""
    from pipelines.ingest.day import sweep_ingest_temps

    home = DataHome(tmp_path / "home")
    problems = _temp(home.table_dir("raw_zone_problems"), "data.parquet")
    digests = _temp(home.cache, "raw_day_digests.json")
    index = _temp(home.cache / "raw_image_uids", "dt=2023-02-13.parquet")
    unrelated = _temp(home.cache / "raw_image_uids", "notes.txt")
    child = subprocess.Popen([sys.executable, "-c", r"""
import sys
from pathlib import Path
from formats.home import DataHome
from formats.locks import CACHE_WRITERS_LOCK, writing_shared
home = DataHome(Path(sys.argv[1]))
with writing_shared(home.locks / CACHE_WRITERS_LOCK, "the cache writers") as held:
    print(held, flush=True)
    sys.stdin.readline()
"""[1:], str(home.root)], cwd=REPO, env=_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "True"
        assert sweep_ingest_temps(home) == []
        assert not problems.exists() and digests.exists() and index.exists()
    finally:
        child.stdin.close()
        child.wait(60)
    assert sweep_ingest_temps(home) == []
    assert not digests.exists() and not index.exists() and unrelated.exists()


def test_cache_writer_waits_for_a_sweep_and_shared_holders_do_not_block_each_other(tmp_path: Path) -> None:
    lock = tmp_path / ".locks" / CACHE_WRITERS_LOCK
    with writing_shared(lock, "w1") as first, writing_shared(lock, "w2") as second:
        assert first and second
        assert sweep_exclusively(lock, "s", lambda: ["swept"]) == []   # writers at work: nothing swept now
    assert sweep_exclusively(lock, "s", lambda: ["swept"]) == ["swept"]
    (tmp_path / "elsewhere").mkdir()
    bad = tmp_path / "bad"
    bad.symlink_to(tmp_path / "elsewhere")   # a link at the locks' folder: refused, so nothing written or swept
    with writing_shared(bad / CACHE_WRITERS_LOCK, "w") as held:
        assert held is False
    assert sweep_exclusively(bad / CACHE_WRITERS_LOCK, "s", lambda: ["swept"]) == []
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_raw_digests_cache_is_not_written_without_the_writers_lock(tmp_path: Path) -> None:
    from pipelines.provenance import RAW_DIGESTS_CACHE, RawDigests

    home = DataHome(tmp_path / "home")
    home.cache.mkdir(parents=True)
    digests = RawDigests(home)
    digests.known["x"] = {"stat": [1], "sha256": "y"}
    digests.changed = True
    (tmp_path / "elsewhere").mkdir()
    home.locks.symlink_to(tmp_path / "elsewhere")
    digests.save()
    assert not (home.cache / RAW_DIGESTS_CACHE).exists()
    home.locks.unlink()
    digests.changed = True
    digests.save()
    assert (home.cache / RAW_DIGESTS_CACHE).is_file()
    assert [p.name for p in home.cache.iterdir()] == [RAW_DIGESTS_CACHE]


def test_features_sweep_of_the_days_partitions_and_jpeg_keys(tmp_path: Path) -> None:
    """The feature stage's sweeps, as it runs them: the day's two partition folders (under the day's lock), and the
    JPEG keys its rows name (never another key's, never another day's partition)."""
    from pipelines.features.blobs import join_url, train_jpg_key

    home = DataHome(tmp_path / "home")
    day, other_day = "2023-02-13", "2023-02-14"
    own = [_temp(home.partition_file(t, day).parent, "part-0.parquet") for t in ("image_features", "image_rejects")]
    theirs = _temp(home.partition_file("image_features", other_day).parent, "part-0.parquet")
    assert sweep_temps_of([home.partition_file("image_features", day),
                           home.partition_file("image_rejects", day)]) == []
    assert [p for p in own if p.exists()] == [] and theirs.exists()
    base = str(tmp_path / "blobs")
    sha, other = "ab" + "1" * 62, "ab" + "2" * 62
    key = train_jpg_key("train", sha)
    mine = _temp(Path(join_url(base, key)).parent, f"{sha}.jpg")
    kept = _temp(Path(join_url(base, key)).parent, f"{other}.jpg")
    assert sweep_temps_of([join_url(base, key)], follow=False) == []
    assert not mine.exists() and kept.exists()


def test_jpeg_writer_writes_again_when_its_temporary_file_was_swept(tmp_path: Path, monkeypatch) -> None:
    from pipelines.features import blobs

    real_replace, calls = os.replace, []

    def replace(src, dst, *args, **kwargs):
        calls.append(src)
        if len(calls) == 1:      # another day's run swept it just now
            os.unlink(src, dir_fd=kwargs.get("src_dir_fd"))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(blobs.os, "replace", replace)
    blobs.write_blob_atomic(str(tmp_path), "train/ab/key.jpg", b"\xff\xd8jpeg\xff\xd9")
    assert (tmp_path / "train" / "ab" / "key.jpg").read_bytes() == b"\xff\xd8jpeg\xff\xd9"
    assert len(calls) == 2 and os.listdir(tmp_path / "train" / "ab") == ["key.jpg"]


def test_create_temp_names_are_what_the_sweeps_match(tmp_path: Path) -> None:
    fd, name = create_temp(tmp_path, "data.parquet")
    os.close(fd)
    assert sweep_temps_of([tmp_path / "data.parquet"]) == [] and not (tmp_path / name).exists()


def test_beams_log_of_an_interrupted_step_is_not_shown() -> None:
    import logging

    from dagster._core.errors import DagsterExecutionInterruptedError

    from dagster_project.cli import _no_interrupt_records

    def record(error: BaseException | None) -> logging.LogRecord:
        exc_info = (type(error), error, None) if error is not None else None
        return logging.LogRecord("apache_beam.runners.common", logging.ERROR, __file__, 1, "x", (), exc_info)

    assert not _no_interrupt_records(record(DagsterExecutionInterruptedError()))
    assert not _no_interrupt_records(record(KeyboardInterrupt()))
    assert _no_interrupt_records(record(ValueError("a real error")))
    assert _no_interrupt_records(record(None))
