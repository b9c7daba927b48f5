"""Fix37c: the defects of review rev37c (``tests/unit/test_hostile_rev37c.py``), beyond the review's own tests.

- ``manifest.verify_version`` leaves out the files an operating system drops in a folder someone browsed, by the rule
  retention and reuse use (``versions.system_file``): not a look-alike (a ``._<name>`` that is no AppleDouble, a
  ``.DS_Store`` folder or link), not a file the manifest lists; it walks iteratively relative to open folders (a tree
  deeper than the recursion limit raised ``RecursionError``, noticed by the review) and says so when it cannot;
- README section 7's hold line checks the version once held, as every ``flock -s 9`` recipe of the README does;
- the README's WebDataset snippet names a missing ``latest`` at once, and reads unlocked where ``flock`` fails.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from test_publish_fixtures import make_home

from formats.dataset import LATEST, MANIFEST_FILE
from formats.files import APPLE_DOUBLE
from formats.trees import remove_tree
from pipelines.publish.__main__ import check_published
from pipelines.publish.config import PublishConfig
from pipelines.publish.manifest import ManifestMismatch, verify_version
from pipelines.publish.version import publish_dataset
from pipelines.publish.versions import made_by_publish

CONFIG = PublishConfig(workers=1, fsync=False)
ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _version(tmp: Path) -> Path:
    """A small version folder: two listed files and its manifest (named as its folder)."""
    version = tmp / "v1"
    (version / "train").mkdir(parents=True)
    (version / "train" / "a.json").write_bytes(b"{}")
    (version / "b.txt").write_bytes(b"abc")
    files = {"train/a.json": {"bytes": 2, "sha256": "x"}, "b.txt": {"bytes": 3, "sha256": "y"}}
    (version / MANIFEST_FILE).write_text(json.dumps({"version": "v1", "files": files}))
    return version


# --- verify_version and the files an operating system drops ---------------------------------------------------

def test_every_system_file_made_by_publish_accepts_is_left_out(fast_tmp: Path) -> None:
    version = _version(fast_tmp)
    for rel in (".DS_Store", "train/Thumbs.db", "desktop.ini", "train/.nfs000000000012abcd00000001"):
        (version / rel).write_bytes(b"x")
    (version / "train" / "._a.json").write_bytes(APPLE_DOUBLE + bytes(20))     # real AppleDouble of a.json
    assert made_by_publish(version) is None
    assert set(verify_version(version)["files"]) == {"train/a.json", "b.txt"}


@pytest.mark.parametrize("plant", ["look-alike", "folder", "link"])
def test_what_only_looks_like_a_system_file_still_differs(fast_tmp: Path, plant: str) -> None:
    """A user's ``._results.parquet`` (no AppleDouble magic), a ``.DS_Store`` folder holding a file, a ``Thumbs.db``
    link: made_by_publish refuses each, and verify_version names each."""
    version = _version(fast_tmp)
    if plant == "look-alike":
        (version / "._results.parquet").write_bytes(b"PAR1" + bytes(20))
        named = "._results.parquet"
    elif plant == "folder":
        (version / ".DS_Store").mkdir()
        (version / ".DS_Store" / "notes").write_bytes(b"mine")
        named = ".DS_Store/notes"
    else:
        os.symlink("/etc/passwd", version / "train" / "Thumbs.db")
        named = "train/Thumbs.db"
    assert made_by_publish(version) is not None
    with pytest.raises(ManifestMismatch) as differs:
        verify_version(version)
    assert differs.value.paths == [named] and "not in the manifest" in str(differs.value)


def test_a_system_name_the_manifest_lists_is_compared_as_its_file(fast_tmp: Path) -> None:
    version = _version(fast_tmp)
    manifest = json.loads((version / MANIFEST_FILE).read_text())
    manifest["files"][".DS_Store"] = {"bytes": 5, "sha256": "z"}
    (version / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(ManifestMismatch) as differs:                 # listed and absent: missing
        verify_version(version)
    assert differs.value.paths == [".DS_Store"] and "missing" in str(differs.value)
    (version / ".DS_Store").write_bytes(b"1")                        # listed with another size: differs
    with pytest.raises(ManifestMismatch, match="has 1 bytes, manifest says 5"):
        verify_version(version)


def test_a_tree_deeper_than_the_recursion_limit_is_named_not_a_recursion_error(fast_tmp: Path) -> None:
    version = _version(fast_tmp)
    fd = os.open(version, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(1200):                                        # os.walk recursed once a level on 3.11
            os.mkdir("d", dir_fd=fd)
            child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        os.close(os.open("planted", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
    finally:
        os.close(fd)
    try:
        with pytest.raises(ManifestMismatch) as differs:
            verify_version(version)
        assert differs.value.paths == ["d/" * 1200 + "planted"]
    finally:
        remove_tree(version / "d")                                   # shutil.rmtree (the fixture's) recurses too


def test_a_folder_that_cannot_be_listed_is_a_mismatch_saying_so(fast_tmp: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder of the version that cannot be listed (EACCES: another account's 0700 folder; simulated, as root
    lists it) is one ManifestMismatch saying so, not a traceback (and not every file under it "missing")."""
    from pipelines.publish import versions

    version = _version(fast_tmp)
    real, calls = versions._listing, []

    def listing(fd: int) -> list:
        calls.append(fd)
        if len(calls) == 2:                                          # train/, entered after the top
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
        return real(fd)

    monkeypatch.setattr(versions, "_listing", listing)
    with pytest.raises(ManifestMismatch, match="cannot be looked into whole .*Permission denied") as differs:
        verify_version(version)
    assert differs.value.paths == []


