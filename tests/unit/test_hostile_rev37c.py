"""Hostile review rev37c: second pass over fix36e (the publish: the data contracts' versions hashed into the version id
and the publish step's code version ``13+card:3+contracts:<hex>``; reuse of shards only from versions a publish made and
the publish history records, ``versions.previous_versions`` / ``made_by_publish``; the README's WebDataset snippet that
resolves ``latest`` again; README sections 6 and 7), attacked as another account reading the output and as an operator.

How it was driven. Real publishes (``publish_dataset``: the real tar / Parquet writers, DuckDB, the contract gate,
hard-link reuse, the publish history, retention) over ``test_publish_fixtures.make_home`` homes (40 rankings); the
README's snippets run as printed (the Python one exec'd, the shell recipes run by bash with util-linux ``flock``);
retention's own ``_lock_for_deletion`` / ``_delete_version`` racing a reader; contract bumps and reverts through
``version._contract_versions``; homes published under TZ=UTC / Pacific/Chatham, umask 022 / 077, 1 and 2 workers.

What held up (no test filed):
- same inputs give the same version id and byte-identical files across time zones, umasks (022/077), worker counts,
  ``PYTHONHASHSEED`` and locale;
- a user's file in ``latest``'s version: the next publish links nothing from it (20 shards written, 0 linked) and
  names the folder in its notes once it is no longer ``latest`` (the deliberate "not a version a publish made");
- the publish history as a symbolic link, a FIFO, over 1 MiB or without its header: never followed or waited on, a
  note, and reuse falls back to every version ``made_by_publish`` accepts (documented: "where the history exists";
  run: a contract bump over each linked all 20 shards, the link's target untouched);
- (read, not re-run: earlier reviews' tests cover it) ``latest`` through an absolute link / a linked home names the
  same version for retention and reuse (``formats.dataset.latest_version`` compares real paths).

Measured: ``made_by_publish`` walks ~10 us a file (30,000 files: 0.26-0.30 s on this shared 2-CPU machine). Every
publish walks each retained version twice (``previous_versions``, then retention), also with ``reuse_shards = false``
where the first walk serves nothing, and the first walk runs while the home's ingest lock is held (before
``reading.close()``): at Pick-a-Pic's ~70,000 files a version, ~0.7 s a version, so 2 s a night at the default
``keep_versions = 3`` (~40 s at 30): noticed, not filed.

Noticed, not filed: the history names the versions retention just deleted until the next publish's
``record_switch``, so a folder restored (or copied from another home) under such a name in between counts as
"recorded" for that publish (``made_by_publish`` still has to accept it; its shards are linked only by plan digest);
``manifest.verify_version`` walks with ``os.walk``, recursive on this Python 3.11, so a very deep tree planted in a
version at the id being published again raises ``RecursionError`` rather than ``ManifestMismatch``; ``read_manifest``
reads a manifest whole with no bound (a stray version-named folder with a huge ``manifest.json`` is read by
retention every night); an unreadable history (EACCES) is reported as "not a publish history this tool wrote".

Each test below is a defect confirmed by running it, ranked by severity, filed as a strict xfail whose assertions
state the correct behaviour. All four were fixed the same day (fix37c, ``tests/unit/test_fix37c.py``) and their
markers removed: ``verify_version`` leaves out the files ``made_by_publish`` accepts as an operating system's (and
walks iteratively: a file in a planted deep tree is named, no ``RecursionError``); section 7's hold line
checks the version once held; the WebDataset snippet names a missing ``latest`` and reads unlocked without ``flock``.
The walk twice a publish measured above was fixed too: once, before the ingest lock (``versions.VersionWalks``).
"""
from __future__ import annotations

import errno
import fcntl
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
from test_publish_fixtures import make_home

from formats.dataset import LATEST
from pipelines.publish import contracts
from pipelines.publish import version as version_module
from pipelines.publish.config import PublishConfig
from pipelines.publish.version import publish_dataset
from pipelines.publish.versions import _delete_version, _lock_for_deletion, made_by_publish

CONFIG = PublishConfig(workers=1, fsync=False)
ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _latest(home) -> str:
    return os.path.basename(os.path.realpath(home.datasets / LATEST))


