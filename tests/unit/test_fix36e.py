"""fix36e: the defect of review rev36e (``tests/unit/test_hostile_rev36e.py``) and its noticed items, fixed.

- the data contracts' versions (:func:`pipelines.publish.contracts.contract_versions`) are hashed into the version
  id, checked with a version's identity when its folder is there, and named by the publish step's code version
  (``dagster_project.versions.code_version``): a contract change makes a new version (its shards linked) gated by
  the new rules, and the build finds the step stale;
- shards are reused only from versions a publish made (``versions.made_by_publish``, as retention judges) and, where
  the publish history exists, recorded in it: never from a copy of another version restored under a version's name;
- the README's WebDataset snippet, run as printed: it resolves ``latest`` again where its version was deleted
  before the lock was held.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
from test_publish_fixtures import make_home

from dagster_project.versions import CARD_MARK, CODE_VERSIONS, CONTRACTS_MARK, code_version
from formats.dataset import LATEST, history_file, read_history
from pipelines.publish import contracts, datacard
from pipelines.publish import version as version_module
from pipelines.publish.config import PublishConfig
from pipelines.publish.version import publish_dataset
from pipelines.publish.versions import StagingRefused, made_by_publish, previous_versions

CONFIG = PublishConfig(workers=1, fsync=False)
ROOT = Path(__file__).resolve().parents[2]


def _bump(monkeypatch: pytest.MonkeyPatch, dataset: str = "shards", to: str = "99.0.0") -> dict:
    """The contract of ``dataset`` raised to ``to``, for the publish (``version._contract_versions``) and for the
    code version (``contracts.contract_versions``); return the versions the publish now reads."""
    real = contracts.contract_versions

    def bumped() -> dict:
        return {**real(), dataset: to}

    monkeypatch.setattr(contracts, "contract_versions", bumped)
    monkeypatch.setattr(version_module, "_contract_versions", bumped)
    return bumped()


def test_the_publish_code_version_names_the_contracts(monkeypatch: pytest.MonkeyPatch) -> None:
    """``<publish>+card:<card>+contracts:<digest of the versions>``; a bump of any one contract moves it, and the
    Dagster asset records the same code version."""
    import dagster as dg

    from dagster_project.assets.publish import published_dataset

    before = code_version("publish")
    assert before == (CODE_VERSIONS["publish"] + CARD_MARK + datacard.CARD_VERSION + CONTRACTS_MARK
                      + contracts.contracts_digest(contracts.contract_versions()))
    assert re.fullmatch(r"\d+\+card:[^+]+\+contracts:[0-9a-f]{10}", before)
    assert published_dataset.code_versions_by_key[dg.AssetKey("published_dataset")] == before
    seen = {before}
    for dataset in contracts.CONTRACT_DATASETS:
        with monkeypatch.context() as patch:
            _bump(patch, dataset)
            seen.add(code_version("publish"))
    assert len(seen) == len(contracts.CONTRACT_DATASETS) + 1      # each contract's bump is another code version
    assert code_version("publish") == before                      # and only while it lasts
    assert code_version("model") == CODE_VERSIONS["model"]


def test_the_contracts_text_is_canonical() -> None:
    assert contracts.contracts_text({"b": "1", "a": None}) == '{"a":null,"b":"1"}'
    assert contracts.contracts_digest({"b": "1", "a": None}) == contracts.contracts_digest({"a": None, "b": "1"})
    assert contracts.contracts_digest({"a": "1"}) != contracts.contracts_digest({"a": "1.0"})
    versions = contracts.contract_versions()
    assert set(versions) == set(contracts.CONTRACT_DATASETS) == set(version_module.CONTRACT_DATASETS)
    assert all(isinstance(v, str) and v for v in versions.values())


def test_a_contract_bump_makes_a_new_gated_version_linked_from_the_old(fast_tmp: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The old version stays as it was; the new one records the new versions, ran the gate, and shares every shard
    (hard links: nothing in the shards changed); published again, it is the same version (idempotent)."""
    home = make_home(fast_tmp / "home", num_rankings=40, seed=3)
    old = publish_dataset(home, CONFIG)
    old_manifest = (old.path / "manifest.json").read_bytes()
    bumped = _bump(monkeypatch, "split_pairs", "7.0.0")
    new = publish_dataset(home, CONFIG)
    assert new.version != old.version and not new.reused
    assert new.shards_written == 0 and new.shards_linked == old.shards_written
    assert new.contract_results and all(r.passed for r in new.contract_results if r.rule.blocking)
    recorded = json.loads((new.path / "manifest.json").read_text())
    assert recorded["contracts"] == bumped and recorded["version"] == new.version
    assert (old.path / "manifest.json").read_bytes() == old_manifest
    assert os.readlink(home.datasets / LATEST).endswith(new.version)
    again = publish_dataset(home, CONFIG)
    assert again.reused and again.version == new.version


