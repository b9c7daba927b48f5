"""Feature stage end to end on a small generated day: real NudeNet, DirectRunner multi_processing, 2 workers."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))

from test_features_fixtures import bad_blobs, bomb_png, encode, face_variants, png, write_day  # noqa: E402

from data_contracts.engine import evaluate, load_contract  # noqa: E402
from formats.home import DataHome  # noqa: E402
from pipelines.features.config import FeaturesConfig  # noqa: E402
from pipelines.features.stage import build_features  # noqa: E402
from pipelines.sqlrun import connect  # noqa: E402

DAY1, DAY2 = "2023-03-01", "2023-03-02"
REPO = Path(__file__).resolve().parents[2]


def test_two_generated_days(tmp_path: Path) -> None:
    home = DataHome(tmp_path / "home")
    blobs = {f"img{i:02d}": png(i, (512, 512) if i % 3 else (768, 640)) for i in range(12)}
    blobs.update({f"face{i}": encode(image) for i, image in enumerate(face_variants())})
    blobs.update({f"bad_{reason}": data for reason, data in bad_blobs().items()})
    blobs["bad_bomb"] = bomb_png()
    blobs["bad_missing"] = None
    uids = write_day(home, DAY1, blobs, {"bad_escape": "raw/images/../../../etc/passwd"})
    config = FeaturesConfig(workers=2, in_process_below=0)

    report = build_features(home, DAY1, config)
    feats = pq.read_table(home.partition_file("image_features", DAY1))
    rejects = pq.read_table(home.partition_file("image_rejects", DAY1))
    assert report.inputs == len(uids) == feats.num_rows + rejects.num_rows
    assert report.processed == 12 + len(face_variants())
    assert set(rejects["image_uid"].to_pylist()) == {u for u in uids if u.startswith("bad_")}
    assert report.rejected["decompression_bomb"] == 2 and report.rejected["unsafe_path"] == 1
    rows = {r["image_uid"]: r for r in feats.to_pylist()}
    faces = [uid for uid in rows if uid.startswith("face")]
    assert sum(any(d["class"] == "FACE_FEMALE" for d in rows[uid]["nsfw_detections"]) for uid in faces) >= 4
    for uid, row in rows.items():
        jpeg = Image.open(io.BytesIO((home.root / row["train_jpg_key"]).read_bytes()))
        assert jpeg.format == "JPEG" and jpeg.size == (row["train_width"], row["train_height"])
        assert min(jpeg.size) == min(512, row["width"], row["height"])
    views = {"images": pq.read_table(home.partition_file("images", DAY1)), "image_features": feats, "image_rejects": rejects}
    for dataset in ("image_features", "image_rejects"):
        assert [r.rule.name for r in evaluate(load_contract(dataset), connect(views)) if not r.passed] == []
    metadata = report.metadata()
    assert metadata["reconciled"] and metadata["images_per_second"] > 0

    # The next night: two new images, one re-upload of known bytes; nothing else is recomputed.
    write_day(home, DAY2, {"new1": png(500), "new2": png(501), "reupload": blobs["img05"]})
    second = build_features(home, DAY2, FeaturesConfig(workers=2))
    assert (second.processed, second.reused_by_sha256, second.rejected_total) == (2, 1, 0)
    copied = {r["image_uid"]: r for r in pq.read_table(home.partition_file("image_features", DAY2)).to_pylist()}
    assert copied["reupload"]["reused_from"] == "img05" and copied["reupload"]["phash"] == rows["img05"]["phash"]

    before = home.partition_file("image_features", DAY1).read_bytes()
    rerun = build_features(home, DAY1, FeaturesConfig(workers=2))
    assert rerun.processed == 0 and rerun.reused_by_uid == len(rows)
    assert home.partition_file("image_features", DAY1).read_bytes() == before


NOISE = ("apitools not found", "Logging handler created")


def test_cli_run_prints_no_beam_start_up_noise(tmp_path: Path) -> None:
    """A real run on 2 worker processes prints its progress and report, and none of Beam's start-up lines."""
    home = DataHome(tmp_path / "home")
    write_day(home, DAY1, {"a": png(1, (64, 64)), "b": png(2, (64, 64)), "bad": b"not an image"})
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-m", "pipelines.features", "--home", str(home.root), "--day", DAY1,
                           "--workers", "2", "--in-process-below", "0"], capture_output=True, text=True, env=env,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    assert not [line for line in (done.stdout + done.stderr).splitlines() if any(n in line for n in NOISE)]
    assert done.stderr == ""
    report = json.loads(done.stdout[done.stdout.index("\n{") + 1:])
    assert (report["processed"], report["rejected"], report["workers"]) == (2, {"not_an_image": 1}, 2)


def test_dagster_run_logs_carry_no_beam_start_up_noise(built_home: DataHome) -> None:
    """Nothing under the instance (compute logs of every run, the event log) holds Beam's start-up lines."""
    files = [p for p in built_home.dagster_home.rglob("*") if p.is_file()]
    compute_logs = [p for p in files if p.parent.name == "compute_logs" and p.suffix == ".err"]
    assert len(compute_logs) >= 3            # the daily runs (multi_processing Beam workers), rebuild, model
    with dg.DagsterInstance.from_config(str(built_home.dagster_home)) as instance:
        records = instance.fetch_materializations(dg.AssetKey("image_features"), limit=100).records
    workers = {r.partition_key: r.asset_materialization.metadata["workers"].value for r in records}
    assert workers and all(n == 2 for n in workers.values()), workers   # the days ran on 2 worker processes
    noisy = [p.relative_to(built_home.root).as_posix() for p in files
             if any(n.encode() in p.read_bytes() for n in NOISE)]
    assert noisy == []
