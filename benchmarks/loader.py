"""Trainer loader benchmark: does the webdataset loader keep up with decode+preprocess alone?

    .venv/bin/python -m benchmarks.loader [--pairs 600] [--image-px 512] [--crop 224] [--batch 16]

Writes synthetic 512 px JPEG pairs into shards (training.synthetic), then measures, in one run:
  * precision: draft decode vs full decode vs transformers' CLIPImageProcessor (grey levels of 0-255),
  * ``alone``:  decode + CLIP-preprocess both images of every pair, in-memory bytes, one process,
  * ``loader``: the training loader (tar reading, shuffle buffer, decode, collate, tokenize) in one
    DataLoader worker process, consumed by the main process;
and reports loader / alone (target >= 0.9) as a wall-clock ratio (1 worker vs 1 process) and as a
CPU-time ratio of the same work in-process (robust when other jobs share the machine), plus the
2-worker loader for reference. Prints JSON.
"""
from __future__ import annotations

import argparse
import io
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from training.config import preset
from training.data import (
    ImageSpec,
    PairCollator,
    TrainPairStream,
    iter_captions,
    make_loader,
    preprocess_image,
    split_shards,
    worker_init,
)
from training.model import scratch_processor, train_tokenizer
from training.synthetic import write_synthetic_version


def _images(version: Path, limit: int) -> list[tuple[bytes, bytes]]:
    import webdataset as wds
    urls = [{"url": str(p)} for p in split_shards(version, "train")]
    pairs = []
    for sample in wds.tarfile_to_samples()(iter(urls)):
        pairs.append((sample["0.jpg"], sample["1.jpg"]))
        if len(pairs) >= limit:
            break
    return pairs


def precision(pairs: list[tuple[bytes, bytes]], spec: ImageSpec, processor) -> dict[str, float]:
    """Draft vs full decode vs the HF processor, in 8-bit grey levels (mean / max absolute difference)."""
    scale = np.asarray(spec.std, dtype=np.float32)[:, None, None] * 255
    d_full, d_draft, d_proc = [], [], []
    for jpg, _ in pairs[:50]:
        full = preprocess_image(jpg, spec, draft=False)
        draft = preprocess_image(jpg, spec, draft=True)
        hf = processor.image_processor(images=Image.open(io.BytesIO(jpg)), return_tensors="np")["pixel_values"][0]
        d_draft.append(np.abs(draft - full) * scale)
        d_proc.append(np.abs(full - hf) * scale)
        d_full.append(np.abs(draft - hf) * scale)
    return {"draft_vs_full_mean": float(np.mean(d_draft)), "draft_vs_full_max": float(np.max(d_draft)),
            "full_vs_hf_processor_max": float(np.max(d_proc)), "draft_vs_hf_processor_mean": float(np.mean(d_full))}


def alone(pairs: list[tuple[bytes, bytes]], spec: ImageSpec, draft: bool, clock=time.perf_counter) -> float:
    """Pairs/s of decode + preprocess of both images, in-memory bytes, one process."""
    worker_init()
    start = clock()
    for a, b in pairs:
        preprocess_image(a, spec, draft)
        preprocess_image(b, spec, draft)
    return len(pairs) / (clock() - start)


def loader(version: Path, spec: ImageSpec, tokenizer, batch: int, workers: int, n_batches: int, draft: bool,
           clock=time.perf_counter) -> float:
    """Pairs/s delivered by the training loader in steady state (shuffle buffer already full)."""
    buffer = 100  # steady-state cost per sample does not depend on the buffer size once it is full
    stream = TrainPairStream(split_shards(version, "train"), batch, PairCollator(tokenizer), spec, seed=0,
                               shuffle_buffer=buffer, shuffle_initial=buffer, resampled=True, draft=draft,
                               num_workers=max(workers, 1))
    it = iter(make_loader(stream, workers))
    for _ in range((buffer // batch + 2) * max(workers, 1)):
        next(it)
    start = clock()
    for _ in range(n_batches):
        next(it)
    return n_batches * batch / (clock() - start)


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark and print its JSON report."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=600)
    parser.add_argument("--image-px", type=int, default=512)
    parser.add_argument("--crop", type=int, default=224)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        version = Path(tmp) / "v1"
        write_synthetic_version(version, {"train": args.pairs}, image_px=args.image_px, shards_per_split=4,
                                link_latest=False)
        pairs = _images(version, args.pairs)
        cfg = preset("demo", image_size=args.crop, patch_size=args.crop // 4)
        tokenizer = train_tokenizer(iter_captions(version, "train"), 1024)
        processor = scratch_processor(cfg, tokenizer)
        spec = ImageSpec.from_processor(processor.image_processor)
        n_batches = max(4, args.pairs // args.batch)
        report = {"pairs": args.pairs, "image_px": args.image_px, "crop": args.crop, "batch": args.batch,
                  "mean_jpeg_kb": round(float(np.mean([len(a) for a, _ in pairs])) / 1024, 1),
                  **precision(pairs, spec, processor)}
        for draft in (True, False):
            tag = "draft" if draft else "full"
            base, one, cpu_base, cpu_pipe = [], [], [], []
            for _ in range(args.repeats):  # interleaved: the machine is shared and its load drifts
                base.append(alone(pairs, spec, draft))
                one.append(loader(version, spec, tokenizer, args.batch, 1, n_batches, draft))
                # CPU time of the same work in-process: robust to other processes on the machine
                cpu_base.append(alone(pairs, spec, draft, clock=time.process_time))
                cpu_pipe.append(loader(version, spec, tokenizer, args.batch, 0, n_batches, draft,
                                       clock=time.process_time))
            med = statistics.median
            report[f"{tag}_alone_pairs_per_s"] = round(med(base), 1)
            report[f"{tag}_loader_1worker_pairs_per_s"] = round(med(one), 1)
            report[f"{tag}_ratio_loader_1worker_vs_alone_wall"] = round(med(one) / med(base), 3)
            report[f"{tag}_ratio_loader_vs_alone_cpu"] = round(med(cpu_pipe) / med(cpu_base), 3)
        report["draft_loader_2workers_pairs_per_s"] = round(
            loader(version, spec, tokenizer, args.batch, 2, n_batches, True), 1)
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
