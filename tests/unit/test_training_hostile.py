"""Hostile inputs to the trainer and the dataset readers: planted files, broken shards, links, odd images."""
import json
import shutil

import pytest
import torch

from training.data import ImageSpec, PairCollator, TrainPairStream, split_shards
from training.model import train_tokenizer
from training.synthetic import tiny_config, write_synthetic_version
from training.train import STATE_FILE, train

SIZES = {"train": 40, "validation": 12, "test": 12, "validation_unique": 12, "test_unique": 12}


def _version(root, **kw):
    return write_synthetic_version(root / "datasets" / "pickapic" / "2023-03-01-0000000000", SIZES, image_px=32,
                                   shards_per_split=2, **kw).version_dir


@pytest.fixture(scope="module")
def version(tmp_path_factory):
    return _version(tmp_path_factory.mktemp("home"))


@pytest.fixture()
def fresh_version(tmp_path):
    """A version a test may damage."""
    return _version(tmp_path / "home")


class _RunsCode:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_resume_never_unpickles_code(version, tmp_path):
    out = tmp_path / "run"
    train(tiny_config(version, out, max_steps=2))
    state_path = out / "checkpoints" / "last" / STATE_FILE
    state = torch.load(state_path, weights_only=True)  # what the trainer writes loads as plain data
    marker = tmp_path / "ran"
    state["history"].append(_RunsCode(marker))
    torch.save(state, state_path)
    with pytest.raises(ValueError, match=f"refusing to resume from .*{STATE_FILE}.*plain data"):
        train(tiny_config(version, out, max_steps=4))
    assert not marker.exists()


def _record_in_manifest(version_dir):
    """Rewrite the manifest's ``files`` for what the version now holds: as if a faulty publish had written
    these bytes (a damaged file the manifest does not know is another test's case)."""
    from formats import dataset

    path = version_dir / dataset.MANIFEST_FILE
    manifest = json.loads(path.read_text())
    manifest["files"] = dataset.manifest_files(version_dir)
    path.write_text(json.dumps(manifest))


def _empty_tars(split_dir, keep_sizes=False):
    """Replace every shard of ``split_dir`` with a valid tar holding no member (recorded in the manifest)."""
    for tar in split_dir.glob("*.tar"):
        tar.write_bytes(bytes(10240))
    if not keep_sizes:
        (split_dir / "sizes.json").unlink()
    _record_in_manifest(split_dir.parent)


@pytest.mark.parametrize("split", ["train", "validation_unique", "test_unique"])
def test_a_zero_byte_split_fails_before_training(fresh_version, tmp_path, split):
    for tar in (fresh_version / split).glob("*.tar"):
        tar.write_bytes(b"")
    with pytest.raises(ValueError, match=f"split '{split}' of {fresh_version}: shard .*{split}.*is 0 bytes"):
        train(tiny_config(fresh_version, tmp_path / "run"))
    assert not (tmp_path / "run" / "init").exists()  # refused before the model was even built


def test_a_split_whose_sizes_list_nothing_is_refused(fresh_version, tmp_path):
    (fresh_version / "validation_unique" / "sizes.json").write_text(
        json.dumps({p.name: 0 for p in (fresh_version / "validation_unique").glob("*.tar")}))
    _record_in_manifest(fresh_version)  # a faulty publish: an edited sizes.json is the checksum test's case
    with pytest.raises(ValueError, match=r"split 'validation_unique' is empty: .*validation_unique/sizes.json lists 0"):
        train(tiny_config(fresh_version, tmp_path / "run"))


@pytest.mark.parametrize("resampled", [True, False])
def test_train_stream_with_no_samples_raises_instead_of_spinning(fresh_version, resampled):
    _empty_tars(fresh_version / "train")
    processor = PairCollator(train_tokenizer(["a red star", "two blue circles"], 600), 77)
    stream = TrainPairStream(split_shards(fresh_version, "train"), 4, processor, ImageSpec(32, 32), seed=0,
                             shuffle_buffer=8, shuffle_initial=2, resampled=resampled, draft=True, num_workers=0)
    with pytest.raises(ValueError, match=f"split 'train' in {fresh_version / 'train'}: a full pass over its 2 "
                                         "shards yielded no samples"):
        next(iter(stream))


def test_an_eval_split_with_no_samples_fails_at_the_first_evaluation(fresh_version, tmp_path):
    _empty_tars(fresh_version / "validation_unique")
    events = []
    with pytest.raises(ValueError, match="split 'validation_unique' of .* yielded no samples from its 2 shards"):
        train(tiny_config(fresh_version, tmp_path / "run"), on_event=events.append)
    assert not [e for e in events if e["event"] == "train"]  # not after the whole training


