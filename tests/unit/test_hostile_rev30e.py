"""Hostile review rev30e of the twenty-ninth session's own changes to the publish and the scoring API (README
section 9, "Fixed since (twenty-ninth session)", its first bullets, and section 6).

Reviewed, by running real publishes (``publish_dataset`` on seeded homes, night after night, ``keep_versions``
lowered and raised), the real tiny-model ``Scorer`` and the app export's line readers:
(a) retention renames a deleted version into ``datasets/pickapic.staging/.deleting-<version>`` before removing it
(``pipelines/publish/versions.py``: ``_delete_version``, ``apply_retention``); (b) every publish names the kept
versions whose pseudonyms are keyed with the public default secret once ``latest`` is keyed with a private one
(``version.reversible_versions_kept``); (c) ``Scorer.embed_texts`` reads each prompt through
``training.data.bounded_caption``; (d) ``formats.files.open_regular_in_real_folder`` and the app export's
``_bomless`` (both "no behaviour change" tidies).

What held up (no test): night after night with keep_versions 2 and 1, the versions' folder never holds a
``.deleting-`` name and the staging folder is empty after each publish; the versions kept verify with their
checksums after their hard-linked neighbours are deleted (no shared inode changed); a version a reader holds
(``reading_version``: query, export, trainer) is kept and deleted by the first publish after it is free; a stray
file or link at ``.deleting-<version>`` in the staging folder is renamed past and left with a note; a staging
folder this account may not write leaves the version in place with a note (the publish never fails on it); a
secret switched public -> private between nights gives the right note (the public versions named, with a quoted
``rm -r``; nothing said for a public latest), and neither the private secret nor its key check is in any published
byte; ``_file_counts`` over ``_line_keys`` / ``_bomless`` gives the old loop's counts on 211 files (BOM-only, BOM
before a BOM, lines over 1 MiB, no final newline, random mixes); ``open_regular_in_real_folder`` is the two copies
it replaced.

Noticed, not filed: ``_delete_version`` (and before it the same loop among the versions) never checks the last
name it tries, ``.deleting-<version>.99``: with the 99 names before it taken, an empty folder there is renamed
over (a file or link there makes the rename fail, as it should). The reversible-versions note tells the operator to
``rm -r`` each version: that removes in place (what rsync meets as vanishing files, the very thing (a) moved
away from) and ignores a reader's shared flock (a training reading the version fails, review rev26b's defect).
The note says the versions are "kept by keep_versions" also when a reader keeps one. ``training.model.
score_prompt_images`` (a public helper, used by tests only) still tokenizes a prompt whole.

Each test below is a defect confirmed by running it, ranked by severity, filed as a strict xfail whose assertions
state the correct behaviour; all fixed the same day (fix30e, ``tests/unit/test_fix30e.py``, which also covers the
noticed items above) and the markers removed.
"""
from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from unittest import mock

import torch
from test_publish_fixtures import history_home, publish_until

from pipelines.publish import versions
from pipelines.publish.config import PublishConfig
from tests.unit.test_fix28e import scorer  # noqa: F401 - the tiny real model's fixture
from training.data import MAX_CAPTION_CHARS, bounded_caption


def test_a_prompt_whose_words_follow_a_long_run_of_form_feeds_is_scored_by_its_words(scorer):
    words = "red cube on a table"
    tokenizer = scorer.processor.tokenizer

    def tokens(text: str) -> list[int]:
        return tokenizer([text], truncation=True, max_length=scorer.max_length)["input_ids"][0]

    alone = scorer.embed_texts([words])[0]
    for blank in ("\x0c", "\x0b", "\x85"):
        prompt = blank * (MAX_CAPTION_CHARS + 1_000) + " " + words
        assert tokens(prompt) == tokens(words)               # what CLIP's tokenizer reads of the whole prompt
        assert tokens(bounded_caption(prompt)) == tokens(prompt), repr(blank)
        assert torch.equal(scorer.embed_texts([prompt])[0], alone), repr(blank)


def test_retention_in_the_other_file_system_fallback_leaves_no_staging_folder(tmp_path: Path) -> None:
    home, table = history_home(tmp_path / "home", days=2, rankings=40)
    real_stat = os.stat

    def other_device(path, *args, **kwargs):      # datasets/pickapic on another disk than datasets/
        info = real_stat(path, *args, **kwargs)
        if not isinstance(path, int) and Path(path) == home.datasets:
            return os.stat_result((info.st_mode, info.st_ino, info.st_dev + 1, *tuple(info)[3:]))
        return info

    config = PublishConfig(workers=1, fsync=False, min_shards_per_split=1, keep_versions=1)
    staging = versions.staging_root(home.datasets)
    with mock.patch.object(versions.os, "stat", other_device):
        first = publish_until(home, table, config, last_day=dt.date(2023, 3, 1))
        assert not staging.exists()                         # the fallback without retention: no staging folder
        second = publish_until(home, table, config)
    assert second.deleted_versions == [first.version]
    assert sorted(os.listdir(home.datasets)) == [second.version, "latest"]
    assert not staging.exists(), f"{staging} left: {sorted(os.listdir(staging))}"
