"""fix33a: curation's held snapshot folders and the sweep of held scratch folders (review rev33a).

The curation builds' snapshots live in ``HOME/.staging/curation`` (``DataHome.curation_snapshots``), not in the
disposable ``cache/``; every folder :func:`formats.locks.held_scratch_folder` makes holds a marker
(``SCRATCH_MARKER``) and has the mode 0777 less the umask, and :func:`formats.locks.sweep_scratch_folders` removes
only marked folders (never another program's of a matching name, say through a link to a shared scratch disk) and
reports only what is gone; an error a curation query raises names the input file, not its snapshot; a listed input
removed before its snapshot is a one-line error. Small literal homes (``curation_fixtures``), real DuckDB builds
in-process, real accounts (``os.fork`` + ``setuid``) where the kernel's permission checks are the point.
"""
from __future__ import annotations

import os
import stat
import time

import duckdb
import pytest
from curation_fixtures import HomeBuilder, build_all

import pipelines.curation.decisions as decisions_module
from formats.home import DataHome
from formats.locks import SCRATCH_MARKER, held_scratch_folder, sweep_scratch_folders
from pipelines.curation.decisions import (
    SNAPSHOT_FOLDER_RE,
    CurationConfig,
    build_decisions,
    build_pairs,
    sweep_snapshot_folders,
)
from pipelines.ingest import day as ingest


def _home(root, rankings=1):
    b = HomeBuilder(root / "home")
    for ranking_id in range(1, rankings + 1):
        b.pair(ranking_id)
    home = b.write()
    build_all(home)
    return home


def _marked(folder):
    folder.mkdir(parents=True)
    (folder / SCRATCH_MARKER).touch()
    return folder


def test_the_builds_snapshot_outside_the_cache_and_leave_no_folder(fast_tmp):
    home = _home(fast_tmp)
    assert not home.cache.exists()                                    # curation makes nothing in cache/
    assert home.curation_snapshots == home.root / ".staging" / "curation"
    assert os.listdir(home.curation_snapshots) == []                 # each build removed its own


def test_a_held_folder_is_marked_and_honours_the_umask(fast_tmp):
    scratch = fast_tmp / "scratch"
    for umask, mode in ((0o002, 0o775), (0o022, 0o755), (0o077, 0o700)):
        old = os.umask(umask)
        try:
            with held_scratch_folder(scratch, "curation-") as folder:
                assert SNAPSHOT_FOLDER_RE.fullmatch(folder.name)
                assert stat.S_IMODE(os.stat(folder).st_mode) == mode
                assert (folder / SCRATCH_MARKER).is_file()
                assert [n for n in os.listdir(scratch) if n.startswith(".new-")] == []
        finally:
            os.umask(old)
        assert os.listdir(scratch) == []


def test_the_ingest_sweep_through_a_linked_cache_tmp_takes_only_its_own_folders(fast_tmp):
    # rev33a noticed: the ingest's spill folders use the same helpers, and cache/tmp may link to a scratch disk
    home = DataHome(fast_tmp / "home")
    disk = fast_tmp / "scratch-disk"
    foreign = disk / "ingest-2023-03-01-notes"                        # another program's, a matching name
    foreign.mkdir(parents=True)
    (foreign / "notes.txt").write_text("keep")
    killed = _marked(disk / "ingest-2023-03-01-abc123")               # an ingest killed mid-run
    (killed / "batch-0.pickle").write_bytes(b"spill")
    home.cache.mkdir(parents=True)
    os.symlink(disk, home.cache / "tmp")
    assert ingest.sweep_spill_folders(home) == ["ingest-2023-03-01-abc123"]
    assert (foreign / "notes.txt").read_text() == "keep" and not killed.exists()


def test_an_unmarked_fresh_folder_is_removed_only_when_empty_and_old(fast_tmp):
    home = _home(fast_tmp)
    scratch = home.curation_snapshots
    hours_ago = time.time() - 2 * 3600
    empty = scratch / ".new-curation-empty1"                          # killed before its marker was made
    full = scratch / ".new-curation-full22"                           # not the tool's: it holds something
    marked = _marked(scratch / ".new-curation-mark33")                # killed before it was renamed
    empty.mkdir()
    full.mkdir()
    (full / "x.txt").write_text("someone's")
    (marked / "000000.parquet").write_bytes(b"a link's bytes")
    for folder in (empty, full, marked):
        os.utime(folder, (hours_ago, hours_ago))
    assert sweep_snapshot_folders(home) == [".new-curation-empty1", ".new-curation-mark33"]
    assert (full / "x.txt").read_text() == "someone's"
    unmarked = scratch / "curation-nomark"                            # a matching name, no marker: left alone
    unmarked.mkdir()
    assert sweep_snapshot_folders(home) == [] and unmarked.is_dir()