def test_rerank_prompt_files_that_are_not_small_regular_files_are_error_rows(tmp_path):
    import os

    from training.rerank import MAX_PROMPT_BYTES, read_candidate_folder

    png = tmp_path / "x.png"
    from PIL import Image
    Image.new("RGB", (4, 4)).save(png)
    prompts = {"fifo": None, "zero": None, "long": "a" * (MAX_PROMPT_BYTES + 1), "ok": "two red stars"}
    for name, text in prompts.items():
        sub = tmp_path / "candidates" / name
        sub.mkdir(parents=True)
        (sub / "a.png").write_bytes(png.read_bytes())
        if text is not None:
            (sub / "prompt.txt").write_text(text)
    os.mkfifo(tmp_path / "candidates" / "fifo" / "prompt.txt")  # nobody ever writes it: reading would wait forever
    (tmp_path / "candidates" / "zero" / "prompt.txt").symlink_to("/dev/zero")  # never ends
    rows = {row.prompt_id: row for row in read_candidate_folder(tmp_path / "candidates")}
    assert rows["fifo"].error.startswith("missing_prompt:") and "not a regular file" in rows["fifo"].error
    assert rows["zero"].error.startswith("missing_prompt:") and "not a regular file" in rows["zero"].error
    assert rows["long"].error == (f"missing_prompt: {tmp_path / 'candidates' / 'long' / 'prompt.txt'} is longer "
                                  f"than {MAX_PROMPT_BYTES} bytes")
    assert rows["ok"].error is None and rows["ok"].prompt == "two red stars"


def _victim(tmp_path):
    victim = tmp_path / "victim"
    (victim / "last").mkdir(parents=True)
    (victim / "last" / "train_config.json").write_text("{}")
    (victim / "last" / "precious.txt").write_text("not written by pickapic\n")
    return victim


def test_the_train_command_refuses_a_run_folder_with_a_linked_checkpoints_folder(version, tmp_path, monkeypatch):
    from training.cli import main

    monkeypatch.setenv("PICKAPIC_HOME", str(tmp_path / "home"))
    victim = _victim(tmp_path)
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoints").symlink_to(victim)
    args = ["--data-dir", str(version), "--output-dir", str(out), "--image-size", "32", "--patch-size", "8",
            "--text-width", "32", "--vision-width", "32", "--layers", "1", "--heads", "2", "--projection-dim", "32",
            "--tokenizer-vocab-size", "600", "--batch-size", "8", "--num-workers", "0", "--device", "cpu",
            "--cpu-threads", "1", "--max-steps", "2", "--eval-every", "2"]
    with pytest.raises(ValueError, match=f"{out / 'checkpoints'} is a symbolic link"):
        main(args)
    assert sorted(p.name for p in (victim / "last").iterdir()) == ["precious.txt", "train_config.json"]


@pytest.mark.parametrize("link", ["checkpoints", "best", "init", "checkpoints/last", "checkpoints/.last.tmp"])
def test_the_trainer_never_writes_or_deletes_through_a_link(version, tmp_path, link):
    victim = _victim(tmp_path)
    out = tmp_path / "run"
    (out / link).parent.mkdir(parents=True, exist_ok=True)
    (out / link).symlink_to(victim / "last" if link.count("/") else victim)
    with pytest.raises(ValueError, match=f"{out / link} is a symbolic link"):
        train(tiny_config(version, out, max_steps=2))
    assert sorted(p.name for p in (victim / "last").iterdir()) == ["precious.txt", "train_config.json"]
    assert sorted(p.name for p in victim.iterdir()) == ["last"]


@pytest.fixture(scope="module")
def saved_model(version, tmp_path_factory):
    from training.data import iter_captions
    from training.model import build_model, save_checkpoint

    out = tmp_path_factory.mktemp("model") / "best"
    clip, processor = build_model(tiny_config(version, out.parent / "run"), iter_captions(version, "train"))
    save_checkpoint(out, clip, processor)
    return out


def test_a_model_folder_without_tokenizer_files_is_refused(saved_model, tmp_path):
    from training.model import NotAClipCheckpoint, load_model
    from training.scoring import Scorer

    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors", "preprocessor_config.json"):
        shutil.copy(saved_model / name, bare / name)
    with pytest.raises(NotAClipCheckpoint, match=r"holds no tokenizer \(tokenizer.json, or vocab.json \+ merges.txt\)"
                                                 r".*--processor DIR holding preprocessor_config.json and the tokenizer"):
        Scorer(bare, device="cpu")
    model, processor = load_model(bare, saved_model)  # its own processor folder next to it is fine
    assert len(processor.tokenizer) == model.config.text_config.vocab_size


def test_a_tokenizer_of_another_vocabulary_size_is_refused(saved_model, tmp_path):
    from training.model import NotAClipCheckpoint, load_model, scratch_processor, train_tokenizer

    other = tmp_path / "other"
    tokenizer = train_tokenizer(["a red star", "two blue circles on green", "three yellow squares"] * 20, 620)
    scratch_processor(tiny_config("d", "o"), tokenizer).save_pretrained(other)
    with pytest.raises(NotAClipCheckpoint, match=f"the tokenizer in '{other}' has {len(tokenizer)} tokens but the "
                                                 r"model .* has text_config.vocab_size=\d+"):
        load_model(saved_model, other)


