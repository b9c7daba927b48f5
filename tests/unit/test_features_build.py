"""build_features: reconciled outputs, incremental reuse, determinism, and stage-level errors."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from test_features_fixtures import bad_blobs, encode, fake_detector, natural_image, png, refuse_prism, write_day

from formats.home import DataHome
from pipelines.features import reuse
from pipelines.features.__main__ import run as features_cli
from pipelines.features.config import FeaturesConfig
from pipelines.features.runner import pipeline_options, pipeline_runner, worker_processes
from pipelines.features.stage import build_features
from schemas import get_schema

DAY1, DAY2 = "2023-03-01", "2023-03-02"
CONFIG = FeaturesConfig(workers=0)


def build(home: DataHome, day: str, config: FeaturesConfig = CONFIG):
    return build_features(home, day, config, detector_factory=fake_detector)


def read(home: DataHome, dataset: str, day: str):
    return pq.read_table(home.partition_file(dataset, day))


def day_one(home: DataHome, tmp_path: Path) -> dict[str, bytes]:
    blobs = {"a": png(1), "b": png(2), "c": encode(natural_image(3, (90, 60)).convert("RGB"), "PNG"),
             "red": encode(natural_image(4, (64, 64)).point(lambda v: 255).convert("RGB").split()[0].convert("RGB"))}
    blobs.update({f"x_{reason}": data for reason, data in bad_blobs().items()})
    blobs["x_missing"] = None
    (tmp_path / "outside.png").write_bytes(png(5))
    extra = {"x_dots": "raw/images/../../outside.png"}
    write_day(home, DAY1, blobs, extra)
    home.raw_images.joinpath("x_link.png").symlink_to(tmp_path / "outside.png")
    write_day(home, DAY1, blobs | {"x_link": None}, extra)
    return blobs


def test_day_one_rerun_and_day_two(tmp_path: Path) -> None:
    """One home through the nightly sequence: day one, its re-run, day two, its re-run."""
    home = DataHome(tmp_path / "home")
    blobs = day_one(home, tmp_path)
    report = build(home, DAY1)
    feats, rejects = read(home, "image_features", DAY1), read(home, "image_rejects", DAY1)
    assert feats.schema == get_schema("image_features") and rejects.schema == get_schema("image_rejects")
    assert feats["image_uid"].to_pylist() == ["a", "b", "c", "red"]
    reasons = dict(zip(rejects["image_uid"].to_pylist(), rejects["reason"].to_pylist()))
    expected = {f"x_{r}": r for r in bad_blobs()} | {"x_missing": "missing_blob", "x_dots": "unsafe_path",
                                                      "x_link": "unsafe_path"}
    assert reasons == expected
    assert report.inputs == len(blobs) + 2 == report.features_rows + report.rejects_rows
    assert (report.processed, report.reused, report.rejected_total) == (4, 0, len(expected))
    assert report.bytes_read == sum(len(b) for b in blobs.values() if b is not None)
    for row in feats.to_pylist():
        assert (home.root / row["train_jpg_key"]).is_file()
    metadata = report.metadata()
    json.dumps(metadata)
    assert metadata["reconciled"] and "| processed | 4 |" in metadata["summary"]
    # One NSFW policy: curation applies the home's nsfw_threshold / nsfw_classes to these scores; the
    # stage keeps no second, fixed-default count of its own.
    assert "nsfw_flagged" not in metadata and "nsfw_flagged" not in metadata["summary"]
    assert feats.filter(pc.equal(feats["image_uid"], "red"))["nsfw_max"].to_pylist()[0]["FEMALE_BREAST_EXPOSED"] > 0.5
    # nothing staged is left: only the staging folders' lock files, beside them in the stage's own area
    left = sorted(str(p.relative_to(home.root)) for p in (home.root / ".staging").rglob("*"))
    assert left and all(name == ".staging/features" or (name.startswith(".staging/features/.dt=")
                                                     and name.endswith(".lock")) for name in left), left

    # Re-run of the same day: nothing recomputed, same bytes.
    first = {ds: home.partition_file(ds, DAY1).read_bytes() for ds in ("image_features", "image_rejects")}
    report = build(home, DAY1)
    assert (report.processed, report.reused_by_uid, report.reused_by_sha256) == (0, 4, 0)
    assert {ds: home.partition_file(ds, DAY1).read_bytes() for ds in first} == first

    # A new day: only the new image is computed; a known uid and known bytes are copied.
    write_day(home, DAY2, {"new": png(10), "copy_of_b": png(2), "a": png(1)})
    report = build(home, DAY2)
    assert (report.processed, report.reused_by_uid, report.reused_by_sha256, report.rejected_total) == (1, 1, 1, 0)
    rows = {r["image_uid"]: r for r in read(home, "image_features", DAY2).to_pylist()}
    old = {r["image_uid"]: r for r in read(home, "image_features", DAY1).to_pylist()}
    assert rows["copy_of_b"]["reused_from"] == "b" and rows["a"]["reused_from"] == "a"
    assert rows["new"]["reused_from"] is None
    for uid, source in (("copy_of_b", "b"), ("a", "a")):
        same = {k: v for k, v in rows[uid].items() if k not in ("image_uid", "dt", "blob_path", "reused_from")}
        assert same == {k: v for k, v in old[source].items() if k not in ("image_uid", "dt", "blob_path", "reused_from")}
        assert str(rows[uid]["dt"]) == DAY2 and rows[uid]["blob_path"] == f"raw/images/{uid}.png"
    second = home.partition_file("image_features", DAY2).read_bytes()
    again = build(home, DAY2)
    assert (again.processed, again.reused_by_uid, again.stage_seconds) == (0, 3, 0.0)
    assert home.partition_file("image_features", DAY2).read_bytes() == second


def test_a_changed_output_setting_recomputes_instead_of_reusing_and_matches_a_build_from_scratch(tmp_path: Path) -> None:
    """Rows made under other output settings are never reused (they were, by uid and sha256: a smaller
    train_size or a tighter max_side never reached already-fingerprinted images, and an incremental
    build then differed from one from scratch)."""
    days = {DAY1: {"a": png(1), "b": png(2), "wide": encode(natural_image(7, (300, 100)).convert("RGB"))},
            DAY2: {"a": png(1), "copy_of_b": png(2), "new": png(10)}}
    tight = FeaturesConfig(workers=0, train_size=64, jpeg_quality=50, max_aspect=2.5)
    incremental, scratch = DataHome(tmp_path / "incremental"), DataHome(tmp_path / "scratch")
    for home in (incremental, scratch):
        for day, blobs in days.items():
            write_day(home, day, blobs)
    for day in days:                       # the defaults first, then the same days again under new settings
        build(incremental, day)
    reports = [build(incremental, day, tight) for day in days]
    assert ([(r.processed, r.rejected_total, r.reused_by_uid, r.reused_by_sha256) for r in reports]
            == [(2, 1, 0, 0), (1, 0, 1, 1)])
    for day in days:
        build(scratch, day, tight)
    for day in days:
        for dataset in ("image_features", "image_rejects"):
            assert incremental.partition_file(dataset, day).read_bytes() == scratch.partition_file(dataset, day).read_bytes()
    assert read(incremental, "image_rejects", DAY1)["reason"].to_pylist() == ["bad_dimensions"]      # 3:1 > 2.5
    keys = {r["train_jpg_key"].split("/")[2] for r in read(incremental, "image_features", DAY2).to_pylist()}
    assert keys == {"s64q50"}
    again = build(incremental, DAY2, tight)     # same settings: reused as before
    assert (again.processed, again.reused_by_uid) == (0, 3)


def test_rows_of_the_agnostic_nms_format_are_not_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Partitions stamped ``features-output-1`` hold NudeNet's class-agnostic NMS detections, which could
    hide an exposed box under a covered one: same settings, but recomputed rather than copied."""
    home = DataHome(tmp_path / "home")
    write_day(home, DAY1, {"a": png(1), "b": png(2)})
    write_day(home, DAY2, {"a": png(1), "copy_of_b": png(2)})
    with monkeypatch.context() as patch:
        patch.setattr(reuse, "OUTPUT_FORMAT", "features-output-1")      # what the code before per-class NMS stamped
        build(home, DAY1)
    assert reuse.partition_output_key(home.partition_file("image_features", DAY1)).startswith("features-output-1/")
    report = build(home, DAY2)
    assert (report.processed, report.reused_by_uid, report.reused_by_sha256) == (2, 0, 0)
    report = build(home, DAY1)
    assert (report.processed, report.reused_by_uid) == (2, 0)
    assert reuse.partition_output_key(home.partition_file("image_features", DAY1)) == reuse.output_key(CONFIG)