@pytest.mark.skipif(os.geteuid() != 0, reason="sweeps as another account (root may remove anything)")
def test_a_folder_the_sweep_could_not_empty_is_not_reported_removed(fast_tmp):
    # rev33a noticed: the sweep reported a folder as removed after rmtree(ignore_errors=True) whether or not it went
    fast_tmp.chmod(0o755)
    scratch = fast_tmp / "scratch"
    scratch.mkdir(mode=0o777)
    scratch.chmod(0o777)
    stale = _marked(scratch / "curation-root01")                     # root's, 0755: another account cannot empty it
    stale.chmod(0o755)
    (stale / "000000.parquet").write_bytes(b"x")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:                                                      # child: never returns into pytest
        code = 0
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(3033)
            os.setuid(3031)
            os.write(write, repr(sweep_scratch_folders(scratch, SNAPSHOT_FOLDER_RE)).encode())
        except BaseException:                                         # noqa: BLE001 - reported by the exit status
            code = 3
        os._exit(code)
    os.close(write)
    reported = os.read(read, 1000).decode()
    os.close(read)
    assert os.waitpid(pid, 0)[1] == 0
    assert reported == "[]" and (stale / "000000.parquet").exists()
    assert sweep_scratch_folders(scratch, SNAPSHOT_FOLDER_RE) == ["curation-root01"]   # its owner can


def test_a_damaged_partition_is_named_by_pairs_too_and_keeps_its_error_type(fast_tmp):
    home = _home(fast_tmp)
    partition = home.table_files("image_features")[0]
    partition.write_bytes(b"PAR1 not really parquet PAR1")
    for build in (build_decisions, build_pairs):
        with pytest.raises(duckdb.Error) as caught:
            build(home, CurationConfig())
        message = str(caught.value)
        assert str(partition) in message, message
        assert ".staging" not in message and "000000" not in message
        assert caught.value.__cause__ is None and caught.value.__suppress_context__
    assert os.listdir(home.curation_snapshots) == []


def test_an_error_naming_no_snapshot_is_raised_as_it_is(fast_tmp, monkeypatch):
    home = _home(fast_tmp)
    failure = RuntimeError("disk on fire")

    def fail(*args, **kwargs):
        raise failure

    monkeypatch.setattr(decisions_module, "curation_inputs", fail)
    with pytest.raises(RuntimeError) as caught:
        build_decisions(home, CurationConfig())
    assert caught.value is failure
    assert decisions_module._SNAPSHOT_SOURCES == {}                   # nothing of the build's kept


def test_an_input_removed_before_its_link_is_a_one_line_error(fast_tmp, monkeypatch):
    # rev33a noticed: a stray file a concurrent ingest's clear_partition_folders removes after the build listed it
    home = _home(fast_tmp)
    stray = home.table_files("image_features")[0].parent / "copy.parquet"
    stray.write_bytes(home.table_files("image_features")[0].read_bytes())
    real = decisions_module._snapshot_inputs

    def removed_first(*args, **kwargs):
        monkeypatch.setattr(decisions_module, "_snapshot_inputs", real)
        stray.unlink()
        return real(*args, **kwargs)

    monkeypatch.setattr(decisions_module, "_snapshot_inputs", removed_first)
    with pytest.raises(FileNotFoundError) as caught:
        build_decisions(home, CurationConfig())
    message = str(caught.value)
    assert message.startswith(f"{stray} was removed while the curation build was reading its inputs")
    assert "build again" in message and ".staging" not in message and "\n" not in message
    assert os.listdir(home.curation_snapshots) == []
    build_decisions(home, CurationConfig())                          # built again: it runs


def test_a_copied_input_keeps_its_mode(fast_tmp, monkeypatch):
    # EPERM (protected_hardlinks) or another file system: the input is copied, never more readable than it is
    source = fast_tmp / "list.txt"
    source.write_text("5\n")
    source.chmod(0o600)
    folder = fast_tmp / "snap"
    folder.mkdir()

    def refused(*args, **kwargs):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(decisions_module.os, "link", refused)
    read = decisions_module._snapshot_inputs(folder, [source])
    assert read[source].read_text() == "5\n" and stat.S_IMODE(os.stat(read[source]).st_mode) == 0o600
    decisions_module._SNAPSHOT_SOURCES.pop(str(folder))
