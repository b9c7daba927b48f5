"""The shard benchmark's bare reference writer: forked readers that sha256 and append the JPEG bytes."""
from __future__ import annotations

import pytest

from benchmarks import shards as bench


def test_bare_write_reads_every_file_once_and_leaves_nothing(tmp_path, monkeypatch) -> None:
    paths = []
    for i in range(7):
        path = tmp_path / f"{i}.jpg"
        path.write_bytes(bytes([i]) * (1000 + i))
        paths.append(path)
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "keep.txt").write_text("not the benchmark's")   # a folder of that name is not touched
    kept = {}
    real_rmtree = bench.shutil.rmtree

    def keep_then_remove(folder, **kwargs):   # look at what the children wrote before it goes
        kept.update({p.name: p.read_bytes() for p in folder.iterdir()})
        real_rmtree(folder, **kwargs)

    monkeypatch.setattr(bench.shutil, "rmtree", keep_then_remove)
    seconds = bench.bare_write(paths, tmp_path, workers=2, fsync=True)
    assert seconds > 0
    # worker w appends files w, w + 2, ... in order: every byte read once, by one worker
    assert kept == {f"bare-{w}.bin": b"".join(p.read_bytes() for p in paths[w::2]) for w in range(2)}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([p.name for p in paths] + ["bare"])
    assert (tmp_path / "bare" / "keep.txt").read_text() == "not the benchmark's"


def test_bare_write_reports_a_failed_reader_with_its_error(tmp_path, capfd) -> None:
    (tmp_path / "a.jpg").write_bytes(b"x")
    with pytest.raises(RuntimeError, match="bare writer processes"):
        bench.bare_write([tmp_path / "a.jpg", tmp_path / "missing.jpg"], tmp_path, workers=2, fsync=False)
    assert "missing.jpg" in capfd.readouterr().err          # the child printed why
    assert [p.name for p in tmp_path.iterdir()] == ["a.jpg"]


def test_create_times_counts_every_create_in_this_process_and_forked_ones(tmp_path) -> None:
    import os

    from pipelines.publish import shards

    original = shards.create_temp
    with bench.CreateTimes(tmp_path / "creates.log") as creates:
        fd, _ = shards.create_temp(tmp_path, "a")
        os.close(fd)
        pid = os.fork()
        if pid == 0:      # a pool worker: the forked copy of the wrapper writes to the inherited log
            code = 1
            try:
                os.close(shards.create_temp(tmp_path, "b")[0])
                code = 0
            finally:
                os._exit(code)
        assert os.waitpid(pid, 0)[1] == 0
    assert shards.create_temp is original
    times = creates.seconds()
    assert len(times) == 2 and all(0 < t < 10 for t in times)
    assert sorted(p.name.split(".")[1] for p in tmp_path.iterdir() if p.name.endswith(".tmp")) == ["a", "b"]


def test_lean_write_writes_every_file_once_into_the_asked_number_of_files(tmp_path, monkeypatch) -> None:
    paths = []
    for i in range(9):
        path = tmp_path / f"{i}.jpg"
        path.write_bytes(bytes([i]) * (1000 + 300_000 * (i == 4)))   # one larger than the buffer's room
        paths.append(path)
    monkeypatch.setattr(bench, "LEAN_CHUNK", 4096)        # several chunk writes and a grown buffer
    kept = {}
    real_rmtree = bench.shutil.rmtree

    def keep_then_remove(folder, **kwargs):
        kept.update({p.name: p.read_bytes() for p in folder.iterdir()})
        real_rmtree(folder, **kwargs)

    monkeypatch.setattr(bench.shutil, "rmtree", keep_then_remove)
    assert bench.lean_write(paths, tmp_path, workers=2, fsync=True, files=5) > 0
    # worker 0 has files 0, 2, 4, 6, 8 over 3 files, worker 1 files 1, 3, 5, 7 over 2
    want = {}
    for w, count in ((0, 3), (1, 2)):
        share = paths[w::2]
        for n in range(count):
            want[f"lean-{w}.{n}"] = b"".join(p.read_bytes() for p in share[n::count])
    assert kept == want
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths)


def test_lean_write_reports_a_failed_reader(tmp_path, capfd) -> None:
    (tmp_path / "a.jpg").write_bytes(b"x")
    with pytest.raises(RuntimeError, match="lean writer processes"):
        bench.lean_write([tmp_path / "a.jpg", tmp_path / "missing.jpg"], tmp_path, workers=2, fsync=False, files=2)
    assert "missing.jpg" in capfd.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["a.jpg"]
