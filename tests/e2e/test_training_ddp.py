"""DistributedDataParallel under torchrun on CPU: 2 processes, gloo backend, 3 steps; then resumed."""
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from training.config import TrainConfig
from training.synthetic import write_synthetic_version

REPO = Path(__file__).resolve().parents[2]


def test_two_process_gloo_run(tmp_path):
    version = tmp_path / "datasets" / "pickapic" / "v1"
    write_synthetic_version(version, {"train": 48, "validation_unique": 12, "test_unique": 12}, image_px=32,
                            seed=4, shards_per_split=4)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "training", "--data-dir", str(version.parent / "latest"), "--output-dir", str(out),
           "--preset", "demo", "--max-steps", "3", "--eval-every", "3", "--batch-size", "8", "--image-size", "32",
           "--patch-size", "8", "--num-workers", "0", "--device", "cpu", "--tokenizer-vocab-size", "600",
           "--log-every", "1", "--eval-batch-size", "16"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["steps"] == 3
    assert [h["step"] for h in metrics["history"] if "loss" in h] == [1, 2, 3]
    assert TrainConfig.load(out / "best").batch_size == 8
    assert (out / "curve.png").is_file() and (out / "checkpoints" / "last" / "trainer_state.pt").is_file()
    summary = json.loads(proc.stdout[proc.stdout.index("{\n"):])  # rank 0's final JSON summary
    assert summary["world_size"] == 2 and summary["steps"] == 3

    # the checkpoint records the train shards both ranks' workers were inside; a resume (here of the finished
    # run, which only re-evaluates) verifies them, split over the ranks, and fails when one changed
    state = torch.load(out / "checkpoints" / "last" / "trainer_state.pt", weights_only=True)
    assert state["open_shards"] and all(rel.startswith("train/") for rel in state["open_shards"])
    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    for rel in state["open_shards"]:
        shard = version / rel
        data = bytearray(shard.read_bytes())
        data[1024 + 10] ^= 1  # inside the first member's payload: same size, tar still well formed
        shard.write_bytes(bytes(data))
    failed = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert failed.returncode != 0 and "ShardChecksumError" in failed.stderr, failed.stderr[-3000:]
