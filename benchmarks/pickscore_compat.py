"""Run PickScore's own code against our export and checkpoint (by hand; needs PickScore's files and old wheels).

    git clone https://github.com/yuvalkirstain/PickScore /tmp/PickScore          # its code is not vendored here
    pip install --no-deps --target /tmp/tf427 transformers==4.27.3 tokenizers==0.13.3
    pip install --no-deps --target /tmp/pickscore-deps hydra-core==1.3.2 omegaconf==2.3.0 \
        antlr4-python3-runtime==4.9.3 accelerate
    .venv/bin/pickapic export --format pickscore-parquet --output /tmp/export
    .venv/bin/python -m benchmarks.pickscore_compat --pickscore /tmp/PickScore --export /tmp/export \
        --model HOME/models/preference_model/VERSION/best --old-transformers /tmp/tf427 --pickscore-deps /tmp/pickscore-deps

1. PickScore's ``trainer/datasetss/clip_hf_dataset.py`` (the real file, imported from the checkout) loads each
   exported split from disk with ``keep_only_different``, ``keep_only_with_label``, ``limit_examples_per_prompt``
   and ``only_on_best`` set, reads items and collates a batch, under transformers 4.27.3 (PickScore's pin).
2. PickScore's README inference snippet, under transformers 4.27.3 / tokenizers 0.13.3, scores test_unique
   pairs with our checkpoint; the probabilities are compared with ``training.scoring.Scorer`` in this
   environment (transformers 5).
Prints one JSON object with what each step saw.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

DATASET_CHILD = r'''
import dataclasses, functools, json, sys
import accelerate, accelerate.logging, datasets, hydra.utils, torch
from omegaconf import OmegaConf
# PickScore targets Python 3.8: `processor: ProcessorConfig = ProcessorConfig()` is a ValueError ("mutable
# default") on 3.11, where dataclass instances are unhashable. While its file is imported, dataclasses are
# made hashable (unsafe_hash); the file itself runs unchanged and nothing in it hashes a config.
original = dataclasses.dataclass
dataclasses.dataclass = functools.partial(original, unsafe_hash=True)
from trainer.datasetss.clip_hf_dataset import CLIPHFDataset, CLIPHFDatasetConfig, ProcessorConfig
dataclasses.dataclass = original
accelerate.PartialState()  # its logger needs the accelerate state, as in PickScore's own train script
export, model, disk = sys.argv[1:4]
splits = [s for s in ("train", "validation_unique", "test_unique")]
datasets.load_dataset("parquet", data_files={s: f"{export}/{s}.parquet" for s in splits}).save_to_disk(disk)
out = {"transformers": __import__("transformers").__version__}
for name, options in (("plain", {}), ("filters", dict(keep_only_different=True, keep_only_with_label=True)),
                      ("limit_examples_per_prompt=1", dict(limit_examples_per_prompt=1)),
                      ("only_on_best", dict(only_on_best=True))):
    cfg = OmegaConf.structured(CLIPHFDatasetConfig(dataset_name=disk, from_disk=True,
                                                   processor=ProcessorConfig(pretrained_model_name_or_path=model),
                                                   **options))
    seen = {}
    for split in splits:
        dataset = CLIPHFDataset(cfg, split)
        batch = dataset.collate_fn([dataset[i] for i in range(min(4, len(dataset)))])
        seen[split] = f"{len(dataset)} rows; batch " + ", ".join(f"{k} {'x'.join(map(str, v.shape))}" for k, v in batch.items())
    out[name] = seen
print(json.dumps(out))
'''

README_CHILD = r'''
import json, sys, io
import torch, transformers, tokenizers
from PIL import Image
from transformers import AutoProcessor, AutoModel
model_dir, pairs_file = sys.argv[1:3]
processor = AutoProcessor.from_pretrained(model_dir)
model = AutoModel.from_pretrained(model_dir).eval()
def calc_probs(prompt, images):
    image_inputs = processor(images=images, padding=True, truncation=True, max_length=77, return_tensors="pt")
    text_inputs = processor(text=prompt, padding=True, truncation=True, max_length=77, return_tensors="pt")
    with torch.no_grad():
        image_embs = model.get_image_features(**image_inputs)
        image_embs = image_embs / torch.norm(image_embs, dim=-1, keepdim=True)
        text_embs = model.get_text_features(**text_inputs)
        text_embs = text_embs / torch.norm(text_embs, dim=-1, keepdim=True)
        scores = model.logit_scale.exp() * (text_embs @ image_embs.T)[0]
        probs = torch.softmax(scores, dim=-1)
    return probs.cpu().tolist()
probs = []
for line in open(pairs_file):
    row = json.loads(line)
    images = [Image.open(io.BytesIO(bytes.fromhex(row[k]))) for k in ("jpg_0", "jpg_1")]
    probs.append(calc_probs(row["caption"], images))
print(json.dumps({"transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
                  "tokenizer": type(processor.tokenizer).__name__,
                  "image_processor": type(processor.image_processor).__name__, "probs": probs}))
'''


def _run(code: str, args: list[str], pythonpath: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(pythonpath), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "HF_UPDATE_DOWNLOAD_COUNTS": "0"}
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"child failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    """Run both checks; print and return what they saw."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pickscore", type=Path, required=True, help="a checkout of yuvalkirstain/PickScore")
    parser.add_argument("--export", type=Path, required=True, help="a `pickapic export --format pickscore-parquet` folder")
    parser.add_argument("--model", type=Path, required=True, help="a checkpoint saved by the trainer (RUN/best)")
    parser.add_argument("--old-transformers", type=Path, required=True, help="pip --target folder with transformers 4.27.3")
    parser.add_argument("--pickscore-deps", type=Path, required=True, help="pip --target folder with hydra, omegaconf, accelerate")
    parser.add_argument("--pairs", type=int, default=32, help="test_unique pairs scored by the README snippet")
    parser.add_argument("--work", type=Path, default=Path("/tmp/pickscore-compat"), help="scratch folder")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    project = str(Path(__file__).resolve().parents[1])
    report = {"dataset": _run(DATASET_CHILD, [str(args.export), str(args.model), str(args.work / "disk")],
                              [str(args.old_transformers), str(args.pickscore), str(args.pickscore_deps)])}
    rows = pq.read_table(args.export / "test_unique.parquet", columns=["caption", "jpg_0", "jpg_1"]).to_pylist()[:args.pairs]
    pairs_file = args.work / "pairs.jsonl"
    pairs_file.write_text("".join(json.dumps({"caption": r["caption"], "jpg_0": r["jpg_0"].hex(),
                                              "jpg_1": r["jpg_1"].hex()}) + "\n" for r in rows))
    old = _run(README_CHILD, [str(args.model), str(pairs_file)], [str(args.old_transformers)])
    sys.path.insert(0, project)
    from training.scoring import Scorer

    scorer = Scorer(args.model, device="cpu")
    ours = [[r.preference for r in scorer.score(row["caption"], [row["jpg_0"], row["jpg_1"]])] for row in rows]
    diff = max(abs(a - b) for pa_, pb in zip(old.pop("probs"), ours) for a, b in zip(pa_, pb))
    report["readme_snippet"] = {**old, "pairs": len(rows), "max_abs_prob_difference_vs_scorer": diff}
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
