"""Fixes of review rev30e (tests/unit/test_hostile_rev30e.py; README section 9, "Fixed since (thirtieth session)"):
``bounded_caption`` collapses every character CLIP's tokenizer reads as a blank (form feeds, vertical tabs, NELs
too); ``score_prompt_images`` reads a prompt through it; the other-file-system fallback of the staging folder makes
no folder; retention never renames a version over ``.deleting-<version>.99``; the note on versions kept with
reversible pseudonyms says what keeps them and deletes them as retention does (under a lock, moved out first)."""
from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from PIL import Image

from formats import dataset
from formats.home import DataHome
from pipelines.publish import version as publish
from pipelines.publish import versions
from tests.unit.test_fix25d import _version
from tests.unit.test_fix28e import scorer  # noqa: F401 - the tiny real model's fixture
from tests.unit.test_s29_own import _curated_version
from training.data import _BLANKS, MAX_CAPTION_CHARS, bounded_caption
from training.model import score_prompt_images, train_tokenizer

PYTHON_BLANKS = [chr(cp) for cp in range(sys.maxunicode + 1) if re.match(r"\s", chr(cp))]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(["red cube on a table", "blue star 7", "a cat"] * 10, 600)


def test_the_blanks_collapsed_are_exactly_those_the_tokenizer_reads_as_one_space(tokenizer):
    """Every character Python's \\s matches is looked at: the tokenizer's normalizer turns a run of it into one
    space exactly where ``_BLANKS`` matches it (\\x1c-\\x1f, which Python counts as blanks, are tokens to it);
    and no other character of Unicode is a blank to it."""
    normalize = tokenizer.backend_tokenizer.normalizer.normalize_str
    assert len(PYTHON_BLANKS) == 29
    for blank in PYTHON_BLANKS:
        assert (normalize("a" + blank * 3 + "b") == "a b") == bool(_BLANKS.fullmatch(blank)), hex(ord(blank))
    assert [c for c in PYTHON_BLANKS if not _BLANKS.fullmatch(c)] == ["\x1c", "\x1d", "\x1e", "\x1f"]
    others = "".join("a" + chr(cp) for cp in range(sys.maxunicode + 1)
                     if not (0xD800 <= cp <= 0xDFFF or re.match(r"\s", chr(cp))))
    assert " " not in normalize(others)


@pytest.mark.parametrize("run", [*PYTHON_BLANKS, "\x0c\x0b\x85\u3000 \t\n\u2028"], ids=lambda r: repr(r))
def test_a_long_run_of_any_blank_gives_the_tokens_of_the_whole_prompt(tokenizer, run):
    def tokens(text: str) -> list[int]:
        return tokenizer([text], truncation=True, max_length=77)["input_ids"][0]

    repeat = MAX_CAPTION_CHARS // len(run) + 10
    prompt = run * repeat + "red cube" + run * repeat + "on a table" + run * 3
    bounded = bounded_caption(prompt)
    assert len(bounded) <= MAX_CAPTION_CHARS
    assert tokens(bounded) == tokens(prompt)
    if _BLANKS.fullmatch(run):                 # a blank: the words are read (before review rev30e: lost for \x0c)
        assert bounded == "red cube on a table" and tokens(prompt) == tokens("red cube on a table")


def test_short_captions_and_the_separators_are_as_before():
    assert bounded_caption("a\x0c" * 10) == "a\x0c" * 10                 # at most MAX_CAPTION_CHARS: unchanged
    assert bounded_caption("a\x1c" + " " * MAX_CAPTION_CHARS + "b") == "a\x1c b"
    assert bounded_caption("\x0c" * (MAX_CAPTION_CHARS + 1)) == ""
    assert bounded_caption("x" * (MAX_CAPTION_CHARS + 5)) == "x" * MAX_CAPTION_CHARS


def test_score_prompt_images_reads_a_prompt_as_the_scorer_does(scorer, monkeypatch):  # noqa: F811
    """The PickScore-README helper gave the tokenizer a prompt whole: a long run of form feeds before the words
    cost the tokenizer the whole run; it now reads it through ``bounded_caption``, like Scorer and the training."""
    rng = np.random.default_rng(4)
    images = [Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)) for _ in range(3)]
    model = scorer.clip.eval()
    words = score_prompt_images(model, scorer.processor, "red cube on a table", images)
    given: list[int] = []
    tokenizer = scorer.processor.tokenizer
    real = type(tokenizer).__call__

    def spy(self, text, *args, **kwargs):
        given.extend(len(t) for t in ([text] if isinstance(text, str) else text))
        return real(self, text, *args, **kwargs)

    monkeypatch.setattr(type(tokenizer), "__call__", spy)
    for blank in ("\x0c", "\x0b", "\x85", " "):
        prompt = blank * (4 * MAX_CAPTION_CHARS) + "red cube" + blank * 3 + "on a table"
        assert score_prompt_images(model, scorer.processor, prompt, images) == words, repr(blank)
    assert given and max(given) <= MAX_CAPTION_CHARS


