"""The shard benchmark's floor: forked readers that sha256 and append the JPEG bytes, nothing else."""
from __future__ import annotations

import pytest

from benchmarks import shards as bench


def test_floor_write_reads_every_file_and_leaves_nothing(tmp_path, monkeypatch) -> None:
    paths = []
    for i in range(7):
        path = tmp_path / f"{i}.jpg"
        path.write_bytes(bytes([i]) * (1000 + i))
        paths.append(path)
    kept = {}
    real_rmtree = bench.shutil.rmtree

    def keep_then_remove(folder):             # look at what the children wrote before it goes
        kept.update({p.name: p.read_bytes() for p in folder.iterdir()})
        real_rmtree(folder)

    monkeypatch.setattr(bench.shutil, "rmtree", keep_then_remove)
    seconds = bench.floor_write(paths, tmp_path / "floor", workers=2, fsync=True)
    assert seconds > 0 and not (tmp_path / "floor").exists()
    # worker w appends files w, w + 2, ... in order: every byte read once, by one worker
    assert kept == {f"floor-{w}.bin": b"".join(p.read_bytes() for p in paths[w::2]) for w in range(2)}


def test_floor_write_reports_a_failed_reader(tmp_path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"x")
    with pytest.raises(RuntimeError, match="floor writer processes"):
        bench.floor_write([tmp_path / "a.jpg", tmp_path / "missing.jpg"], tmp_path / "floor", workers=2, fsync=False)
    assert not (tmp_path / "floor").exists()
