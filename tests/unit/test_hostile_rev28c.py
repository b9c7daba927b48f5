"""Hostile review rev28c: the published dataset as its consumers use it over many nightly versions, exactly as the
README tells them to (section 6 "Publish": the WebDataset reader, the dataset card's ``datasets`` loading, ``rsync``
between versions; section 7 "Ad-hoc queries": ``pickapic query``, its named queries, the plain-DuckDB recipe; the
``pickapic export`` formats ``pickscore-parquet`` and ``eval-prompts``).

Run by hand against real versions (``pickapic demo`` homes and seeded homes of ``test_publish_fixtures`` published
night by night, a user banned between two nights) with the venv's webdataset 1.0.2, DuckDB 2.0.1, polars 2.1.0,
pyarrow 25, datasets 5.2.0 and torch's DataLoader (3 workers), rsync 3.2.7, and as a second, unprivileged account
(``useradd``; the project's Python run as that account).

Filed as five strict xfails; all five fixed the same day by fix28c (``tests/unit/test_fix28c.py``), and the tests
now pass as plain tests.

Checked and found sound (no test): every file's size and sha256 against ``manifest.json``; ``sizes.json``, the
shards' ``_stats.json`` and ``meta/shards.parquet`` against the tars; each sample's ``KEY.json`` / ``KEY.txt`` /
JPEG members against its sidecar row (offsets, sizes, ``jpg_*_sha256``); keys unique per split, a shard one export
day ordered by user and time; the README's WebDataset snippet (every key once, with and without a 3-worker
DataLoader); the card's three ``datasets.load_dataset`` calls; polars and DuckDB over the sidecars joined with
``prompt_counts`` (no row doubled or lost); ``pickapic query``'s README examples and all eight named queries
(``win_rate_by_model`` leaves the ``_unique`` copies out; ``num_example_per_prompt`` of the ``pairs`` view recounted
exactly); the query sandbox (no file outside the version); ``rsync -a --delete`` of version N onto a copy of N+1
and onto a cache of N (the copy then passes its manifest); ``datasets``' cache across a nightly (re-reads the
rewritten shards); the export's bytes across reruns and across a copy of the home at another path (identical); its
umask modes; its refusals of a folder inside this or another data home (also through a link); ``--version`` that
is no version name; a version published again under another umask (manifests still match, the newer version's
shared files keep their modes); ``pickapic query`` and ``pickapic export`` as another account.

Filed below (each confirmed by running it):
- a shard keeps its file name when a nightly rewrites it (name = day + digest of its first key), so the same name
  holds other bytes in the next version: a cache keyed by the shard's name, webdataset's own ``cache_dir``, keeps
  serving a banned user's pairs after the version that dropped them (sizes.json then disagrees with what is read).
  Seen in real builds too (``pickapic simulate`` 3 days, built night by night; incremental == from scratch, same
  version id and manifest): a plain nightly rewrote four older validation / test shards under their names (the
  ``min_shards_per_split`` halving moves as days arrive), and banning app user 1 or 21 rewrote three train shards
  of earlier days under their names;
- the versions' folders ``datasets/`` and ``datasets/pickapic/`` keep the mode of the umask of the publish that
  made them: after one publish under umask 077, every later version published under umask 022 (its files 0644,
  its folder 0755) is unreachable for every other account, though README section 6 says a version is "readable
  by whoever this run's umask lets read it";
- an export folder has no dataset card, so ``datasets.load_dataset(OUT)`` (as for the version folder, where the
  card is there for exactly this reason) guesses the splits from file names and silently merges
  ``validation_unique`` into ``validation`` and ``test_unique`` into ``test`` (duplicated rows, wrong test sets);
- a failed publish leaves its ``.partial-<version>`` staging (mode 0700) among the versions, the folder consumers
  sync, until the next publish: another account's ``rsync -a HOME/datasets/pickapic/ MIRROR/`` (and ``find``) then
  fails (rsync exit 23, "opendir ... Permission denied");
- the ``pickscore-parquet`` export records nowhere which version it holds (neither ``pickapic-export.json`` nor the
  Parquet files), where ``eval-prompts`` writes ``dataset_version`` into its file: a folder exported into night
  after night cannot say which version its ``train.parquet`` is.

Noticed, not filed: ``model_0`` / ``model_1`` shorten ``stable-diffusion-xl-beta-v2-2-2`` to ``sdxl-beta-v2.2.2`` but
publish ``stable-diffusion-xl-beta-v2-2-4`` (which the simulator generates) unshortened
(``pipelines/curation/decisions.MODEL_SHORT_NAMES``); the export's ``image_0_url`` / ``image_1_url`` hold the data
home's blob keys (``blobs/train/s512q90/...``), no URL a consumer of the export can open (tested as intended in
``test_export_pickscore.py``, not documented in the README); ``datasets`` warns on every load of a version folder
that the card's ``splits`` lack ``num_bytes`` ("Ignoring part of dataset_info from the dataset card"); in a small
home a ban that empties ``validation`` is refused by the publish, so ``latest`` keeps serving the banned user's pairs
until new users arrive (documented: an empty split is refused); the card says users are held out at "6% by default"
without the fraction the version was built with (0.3 here).
"""
from __future__ import annotations

