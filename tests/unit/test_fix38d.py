"""Fix38d: noticed items of the publish stage (no review).

- An unchanged night (inputs identical to ``latest``'s) walked ``latest`` twice: once for the reuse sources
  (``versions.VersionWalks.prime``, fix37c) and again in ``manifest.verify_version``; the verification now takes the
  files that walk found while nothing it rests on changed (``VersionWalks.present``), and walks afresh otherwise.
- The publish history keeps naming the versions retention just deleted until the next publish's ``record_switch``:
  harmless (no reader acts on a name without its folder; a version published again under such a name is recorded
  as the newest), pinned here as documented.
- The history that cannot be written (EACCES, as another account: root writes any folder) is named with what to do;
  no temporary file is left, ``latest`` stays where it was (since fix38n the history's OSError refuses the switch
  itself: it was a note, and the record of switched versions in the same folder refused it).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_publish_fixtures import contracts_at, make_home

from formats.dataset import history_file, list_versions, read_history, record_switch, switch_latest, switched_file
from pipelines.publish import contracts, manifest, versions
from pipelines.publish import version as version_module
from pipelines.publish.config import PublishConfig
from pipelines.publish.version import publish_dataset
from tests.accounts import NOBODY_ID, as_another_account, shared_folder

CONFIG = PublishConfig(workers=1, fsync=False)


def _count_walks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every walk of a version's tree (``versions._walk``: ``made_by_publish`` and ``verify_version`` walk with it),
    by the version's name."""
    walked: list[str] = []
    inner = versions._walk

    def counted(folder):
        walked.append(Path(folder).name)
        return inner(folder)

    monkeypatch.setattr(versions, "_walk", counted)
    return walked


# --- (1) an unchanged night walks each version once -----------------------------------------------------------