def test_outputs_are_byte_identical_across_homes(tmp_path: Path) -> None:
    outputs = []
    for name in ("one", "two"):
        home = DataHome(tmp_path / name)
        write_day(home, DAY1, {"a": png(1), "b": png(2), "bad": b"nope"})
        build(home, DAY1, FeaturesConfig(workers=0, nsfw_batch_size=1 if name == "one" else 8))
        outputs.append([home.partition_file(ds, DAY1).read_bytes() for ds in ("image_features", "image_rejects")])
        outputs[-1].append(sorted(p.relative_to(home.root).as_posix() for p in home.blobs.rglob("*.jpg")))
    assert outputs[0] == outputs[1]


def test_stage_failures_name_the_cause(tmp_path: Path) -> None:
    home = DataHome(tmp_path / "home")
    with pytest.raises(FileNotFoundError, match="images partition for 2023-03-01"):
        build(home, DAY1)
    write_day(home, DAY1, {"a": png(1)})
    with pytest.raises(ValueError, match="not an ISO date"):
        build(home, "2023-13-01")
    with pytest.raises(ValueError, match="--no_such_option"):
        build_features(home, DAY1, CONFIG, ["--no_such_option=1"])
    with pytest.raises(ValueError, match="workers"):
        build(home, DAY1, FeaturesConfig(workers=-1))
    home.partition_file("images", DAY1).write_bytes(b"not parquet")
    with pytest.raises(ValueError, match="cannot read columns"):
        build(home, DAY1)


