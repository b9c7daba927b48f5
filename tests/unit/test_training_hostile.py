"""Hostile inputs to the trainer and the dataset readers: planted files, broken shards, links, odd images."""
import shutil

import pytest
import torch

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
