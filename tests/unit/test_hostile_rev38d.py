"""Hostile review rev38d of fix38a/fix38h (bounded reads of a version's ``manifest.json``/``sizes.json`` through
``formats.files.read_limited``, ``read_small_file`` built on it, the trainer's ``prompt_counts`` through
``open_listed_file``).

Defects found (each was a strict xfail below; fixed by fix38l, tested further in ``test_fix38l.py``):

1. ``test_a_publish_whose_own_manifest_passes_the_limit_says_why_and_what_to_change``: the publish never checks
   the manifest it writes against the limit its readers now enforce (MANIFEST_MAX_BYTES, 256 MiB). A dataset whose
   manifest outgrows it (~500,000 shards: ~22 years of nights with the defaults, ~1.4 years with
   ``publish.shards_per_day = 1024``, where the 256 KiB ``min_shard_bytes`` floor starts to bind; both knobs
   have no upper bound) writes every shard, then fails in its own ``verify_version`` of the staging with
   ``ValueError: .../.partial-<version>/manifest.json holds 13485 bytes, more than the 8192 such a file may: not
   read: not a manifest a publish wrote`` (limit scaled down to 8 KiB to run the real publish, whose manifest is
   13,485 bytes). Every night after that fails the same way. The message says the publish's own manifest is "not
   a manifest a publish wrote" and names neither the cause (a manifest this large) nor anything the operator
   could change. Before fix38a it published.
2. ``test_read_manifest_holds_no_more_than_the_reading_before_fix38a``: ``read_manifest`` keeps the bytes read
   alive while ``json.loads`` parses their decoded text, so its tracemalloc peak went up by one manifest size.
   Measured on a 15,067,023-byte manifest listing 100,002 files: peak minus retained was 18.9 MB with the
   pre-fix38a ``json.loads(path.read_text())`` and 34.0 MB now (+15.07 MB, the manifest's size; peak 64.9 MB ->
   80.0 MB). That is small at a real manifest's ~13 MB, but the publish reads its manifest ~5 times a night and
   retention once for each version.

Attacks that ran clean (no test): a FIFO, a device or a directory at ``manifest.json`` (directly or through a link:
``is_file()`` is False, FileNotFoundError, nothing opened); a FIFO/directory at ``sizes.json`` (ValueError ->
ChecksumError; before it hung on the FIFO, and a directory gave a bare IsADirectoryError); an empty file;
``/proc/self/status`` (size 0 with content: read in full); a file at exactly the limit; retention, reuse, meta,
the rule cache, ``check_version_identity``, ``_reversible``, ``pickapic query`` (QueryFailed) and ``pickapic
export`` (``run_from_args`` catches ValueError) all take a refused manifest as an unreadable one; ``read_small_file``
returns what it returned before for every case compared with ``git show 19e44fb:formats/files.py``.
"""
from __future__ import annotations

import hashlib
import tracemalloc
from pathlib import Path

import pytest
from test_publish_fixtures import make_home

from formats import dataset


def test_a_publish_whose_own_manifest_passes_the_limit_says_why_and_what_to_change(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The limit is scaled down (8 KiB) so a real publish's manifest (~13 KB) passes it, standing in for a data set
    of ~500,000 shards. The publish must refuse clearly: not call its own manifest a foreign one, but say a manifest
    this large is refused and name the knobs that decide how many shards (so files, so manifest lines) there are.
    Latest must not be switched to a version its readers refuse."""
    from pipelines.publish import manifest as manifest_module
    from pipelines.publish import version as version_module
    from pipelines.publish.config import PublishConfig

    limit = 8 << 10
    monkeypatch.setattr(dataset, "MANIFEST_MAX_BYTES", limit)
    for module in (manifest_module, version_module):          # where a fix may import the limit to
        monkeypatch.setattr(module, "MANIFEST_MAX_BYTES", limit, raising=False)
    home = make_home(tmp_path / "home", num_rankings=80, seed=3)
    with pytest.raises(Exception) as caught:                   # noqa: PT011 - what it says is asserted below
        version_module.publish_dataset(home, PublishConfig(workers=1, fsync=False))
    message = str(caught.value)
    assert not dataset.latest_link(home).exists()
    assert "not a manifest a publish wrote" not in message, message
    assert str(limit) in message and ("shards_per_day" in message or "min_shard_bytes" in message), message


def _big_manifest(folder: Path, shards: int) -> int:
    """A manifest as the publish writes it (``manifest_text``) listing ``shards`` shards of 3 files; its size."""
    from pipelines.publish.manifest import manifest_text

    folder.mkdir(parents=True)
    digest = hashlib.sha256(b"").hexdigest()
    files = {f"train/pickapic-train-20230301-{i:010x}{ext}": {"bytes": 123456789, "sha256": digest}
             for i in range(shards) for ext in (".tar", ".parquet", "_stats.json")}
    text = manifest_text({"version": folder.name, "files": files}).encode()
    (folder / dataset.MANIFEST_FILE).write_bytes(text)
    return len(text)


def test_read_manifest_holds_no_more_than_the_reading_before_fix38a(tmp_path: Path) -> None:
    """Before fix38a (``json.loads(path.read_text())``) the bytes were gone before the parse: peak - retained was
    1.26x the manifest's size (the text being parsed, and the parser's working set); now it is 2.26x."""
    folder = tmp_path / "2023-03-01-0123456789"
    size = _big_manifest(folder, 10_000)                       # ~4.5 MB
    tracemalloc.start()
    try:
        manifest = dataset.read_manifest(folder)
        retained, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(manifest["files"]) == 30_000
    assert peak - retained < size * 3 // 2, (size, peak - retained)