def test_duplicate_input_uids_fail_the_stage(tmp_path: Path) -> None:
    import pyarrow as pa

    home = DataHome(tmp_path / "home")
    write_day(home, DAY1, {"a": png(1)})
    table = read(home, "images", DAY1)
    pq.write_table(pa.concat_tables([table, table]), home.partition_file("images", DAY1))
    with pytest.raises(ValueError, match="not unique"):
        build(home, DAY1)


def test_direct_runner_never_tries_the_prism_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Beam's DirectRunner would first try Prism, downloading its binary at run time; ours never does."""
    attempts = refuse_prism(monkeypatch, tmp_path)
    home = DataHome(tmp_path / "home")
    write_day(home, DAY1, {"a": png(1), "b": png(2)})
    report = build(home, DAY1)
    assert attempts == [] and report.runner == "DirectRunner" and report.features_rows == 2
    assert not [p.name for p in (tmp_path / "tmp").iterdir() if p.name.startswith("beam-temp")]
    assert pipeline_runner(pipeline_options(CONFIG, ["--runner=DataflowRunner", "--project=my-project",
                                                              "--temp_location=gs://bucket/tmp", "--region=r"])) is None


def test_beam_options_pass_through_unchanged() -> None:
    # (a project id and bucket Beam's own validator takes: it refuses 'p' and 'gs://b/t', review rev23h)
    options = pipeline_options(FeaturesConfig(workers=3), ["--runner=DataflowRunner", "--project=my-project",
                                                           "--temp_location=gs://bucket/tmp",
                                                           "--region=europe-west1",
                                                           "--sdk_container_image=registry/worker:1"])
    values = options.get_all_options()   # (not --setup_file: Beam pip-installs it at run time, refused: rev23j)
    assert (values["runner"], values["project"], values["temp_location"], values["sdk_container_image"]) == \
        ("DataflowRunner", "my-project", "gs://bucket/tmp", "registry/worker:1")
    assert values["direct_running_mode"] != "multi_processing"
    local = pipeline_options(FeaturesConfig(workers=3), [], num_images=128).get_all_options()
    assert (local["direct_running_mode"], local["direct_num_workers"]) == ("multi_processing", 3)
    # below the default in_process_below (128: the measured crossover, benchmarks/features_crossover.py)
    small = pipeline_options(FeaturesConfig(workers=3), [], num_images=127).get_all_options()
    assert small["direct_running_mode"] == "in_memory"
    # (a job endpoint and an environment that pulls nothing: without them Flink would download its job server jar
    # and pull Beam's SDK image at run time, refused since review rev23f)
    flink = pipeline_options(FeaturesConfig(), ["--runner=FlinkRunner", "--flink_master=host:8081",
                                                "--job_endpoint=localhost:8099", "--environment_type=EXTERNAL",
                                                "--environment_config=localhost:50000"]).get_all_options()
    assert flink["flink_master"] == "host:8081"


