"""Feature-stage benchmark (run by hand): the stage vs bare onnxruntime vs the obvious code, same images.

    .venv/bin/python benchmarks/features.py [--images 240] [--size 512] [--format png|jpeg] [--json out.json]

Prints, in one run on the same generated images:
- bare ``session.run`` throughput of NudeNet 320n (batched, 1 and 2 intra-op threads; input tensors
  prepared beforehand, so only the model is timed);
- the obvious code: ``NudeDetector().detect(path)`` + ``imagehash.phash/dhash(Image.open(path))``;
- this stage's per-image work in one process with one onnxruntime thread (read, sha256, safe decode,
  hashes, training JPEG, batched NSFW, post-processing) -- the number the 0.9x goal is about;
- ``build_features`` on the DirectRunner with ``multi_processing`` and 1 and 2 workers (wall time of
  the Beam stage with worker start-up, and the marginal rate between a quarter-size and a full run);
- a per-image cost breakdown of the stage's steps.
Absolute numbers drift on shared machines; compare the ratios, which come from the same run.
"""
from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image, ImageDraw, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines import imagedecode  # noqa: E402
from pipelines.features import (DecodeImageFn, DetectNsfwFn, DetectorFactory, FeaturesConfig, ReadBlobFn,  # noqa: E402
                                build_features, configure_worker, encode_train_jpeg, perceptual_hashes)
from pipelines.home import DataHome  # noqa: E402
from pipelines.nsfw import FastNudeDetector, postprocess, prepare_image  # noqa: E402
from pipelines.storage import write_parquet_atomic  # noqa: E402
from schemas import get_schema  # noqa: E402

DAY = "2023-03-01"


class Clock:
    """Wall time and CPU time of this process (all its threads) for a block."""

    def __enter__(self) -> "Clock":
        self.wall, self.cpu = time.perf_counter(), _cpu()
        return self

    def __exit__(self, *exc) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, _cpu() - self.cpu


def _cpu() -> float:
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime


def picture(seed: int, size: int) -> Image.Image:
    """A generated picture that compresses like a real one (blurred noisy gradients and shapes)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    base = np.stack([(x * (seed % 7 + 1)) % 256, (y * (seed % 5 + 1)) % 256, ((x + y) * (seed % 3 + 1)) % 256], -1)
    base = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    image = Image.fromarray(base).filter(ImageFilter.GaussianBlur(1))
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x0, y0 = (int(v) for v in rng.integers(0, size - 100, 2))
        draw.ellipse([x0, y0, x0 + int(rng.integers(30, 200)), y0 + int(rng.integers(30, 200))],
                     fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    return image


def make_raw(folder: Path, count: int, size: int, fmt: str) -> tuple[Path, list[str]]:
    """Write ``count`` images into ``folder/raw/images`` and return the raw folder and blob paths."""
    raw = folder / "raw"
    (raw / "images").mkdir(parents=True)
    ext = "png" if fmt == "png" else "jpg"
    paths = []
    for index in range(count):
        out = io.BytesIO()
        picture(index, size).save(out, "PNG" if fmt == "png" else "JPEG", **({} if fmt == "png" else {"quality": 90}))
        relpath = f"raw/images/{index:06d}.{ext}"
        (folder / relpath).write_bytes(out.getvalue())
        paths.append(relpath)
    return raw, paths


def make_home(root: Path, raw: Path, paths: list[str]) -> DataHome:
    """A fresh home whose raw zone is ``raw`` (symlinked), with the day's images partition."""
    root.mkdir(parents=True)
    (root / "raw").symlink_to(raw)
    home = DataHome(root)
    rows = [{"image_id": i, "created_at": dt.datetime(2023, 3, 1), "image_uid": f"{i:06d}", "user_id": 1,
             "prompt": "p", "bracket_negative_prompt": None, "negative_prompt": None, "seed": i, "gs": 7.0,
             "steps": 25, "idx": 0, "num_generated": 1, "scheduler_cls": "x", "model_id": "m", "blob_path": p,
             "dt": dt.date.fromisoformat(DAY)} for i, p in enumerate(paths)]
    write_parquet_atomic(pa.Table.from_pylist(rows, schema=get_schema("images")), home.partition_file("images", DAY),
                         get_schema("images"))
    return home


def bare_session_run(folder: Path, paths: list[str], threads: int, batch: int) -> tuple[float, float]:
    """(images per wall second, images per CPU second) of session.run alone on prepared inputs."""
    detector = FastNudeDetector(intra_op_threads=threads)
    prepared = [prepare_image(np.asarray(Image.open(folder / p).convert("RGB"))) for p in paths]
    detector.run(prepared[:batch])
    with Clock() as clock:
        for i in range(0, len(prepared), batch):
            detector.run(prepared[i:i + batch])
    return len(prepared) / clock.wall, len(prepared) / clock.cpu


