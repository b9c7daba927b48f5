"""Hostile review rev22g of the rev22d fixes (7542746: config.json checked against the weight files' headers,
the eos_token_id check, the processor's rescale / resample checks, candidate folders' AppleDouble files and stray
images, a non-str missing prompt).

Each test asserts the correct behaviour of a defect confirmed by running it, filed as a strict xfail; all 8 are fixed
(the twenty-second session; the markers are gone). Four pass on
7542746's parent (regressions: a FIFO pytorch_model.bin, an index naming a file outside the folder, absolute and
../, weight names with the 'clip.' prefix); the sharded / legacy .bin holes and the null projection_dim are gaps
of the rev22d fix; the deeply nested config.json predates it.

Tried and held up (real checkpoints still load):
- a CLIPModel of transformers' ``CLIPConfig()`` defaults (ViT-B/32 sizes, random weights) saved by
  ``save_pretrained`` and as a zip-format ``pytorch_model.bin``: the header check reads all 398 shapes and passes,
  the weights load; the project's own trainer output; a sharded safetensors save (``max_shard_size`` 50KB, five
  shards and an index); the same weights as one zip-format .bin, a legacy (non-zip) .bin and a sharded .bin
  (``pytorch_model.bin.index.json``) all load; position_ids buffers in the weights (safetensors and .bin);
- config layouts: ``text_config_dict`` / ``vision_config_dict`` only, beside ``text_config`` / ``vision_config``,
  beside null or empty ones; ``projection_dim`` absent (512 weights); ``torch_dtype`` and ``transformers_version``
  4.27.3; a tiny PickScore_v1 layout (hidden_act "gelu" both towers, projection_dim unlike the towers' own, the
  ``_dict`` keys, bos 0 / eos 2 / pad 1, ``_commit_hash`` null, position_ids) as safetensors and .bin;
  eos_token_id 2 (legacy) and the tokenizer's own; eos absent with CLIP's 49408 vocabulary (default 49407);
- processor configs: CLIP's hub layout (``size`` / ``crop_size`` ints, ``feature_extractor_type``, resample 3, no
  do_rescale / rescale_factor, or do_rescale true with 0.00392156862745098), resample absent (PIL's BICUBIC enum),
  rescale_factor 0.0039215686; 0.0039, do_rescale 1 and resample 2 are one-line refusals;
- weight files: a .bin linked to /dev/zero (no weights, one line), a pickle that is no torch.save file (one line,
  "objects other than tensors"), a .bin of ``{"state_dict": ...}`` (one line), an index naming
  ``../../../etc/passwd`` is refused in one line (but the file is opened first: below); config fields of null /
  string / list / 0 / negative values with safetensors weights are one-line refusals;
- candidate folders: ``._x.png`` as a FIFO (not waited on: a candidate row / missing_prompt row), ``._x`` a
  folder, a link to /dev/zero, a link loop (unsupported_image rows), AppleDouble magic files skipped, a real PNG
  named ``._img.png`` a candidate; ``x.GIF`` beside the subfolders a missing_prompt row, README.md none.

Noted, not filed: a processor ``resample`` written as a name ("BICUBIC", "bicubic") is now refused although the
scorer resizes bicubic whatever it says (transformers' own processor cannot use a name either); ``resample`` 3.5
passes as 3; a .bin holding ``{"state_dict": {...}}`` is refused as "config.json does not fit the checkpoint
(... the weights hold 0 layers)" rather than as weights that do not match; a huge index.json is read whole (as
transformers reads it anyway).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.scoring_fixtures import count_encoder_layers, tiny_checkpoint


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny CLIP checkpoint (image_size 32) saved by the project's own code."""
    return tiny_checkpoint(tmp_path_factory.mktemp("rev22g-model"))


def _copy(model_dir: Path, target: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """The checkpoint copied without its weights file; returns the folder and the weights."""
    shutil.copytree(model_dir, target)
    weights = load_file(target / "model.safetensors")
    (target / "model.safetensors").unlink()
    return target, weights


def _sharded(model_dir: Path, target: Path, kind: str = "bin") -> Path:
    """The checkpoint with its weights in two shards and an index, as transformers writes them."""
    folder, weights = _copy(model_dir, target)
    names = sorted(weights)
    shards = {f"model-0000{n}-of-00002.{'bin' if kind == 'bin' else 'safetensors'}": part
              for n, part in ((1, names[:20]), (2, names[20:]))}
    for shard, part in shards.items():
        tensors = {name: weights[name] for name in part}
        if kind == "bin":
            torch.save(tensors, folder / shard)
        else:
            save_file(tensors, folder / shard, metadata={"format": "pt"})
    index = "pytorch_model.bin.index.json" if kind == "bin" else "model.safetensors.index.json"
    (folder / index).write_text(json.dumps({"metadata": {}, "weight_map": {
        name: shard for shard, part in shards.items() for name in part}}))
    return folder


def _set_config(folder: Path, part: str | None, **fields) -> None:
    config = json.loads((folder / "config.json").read_text())
    (config[part] if part else config).update(fields)
    (folder / "config.json").write_text(json.dumps(config))


_LOAD = """
import json, sys
from training.model import load_model
try:
    load_model(sys.argv[1])
    print(json.dumps(["loaded", ""]))
except Exception as exc:
    print(json.dumps([type(exc).__name__, str(exc)]))
"""


def _opens_fifo(fifo: Path, folder: Path) -> tuple[bool, list[str]]:
    """Run ``load_model(folder)`` in a child process; whether it opened ``fifo`` to read (seen as a reader on it,
    never by timing: each time one waits there a writer opens and closes it, so the reader gets end-of-file and
    goes on) and what it raised: [class name, message]. (A thread would not do: safetensors keeps the GIL while
    it opens a file.)"""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    child = subprocess.Popen([sys.executable, "-c", _LOAD, str(folder)], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True, env=env)
    opened = False
    try:
        for _ in range(3000):               # a cap, never reached: loading the tiny checkpoint takes seconds
            try:
                child.wait(0.05)
                break
            except subprocess.TimeoutExpired:
                pass
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)     # ENXIO while nobody has it open to read
            except OSError:
                continue
            opened = True
            os.close(fd)
    finally:
        if child.poll() is None:
            child.kill()
        out = child.communicate()[0]
    lines = out.strip().splitlines()
    return opened, (json.loads(lines[-1]) if lines else ["no answer", ""])