def test_an_unchanged_night_walks_each_version_once(fast_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(versions.VersionWalks, "SETTLE_S", -60.0)          # as if every version settled long ago
    home = make_home(fast_tmp / "home", num_rankings=40, seed=38)
    first = publish_dataset(home, CONFIG)
    contracts_at(monkeypatch, "61.0.0")
    second = publish_dataset(home, CONFIG)
    walked = _count_walks(monkeypatch)
    again = publish_dataset(home, CONFIG)                                   # the same inputs: latest's version
    assert again.reused and again.version == second.version
    assert sorted(walked) == sorted([first.version, second.version])       # before: latest's twice


def test_an_unchanged_night_verifies_what_changed_since_its_walk(fast_tmp: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A file of latest's gone after the walk (its folder's times change): the verification walks again, finds it
    missing and switches nothing; a file the walk did not see listed stays a mismatch too."""
    monkeypatch.setattr(versions.VersionWalks, "SETTLE_S", -60.0)
    home = make_home(fast_tmp / "home", num_rankings=40, seed=39)
    first = publish_dataset(home, CONFIG)
    walked = _count_walks(monkeypatch)
    sizes = first.path / "train" / "sizes.json"
    real_digests = version_module.source_digests

    def digests_then_remove(*args, **kwargs):            # after the walk of prime, under the ingest lock
        sizes.unlink()
        return real_digests(*args, **kwargs)

    monkeypatch.setattr(version_module, "source_digests", digests_then_remove)
    with pytest.raises(manifest.ManifestMismatch, match="train/sizes.json is missing"):
        publish_dataset(home, CONFIG)
    assert walked == [first.version, first.version]       # walked again: its folder changed since


def test_the_files_the_walk_keeps_are_those_verify_version_compares(fast_tmp: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Kept for latest's version only, only while the verdict is None and nothing changed; what ``verify_version``
    makes of them equals its own walk's result, a system file left out, a temporary copy named."""
    from formats.files import APPLE_DOUBLE

    monkeypatch.setattr(versions.VersionWalks, "SETTLE_S", -60.0)
    home = make_home(fast_tmp / "home", num_rankings=40, seed=40)
    first = publish_dataset(home, CONFIG)
    (first.path / "train" / ".DS_Store").write_bytes(b"x")
    (first.path / "train" / "._sizes.json").write_bytes(APPLE_DOUBLE + bytes(20))
    walks = versions.VersionWalks()
    walks.prime(home)
    kept = walks.present(first.path)
    assert kept is not None and set(kept) == set(manifest.read_manifest(first.path)["files"])
    assert manifest.verify_version(first.path, present=kept) == manifest.verify_version(first.path)
    (first.path / "train" / ".sizes.json.0123456789ab.tmp").write_bytes(b"{}")   # a killed give_modes' copy
    assert walks.present(first.path) is None                                   # its folder changed: walk again
    assert walks(first.path) is None and walks.present(first.path) is not None
    with pytest.raises(manifest.ManifestMismatch, match="not in the manifest"):
        manifest.verify_version(first.path, present=walks.present(first.path))
    (first.path / "train" / "notes.txt").write_text("mine")                    # not a version a publish made
    assert walks(first.path) is not None and walks.present(first.path) is None
    other = versions.VersionWalks()                                            # no prime: latest not known
    assert other(first.path) is not None and other.present(first.path) is None


# --- (2) the history names versions retention deleted until the next publish: harmless ---------------------------

def test_a_deleted_version_named_by_the_history_is_acted_on_by_no_reader(fast_tmp: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    config = PublishConfig(workers=1, fsync=False, keep_versions=2)
    home = make_home(fast_tmp / "home", num_rankings=40, seed=41)
    a = publish_dataset(home, config)
    contracts_at(monkeypatch, "62.0.0")
    b = publish_dataset(home, config)
    contracts_at(monkeypatch, "63.0.0")
    c = publish_dataset(home, config)
    assert c.deleted_versions == [a.version] and not a.path.exists()
    assert read_history(home.datasets) == [a.version, b.version, c.version]    # until the next publish (documented)
    assert list_versions(home) == [b.version, c.version]                        # no folder: not a version
    assert versions.previous_versions(home, "x") == [c.path, b.path]
    monkeypatch.setattr(version_module, "_contract_versions", contracts.contract_versions)
    again = publish_dataset(home, config)                                       # a's inputs: a again, newest
    assert again.version == a.version and not again.reused
    assert read_history(home.datasets) == [b.version, c.version, a.version]
    assert list_versions(home) == [c.version, a.version] and again.deleted_versions == [b.version]


# --- (3) the history that cannot be written (EACCES) ---------------------------------------------------------

@pytest.fixture()
def shared_tmp():
    """A folder every account may enter (the forked child of ``as_another_account`` writes in it)."""
    with shared_folder("fix38d-") as base:
        yield base


def test_a_history_that_cannot_be_written_refuses_the_switch_naming_it_and_what_to_do(shared_tmp: Path) -> None:
    datasets = shared_tmp / "datasets" / "pickapic"
    datasets.mkdir(parents=True)
    for name in ("2026-01-01-aaaaaaaaaa", "2026-01-02-bbbbbbbbbb"):
        (datasets / name).mkdir()
        (datasets / name / "manifest.json").write_text("{}")
    os.symlink("2026-01-01-aaaaaaaaaa", datasets / "latest")
    path = history_file(datasets)
    path.write_bytes(b"# pickapic publish history: the versions `latest` was switched to, oldest first\n"
                     b"2026-01-01-aaaaaaaaaa\n")
    before = path.read_bytes()
    if os.geteuid() == 0:
        for folder in (datasets.parent, datasets):
            os.chown(folder, NOBODY_ID, NOBODY_ID)      # the account whose publish this is
    os.chmod(datasets.parent, 0o555)                    # the history's folder: not writable by its account

    def check() -> None:
        with pytest.raises(OSError) as refused:        # fix38n: the switch is refused, no longer a note
            record_switch(datasets, "2026-01-02-bbbbbbbbbb", fsync=False)
        note = str(refused.value)
        assert refused.value.filename == str(path) and "Permission denied" in note, note
        assert f"make {datasets.parent} writable for this account" in note, note
        assert "`latest` was not switched" in note and ".tmp" not in note, note
        # the record of switched versions beside it cannot be written either: the switch is refused, named
        with pytest.raises(OSError, match="was not switched; make .* writable for this account") as raised:
            switch_latest(datasets, "2026-01-02-bbbbbbbbbb", fsync=False)
        assert raised.value.filename == str(switched_file(datasets))

    as_another_account(check)
    os.chmod(datasets.parent, 0o755)
    assert path.read_bytes() == before and not switched_file(datasets).exists()
    assert sorted(os.listdir(datasets.parent)) == ["pickapic", "pickapic.history"]     # no temporary file left
    assert os.readlink(datasets / "latest") == "2026-01-01-aaaaaaaaaa"                 # readers: as before
    assert sorted(os.listdir(datasets)) == ["2026-01-01-aaaaaaaaaa", "2026-01-02-bbbbbbbbbb", "latest"]