def obvious_code(folder: Path, paths: list[str]) -> tuple[float, float]:
    """(img/wall s, img/CPU s) of NudeDetector().detect(path) + imagehash on the full decode (stock threads)."""
    import imagehash
    from nudenet import NudeDetector

    detector = NudeDetector()
    detector.detect(str(folder / paths[0]))
    with Clock() as clock:
        for p in paths:
            detector.detect(str(folder / p))
            image = Image.open(folder / p)
            imagehash.phash(image), imagehash.dhash(image)
    return len(paths) / clock.wall, len(paths) / clock.cpu


def stage_in_process(home: DataHome, paths: list[str], batch: int) -> tuple[float, float]:
    """(img/wall s, img/CPU s) of this stage's DoFns called directly in one process, one onnxruntime thread."""
    config = FeaturesConfig(nsfw_batch_size=batch)
    read = ReadBlobFn(str(home.root), "raw", config.max_bytes, None)
    decode = DecodeImageFn(str(home.root), config)
    detect = DetectNsfwFn(DetectorFactory(1))
    for fn in (read, decode, detect):
        fn.setup()
    day = dt.date.fromisoformat(DAY)
    with Clock() as clock:
        buffer, done = [], 0
        for i, p in enumerate(paths):
            for blob in read.process({"image_uid": f"{i:06d}", "blob_path": p, "dt": day}):
                buffer.extend(decode.process(blob))
            if len(buffer) >= batch:
                done += len(list(detect.process(buffer)))
                buffer = []
        done += len(list(detect.process(buffer))) if buffer else 0
    assert done == len(paths), done
    return len(paths) / clock.wall, len(paths) / clock.cpu


def beam_run(root: Path, raw: Path, paths: list[str], workers: int, batch: int) -> float:
    """Wall seconds of the Beam stage of build_features (DirectRunner multi_processing, ``workers`` processes)."""
    home = make_home(root, raw, paths)
    report = build_features(home, DAY, FeaturesConfig(workers=workers, in_process_below=0, nsfw_batch_size=batch))
    assert report.processed == len(paths), report
    return report.stage_seconds


