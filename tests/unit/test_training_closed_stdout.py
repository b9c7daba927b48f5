"""``python -m training`` into a closed stdout (``| head -1`` that has quit): its JSON progress lines are dropped,
never the training: the run finishes, writes its model and exits 0 (the features stage's defect of review rev25h,
the same in the trainer's event printer)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from training.synthetic import write_synthetic_version

ROOT = Path(__file__).resolve().parents[2]


def test_a_training_into_a_closed_stdout_finishes_and_exits_0(tmp_path: Path) -> None:
    version = tmp_path / "datasets" / "pickapic" / "v1"
    write_synthetic_version(version, {"train": 16, "validation_unique": 8, "test_unique": 8}, image_px=32, seed=3,
                            shards_per_split=1)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "training", "--data-dir", str(version), "--output-dir", str(out),
           "--preset", "demo", "--max-steps", "2", "--eval-every", "2", "--batch-size", "8", "--image-size", "32",
           "--patch-size", "8", "--num-workers", "0", "--device", "cpu", "--tokenizer-vocab-size", "600",
           "--log-every", "1", "--eval-batch-size", "16"]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONUNBUFFERED", "TORCHELASTIC_RUN_ID")}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    read, write = os.pipe()
    os.close(read)                      # the reader has gone before the first line
    try:
        done = subprocess.run(cmd, cwd=ROOT, env=env, stdout=write, stderr=subprocess.PIPE, text=True, timeout=300,
                              check=False)
    finally:
        os.close(write)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr[-3000:]
    assert json.loads((out / "metrics.json").read_text())["steps"] == 2
