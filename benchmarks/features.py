"""Feature-stage benchmark (run by hand): the stage vs its per-image limit, the obvious code, and Beam's scaling.

    .venv/bin/python benchmarks/features.py [--images 240] [--size 512] [--format png|jpeg]
        [--runner direct|portable] [--workers 1,2] [--json out.json]

Prints, in one run on the same generated images:
- bare ``session.run`` throughput of NudeNet 320n (batched, 1 and 2 intra-op threads; input tensors
  prepared beforehand, so only the model is timed);
- the decode of the same files by Pillow, OpenCV and libspng (``pyspng``), CPU time per image;
- the per-image limit: the model's forward plus the fastest of those decodes, per CPU-second; no
  implementation that decodes the PNG can beat it, and the stage's goal is 0.9x of it;
- the obvious code: ``NudeDetector().detect(path)`` + ``imagehash.phash/dhash(Image.open(path))``;
- the same work as plain calls (PNG only: read, sha256, libspng, hashes, the training JPEG to a plain
  file, the model's input, forward, post-processing; no DoFns, checks or Beam I/O), taking the same
  turns: how much of the gap to the limit is the stage's own glue and how much is the work itself;
- this stage's per-image work in one process with one onnxruntime thread (read, sha256, safe decode,
  hashes, training JPEG, batched NSFW, post-processing), alternated with the model and the decoders
  round by round so that load drift hits all of them;
- ``build_features`` on Beam with 1 and 2 worker processes: ``--runner direct`` (the DirectRunner's
  ``multi_processing``) or ``--runner portable`` (PortableRunner, Beam's job service and worker pool
  as separate processes, :mod:`pipelines.features.portable`): wall time with start-up, the marginal rate
  between a quarter-size and a full run (start-up cancels out), and the CPU time of every process per
  image against the in-process stage's (Beam's overhead per element);
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
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
from PIL import Image, ImageDraw, ImageFilter

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from formats.files import write_parquet_atomic  # noqa: E402
from formats.home import DataHome  # noqa: E402
from pipelines.features import decode as imagedecode  # noqa: E402
from pipelines.features.config import FeaturesConfig  # noqa: E402
from pipelines.features.derive import encode_train_jpeg, perceptual_hashes  # noqa: E402
from pipelines.features.nsfw import FastNudeDetector, postprocess, prepare_image  # noqa: E402
from pipelines.features.portable import LocalPortableCluster  # noqa: E402
from pipelines.features.stage import build_features  # noqa: E402
from pipelines.features.transforms import DecodeImageFn, DetectNsfwFn, DetectorFactory, ReadBlobFn, configure_worker  # noqa: E402
from schemas import get_schema  # noqa: E402

DAY = "2023-03-01"
LIMITS = FeaturesConfig().decode_limits()


class Clock:
    """Wall time and CPU time of this process (all its threads) for a block."""

    def __enter__(self) -> "Clock":
        self.wall, self.cpu = time.perf_counter(), _cpu()
        return self

    def __exit__(self, *exc) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, _cpu() - self.cpu


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime


def _children_cpu() -> float:
    """CPU seconds of every terminated and reaped descendant process (Beam workers, job service, worker pool)."""
    done = resource.getrusage(resource.RUSAGE_CHILDREN)
    return done.ru_utime + done.ru_stime


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


def _decode_pillow(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _decode_opencv(data: bytes) -> np.ndarray:
    import cv2

    return cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def _decode_libspng(data: bytes) -> np.ndarray:
    import pyspng

    return pyspng.load(data, format="RGB")


DECODERS: dict[str, Callable[[bytes], np.ndarray]] = {
    "pillow": _decode_pillow, "opencv": _decode_opencv, "libspng": _decode_libspng}


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


def interleaved(folder: Path, home_for_round: Callable[[int], DataHome], paths: list[str], batch: int,
                rounds: int, decoders: bool) -> dict[str, dict[str, float]]:
    """Wall and CPU milliseconds per image of the bare model, each PNG decoder and the whole stage.

    They take turns batch by batch (``batch`` images each), so that a shared machine's changing load
    hits all of them alike; each round runs over every image, the stage into a fresh home. The model
    runs on tensors prepared beforehand and the decoders on bytes in memory: only they are timed.
    The stage is its DoFns called directly in one process (one onnxruntime thread), set up first.
    """
    configure_worker()
    blobs = [(folder / p).read_bytes() for p in paths]
    for name, decode in DECODERS.items():
        if decoders and not np.array_equal(decode(blobs[0]), _decode_pillow(blobs[0])):
            raise AssertionError(f"decoder {name} does not give Pillow's pixels")
    prepared = [prepare_image(_decode_pillow(data)) for data in blobs]
    model = FastNudeDetector(intra_op_threads=1)
    model.run(prepared[:batch])
    kinds = ["model", "stage"] + (["direct"] + [f"decode_{name}" for name in DECODERS] if decoders else [])
    wall = {kind: 0.0 for kind in kinds}
    cpu = dict(wall)
    day = dt.date.fromisoformat(DAY)
    config = FeaturesConfig(nsfw_batch_size=batch)
    for r in range(rounds):
        home = home_for_round(r)
        read = ReadBlobFn(str(home.root), "raw", config.max_bytes, None)
        decode_fn = DecodeImageFn(str(home.root), config)
        detect = DetectNsfwFn(DetectorFactory(1))
        for fn in (read, decode_fn, detect):
            fn.setup()
        for start in range(0, len(paths), batch):
            chunk = range(start, min(start + batch, len(paths)))
            with Clock() as clock:
                model.run([prepared[i] for i in chunk])
            wall["model"] += clock.wall; cpu["model"] += clock.cpu
            if decoders:
                for name, decode in DECODERS.items():
                    with Clock() as clock:
                        for i in chunk:
                            decode(blobs[i])
                    wall[f"decode_{name}"] += clock.wall; cpu[f"decode_{name}"] += clock.cpu
            with Clock() as clock:
                decoded = [out for i in chunk
                           for blob in read.process({"image_uid": f"{i:06d}", "blob_path": paths[i], "dt": day})
                           for out in decode_fn.process(blob)]
                done = list(detect.process(decoded))
            wall["stage"] += clock.wall; cpu["stage"] += clock.cpu
            assert len(done) == len(chunk), done
            if decoders:   # PNG files: the same work as plain calls
                with Clock() as clock:
                    direct_work(folder, home.root / f"direct{r}", [paths[i] for i in chunk], model, config)
                wall["direct"] += clock.wall; cpu["direct"] += clock.cpu
    count = rounds * len(paths)
    return {"wall_ms": {k: v * 1000 / count for k, v in wall.items()},
            "cpu_ms": {k: v * 1000 / count for k, v in cpu.items()}}


def direct_work(folder: Path, out: Path, paths: list[str], model: FastNudeDetector, config: FeaturesConfig) -> None:
    """The stage's work on ``paths`` as plain calls: no DoFns, no path or header checks, no Beam I/O.

    Read, sha256, libspng decode, the RGB image into Pillow, the two hashes, the training JPEG written
    to a plain file, NudeNet's 320 px input, the batched forward and its post-processing: what any
    implementation producing the same outputs must do. It shows how much of the gap between the
    stage and the limit is the stage's own glue and how much is this work.
    """
    import hashlib

    out.mkdir(parents=True, exist_ok=True)
    prepared = []
    for p in paths:
        data = (folder / p).read_bytes()
        hashlib.sha256(data).hexdigest()
        pixels = _decode_libspng(data)
        image = Image.fromarray(pixels)
        perceptual_hashes(image)
        jpeg = encode_train_jpeg(image, config.train_size, config.jpeg_quality)[0]
        (out / (Path(p).stem + ".jpg")).write_bytes(jpeg)
        prepared.append(prepare_image(pixels))
    outputs = model.run(prepared)
    for i, item in enumerate(prepared):
        postprocess(outputs[i], item.width, item.height)


def stage_alone(home: DataHome, paths: list[str], batch: int) -> float:
    """CPU milliseconds per image of the stage's DoFns called directly in one process, nothing interleaved.

    The baseline of Beam's overhead per element: a Beam worker runs exactly this, plus Beam.
    """
    config = FeaturesConfig(nsfw_batch_size=batch)
    read = ReadBlobFn(str(home.root), "raw", config.max_bytes, None)
    decode = DecodeImageFn(str(home.root), config)
    detect = DetectNsfwFn(DetectorFactory(1))
    for fn in (read, decode, detect):
        fn.setup()
    day = dt.date.fromisoformat(DAY)
    with Clock() as clock:
        for start in range(0, len(paths), batch):
            decoded = [out for i in range(start, min(start + batch, len(paths)))
                       for blob in read.process({"image_uid": f"{i:06d}", "blob_path": paths[i], "dt": day})
                       for out in decode.process(blob)]
            assert len(list(detect.process(decoded))) == len(decoded)
    return clock.cpu * 1000 / len(paths)


def beam_run(runner: str, root: Path, raw: Path, paths: list[str], workers: int, batch: int
             ) -> tuple[float, float, float | None]:
    """(wall seconds of the Beam stage, CPU seconds of every process involved, peak RSS of the largest
    cluster process in MiB or None) of one build_features run.

    The CPU time counts this driver and, on the DirectRunner, its reaped worker processes; on the
    portable runner, the job service, the worker pool and its SDK harnesses (a fresh cluster per run,
    read from ``/proc`` just before it stops).
    """
    home = make_home(root, raw, paths)
    config = FeaturesConfig(workers=workers, in_process_below=0, nsfw_batch_size=batch)
    cpu = _cpu() + _children_cpu()
    if runner == "direct":
        report = build_features(home, DAY, config)
        cluster_cpu, peak = 0.0, None
    else:
        with LocalPortableCluster(root.parent / f"{root.name}-cluster", pythonpath=[str(REPO)]) as cluster:
            started = cluster.cpu_seconds()
            report = build_features(home, DAY, config, cluster.beam_args(workers))
            cluster_cpu, peak = cluster.cpu_seconds() - started, cluster.peak_rss_mib()
    assert report.processed == len(paths), report
    return report.stage_seconds, _cpu() + _children_cpu() - cpu + cluster_cpu, peak


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
        t2 = time.perf_counter(); decoded = imagedecode.decode_image(data, p, **LIMITS)
        t3 = time.perf_counter(); perceptual_hashes(decoded.rgb)
        t4 = time.perf_counter(); encode_train_jpeg(decoded.rgb, 512, 90)
        t5 = time.perf_counter(); prepared.append(prepare_image(decoded.pixels))
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
    parser.add_argument("--rounds", type=int, default=3, help="rounds over all images of the model, decoders and stage, "
                                                                 "taking turns batch by batch")
    parser.add_argument("--runner", choices=("direct", "portable"), default="direct",
                        help="Beam runner of the scaling runs: DirectRunner multi_processing, or PortableRunner "
                             "with a local job service and worker pool")
    parser.add_argument("--workers", default="1,2", help="worker process counts of the scaling runs, e.g. 1,2 (empty: none)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    worker_counts = sorted({int(w) for w in args.workers.split(",") if w.strip()})
    with tempfile.TemporaryDirectory(prefix="bench-features-") as tmp:
        folder = Path(tmp)
        raw, paths = make_raw(folder / "shared", args.images, args.size, args.format)
        shared = folder / "shared"
        results: dict = {"images": args.images, "size": args.size, "format": args.format, "batch": args.batch,
                         "runner": args.runner, "cpus": os.cpu_count(),
                         "machine": platform.processor() or platform.machine(),
                         "load_average_before": os.getloadavg()[0]}
        results["breakdown_ms_per_image"] = breakdown(shared, paths, args.batch)
        png = args.format == "png"
        timed = interleaved(shared, lambda r: make_home(folder / f"inproc{r}", raw, paths), paths, args.batch,
                            args.rounds, decoders=png)
        results["interleaved_ms_per_image"] = {k: {n: round(v, 3) for n, v in d.items()} for k, d in timed.items()}
        wall_ms, cpu_ms = timed["wall_ms"], timed["cpu_ms"]
        results["bare_1t_wall"], results["bare_1t_cpu"] = 1000 / wall_ms["model"], 1000 / cpu_ms["model"]
        results["stage_1t_wall"], results["stage_1t_cpu"] = 1000 / wall_ms["stage"], 1000 / cpu_ms["stage"]
        if "direct" in cpu_ms:
            results["direct_1t_cpu"] = 1000 / cpu_ms["direct"]
        if png:
            fastest = min(DECODERS, key=lambda name: cpu_ms[f"decode_{name}"])
            results["fastest_decoder"] = fastest
            for name in DECODERS:
                results[f"decode_{name}_cpu_ms"] = cpu_ms[f"decode_{name}"]
            # The per-image limit: the model's forward plus the fastest decode of the same file, per CPU-second.
            results["limit_cpu"] = 1000 / (cpu_ms["model"] + cpu_ms[f"decode_{fastest}"])
        results["stage_alone_cpu_ms"] = stage_alone(make_home(folder / "alone", raw, paths), paths, args.batch)
        results["bare_2t_wall"], results["bare_2t_cpu"] = bare_session_run(shared, paths, 2, args.batch)
        results["obvious_wall"], results["obvious_cpu"] = obvious_code(shared, paths)
        quarter = max(1, args.images // 4)
        for w in worker_counts:
            small_wall, small_cpu, _ = beam_run(args.runner, folder / f"small{w}", raw, paths[:quarter], w, args.batch)
            full_wall, full_cpu, peak = beam_run(args.runner, folder / f"beam{w}", raw, paths, w, args.batch)
            if peak is not None:
                results[f"beam_{w}w_cluster_peak_rss_mib"] = round(peak, 1)
            results[f"beam_{w}w_wall"] = args.images / full_wall
            # Marginal rate between a quarter-size run and the full run: start-up cancels out.
            delta = full_wall - small_wall
            results[f"beam_{w}w_steady"] = (args.images - quarter) / delta if delta > 0 else float("nan")
            results[f"beam_{w}w_cpu_ms_per_image"] = (full_cpu - small_cpu) * 1000 / (args.images - quarter)
            results[f"beam_{w}w_seconds"] = full_wall
            results[f"beam_{w}w_small_run_seconds"] = small_wall
        results["load_average_after"] = os.getloadavg()[0]
    ratios = {
        "stage / bare session.run, 1 thread, CPU time": results["stage_1t_cpu"] / results["bare_1t_cpu"],
        "stage / bare session.run, 1 thread, wall": results["stage_1t_wall"] / results["bare_1t_wall"],
        "stage / obvious code, CPU time": results["stage_1t_cpu"] / results["obvious_cpu"],
        "stage 1 thread / obvious code (stock threads), wall": results["stage_1t_wall"] / results["obvious_wall"],
    }
    if "limit_cpu" in results:
        ratios["stage / limit (model + fastest PNG decode), CPU time"] = results["stage_1t_cpu"] / results["limit_cpu"]
        ratios["the same work as plain calls / limit, CPU time"] = results["direct_1t_cpu"] / results["limit_cpu"]
        ratios["stage / the same work as plain calls, CPU time"] = results["stage_1t_cpu"] / results["direct_1t_cpu"]
    if 1 in worker_counts:
        results["beam_overhead_cpu_ms_per_image"] = results["beam_1w_cpu_ms_per_image"] - results["stage_alone_cpu_ms"]
        ratios["beam 1 worker / bare 1 thread, wall (marginal)"] = results["beam_1w_steady"] / results["bare_1t_wall"]
    if 2 in worker_counts:
        ratios["beam 2 workers / bare 2 threads, wall (marginal)"] = results["beam_2w_steady"] / results["bare_2t_wall"]
        ratios["beam 2 workers / obvious code, wall (marginal)"] = results["beam_2w_steady"] / results["obvious_wall"]
    if {1, 2} <= set(worker_counts):
        ratios["beam scaling 2 / 1 workers, wall (marginal)"] = results["beam_2w_steady"] / results["beam_1w_steady"]
        ratios["beam scaling 2 / 1 workers, wall (whole stage)"] = results["beam_2w_wall"] / results["beam_1w_wall"]
    results["ratios"] = {k: round(v, 3) for k, v in ratios.items()}
    # A forked child starts with its parent's resident set, so RUSAGE_CHILDREN's peak says nothing
    # about the workers: the portable runs read each cluster process's own peak from /proc instead.
    results["driver_peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(f"{args.images} generated {args.size}px {args.format.upper()} images, batch {args.batch}, "
          f"{results['cpus']} CPUs, load {results['load_average_before']:.1f} -> {results['load_average_after']:.1f}, "
          f"Beam runner {args.runner}")
    print("per-image ms:", json.dumps(results["breakdown_ms_per_image"]))
    if "limit_cpu" in results:
        print("decode CPU ms per image:", {name: round(results[f"decode_{name}_cpu_ms"], 2) for name in DECODERS},
              f"fastest {results['fastest_decoder']}")
    for key in ("bare_1t_wall", "bare_1t_cpu", "limit_cpu", "bare_2t_wall", "obvious_wall", "obvious_cpu",
                "stage_1t_wall", "stage_1t_cpu", "direct_1t_cpu"):
        if key in results:
            unit = "img/CPU-s" if key.endswith("cpu") else "img/s"
            print(f"  {key:16s} {results[key]:8.1f} {unit}")
    for w in worker_counts:
        print(f"  beam {w} worker(s): {results[f'beam_{w}w_wall']:.1f} img/s whole stage ({results[f'beam_{w}w_seconds']:.1f} s; "
              f"{quarter} images: {results[f'beam_{w}w_small_run_seconds']:.1f} s), {results[f'beam_{w}w_steady']:.1f} img/s "
              f"marginal, {results[f'beam_{w}w_cpu_ms_per_image']:.1f} CPU ms per image (all processes, marginal)")
    if "beam_overhead_cpu_ms_per_image" in results:
        print(f"  Beam overhead per element (1 worker, marginal CPU ms vs the same DoFns called in one process, "
              f"{results['stage_alone_cpu_ms']:.1f} ms): {results['beam_overhead_cpu_ms_per_image']:.2f} ms")
    for key, value in results["ratios"].items():
        print(f"  {key:72s} {value:6.3f}")
    peaks = {w: results[f"beam_{w}w_cluster_peak_rss_mib"] for w in worker_counts if f"beam_{w}w_cluster_peak_rss_mib" in results}
    print(f"  peak RSS: driver (this benchmark process) {results['driver_peak_rss_mib']} MiB"
          + (f"; largest process of the cluster alive when the job ended, by worker count: {peaks} MiB" if peaks else ""))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, sort_keys=True))
    return results


if __name__ == "__main__":
    main()