def _member_offsets(tar):
    """Offsets of every member header of a ustar file, in order."""
    data, offsets, offset = tar.read_bytes(), [], 0
    while data[offset:offset + 512] != bytes(512):
        offsets.append(offset)
        size = int(data[offset + 124:offset + 136].split(b"\0", 1)[0].strip() or b"0", 8)
        offset += 512 + -(-size // 512) * 512
    return offsets


def _members_per_sample(tar):
    from training.data import tar_samples
    return len(next(tar_samples([{"url": str(tar)}]))) - 2  # minus __key__ and __url__


def test_a_tar_cut_at_a_sample_boundary_is_refused_not_silently_shorter(fresh_version):
    from training.data import tar_samples

    tar = min((fresh_version / "train").glob("*.tar"))
    per_sample = _members_per_sample(tar)
    with open(tar, "r+b") as handle:
        handle.truncate(_member_offsets(tar)[2 * per_sample])  # exactly two whole samples left
    with pytest.raises(ValueError, match=f"{tar}: ends after .* bytes without tar's end-of-archive block"):
        list(tar_samples({"url": str(p)} for p in split_shards(fresh_version, "train")))


def _keep_first_samples(tar, n):
    """Rewrite ``tar`` as a complete archive holding only its first ``n`` samples (sizes.json left as it was)."""
    import io
    import tarfile
    data = tar.read_bytes()
    cut = _member_offsets(tar)[n * _members_per_sample(tar)]
    with tarfile.open(fileobj=io.BytesIO(data[:cut] + bytes(1024))) as src:
        members = [(m, src.extractfile(m).read()) for m in src.getmembers()]
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as dst:
        for member, payload in members:
            dst.addfile(member, io.BytesIO(payload))
    tar.write_bytes(out.getvalue())


@pytest.mark.parametrize("resampled", [True, False])
def test_a_train_shard_with_fewer_samples_than_sizes_json_raises(fresh_version, resampled):
    tar = min((fresh_version / "train").glob("*.tar"))
    _keep_first_samples(tar, 2)
    processor = PairCollator(train_tokenizer(["a red star", "two blue circles"], 600), 77)
    stream = TrainPairStream([tar], 4, processor, ImageSpec(32, 32), seed=0, shuffle_buffer=8, shuffle_initial=2,
                             resampled=resampled, draft=True, num_workers=0)
    listed = json.loads((tar.parent / "sizes.json").read_text())[tar.name]
    with pytest.raises(ValueError, match=f"{tar}: holds 2 samples but sizes.json beside it lists {listed}"):
        for _ in zip(range(100), stream):
            pass


def test_an_eval_split_shorter_than_sizes_json_is_refused(fresh_version, tmp_path):
    tar = min((fresh_version / "validation_unique").glob("*.tar"))
    _keep_first_samples(tar, 2)
    _record_in_manifest(fresh_version)
    listed = json.loads((tar.parent / "sizes.json").read_text())[tar.name]
    with pytest.raises(ValueError, match=f"{tar}: holds 2 samples but sizes.json beside it lists {listed}"):
        train(tiny_config(fresh_version, tmp_path / "run"))


def test_a_resume_never_switches_to_the_version_latest_now_names(tmp_path):
    home = tmp_path / "home"
    first = _version(home)
    latest = first.parent / "latest"
    assert latest.resolve() == first
    out = tmp_path / "run"
    train(tiny_config(latest, out, max_steps=2))
    second = write_synthetic_version(first.parent / "2023-03-02-0000000000", SIZES, image_px=32, shards_per_split=2,
                                     seed=7).version_dir
    assert latest.resolve() == second  # a nightly publish moved latest
    with pytest.raises(ValueError, match=f"cannot resume {out}: it was trained on the dataset version {first}, but "
                                         f"data_dir {latest} now resolves to {second}"):
        train(tiny_config(latest, out, max_steps=4))
    recorded = f"home:datasets/pickapic/{first.name}"  # relative to the home
    assert torch.load(out / "checkpoints" / "last" / STATE_FILE, weights_only=True)["data_version_dir"] == recorded
    resumed = train(tiny_config(first, out, max_steps=4))  # the version it started on: resumes
    assert resumed.resumed_from_step == 2 and resumed.steps == 4
    assert json.loads(resumed.metrics_path.read_text())["data_version_dir"] == recorded


def test_a_second_trainer_on_the_same_output_dir_is_refused(version, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    import training
    from training.train import LOCK_FILE, RunLocked

    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen(  # another process inside a trainer's lock, as a running `pickapic train` is
        [sys.executable, "-c", "import sys, time\nfrom pathlib import Path\nfrom training.train import run_lock\n"
         "with run_lock(Path(sys.argv[1])):\n    print('held', flush=True)\n    sys.stdin.read()\n", str(out)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=Path(training.__file__).parents[1])
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(RunLocked, match=f"another trainer is writing to {out} \\(it holds {out / LOCK_FILE}\\)"):
            train(tiny_config(version, out, max_steps=2))
        assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]  # it wrote nothing
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert train(tiny_config(version, out, max_steps=2)).steps == 2  # once the other one is gone
