"""fix36d: the defects of review rev36d (``tests/unit/test_hostile_rev36d.py``) fixed, and their neighbours.

- a scratch folder nothing can be made in (a read-only or full disk, another account's) is a one-line
  ``ScratchFolderUnusable`` naming it and the system's error (``formats.locks.scratch_unusable``): the feature stage
  falls back to Beam's own temp folder with a warning, as for a dangling link; the ingest's spill refuses clearly;
- a link's target is shown escaped (``formats.settings.quoted``), never raw; a self-link or a loop of links is
  called a loop, a link to a file "not a folder";
- a file or a loop of links ABOVE the scratch folder is a ``ScratchFolderUnusable`` too (was a bare
  ``NotADirectoryError`` / ``ELOOP``);
- the feature asset's progress goes to the run's log (``steplog.step_progress``): the fallback's warning is a
  warning of the project's own, which ``pickapic build`` shows.
"""
from __future__ import annotations

import errno
import functools
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import dagster as dg
import pytest
from test_features_fixtures import fake_detector, png, write_day

from dagster_project.steplog import MARK, project_warning, step_progress
from formats.home import DataHome
from formats.locks import SCRATCH_MARKER, ScratchFolderUnusable, held_scratch_folder, scratch_unusable

DAY = "2023-03-01"
REPO = Path(__file__).resolve().parents[2]


def _refusal(scratch: Path) -> ScratchFolderUnusable:
    with pytest.raises(ScratchFolderUnusable) as caught:
        with held_scratch_folder(scratch, f"ingest-{DAY}-"):
            pass
    message = str(caught.value)
    assert "\n" not in message and "\x1b" not in message, message
    return caught.value


def test_a_self_link_and_a_loop_are_called_loops_not_missing_folders(tmp_path: Path) -> None:
    (tmp_path / "cache").mkdir()
    scratch = tmp_path / "cache" / "tmp"
    os.symlink("tmp", scratch)                               # a self-link
    refused = _refusal(scratch)
    assert "loop of links" in str(refused) and "does not exist" not in str(refused) and str(scratch) in str(refused)
    assert "'tmp'" in str(refused)                           # the target, quoted
    os.remove(scratch)
    os.symlink("b", scratch)                                 # tmp -> b -> tmp
    os.symlink("tmp", tmp_path / "cache" / "b")
    assert "loop of links" in str(_refusal(scratch))
    assert os.readlink(scratch) == "b" and os.readlink(tmp_path / "cache" / "b") == "tmp"   # links kept


def test_a_link_to_a_file_is_not_a_folder(tmp_path: Path) -> None:
    (tmp_path / "cache").mkdir()
    (tmp_path / "notes.txt").write_bytes(b"mine")
    os.symlink(tmp_path / "notes.txt", tmp_path / "cache" / "tmp")
    refused = _refusal(tmp_path / "cache" / "tmp")
    assert "which is not a folder" in str(refused) and "does not exist" not in str(refused)
    assert (tmp_path / "notes.txt").read_bytes() == b"mine"


def test_a_file_or_a_loop_above_the_scratch_folder_is_unusable_not_a_bare_error(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "cache").write_bytes(b"not a folder")            # a file above cache/tmp
    refused = _refusal(home / "cache" / "tmp")
    assert f"{home / 'cache'} is not a folder" in str(refused) and refused.errno == errno.ENOTDIR
    os.remove(home / "cache")
    os.symlink("cache", home / "cache")                      # a loop above it
    refused = _refusal(home / "cache" / "tmp")
    assert f"{home / 'cache'} is a symbolic link to 'cache', a loop of links" in str(refused)
    assert refused.errno == errno.ELOOP
    # two levels up: the lowest thing in the way is named
    os.remove(home / "cache")
    (home / "cache").mkdir()
    (home / "cache" / "deep").write_bytes(b"x")
    assert f"{home / 'cache' / 'deep'} is not a folder" in str(_refusal(home / "cache" / "deep" / "tmp"))


def test_a_hostile_or_long_link_target_is_shown_escaped_and_cut(tmp_path: Path) -> None:
    (tmp_path / "cache").mkdir()
    scratch = tmp_path / "cache" / "tmp"
    target = "/mnt/\x1b]0;owned\x07" + "x" * 3000 + "\nERROR"
    os.symlink(target, scratch)
    message = str(_refusal(scratch))
    assert "\\x1b]0;owned\\x07" in message and "\x07" not in message
    assert len(message) < 600 and f"({len(target)} characters)" in message     # cut, its length said
    assert "File name too long" in message                             # a name longer than a link may lead to


def test_scratch_unusable_names_the_folder_and_the_error(tmp_path: Path) -> None:
    scratch = tmp_path / "tmp"
    for number, said in [(errno.EROFS, "read-only"), (errno.ENOSPC, "full disk"), (errno.EDQUOT, "quota"),
                         (errno.EACCES, "not writable"), (errno.EPERM, "not writable")]:
        refused = scratch_unusable(scratch, OSError(number, os.strerror(number), str(scratch / ".new-x")))
        assert isinstance(refused, ScratchFolderUnusable) and refused.errno == number
        message = str(refused)
        assert str(scratch) in message and said in message and f"[Errno {number}]" in message
        assert errno.errorcode[number] in message and ".new-x" not in message
    assert scratch_unusable(scratch, OSError(errno.EIO, "I/O error")) is None     # not the folder's: raised as is
    already = ScratchFolderUnusable("x")
    assert scratch_unusable(scratch, already) is already