_count_layers = count_encoder_layers


# ---------------------------------------------------------------------------------------------- weight files
def test_a_fifo_named_pytorch_model_bin_is_refused_without_waiting_on_it(model_dir, tmp_path):
    folder, _ = _copy(model_dir, tmp_path / "fifo-bin")
    os.mkfifo(folder / "pytorch_model.bin")
    opened, raised = _opens_fifo(folder / "pytorch_model.bin", folder)
    assert not opened
    assert raised[0] == "NotAClipCheckpoint" and "fifo-bin" in raised[1], raised


@pytest.mark.parametrize("form", ["absolute", "dotdot"])
def test_an_index_naming_a_file_outside_the_folder_never_opens_it(model_dir, tmp_path, form):
    folder = _sharded(model_dir, tmp_path / "outside-index", kind="safetensors")
    outside = tmp_path / "outside.safetensors"
    os.mkfifo(outside)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    first = sorted(index["weight_map"])[0]
    index["weight_map"][first] = str(outside) if form == "absolute" else "../outside.safetensors"
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    opened, raised = _opens_fifo(outside, folder)
    assert not opened, "a file outside the model folder was opened"
    assert raised[0] == "NotAClipCheckpoint" and "outside-index" in raised[1], raised


def test_an_index_naming_a_fifo_shard_is_refused_without_waiting_on_it(model_dir, tmp_path):
    folder = _sharded(model_dir, tmp_path / "fifo-shard", kind="safetensors")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    index["weight_map"][sorted(index["weight_map"])[0]] = "pipe.safetensors"
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    os.mkfifo(folder / "pipe.safetensors")
    opened, raised = _opens_fifo(folder / "pipe.safetensors", folder)
    assert not opened
    assert raised[0] == "NotAClipCheckpoint" and "fifo-shard" in raised[1], raised


# ---------------------------------------------------------------------------------------------- config vs weights
def test_a_million_layer_config_with_sharded_bin_weights_is_refused_before_building(model_dir, tmp_path,
                                                                                     monkeypatch):
    from training.model import load_model

    folder = _sharded(model_dir, tmp_path / "layers-sharded-bin", kind="bin")
    load_model(folder)                      # the checkpoint itself loads
    _set_config(folder, "vision_config", num_hidden_layers=10**6)
    _count_layers(monkeypatch)
    with pytest.raises(ValueError, match="layers"):
        load_model(folder)


def test_a_million_layer_config_with_a_legacy_bin_is_refused_before_building(model_dir, tmp_path, monkeypatch):
    from training.model import load_model

    folder, weights = _copy(model_dir, tmp_path / "layers-legacy-bin")
    torch.save(weights, folder / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    load_model(folder)                      # the checkpoint itself loads
    _set_config(folder, "vision_config", num_hidden_layers=10**6)
    _count_layers(monkeypatch)
    with pytest.raises(ValueError, match="layers"):
        load_model(folder)


def test_a_null_projection_dim_with_sharded_bin_weights_is_a_one_line_refusal(model_dir, tmp_path):
    from training.model import NotAClipCheckpoint, load_model

    folder = _sharded(model_dir, tmp_path / "proj-null", kind="bin")
    _set_config(folder, None, projection_dim=None)
    with pytest.raises(NotAClipCheckpoint, match="proj-null"):
        load_model(folder)


def test_a_checkpoint_with_clip_prefixed_weight_names_still_loads(model_dir, tmp_path):
    from training.model import load_model

    folder, weights = _copy(model_dir, tmp_path / "prefixed")
    save_file({f"clip.{name}": value for name, value in weights.items()}, folder / "model.safetensors",
              metadata={"format": "pt"})
    model, _ = load_model(folder)
    assert torch.equal(model.visual_projection.weight, weights["visual_projection.weight"])


def test_a_deeply_nested_config_json_is_a_one_line_refusal(model_dir, tmp_path):
    from training.model import load_model

    folder = tmp_path / "deep-config"
    shutil.copytree(model_dir, folder)
    (folder / "config.json").write_text('{"model_type": "clip", "x": ' + "[" * 100000 + "]" * 100000 + "}")
    with pytest.raises(ValueError, match="deep-config"):
        load_model(folder)
