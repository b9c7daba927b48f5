"""Fixes of review rev24c beyond its strict xfails (tests/unit/test_hostile_rev24c.py): paths taken literally in
every glob, the export's checked sidecars, the version check, the publish's leftovers and its meta sources."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from curation_fixtures import HomeBuilder, build_all
from splits_fixtures import publish_splits, realistic_pairs, write_pairs
from test_publish_fixtures import history_home, make_home, publish_until, published_home

from formats.dataset import MANIFEST_FILE, ChecksumError, read_manifest, resolve_version
from formats.files import write_parquet_atomic
from formats.home import DataHome
from pipelines.publish import manifest, meta, samples, versions
from pipelines.publish.config import PublishConfig
from pipelines.publish.version import publish_dataset
from pipelines.query import export
from pipelines.splits.assign import SplitConfig, build_splits
from pipelines.sqlrun import NoFilesMatch, connect, glob_under
from schemas import get_schema

REPO = Path(__file__).resolve().parents[2]
FAST = PublishConfig(workers=1, fsync=False)
ODD = "homes[1] *?{x}"        # every glob character a folder name can hold


# --------------------------------------------------------------------------- sqlrun: paths are names, not globs
def test_views_read_a_path_as_its_own_name_and_a_required_view_without_files_is_an_error(tmp_path: Path) -> None:
    odd, twin = tmp_path / "d[1]", tmp_path / "d1"        # '[1]' as a glob would match d1
    for folder, values in ((odd, [1, 2]), (twin, [9])):
        folder.mkdir()
        pq.write_table(pa.table({"x": values}), folder / "f.parquet")
    con = connect({"by_path": odd / "f.parquet", "by_name": str(odd / "f.parquet"),
                   "by_glob": glob_under(odd, "*.parquet"), "prompt_counts": glob_under(tmp_path / "none[2]", "*.parquet")})
    try:
        for view in ("by_path", "by_name", "by_glob"):
            assert con.execute(f"SELECT sum(x) FROM {view}").fetchone() == (3,), view
        assert con.execute("SELECT count(*) FROM prompt_counts").fetchone() == (0,)    # not required: empty
    finally:
        con.close()
    with pytest.raises(NoFilesMatch, match=r"none\[2\].*the prompt_counts table"):
        connect({"prompt_counts": glob_under(tmp_path / "none[2]", "*.parquet")}, required=("prompt_counts",))


def test_curation_and_splits_in_a_home_whose_path_holds_glob_characters_build_what_a_plain_home_builds(
        tmp_path: Path) -> None:
    homes = []
    for where in ("plain", ODD):
        builder = HomeBuilder(tmp_path / where / "home")
        for ranking in range(1, 7):
            builder.pair(ranking, user=ranking % 3, prompt=f"prompt {ranking % 4}", day=f"2023-03-0{1 + ranking % 2}")
        builder.banned.append(2)
        home = builder.write()
        build_all(home)
        homes.append(home)
    plain, odd = homes
    for dataset in ("duplicate_clusters", "decisions", "pairs"):
        table = pq.read_table(plain.table_file(dataset))
        assert table.num_rows > 0, dataset
        assert pq.read_table(odd.table_file(dataset)).equals(table), dataset
    config = SplitConfig(heldout_fraction=0.3, unique_prompts=3, min_unique_rows=0)
    rows = realistic_pairs(users=40, days=2, per_day=60, seed=5)
    for home in (plain, odd):
        write_pairs(home, rows)
        build_splits(home, config)
        publish_splits(home, "2023-03-02-0123456789")   # the next build reads the published version's sidecars
        build_splits(home, config)
    assert pq.read_metadata(plain.table_file("split_pairs")).num_rows > 0
    for dataset in ("split_pairs", "split_rejects", "split_ledger"):
        assert odd.table_file(dataset).read_bytes() == plain.table_file(dataset).read_bytes(), dataset


# --------------------------------------------------------------------------- export: the manifest's sidecars
def test_eval_prompts_export_refuses_an_edited_sidecar(tmp_path: Path) -> None:
    home = published_home(tmp_path / "home")
    sidecar = min((resolve_version(home) / "test_unique").glob("pickapic-test_unique-*.parquet"))
    table = pq.read_table(sidecar)
    captions = pa.array(["an edited caption"] * table.num_rows, pa.string())
    pq.write_table(table.set_column(table.schema.get_field_index("caption"), "caption", captions), sidecar)
    with pytest.raises(ChecksumError, match=sidecar.name):
        export.export_eval_prompts(home, None, tmp_path / "out")
    assert not (tmp_path / "out" / export.EVAL_PROMPTS_FILE).exists()


def test_export_reads_the_sidecars_the_manifest_lists_not_what_the_folder_holds(tmp_path: Path) -> None:
    home = published_home(tmp_path / "home")
    version = resolve_version(home)
    clean = export.export_pickscore_parquet(home, None, tmp_path / "clean")
    sidecar = min((version / "train").glob("pickapic-train-*.parquet"))
    shutil.copyfile(sidecar, version / "train" / "pickapic-train-99999999-ffffffffff.parquet")   # planted
    again = export.export_pickscore_parquet(home, None, tmp_path / "again")
    assert again.rows == clean.rows
    assert Path(again.files["train"]).read_bytes() == Path(clean.files["train"]).read_bytes()
    sidecar.unlink()                                        # a listed sidecar gone: an error naming it
    with pytest.raises(FileNotFoundError, match=sidecar.name):
        export.export_pickscore_parquet(home, None, tmp_path / "gone")
    assert not (tmp_path / "gone" / "train.parquet").exists()


# --------------------------------------------------------------------------- the version check
def test_verify_version_names_every_file_that_differs_one_line_each(tmp_path: Path) -> None:
    home, full = history_home(tmp_path / "h")
    version = publish_until(home, full).path
    tars = sorted((version / "train").glob("pickapic-train-*.tar"))
    outside = tmp_path / "outside.tar"
    shutil.copyfile(tars[0], outside)
    tars[0].unlink()
    os.symlink(outside, tars[0])                            # same bytes, but a link out of the home
    tars[1].unlink()
    os.symlink(tmp_path / "gone.tar", tars[1])              # dangling
    with open(tars[2], "r+b") as handle:                    # bit rot
        handle.seek(700)
        handle.write(b"rot!")
    (version / "train" / "stray.txt").write_text("x")
    with pytest.raises(manifest.ManifestMismatch) as caught:
        manifest.verify_version(version, checksums=True)
    lines = str(caught.value).splitlines()
    assert lines[0] == f"version {version.name}: 4 files differ from its manifest:"
    not_a_file = "not the regular file the manifest lists"
    gone = str(tmp_path / "gone.tar")
    assert sorted(lines[1:]) == sorted([f"  train/{tars[0].name} is a symbolic link to {str(outside)!r}, {not_a_file}",
                                        f"  train/{tars[1].name} is a symbolic link to {gone!r}, {not_a_file}",
                                        f"  train/{tars[2].name} does not match its manifest sha256",
                                        "  train/stray.txt is not in the manifest"])
    assert sorted(caught.value.paths) == sorted([f"train/{t.name}" for t in tars[:3]] + ["train/stray.txt"])


def test_the_command_line_publish_reports_a_refusal_in_one_error_without_a_traceback(tmp_path: Path) -> None:
    home = make_home(tmp_path / "h", num_rankings=40, seed=1)
    home.datasets.mkdir(parents=True)
    (home.datasets / "latest").mkdir()                      # a folder where the publish keeps a link
    run = subprocess.run([sys.executable, "-m", "pipelines.publish", "--home", str(home.root), "--workers", "1",
                          "--no-fsync"], check=False, env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 1
    assert "Traceback" not in run.stderr
    assert run.stderr.startswith("python -m pipelines.publish: error: ") and "is a folder" in run.stderr


# --------------------------------------------------------------------------- leftovers of killed publishes
def test_sweep_removes_every_temporary_link_of_a_switch_and_nothing_else(tmp_path: Path) -> None:
    """A switch makes its temporary link only under the publish lock the sweeping publish holds: every such link
    is a dead switch's, whatever its pid names now (review rev24j: a reused pid kept a killed switch's link)."""
    datasets = tmp_path / "datasets"
    datasets.mkdir()
    dead = [subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                           check=True).stdout.strip() for _ in range(3)]
    os.symlink("2023-03-02-0123456789", datasets / f".latest.{dead[0]}.tmp")      # a switch killed
    os.symlink("2023-03-02-0123456789", datasets / f".latest.{os.getpid()}.tmp")  # its pid reused (this one)
    (datasets / f".latest.{dead[1]}.tmp").write_text("not a link")                # nothing a publish made
    (datasets / f".latest.{dead[2]}.tmp").mkdir()
    notes = versions.sweep_stale(datasets, ".partial-x")
    assert sorted(os.listdir(datasets)) == sorted([f".latest.{dead[1]}.tmp", f".latest.{dead[2]}.tmp"])
    assert len(notes) == 2 and all("left as it is" in note for note in notes)


def test_only_the_temporary_copies_of_a_versions_own_files_are_removed(tmp_path: Path) -> None:
    version = tmp_path / "v"
    (version / "train").mkdir(parents=True)
    (version / "train" / "a.tar").write_bytes(b"a")
    files = {"train/a.tar": {"bytes": 1, "sha256": "x"}}
    leftovers = ["train/.a.tar.0123456789ab.tmp", ".manifest.json.0123456789ab.tmp"]
    kept = ["train/.b.tar.0123456789ab.tmp", "train/.a.tar.tmp", "train/.a.tar.0123456789abc.tmp", "notes.txt"]
    for rel in leftovers + kept:
        (version / rel).write_text("x")
    outside = tmp_path / "outside"                          # a linked folder is never entered
    outside.mkdir()
    (outside / ".s.parquet.0123456789ab.tmp").write_text("not the version's")
    (version / "meta").symlink_to(outside)
    files["meta/s.parquet"] = {"bytes": 1, "sha256": "x"}
    assert sorted(versions.remove_mode_copies(version, files)) == sorted(leftovers)
    assert all((version / rel).exists() for rel in kept)
    assert (outside / ".s.parquet.0123456789ab.tmp").exists()


# --------------------------------------------------------------------------- meta: the files the id hashed
def test_a_warehouse_file_rewritten_while_the_publish_runs_stops_it(tmp_path: Path, monkeypatch) -> None:
    home = make_home(tmp_path / "home", num_rankings=80, seed=3)
    real = samples.day_volumes

    def an_ingest_rewrites_a_day(at: DataHome) -> dict[str, int]:
        path = at.partition_file("quarantine", "2023-03-01")
        table = pq.read_table(path)
        write_parquet_atomic(table.slice(0, 1), path, get_schema("quarantine"))
        return real(at)

    monkeypatch.setattr(samples, "day_volumes", an_ingest_rewrites_a_day)
    with pytest.raises(meta.SourceChanged, match=r"quarantine/dt=2023-03-01/part-0.parquet changed while"):
        publish_dataset(home, FAST)
    assert not (home.datasets / "latest").exists()
    assert [p.name for p in home.datasets.iterdir() if not p.name.startswith(".partial-")] == []


def test_a_rerun_of_a_version_published_again_after_a_kill_in_retention_leaves_versions_and_latest(
        tmp_path: Path) -> None:
    home, full = history_home(tmp_path / "h")
    report = publish_until(home, full)
    hidden = home.datasets / f"{versions.DELETING_PREFIX}2023-01-01-0123456789"
    (hidden / "train").mkdir(parents=True)
    (hidden / "train" / "x.tar").write_bytes(b"x")
    again = publish_until(home, full)
    assert again.version == report.version
    assert sorted(os.listdir(home.datasets)) == sorted([report.version, "latest"])
    assert read_manifest(again.path)["version"] == report.version
    assert (again.path / MANIFEST_FILE).is_file()


def test_the_splits_read_their_own_published_sidecars_when_a_sibling_matches_the_homes_glob(tmp_path: Path) -> None:
    """A home at ``homes[1]/home`` beside a home at ``homes1/home`` (what ``homes[1]`` means as a glob): the splits
    stage reads the published sidecars of its own versions (their paths escaped), never the sibling's, and builds
    what a plain home builds."""
    config = SplitConfig(heldout_fraction=0.3, unique_prompts=3, min_unique_rows=0)
    built = {}
    for where, seed in (("plain", 5), ("homes1", 9), ("homes[1]", 5)):
        home = DataHome(tmp_path / where / "home")
        write_pairs(home, realistic_pairs(users=40, days=2, per_day=60, seed=seed))
        build_splits(home, config)
        publish_splits(home, "2023-03-02-0123456789")   # the same version name in every home
        build_splits(home, config)
        built[where] = home
    for dataset in ("split_pairs", "split_rejects", "split_ledger"):
        assert built["homes[1]"].table_file(dataset).read_bytes() == built["plain"].table_file(dataset).read_bytes(), \
            dataset


def test_a_planted_file_name_holding_a_line_break_cannot_forge_a_line_of_the_report(tmp_path: Path) -> None:
    """The report names a file per line; a planted name holding a line break (or a terminal escape) is shown
    escaped, so it cannot pass for another line (e.g. one that looks like the report's end)."""
    home, full = history_home(tmp_path / "h")
    version = publish_until(home, full).path
    (version / "train" / "x\n  fine.tar does not match\x1b[2K").write_text("x")
    with pytest.raises(manifest.ManifestMismatch) as caught:
        manifest.verify_version(version)
    lines = str(caught.value).splitlines()
    assert len(lines) == 2 and "\x1b" not in str(caught.value)
    assert lines[1] == "  train/x\\x0a  fine.tar does not match\\x1b[2K is not in the manifest"