def breakdown(folder: Path, paths: list[str], batch: int) -> dict[str, float]:
    """Median milliseconds per image of each step of the stage."""
    import hashlib

    configure_worker()
    detector = FastNudeDetector(1)
    steps: dict[str, list[float]] = {k: [] for k in ("read", "sha256", "decode", "hashes", "train_jpeg", "prepare",
                                                     "session_run", "postprocess")}
    prepared, sizes = [], []
    for p in paths[:64]:
        t0 = time.perf_counter(); data = (folder / p).read_bytes()
        t1 = time.perf_counter(); hashlib.sha256(data).digest()
        t2 = time.perf_counter(); decoded = imagedecode.decode_image(data, p, max_pixels=1 << 24, min_side=8)
        t3 = time.perf_counter(); perceptual_hashes(decoded.rgb)
        t4 = time.perf_counter(); encode_train_jpeg(decoded.rgb, 512, 90)
        t5 = time.perf_counter(); prepared.append(prepare_image(np.asarray(decoded.rgb)))
        t6 = time.perf_counter()
        for key, a, b in (("read", t0, t1), ("sha256", t1, t2), ("decode", t2, t3), ("hashes", t3, t4),
                          ("train_jpeg", t4, t5), ("prepare", t5, t6)):
            steps[key].append((b - a) * 1000)
        sizes.append(len(data))
    for i in range(0, len(prepared) - batch + 1, batch):
        t0 = time.perf_counter(); out = detector.run(prepared[i:i + batch])
        t1 = time.perf_counter()
        for j, item in enumerate(prepared[i:i + batch]):
            postprocess(out[j], item.width, item.height)
        t2 = time.perf_counter()
        steps["session_run"].append((t1 - t0) * 1000 / batch)
        steps["postprocess"].append((t2 - t1) * 1000 / batch)
    result = {k: round(statistics.median(v), 3) for k, v in steps.items()}
    result["blob_kib"] = round(statistics.mean(sizes) / 1024, 1)
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=240)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--format", choices=("png", "jpeg"), default="png")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of bare 1-thread vs stage")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-features-") as tmp:
        folder = Path(tmp)
        raw, paths = make_raw(folder / "shared", args.images, args.size, args.format)
        shared = folder / "shared"
        results: dict = {"images": args.images, "size": args.size, "format": args.format, "batch": args.batch,
                         "cpus": os.cpu_count(), "machine": platform.processor() or platform.machine(),
                         "load_average_before": os.getloadavg()[0]}
        results["breakdown_ms_per_image"] = breakdown(shared, paths, args.batch)
        # Alternate the one-thread baseline and the stage so that load drift hits both; report medians.
        # CPU-time rates (images per CPU second) are robust to other processes on a shared machine.
        rounds: dict[str, list[float]] = {k: [] for k in ("bare_1t_wall", "bare_1t_cpu", "stage_1t_wall", "stage_1t_cpu")}
        for r in range(args.rounds):
            wall, cpu = bare_session_run(shared, paths, 1, args.batch)
            rounds["bare_1t_wall"].append(wall); rounds["bare_1t_cpu"].append(cpu)
            wall, cpu = stage_in_process(make_home(folder / f"inproc{r}", raw, paths), paths, args.batch)
            rounds["stage_1t_wall"].append(wall); rounds["stage_1t_cpu"].append(cpu)
        results["rounds"] = rounds
        for key, values in rounds.items():
            results[key] = statistics.median(values)
        results["bare_2t_wall"], results["bare_2t_cpu"] = bare_session_run(shared, paths, 2, args.batch)
        results["obvious_wall"], results["obvious_cpu"] = obvious_code(shared, paths)
        quarter = max(1, args.images // 4)
        small = {w: beam_run(folder / f"small{w}", raw, paths[:quarter], w, args.batch) for w in (1, 2)}
        beam = {w: beam_run(folder / f"beam{w}", raw, paths, w, args.batch) for w in (1, 2)}
        for w in (1, 2):
            results[f"beam_{w}w_wall"] = args.images / beam[w]
            # Marginal rate between a quarter-size run and the full run: worker start-up cancels out.
            delta = beam[w] - small[w]
            results[f"beam_{w}w_steady"] = (args.images - quarter) / delta if delta > 0 else float("nan")
            results[f"beam_{w}w_seconds"] = beam[w]
            results[f"beam_{w}w_small_run_seconds"] = small[w]
        results["load_average_after"] = os.getloadavg()[0]
    ratios = {
        "stage / bare session.run, 1 thread, CPU time": results["stage_1t_cpu"] / results["bare_1t_cpu"],
        "stage / bare session.run, 1 thread, wall (median rounds)": results["stage_1t_wall"] / results["bare_1t_wall"],
        "stage / obvious code, CPU time": results["stage_1t_cpu"] / results["obvious_cpu"],
        "stage 1 thread / obvious code (stock threads), wall": results["stage_1t_wall"] / results["obvious_wall"],
        "beam 1 worker / bare 1 thread, wall (marginal)": results["beam_1w_steady"] / results["bare_1t_wall"],
        "beam 2 workers / bare 2 threads, wall (marginal)": results["beam_2w_steady"] / results["bare_2t_wall"],
        "beam 2 workers / obvious code, wall (marginal)": results["beam_2w_steady"] / results["obvious_wall"],
        "beam scaling 2 / 1 workers, wall (marginal)": results["beam_2w_steady"] / results["beam_1w_steady"],
        "beam scaling 2 / 1 workers, wall (whole stage)": results["beam_2w_wall"] / results["beam_1w_wall"],
    }
    results["ratios"] = {k: round(v, 3) for k, v in ratios.items()}
    print(f"{args.images} generated {args.size}px {args.format.upper()} images, batch {args.batch}, "
          f"{results['cpus']} CPUs, load {results['load_average_before']:.1f} -> {results['load_average_after']:.1f}")
    print("per-image ms:", json.dumps(results["breakdown_ms_per_image"]))
    for key in ("bare_1t_wall", "bare_1t_cpu", "bare_2t_wall", "obvious_wall", "obvious_cpu", "stage_1t_wall",
                "stage_1t_cpu", "beam_1w_wall", "beam_1w_steady", "beam_2w_wall", "beam_2w_steady"):
        unit = "img/CPU-s" if key.endswith("cpu") else "img/s"
        print(f"  {key:16s} {results[key]:8.1f} {unit}")
    print(f"  Beam stage seconds: 1 worker {results['beam_1w_seconds']:.1f} s ({quarter} images: "
          f"{results['beam_1w_small_run_seconds']:.1f} s), 2 workers {results['beam_2w_seconds']:.1f} s "
          f"({quarter} images: {results['beam_2w_small_run_seconds']:.1f} s)")
    for key, value in results["ratios"].items():
        print(f"  {key:58s} {value:6.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, sort_keys=True))
    return results


if __name__ == "__main__":
    main()