def test_a_browsed_version_is_switched_back_to_when_its_inputs_come_back(fast_tmp: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """README section 6 (retention): the files an operating system or a file share drops in a folder someone browsed
    (``.DS_Store``, ``Thumbs.db``, ... ``versions.SYSTEM_FILE``) leave it a version a publish made: retention deletes
    and counts it, reuse links from it (``made_by_publish`` is None). Publishing that version's inputs again (a
    contract bump reverted, a late ban lifted, a rerun of an unchanged night) takes the ``check_version_name`` path,
    whose ``verify_version`` lists those files as "not in the manifest": the publish fails, ``latest`` stays on the
    other version, and the error tells the operator to move the version aside (a version readers may be on).
    Correct: the version is switched back to, as a version a publish made."""
    home = make_home(fast_tmp / "home", num_rankings=40, seed=21)
    first = publish_dataset(home, CONFIG)
    (first.path / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(64))    # Finder browsed it (SMB)
    (first.path / "train" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")           # and Explorer
    assert made_by_publish(first.path) is None            # retention and reuse: a version a publish made

    real = contracts.contract_versions
    with monkeypatch.context() as patch:                   # a contract bump ...
        patch.setattr(version_module, "_contract_versions", lambda: {**real(), "shards": "42.0.0"})
        second = publish_dataset(home, CONFIG)
    assert second.version != first.version and _latest(home) == second.version

    again = publish_dataset(home, CONFIG)                  # ... reverted: the first version's inputs again
    assert again.version == first.version and again.reused
    assert _latest(home) == first.version


def _recipe_without_check() -> str:
    """Section 7's inline recipe for holding a resolved version while a command reads it."""
    found = re.search(r"hold it while you read: `([^`]*flock -s 9[^`]*)`", README)
    assert found, "section 7's `( flock -s 9 && cmd ) 9<\"$V\"` recipe not found"
    return found.group(1)


def _wait_for_blocked_flock(inode: int, timeout: float = 10.0) -> None:
    """Until /proc/locks shows a process waiting (``->``) for a FLOCK on ``inode``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in Path("/proc/locks").read_text().splitlines():
            if "->" in line and "FLOCK" in line and line.split()[-3].endswith(f":{inode}"):
                return
        time.sleep(0.02)
    raise AssertionError("the reader never waited for its shared lock")


def test_section_7s_hold_recipe_never_runs_its_command_on_a_deleted_version(fast_tmp: Path) -> None:
    """Section 6 (*Readers hold the version they read*): retention holds its exclusive lock across the rename and
    the removal, and a reader must check, once it holds its shared lock, that the folder is still at its name (the
    recipe there and section 7's DuckDB example do: ``[ -f "$V/manifest.json" ] &&``). Section 7's own summary line,
    ``( flock -s 9 && cmd ) 9<"$V"``, drops the check: a reader that opened ``$V`` while the real retention
    (``_lock_for_deletion`` + ``_delete_version``) held it runs ``cmd`` after the version is gone; a count of its
    shards then reads 0 and the recipe succeeds. Correct: the command is not run and the recipe fails."""
    home = make_home(fast_tmp / "home", num_rankings=40, seed=22)
    old = publish_dataset(home, CONFIG).path
    assert sum(1 for _ in old.rglob("*.tar")) > 0
    notes: list[str] = []
    free, fd = _lock_for_deletion(old, notes)             # retention, about to delete the version
    assert free and fd is not None
    recipe = _recipe_without_check().replace("cmd", "find \"$V\" -name '*.tar' 2>/dev/null | wc -l")
    reader = subprocess.Popen(["bash", "-c", recipe], env={**os.environ, "V": str(old)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_blocked_flock(os.stat(old).st_ino)      # the reader opened $V and waits for its shared lock
        assert _delete_version(home.datasets, old.name, notes)
    finally:
        os.close(fd)
    out, _ = reader.communicate(timeout=30)
    assert not old.exists()
    assert reader.returncode != 0 and out.strip() == "", (reader.returncode, out)


def _snippet() -> str:
    """The README's WebDataset snippet as printed, its loop body counting the samples read."""
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    code = next(b for b in blocks if "wds.WebDataset(urls" in b and "fcntl.flock" in b)
    return code.replace("\n    ...\n", "\n    seen.append(sample['__key__'])\n")


def test_the_readme_snippet_says_latest_is_missing_when_it_is(fast_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The snippet resolves ``data/datasets/pickapic/latest`` relative to the working folder. Run from another folder,
    or before the first publish, nothing is there: ``os.open`` fails each of its five tries at once and it raises
    "latest's version was deleted each time before it was held: try again", blaming a retention race that never
    happened and sending the reader to retry for ever. Correct: a clear error naming the missing ``latest``."""
    monkeypatch.chdir(fast_tmp)                            # no data home here
    scope: dict = {"seen": []}
    with pytest.raises(FileNotFoundError) as raised:
        exec(compile(_snippet(), "README.md", "exec"), scope)
    assert "latest" in str(raised.value)
    assert "deleted" not in str(raised.value) and "try again" not in str(raised.value)


def test_the_readme_snippet_reads_unlocked_where_folders_have_no_flock(fast_tmp: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Section 6: "On a file system without ``flock`` on folders (some NFS and FUSE mounts) readers read unlocked and
    retention deletes as before" (``hold_for_reading`` returns None there). The snippet calls ``fcntl.flock`` bare, so
    on such a mount (ENOLCK, simulated: the kernel's answer on an NFS mount without its lock manager) a reader
    following the README reads nothing and fails with ``OSError: [Errno 37] No locks available``. Correct: it reads
    ``latest``'s version whole, as the project's readers do there."""
    home = make_home(fast_tmp / "data", num_rankings=40, seed=23)
    published = publish_dataset(home, CONFIG)
    monkeypatch.chdir(fast_tmp)

    def no_flock(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_flock)
    scope: dict = {"seen": []}
    exec(compile(_snippet(), "README.md", "exec"), scope)
    train = published.path / "train" / "sizes.json"
    expected = sum(__import__("json").loads(train.read_text()).values())
    assert len(scope["seen"]) == len(set(scope["seen"])) == expected
