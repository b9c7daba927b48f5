"""Twenty-ninth session's own fixes (README section 9, "Fixed since (twenty-ninth session)")."""
from __future__ import annotations

from tests.unit.test_fix28e import scorer  # noqa: F401 - the tiny real model's fixture
from training.data import MAX_CAPTION_CHARS, bounded_caption


def test_the_scoring_api_never_tokenizes_a_huge_prompt_whole(scorer, monkeypatch):  # noqa: F811
    """``Scorer.score_pairs`` / ``embed_texts`` (the Python API, not the CLI's 64 KiB refusal) tokenized any prompt
    whole: a 4-million-character prompt went to the tokenizer as it was. It now reads a prompt as the training reads
    a caption (``bounded_caption``: the same tokens), so the tokenizer gets at most MAX_CAPTION_CHARS characters."""
    import torch

    huge = " " * 2_000_000 + "red cube on a table " * 100_000
    given: list[int] = []
    tokenizer = scorer.processor.tokenizer
    real = type(tokenizer).__call__

    def spy(self, texts, *args, **kwargs):
        given.extend(len(t) for t in texts)
        return real(self, texts, *args, **kwargs)

    monkeypatch.setattr(type(tokenizer), "__call__", spy)
    got = scorer.embed_texts([huge, "cat"])
    assert given and max(given) <= MAX_CAPTION_CHARS
    assert torch.equal(got[0], scorer.embed_texts([bounded_caption(huge)])[0])
    assert torch.equal(got[1], scorer.embed_texts(["cat"])[0])      # a normal prompt is read as it is


def test_retention_hides_a_deleted_version_beside_the_versions_not_among_them(tmp_path, monkeypatch):
    """What retention renames and removes (and leaves where the removal fails, EBUSY on NFS) is outside the folder
    consumers sync: ``datasets/pickapic.staging/.deleting-<version>``, swept by the next publish's sweep there."""
    import errno
    import os
    import shutil

    from formats.home import DataHome
    from pipelines.publish import versions
    from tests.unit.test_fix25d import _version

    home = DataHome(tmp_path / "home")
    home.datasets.mkdir(parents=True)
    old, new = "2023-03-01-0123456789", "2023-03-02-0123456789"
    for name in (old, new):
        _version(home.datasets, name)
    os.symlink(new, home.datasets / "latest")
    seen: list[str] = []
    real_rmtree = shutil.rmtree

    def busy(path, *args, **kwargs):          # the removal is seen where it happens, and fails as on NFS
        seen.append(str(path))
        raise OSError(errno.EBUSY, "Device or resource busy", str(path))

    monkeypatch.setattr(versions.shutil, "rmtree", busy)
    notes: list[str] = []
    assert versions.apply_retention(home, 1, notes) == [old]
    hidden = versions.staging_root(home.datasets) / f".deleting-{old}"
    assert sorted(os.listdir(home.datasets)) == [new, "latest"]          # nothing hidden among the versions
    assert hidden.is_dir() and seen == [str(hidden)] and "next publish" in notes[0]
    monkeypatch.setattr(versions.shutil, "rmtree", real_rmtree)
    assert versions.sweep_stale(hidden.parent, ".partial-x") == [] and not hidden.exists()


def _curated_version(datasets, name: str, reversible) -> None:
    import json

    folder = datasets / name
    (folder / "train").mkdir(parents=True)
    (folder / "train" / "a.tar").write_bytes(b"a")
    manifest = {"version": name, "files": {"train/a.tar": {"bytes": 1, "sha256": "x"}},
                "curation": {"pseudonyms": {"secret": None if reversible is None else
                                            "public-default" if reversible else "private", "reversible": reversible}}}
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_versions_kept_with_reversible_pseudonyms_behind_a_private_latest_are_named(tmp_path, capsys):
    """After the pseudonym secret was made private (and the ledger re-keyed), retention keeps the versions published
    under the public default secret until keep_versions newer ones exist: whoever syncs the folder still gets their
    reversible user_ids. The publish keeps them (a rollback may want one) and names them, with the command that
    deletes them; nothing is said where latest is itself public, or a kept version records nothing."""
    import os

    from formats.home import DataHome
    from pipelines.publish import version as publish
    from pipelines.publish.config import PublishConfig

    home = DataHome(tmp_path / "my home")
    home.datasets.mkdir(parents=True)
    old, unknown, new = "2023-03-01-0123456789", "2023-03-02-0123456789", "2023-03-03-0123456789"
    _curated_version(home.datasets, old, True)
    _curated_version(home.datasets, unknown, None)
    _curated_version(home.datasets, new, False)
    os.symlink(new, home.datasets / "latest")
    notes: list[str] = []
    assert publish._retention(home, PublishConfig(keep_versions=3), notes) == []
    assert len(notes) == 1 and old in notes[0] and unknown not in notes[0] and "public default" in notes[0]
    assert f"flock -xn '{home.datasets / old}' mv -T '{home.datasets / old}' " in notes[0]   # a blank, quoted
    assert notes[0] in capsys.readouterr().err
    assert (home.datasets / old / "manifest.json").is_file()                     # kept: named, never deleted
    os.unlink(home.datasets / "latest")
    os.symlink(old, home.datasets / "latest")                                     # a public latest: nothing to say
    assert publish.reversible_versions_kept(home) == []