def _other_device(datasets: Path):
    real_stat = os.stat

    def stat(path, *args, **kwargs):      # datasets/pickapic on another disk than datasets/
        info = real_stat(path, *args, **kwargs)
        if not isinstance(path, int) and Path(path) == datasets:
            return os.stat_result((info.st_mode, info.st_ino, info.st_dev + 1, *tuple(info)[3:]))
        return info
    return mock.patch.object(versions.os, "stat", stat)


def test_the_other_file_system_fallback_makes_no_staging_folder_and_keeps_one_it_did_not_make(tmp_path):
    datasets = tmp_path / "datasets" / "pickapic"
    datasets.mkdir(parents=True)
    root = versions.staging_root(datasets)
    with _other_device(datasets):
        assert versions.open_staging_root(datasets) == datasets and not root.exists()
        assert versions.hiding_root(datasets) == datasets
        root.mkdir()
        (root / "notes.txt").write_text("a user's file\n")
        assert versions.open_staging_root(datasets) == datasets
        assert (root / "notes.txt").is_file()            # a folder it did not make is never removed here
    assert versions.open_staging_root(datasets) == root == versions.hiding_root(datasets)   # same disk: used
    root.rename(tmp_path / "aside")
    root.symlink_to(tmp_path / "aside")
    assert versions.hiding_root(datasets) == datasets    # a link there is not where retention hides a version


def _taken(folder: Path, name: str, last: int) -> None:
    (folder / f".deleting-{name}").mkdir(parents=True)
    for n in range(1, last + 1):
        (folder / f".deleting-{name}.{n}").mkdir()


@pytest.mark.parametrize("fallback", [False, True], ids=["staging", "among-the-versions"])
def test_retention_never_renames_a_version_over_the_last_deleting_name(tmp_path, fallback):
    """With .deleting-<v> and .1 ... .98 taken, .99 is used; with .99 taken too (an empty folder, which a rename
    replaces), the version is left in place with a note and nothing there is touched."""
    home = DataHome(tmp_path / "home")
    home.datasets.mkdir(parents=True)
    old, new = "2023-03-01-0123456789", "2023-03-02-0123456789"
    for name in (old, new):
        _version(home.datasets, name)
    os.symlink(new, home.datasets / "latest")
    folder = home.datasets if fallback else versions.staging_root(home.datasets)
    _taken(folder, old, 99)
    with _other_device(home.datasets) if fallback else contextlib.nullcontext():
        assert versions.free_deleting_name(folder, old) is None
        notes: list[str] = []
        assert versions.apply_retention(home, 1, notes) == []
        assert (home.datasets / old / "manifest.json").is_file() and (folder / f".deleting-{old}.99").is_dir()
        assert len(notes) == 1 and "left in place" in notes[0] and f".deleting-{old}[.N]" in notes[0]
        os.rmdir(folder / f".deleting-{old}.99")
        assert versions.free_deleting_name(folder, old) == folder / f".deleting-{old}.99"
        assert versions.apply_retention(home, 1, notes) == [old]
    assert not (home.datasets / old).exists() and not (folder / f".deleting-{old}.99").exists()


def test_the_reversible_versions_note_deletes_as_retention_does(tmp_path):
    """The note named the versions 'kept by keep_versions' and gave ``rm -r``: a reader's (a training's) version
    removed under it, in place. Its commands now take the version's lock without waiting (deleting nothing while a
    reader holds it), move it out of the versions' folder, then remove it."""
    home = DataHome(tmp_path / "a home")
    home.datasets.mkdir(parents=True)
    old, new = "2023-03-01-0123456789", "2023-03-03-0123456789"
    _curated_version(home.datasets, old, True)
    _curated_version(home.datasets, new, False)
    os.symlink(new, home.datasets / "latest")
    staging = versions.staging_root(home.datasets)
    staging.mkdir()
    (note,) = publish.reversible_versions_kept(home)
    assert "kept (by keep_versions, or by a reader holding one)" in note and "rm -r" in note
    commands = note.split("holds one): ", 1)[1]
    assert commands.startswith(f"flock -xn '{home.datasets / old}' mv -T ")

    def run() -> int:
        return subprocess.run(["bash", "-c", commands], capture_output=True, timeout=60, check=False).returncode

    with dataset.reading_version(home, old):              # a training reading it: nothing is deleted
        assert run() != 0
        assert (home.datasets / old / "manifest.json").is_file() and os.listdir(staging) == []
    assert run() == 0
    assert sorted(os.listdir(home.datasets)) == [new, "latest"] and os.listdir(staging) == []
    assert publish.reversible_versions_kept(home) == []