def test_a_folder_recording_other_contracts_at_the_versions_name_is_refused(fast_tmp: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A version of the old contracts renamed (its manifest's version edited) to the id the new contracts give is
    not switched to: only its contracts differ from what this publish would record, and the error says so."""
    home = make_home(fast_tmp / "home", num_rankings=40, seed=4)
    old = publish_dataset(home, CONFIG)
    _bump(monkeypatch, "shards", "3.0.0")
    probe = make_home(fast_tmp / "probe", num_rankings=40, seed=4)
    target = publish_dataset(probe, CONFIG).version           # the id the new contracts give these inputs
    assert target != old.version
    forged = home.datasets / target
    shutil.copytree(old.path, forged)
    manifest = json.loads((forged / "manifest.json").read_text())
    manifest["version"] = target
    (forged / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StagingRefused, match=r"its contracts differ"):
        publish_dataset(home, CONFIG)
    assert os.readlink(home.datasets / LATEST).endswith(old.version)       # latest left where it was


def test_reuse_sources_are_versions_a_publish_made_and_recorded(fast_tmp: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    home = make_home(fast_tmp / "home", num_rankings=40, seed=5)
    first = publish_dataset(home, CONFIG)
    _bump(monkeypatch, "shards", "5.0.0")
    second = publish_dataset(home, CONFIG)
    assert previous_versions(home, "next") == [second.path, first.path]
    # a copy of the newest restored under another version's name: retention's "not a version a publish made"
    restored = home.datasets / "2023-03-01-0123456789"
    shutil.copytree(second.path, restored)
    assert made_by_publish(restored) is not None
    assert restored not in previous_versions(home, "next")
    shutil.rmtree(restored)
    # a version the history does not name (nor latest) is no source while a history exists
    history = history_file(home.datasets)
    assert read_history(home.datasets) == [first.version, second.version]
    history.write_text(history.read_text().replace(f"{first.version}\n", ""))
    assert previous_versions(home, "next") == [second.path]
    # without a history (a home published before it existed) every version a publish made is one
    history.unlink()
    assert previous_versions(home, "next") == [second.path, first.path]
    # a version a user added a file to is no source either (retention keeps it too)
    (first.path / "notes.txt").write_text("mine")
    assert previous_versions(home, "next") == [second.path]


def test_a_copy_restored_under_a_version_name_is_never_linked_from(fast_tmp: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The only complete folder left is a copy of the old version restored under another name (``latest`` gone):
    the next publish writes every shard, none linked from the copy, whose files keep one link each."""
    home = make_home(fast_tmp / "home", num_rankings=40, seed=6)
    old = publish_dataset(home, CONFIG)
    restored = home.datasets / "2023-03-01-00000000ab"
    old.path.rename(restored)
    (home.datasets / LATEST).unlink()
    _bump(monkeypatch, "shards", "6.0.0")
    new = publish_dataset(home, CONFIG)
    assert new.shards_linked == 0 and new.shards_written == old.shards_written
    assert all(p.stat().st_nlink == 1 for p in restored.rglob("*.tar"))
    assert restored.is_dir()                                  # left as it is, named in the notes
    assert any(str(restored) in note and "not a version a publish made" in note for note in new.notes)


# ----------------------------------------------------------------------------- the README's WebDataset snippet
def _snippet() -> str:
    """The README's WebDataset snippet as printed, its loop body counting the samples read."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    code = next(b for b in blocks if "wds.WebDataset(urls" in b and "fcntl.flock" in b)
    assert code.count("\n    ...\n") == 1
    return code.replace("\n    ...\n", "\n    seen.append(sample['__key__'])\n")


def _two_versions(fast_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path, Path]:
    """A home at ``<cwd>/data`` with two versions, ``latest`` on the older; (older, newer, cwd)."""
    home = make_home(fast_tmp / "data", num_rankings=40, seed=8)
    older = publish_dataset(home, CONFIG)
    with monkeypatch.context() as patch:
        _bump(patch, "shards", "8.0.0")
        newer = publish_dataset(home, CONFIG)
    assert publish_dataset(home, CONFIG).version == older.version          # latest back on the older version
    monkeypatch.chdir(fast_tmp)
    return older.path, newer.path, fast_tmp


def _train_keys(version: Path) -> int:
    return sum(json.loads((version / "train" / "sizes.json").read_text()).values())


def test_the_readme_webdataset_snippet_reads_latest_whole(fast_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    older, _, _ = _two_versions(fast_tmp, monkeypatch)
    scope: dict = {"seen": []}
    exec(compile(_snippet(), "README.md", "exec"), scope)
    assert Path(scope["version"]) == older.resolve()
    assert len(scope["seen"]) == len(set(scope["seen"])) == _train_keys(older)
    os.close(scope["held"])


def test_the_readme_snippet_resolves_latest_again_when_its_version_is_deleted_before_it_is_held(
        fast_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Between the snippet's ``os.open`` and its lock, ``latest`` moves on and retention deletes the version it
    resolved (renamed out of the way, then removed, as ``apply_retention`` does): once it holds its lock it finds
    the folder gone, resolves ``latest`` again and reads the new version whole (review rev36e: it read on and failed
    with a bare ``FileNotFoundError`` on ``sizes.json``)."""
    import fcntl

    older, newer, cwd = _two_versions(fast_tmp, monkeypatch)
    real_flock = fcntl.flock
    calls = []

    def flock(fd: int, operation: int) -> None:
        calls.append(fd)
        if len(calls) == 1:                 # the publish switched latest and its retention deleted the older one
            link = older.parent / LATEST
            os.symlink(newer.name, str(link) + ".new")
            os.replace(str(link) + ".new", link)
            aside = cwd / "deleting"
            older.rename(aside)
            shutil.rmtree(aside)
        real_flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", flock)
    scope: dict = {"seen": []}
    exec(compile(_snippet(), "README.md", "exec"), scope)
    assert len(calls) == 2
    assert Path(scope["version"]) == newer.resolve()
    assert len(scope["seen"]) == len(set(scope["seen"])) == _train_keys(newer)
    os.close(scope["held"])


def test_the_readme_snippet_gives_up_with_a_clear_error_after_five_tries(fast_tmp: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """``latest`` naming a version that is not there (deleted each time): five tries, then one clear error, and
    nothing read."""
    older, _, _ = _two_versions(fast_tmp, monkeypatch)
    shutil.rmtree(older)
    scope: dict = {"seen": []}
    with pytest.raises(FileNotFoundError, match="deleted each time before it was held"):
        exec(compile(_snippet(), "README.md", "exec"), scope)
    assert scope["seen"] == []