def test_a_working_scratch_folder_still_works_and_leaves_nothing(tmp_path: Path) -> None:
    with held_scratch_folder(tmp_path / "cache" / "tmp", "beam-") as folder:
        assert (folder / SCRATCH_MARKER).is_file()
    assert os.listdir(tmp_path / "cache" / "tmp") == []


# a real read-only / full disk at the scratch folder: a tmpfs in a private mount namespace (root only)
def _can_mount() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs none /mnt"], capture_output=True).returncode == 0


_MOUNTS = {
    "read-only": ('mount -t tmpfs -o ro none "$1"', errno.EROFS),
    "full": ('mount -t tmpfs -o nr_inodes=3 none "$1" && for i in 1 2 3 4; do touch "$1/fill$i" 2>/dev/null; done; '
             'true', errno.ENOSPC),
}

_CHILD = """
import json, sys
from pathlib import Path
import apache_beam as beam
from formats.locks import ScratchFolderUnusable, held_scratch_folder
from pipelines.features import stage
scratch = Path(sys.argv[1])
out = {}
try:
    with held_scratch_folder(scratch, "ingest-2023-03-01-"):
        out["spill"] = "made"
except ScratchFolderUnusable as exc:
    out["spill"] = [str(exc), exc.errno]
# Beam's subfolder in a held beam-XXXX folder whose disk turned read-only / full since it was made
said = []
pipeline = beam.Pipeline()
made = pipeline.local_tempdir
stage._local_tempdir_in(pipeline, Path(sys.argv[2]), said.append)
out["kept"] = pipeline.local_tempdir == made
out["said"] = said
print(json.dumps(out))
"""


@pytest.mark.skipif(not _can_mount(), reason="needs root and a private mount namespace (unshare -m) to mount")
@pytest.mark.parametrize("broken", sorted(_MOUNTS))
def test_the_ingest_spill_refuses_a_read_only_or_full_disk_in_one_line(tmp_path: Path, broken: str) -> None:
    scratch = tmp_path / "cache" / "tmp"
    scratch.mkdir(parents=True)
    held = tmp_path / "held"                  # a beam-XXXX folder made before its disk broke
    held.mkdir()
    mount, number = _MOUNTS[broken]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests" / "unit")])}
    script = (mount + ' && ' + mount.split(" && ")[0].replace('"$1"', '"$2"') + ' && exec "$3" -c "$4" "$1" "$2"')
    if broken == "full":
        script = (mount + ' && mount -t tmpfs -o nr_inodes=2 none "$2" && touch "$2/a" "$2/b" 2>/dev/null; '
                  'exec "$3" -c "$4" "$1" "$2"')
    done = subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", str(scratch), str(held), sys.executable, _CHILD],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    message, code = out["spill"]
    assert code == number and str(scratch) in message and errno.errorcode[number] in message
    assert ".new-ingest" not in message and "\n" not in message
    assert out["kept"] is True                                     # Beam's own folder kept, the stage runs on
    assert len(out["said"]) == 1 and out["said"][0].startswith("warning: ") and str(held) in out["said"][0]
    assert errno.errorcode[number] in out["said"][0]
    assert os.listdir(scratch) == []                               # (the mount is gone: the real folder is empty)


class _Log:
    def __init__(self) -> None:
        self.said: list[tuple[str, str]] = []

    def warning(self, message: str) -> None:
        self.said.append(("warning", message))

    def info(self, message: str) -> None:
        self.said.append(("info", message))


def test_step_progress_sends_warnings_as_the_projects_and_the_rest_as_info() -> None:
    log = _Log()
    progress = step_progress(log)
    progress("warning: cache/tmp is a symbolic link to 'x'; Beam's ...")
    progress("3 images in x")
    progress("reading", 1, 3)                                      # a count: nowhere
    progress("a warning: not at the start")
    assert log.said == [("warning", MARK + "cache/tmp is a symbolic link to 'x'; Beam's ..."),
                        ("info", "3 images in x"), ("info", "a warning: not at the start")]
    assert project_warning(logging.WARNING, log.said[0][1]).startswith("cache/tmp is a symbolic link")


def test_the_feature_assets_fallback_warning_reaches_the_runs_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dagster_project.assets import features as asset
    from dagster_project.resources import PickapicHome
    from pipelines.features.stage import build_features

    # the real stage, NudeNet aside (its model's load is most of a run of this size)
    monkeypatch.setattr(asset, "build_features", functools.partial(build_features, detector_factory=fake_detector))

    systmp = tmp_path / "systmp"
    systmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(systmp))
    home = DataHome(tmp_path / "home")
    home.raw_logs.mkdir(parents=True)
    write_day(home, DAY, {"a": png(1), "b": b"not an image"})
    home.cache.mkdir(parents=True, exist_ok=True)
    os.symlink("tmp", home.cache / "tmp")                          # a self-link: unusable
    (tmp_path / "instance").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "instance")) as instance:
        instance.add_dynamic_partitions("raw_days", [DAY])
        result = dg.materialize([asset.fingerprint_images], instance=instance, partition_key=DAY, raise_on_error=False,
                                resources={"data_home": PickapicHome(root=str(home.root))},
                                run_config={"ops": {"fingerprint_images": {"config": {"workers": 0}}}})
        logs = [(entry.level, entry.user_message) for entry in instance.all_logs(result.run_id)]
    warned = [text for level, message in logs if (text := project_warning(level, message))]
    assert [text for text in warned if str(home.cache / "tmp") in text and "loop of links" in text], logs
    assert home.partition_file("image_features", DAY).exists()    # the stage ran on
    assert os.path.islink(home.cache / "tmp")