def test_checking_a_browsed_published_version_passes_and_a_users_file_does_not(fast_tmp: Path,
                                                                               capsys: pytest.CaptureFixture) -> None:
    """``python -m pipelines.publish --version NAME`` (check_published) on a version a Finder browsed: it passes,
    as retention and reuse take it for a version a publish made; a user's file there is still named."""
    home = make_home(fast_tmp / "home", num_rankings=40, seed=31)
    published = publish_dataset(home, CONFIG)
    (published.path / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (published.path / "train" / "._sizes.json").write_bytes(APPLE_DOUBLE + bytes(30))
    assert check_published(home, published.version, checksums=True)["differ"] == 0
    assert check_published(home, LATEST, checksums=False)["version"] == published.version
    (published.path / "train" / "notes.txt").write_text("mine")
    with pytest.raises(ManifestMismatch) as differs:
        check_published(home, LATEST, checksums=False)
    assert differs.value.paths == ["train/notes.txt"]
    capsys.readouterr()


# --- the README's hold recipes --------------------------------------------------------------------------------

def test_every_flock_recipe_of_the_readme_checks_the_version_once_held() -> None:
    """Sections 1 to 8 (section 9's history quotes the recipes as they were)."""
    text = README[:README.index("### 9. Hardening")]
    recipes = [re.sub(r"\s+", " ", r) for r in re.findall(r"\( flock -s 9 &&.*?\) 9<\"\$V\"", text, flags=re.S)]
    assert len(recipes) >= 3
    assert [r for r in recipes if '[ -f "$V/manifest.json" ] &&' not in r] == []


def test_section_7s_hold_recipe_runs_its_command_on_a_version_that_is_there(fast_tmp: Path) -> None:
    home = make_home(fast_tmp / "home", num_rankings=40, seed=32)
    version = publish_dataset(home, CONFIG).path
    found = re.search(r"hold it while you read: `([^`]*flock -s 9[^`]*)`", README)
    assert found
    recipe = found.group(1).replace("cmd", "find \"$V\" -name '*.tar' | wc -l")
    done = subprocess.run(["bash", "-c", recipe], env={**os.environ, "V": str(version)}, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0 and int(done.stdout) == sum(1 for _ in version.rglob("*.tar")) > 0
    gone = subprocess.run(["bash", "-c", recipe], env={**os.environ, "V": str(fast_tmp / "nothing")},
                          capture_output=True, text=True, timeout=30)
    assert gone.returncode != 0 and gone.stdout == ""                # opened by `9<`: nothing created there
    assert not (fast_tmp / "nothing").exists()


# --- the README's WebDataset snippet ----------------------------------------------------------------------------

def _snippet() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    code = next(b for b in blocks if "wds.WebDataset(urls" in b and "fcntl.flock" in b)
    assert code.count("\n    ...\n") == 1
    return code.replace("\n    ...\n", "\n    seen.append(sample['__key__'])\n")


def test_the_snippet_in_a_home_with_nothing_published_names_latest(fast_tmp: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    (fast_tmp / "data" / "datasets" / "pickapic").mkdir(parents=True)         # a home, nothing published yet
    monkeypatch.chdir(fast_tmp)
    scope: dict = {"seen": []}
    with pytest.raises(FileNotFoundError) as raised:
        exec(compile(_snippet(), "README.md", "exec"), scope)
    assert str(fast_tmp / "data" / "datasets" / "pickapic" / LATEST) in str(raised.value)
    assert "try again" not in str(raised.value) and scope["seen"] == []


def test_the_snippet_reads_unlocked_whatever_the_mount_answers_flock(fast_tmp: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Every ``OSError`` of ``flock`` is "no flock on folders here", as ``formats.dataset.hold_for_reading`` takes
    it (EOPNOTSUPP, EINVAL; ENOLCK is the review's): latest's version read whole, once, with one try."""
    home = make_home(fast_tmp / "data", num_rankings=40, seed=33)
    published = publish_dataset(home, CONFIG)
    expected = sum(json.loads((published.path / "train" / "sizes.json").read_text()).values())
    monkeypatch.chdir(fast_tmp)
    for code in (errno.EOPNOTSUPP, errno.EINVAL):
        calls: list[int] = []

        def no_flock(fd: int, operation: int, code: int = code, calls: list[int] = calls) -> None:
            calls.append(fd)
            raise OSError(code, os.strerror(code))

        monkeypatch.setattr(fcntl, "flock", no_flock)
        scope: dict = {"seen": []}
        exec(compile(_snippet(), "README.md", "exec"), scope)
        assert len(calls) == 1 and Path(scope["version"]) == published.path.resolve()
        assert len(scope["seen"]) == len(set(scope["seen"])) == expected
        os.close(scope["held"])


# --- each version walked once a publish (review rev37c, noticed) ------------------------------------------------

def test_a_verdict_is_given_again_only_while_what_it_rests_on_is_unchanged(fast_tmp: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines.publish.versions import VersionWalks

    version = _version(fast_tmp)
    (version / "train" / "._a.json").write_bytes(APPLE_DOUBLE + bytes(20))
    fresh = VersionWalks()
    assert fresh(version) is None and fresh(version) is None and fresh.walked == 2     # changed just now: not kept
    monkeypatch.setattr(VersionWalks, "SETTLE_S", -60.0)                                 # as if settled long ago
    walks = VersionWalks()
    assert walks(version) is None and walks(version) is None and walks.walked == 1
    (version / "train" / "notes.txt").write_text("mine")                                # a user's file in a folder
    assert "notes.txt" in walks(version) and walks.walked == 2
    os.unlink(version / "train" / "notes.txt")
    assert walks(version) is None and walks.walked == 3
    with open(version / "train" / "._a.json", "r+b") as handle:                         # rewritten in place
        handle.write(b"PAR1")
    assert "AppleDouble" in walks(version) and walks.walked == 4
    (version / "train" / "._a.json").write_bytes(APPLE_DOUBLE + bytes(20))
    assert walks(version) is None
    manifest = json.loads((version / MANIFEST_FILE).read_text())
    with open(version / MANIFEST_FILE, "r+") as handle:                                 # in place: same inode
        handle.write(json.dumps({**manifest, "version": "v2"}))
    assert "names version 'v2'" in walks(version)
    (version / MANIFEST_FILE).write_text(json.dumps(manifest))
    assert walks(version) is None
    copy = fast_tmp / "copy"                                                            # another folder there,
    subprocess.run(["cp", "-a", str(version), str(copy)], check=True)                  # times and names kept
    os.rename(version, fast_tmp / "gone")
    os.rename(copy, version)
    before = walks.walked
    assert walks(version) is None and walks.walked == before + 1                        # another inode: walked


def test_a_publish_walks_each_version_once_and_retention_sees_a_file_added_meanwhile(
        fast_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Three versions, ``keep_versions = 2``: the third publish walks the two older ones once each (before: twice,
    for the reuse sources and for retention); a user's file put in the oldest while the shards are written keeps it
    (retention walks it again, as it changed), named in the notes, and not counted: the third is kept."""
    from pipelines.publish import contracts, versions
    from pipelines.publish import version as version_module

    monkeypatch.setattr(versions.VersionWalks, "SETTLE_S", -60.0)
    config = PublishConfig(workers=1, fsync=False, keep_versions=2)
    home = make_home(fast_tmp / "home", num_rankings=40, seed=34)
    real = contracts.contract_versions
    first = publish_dataset(home, config)
    monkeypatch.setattr(version_module, "_contract_versions", lambda: {**real(), "shards": "51.0.0"})
    second = publish_dataset(home, config)
    walked: list[str] = []
    inner = versions.made_by_publish

    def counted(folder: Path, marks: list | None = None, present: dict | None = None) -> str | None:
        walked.append(folder.name)
        return inner(folder, marks, present)

    monkeypatch.setattr(versions, "made_by_publish", counted)
    monkeypatch.setattr(version_module, "_contract_versions", lambda: {**real(), "shards": "52.0.0"})
    third = publish_dataset(home, config)
    assert sorted(walked) == sorted([first.version, second.version]) and third.deleted_versions == [first.version]
    assert not first.path.exists()

    walked.clear()                                         # again, a user's file put in the oldest meanwhile
    real_write = version_module.write_shards

    def write_shards(*args, **kwargs):
        (second.path / "train" / "notes.txt").write_text("mine")
        return real_write(*args, **kwargs)

    monkeypatch.setattr(version_module, "write_shards", write_shards)
    monkeypatch.setattr(version_module, "_contract_versions", lambda: {**real(), "shards": "53.0.0"})
    fourth = publish_dataset(home, config)
    assert walked.count(second.version) == 2 and walked.count(third.version) == 1
    assert fourth.deleted_versions == [] and (second.path / "train" / "notes.txt").exists()
    assert any(second.version in note and "notes.txt" in note for note in fourth.notes)