def test_command_line_passes_unknown_args_to_beam(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    home = DataHome(tmp_path / "home")
    write_day(home, DAY1, {"a": png(1), "b": b""})
    report = features_cli(["--home", str(home.root), "--day", DAY1, "--workers", "0",
                           "--direct_running_mode=in_memory", "--train-size", "64"])
    assert (report.processed, report.rejected) == (1, {"empty_file": 1})
    printed = capsys.readouterr().out
    assert json.loads(printed[printed.index("\n{") + 1:])["processed"] == 1
    assert read(home, "image_features", DAY1)["train_jpg_key"][0].as_py().startswith("blobs/train/s64q90/")
    assert os.path.isdir(home.blobs / "train" / "s64q90")


def test_contracts_pass_on_real_output_and_catch_planted_violations(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.compute as pc

    from data_contracts.engine import evaluate, load_contract
    from pipelines.sqlrun import connect

    home = DataHome(tmp_path / "home")
    write_day(home, DAY1, {"a": png(1), "b": png(2), "bad": b"", "gone": None})
    build(home, DAY1)
    views = {name: read(home, name, DAY1) for name in ("images", "image_features", "image_rejects")}
    for dataset in ("image_features", "image_rejects"):
        failed = [r.rule.name for r in evaluate(load_contract(dataset), connect(views)) if not r.passed]
        assert failed == [], dataset
    feats = views["image_features"]
    broken = feats.set_column(feats.schema.get_field_index("train_width"), "train_width",
                              pc.add(feats["train_width"], pa.scalar(1000, pa.int32())))
    broken = pa.concat_tables([broken, broken.slice(0, 1)])
    results = {r.rule.name: r.passed for r in evaluate(load_contract("image_features"), connect(views | {"image_features": broken}))}
    assert not results["image_features_never_upscaled"] and not results["image_features_key_unique"]
    dropped = {r.rule.name: r.passed for r in evaluate(load_contract("image_features"),
                                                       connect(views | {"image_features": feats.slice(1)}))}
    assert not dropped["image_features_reconcile_with_images"]


def test_the_report_names_the_worker_processes_the_run_used(tmp_path: Path) -> None:
    """A day under ``in_process_below`` runs in this process: the report (and the asset's metadata) says 0
    workers, not the configured 2; a fully reused rerun starts none either."""
    home = DataHome(tmp_path / "home")
    write_day(home, DAY1, {"a": png(1), "b": png(2)})
    small = build_features(home, DAY1, FeaturesConfig(workers=2), detector_factory=fake_detector)
    assert (small.processed, small.workers) == (2, 0)
    again = build_features(home, DAY1, FeaturesConfig(workers=2, in_process_below=0), detector_factory=fake_detector)
    assert (again.processed, again.reused_by_uid, again.workers) == (0, 2, 0)
    assert worker_processes(pipeline_options(FeaturesConfig(workers=2), [], num_images=500)) == 2
    assert worker_processes(pipeline_options(FeaturesConfig(workers=2), ["--direct_running_mode=in_memory"])) == 0
    # a --direct_num_workers given without a running mode is the user's count (it was replaced by workers)
    for given in (["--direct_num_workers=3"], ["--direct_num_workers", "3"]):
        options = pipeline_options(FeaturesConfig(workers=2), given, num_images=5)
        assert options.get_all_options()["direct_running_mode"] == "multi_processing"
        assert worker_processes(options) == 3
