"""DistributedDataParallel under torchrun on CPU: 2 processes, gloo backend, 3 steps; then resumed."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from training import cli
from training.config import TrainConfig
from training.data import tar_samples
from training.synthetic import write_synthetic_version

REPO = Path(__file__).resolve().parents[2]


def _torchrun(version: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "-m", "training", "--data-dir", str(version), "--output-dir", str(out), "--preset", "demo",
            "--batch-size", "8", "--image-size", "32", "--patch-size", "8", "--num-workers", "0", "--device", "cpu",
            "--tokenizer-vocab-size", "600", "--log-every", "1", "--eval-batch-size", "16", *extra]


ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
# one step a rank, in shard order (no shuffling), evaluated and checkpointed at step 1
ONE_STEP_IN_ORDER = ("--shuffle-buffer", "1", "--shuffle-initial", "0", "--eval-every", "1")


@pytest.fixture(scope="module")
def one_step_home(tmp_path_factory) -> Path:
    """A home (48 train pairs, 12 a shard) and its 2-rank run ``intact/`` of one step, built once for the module:
    a torchrun is three new processes that each import torch and the trainer (most of its seconds). Read only
    here; a test that changes the version or the run works on its own copy (:func:`_copy`)."""
    home = tmp_path_factory.mktemp("one_step_home")
    version = home / "datasets" / "pickapic" / "v1"
    write_synthetic_version(version, {"train": 48, "validation_unique": 12, "test_unique": 12}, image_px=32,
                            seed=4, shards_per_split=4)   # 12 samples a shard; a rank takes 4 a step, in order
    proc = subprocess.run(_torchrun(version, home / "intact", "--max-steps", "1", *ONE_STEP_IN_ORDER), cwd=REPO,
                          env=ENV, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return home


def _copy(home: Path, destination: Path) -> Path:
    """A private, writable copy of the module's home (``latest`` kept a link; the run's paths are home-relative)."""
    shutil.copytree(home, destination, symlinks=True)
    return destination


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
    env = ENV
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


def test_a_checkpoint_waits_for_the_shard_another_rank_is_inside(one_step_home, tmp_path):
    """Before each evaluation and checkpoint, the ranks hash whole the train shards all their workers are inside
    (split over the ranks) and share the outcome. Here only the shard the second rank hashes is damaged (one
    bit of its last JPEG, met by the stream only at the shard's end): both ranks fail at the step-1 check, and
    rank 0 neither reports nor saves step 1 (checkpoints/last/ and best/ keep the step-0 model)."""
    # the module's intact one-step run (12 samples a shard; a rank takes 4 a step, in order); a copy of its version
    intact = one_step_home / "intact"
    version = _copy(one_step_home / "datasets", tmp_path / "datasets") / "pickapic" / "v1"
    env, steps = ENV, ONE_STEP_IN_ORDER
    opened = torch.load(intact / "checkpoints" / "last" / "trainer_state.pt", weights_only=True)["open_shards"]
    # every rank is inside all 4 shards at step 1: a worker reads up to 4 at once (fix39e; it was one a rank)
    assert opened == [f"train/pickapic-train-{i:06d}.tar" for i in range(4)]
    shard = version / opened[1]                            # hashed by rank 1 (opened[rank::world])
    *_, last = tar_samples([{"url": str(shard)}])
    data = bytearray(shard.read_bytes())
    data[data.rindex(last["1.jpg"]) + len(last["1.jpg"]) // 2] ^= 1
    shard.write_bytes(bytes(data))

    out = tmp_path / "run"   # from the intact run's model: a scratch run's caption pass would read the shard
    failed = subprocess.run(_torchrun(version, out, "--max-steps", "3", "--init-from", str(intact / "best"), *steps),
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert failed.returncode != 0 and "ShardChecksumError" in failed.stderr, failed.stderr[-3000:]
    assert f"[rank0]: training.data.ShardChecksumError: shard {opened[1]}" in failed.stderr, failed.stderr[-3000:]
    events = [json.loads(line) for line in failed.stdout.splitlines() if line.startswith('{"event"')]
    assert [(e["event"], e["step"]) for e in events] == [("eval", 0), ("train", 1)]   # step 1 never evaluated
    state = torch.load(out / "checkpoints" / "last" / "trainer_state.pt", weights_only=True)
    assert state["step"] == 0 and not (out / "metrics.json").exists()
    untrained = load_file(intact / "best" / "model.safetensors")
    for folder in (out / "best", out / "checkpoints" / "last"):
        weights = load_file(folder / "model.safetensors")
        assert all(torch.equal(weights[k], untrained[k]) for k in untrained), folder


DIVERGING = '''
import sys
from training import cli, train

calls = []
checked = train._non_finite


def non_finite(scores, split):   # rank 0 alone evaluates: its second evaluation (step 2) shows a divergence
    calls.append(split)
    return "injected: 3 of the 12 pairs score NaN" if len(calls) == 2 else checked(scores, split)


train._non_finite = non_finite
sys.exit(cli.main(sys.argv[1:]))
'''


def test_a_divergence_only_rank_0_evaluation_sees_stops_every_rank_and_an_unchanged_rerun_is_refused(tmp_path):
    """Rank 0 alone evaluates; a divergence its evaluation shows (finite weights too large to score with) is shared:
    both ranks stop at that step (none waits for the other in a barrier), nothing is checkpointed or reported,
    and the divergence is recorded; the unchanged rerun is refused on both ranks at once."""
    version = tmp_path / "datasets" / "pickapic" / "v1"
    write_synthetic_version(version, {"train": 48, "validation_unique": 12, "test_unique": 12}, image_px=32,
                            seed=4, shards_per_split=4)
    script = tmp_path / "diverging.py"
    script.write_text(DIVERGING)
    env = ENV
    out = tmp_path / "run"
    cmd = _torchrun(version, out, "--max-steps", "4", "--eval-every", "2")
    at = cmd.index("-m", cmd.index("--nproc_per_node"))
    failed = subprocess.run([*cmd[:at], str(script), *cmd[at + 2:]], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=180)
    assert failed.returncode != 0, failed.stdout[-3000:] + failed.stderr[-3000:]
    for rank in (0, 1):
        assert f"[rank{rank}]: training.train.TrainingDiverged: training diverged at step 2: injected" in failed.stderr
    events = [json.loads(line) for line in failed.stdout.splitlines() if line.startswith('{"event"')]
    assert [(e["event"], e["step"]) for e in events if e["event"] == "eval"] == [("eval", 0)]
    assert torch.load(out / "checkpoints" / "last" / "trainer_state.pt", weights_only=True)["step"] == 0
    assert not (out / "metrics.json").exists() and json.loads((out / "diverged.json").read_text())["step"] == 2
    refused = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert refused.returncode != 0
    for rank in (0, 1):
        assert f"[rank{rank}]: ValueError: cannot rerun {out} with the same recipe: training diverged at step 2" \
            in refused.stderr, refused.stderr[-3000:]


def test_a_resume_that_trains_on_keeps_the_world_size(one_step_home, tmp_path):
    """Each rank reads its own share of the train shards, so the DDP world size decides which pairs come next: a
    checkpoint records it (and every rank's RNG state), a resume that would train further steps on another
    number of processes is refused naming both, and one that trains no further step (the finished run
    re-evaluated) may run on any number; the same world size resumes."""
    home = _copy(one_step_home, tmp_path / "home")   # the module's 2-rank run of one step, resumed in a copy
    version, out = home / "datasets" / "pickapic" / "v1", home / "intact"
    env = ENV
    state_path = out / "checkpoints" / "last" / "trainer_state.pt"
    state = torch.load(state_path, weights_only=True)
    assert state["step"] == 1 and state["world_size"] == 2 and len(state["torch_rng"]) == 2
    # one process (no torchrun): run here, through the same CLI entry, rather than in a new interpreter
    single = _torchrun(version, out, *ONE_STEP_IN_ORDER)[8:]
    with pytest.raises(ValueError, match=r"on 1 process\(es\): .* was trained by 2 DDP ranks"):
        cli.main([*single, "--max-steps", "2"])
    assert torch.load(state_path, weights_only=True)["step"] == 1     # nothing trained, nothing changed
    assert cli.main([*single, "--max-steps", "1"]) == 0
    resumed = subprocess.run(_torchrun(version, out, "--max-steps", "2", *ONE_STEP_IN_ORDER), cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=180)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert torch.load(state_path, weights_only=True)["step"] == 2