import contextlib
import functools
import http.server
import json
import os
import stat
import threading
from pathlib import Path
from unittest import mock

import datasets
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from test_publish_fixtures import history_home, make_home, publish_until

from pipelines.publish.config import PublishConfig
from pipelines.publish.version import publish_dataset
from pipelines.query import export


@contextlib.contextmanager
def _umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


@contextlib.contextmanager
def _served(folder: Path):
    """``folder`` over HTTP on localhost (a bucket or web server consumers read shards from)."""
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _manifest_files(version: Path) -> dict:
    return json.loads((version / "manifest.json").read_text())["files"]


def test_a_shard_name_never_holds_other_bytes_in_a_later_version(tmp_path: Path) -> None:
    home, table = history_home(tmp_path / "home", days=4, rankings=160)
    first = publish_until(home, table)
    day_one = min((first.path / "train").glob("pickapic-train-20230301-*.parquet"))
    users = pq.read_table(day_one, columns=["user_id"]).column("user_id").to_pylist()
    banned = users[-1] if users[-1] != users[0] else users[len(users) // 2]   # not the shard's first sample
    second = publish_until(home, table.filter(pc.not_equal(table.column("user_id"), banned)))
    assert second.version != first.version

    cache = tmp_path / "wds-cache"
    cache.mkdir()
    read: dict[str, list[str]] = {}
    with _served(home.datasets) as base:
        for report in (first, second):
            names = json.loads((report.path / "train" / "sizes.json").read_text())
            urls = [f"{base}/{report.version}/train/{name}" for name in names]
            read[report.version] = [s["__key__"] for s in wds.WebDataset(urls, shardshuffle=False,
                                                                         cache_dir=str(cache))]
    published = []
    for sidecar in sorted((second.path / "train").glob("pickapic-train-*.parquet")):
        published += pq.read_table(sidecar, columns=["key", "user_id"]).to_pylist()
    assert banned not in {row["user_id"] for row in published}
    assert sorted(read[second.version]) == sorted(row["key"] for row in published)
    old, new = _manifest_files(first.path), _manifest_files(second.path)
    assert [name for name in set(old) & set(new)
            if name.endswith(".tar") and old[name]["sha256"] != new[name]["sha256"]] == []


def test_a_version_published_under_umask_022_is_reachable_after_one_published_under_077(tmp_path: Path) -> None:
    import datetime as dt

    with _umask(0o022):
        home, table = history_home(tmp_path / "home", days=4, rankings=80)
    with _umask(0o077):
        publish_until(home, table, last_day=dt.date(2023, 3, 3))
    with _umask(0o022):
        report = publish_until(home, table)
    assert stat.S_IMODE(report.path.stat().st_mode) == 0o755   # the version itself honours this run's umask
    blocked = {str(folder.relative_to(home.root)): oct(stat.S_IMODE(folder.stat().st_mode))
               for folder in (home.root / "datasets", home.datasets)
               if stat.S_IMODE(folder.stat().st_mode) & 0o005 != 0o005}
    assert blocked == {}


def test_load_dataset_on_an_export_folder_gives_its_five_splits(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_UPDATE_DOWNLOAD_COUNTS", False)
    home = make_home(tmp_path / "home", num_rankings=60, seed=5)
    publish_dataset(home, PublishConfig(workers=1, fsync=False))
    report = export.export_pickscore_parquet(home, None, tmp_path / "out")
    loaded = datasets.load_dataset(str(tmp_path / "out"), cache_dir=str(tmp_path / "hf"))
    assert {split: loaded[split].num_rows for split in loaded} == report.rows


def test_a_failed_publish_leaves_nothing_other_accounts_cannot_read_among_the_versions(tmp_path: Path) -> None:
    import datetime as dt

    from pipelines.publish import version

    with _umask(0o022):
        home, table = history_home(tmp_path / "home", days=4, rankings=80)
        publish_until(home, table, last_day=dt.date(2023, 3, 3))
        with mock.patch.object(version.manifest, "write_manifest", side_effect=OSError(5, "I/O error")), \
                pytest.raises(OSError):
            publish_until(home, table)
    closed = []
    for folder, dirs, files in os.walk(home.datasets):
        for name in dirs:
            if stat.S_IMODE(os.lstat(os.path.join(folder, name)).st_mode) & 0o005 != 0o005:
                closed.append(os.path.relpath(os.path.join(folder, name), home.datasets))
        closed += [os.path.relpath(os.path.join(folder, name), home.datasets) for name in files
                   if stat.S_IMODE(os.lstat(os.path.join(folder, name)).st_mode) & 0o004 == 0]
    assert closed == []


def test_the_pickscore_export_names_the_version_it_holds(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home", num_rankings=60, seed=5)
    published = publish_dataset(home, PublishConfig(workers=1, fsync=False))
    out = tmp_path / "out"
    export.export_pickscore_parquet(home, None, out)
    record = (out / "pickapic-export.json").read_text()
    metadata = pq.read_schema(out / "train.parquet").metadata or {}
    assert published.version in record or metadata.get(b"dataset_version") == published.version.encode()
