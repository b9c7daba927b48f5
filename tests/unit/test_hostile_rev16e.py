"""Hostile review rev16e (December 5, 2026): attacks on the rev16d fixes (the query cap set in ``stream``, the
record of switched versions written before the rename of ``latest``, the run-less events database created with
the umask's mode, the EROFS lock message, the build's escaped warnings). Each test reproduces a confirmed defect
and was a strict xfail until it was fixed (the same day)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.mounts import mount_namespace

ROOT = Path(__file__).resolve().parents[2]

# In a private mount namespace (root's, or a user namespace's mapped root): a home on a tmpfs, its Dagster
# instance made by a dry-run build, then the tmpfs remounted read-only and the home built again.
_READ_ONLY_BUILD = """
set -e
mount -t tmpfs -o size=64m tmpfs "$1"
"$2" -m dagster_project.cli simulate --home "$1/home" --days 1 --rankings-per-day 10 --users 5 --no-images --quiet \
    >/dev/null 2>&1
"$2" -m dagster_project.cli build --home "$1/home" --dry-run >/dev/null 2>&1
mount -o remount,ro "$1"
set +e
"$2" -m dagster_project.cli build --home "$1/home"
"""


def test_a_build_on_a_read_only_mount_says_the_file_system_is_read_only(tmp_path: Path) -> None:
    namespace = mount_namespace()     # a user namespace (any account) or root's own, where the machine has one
    assert namespace, ("this machine allows no mount namespace (no util-linux unshare, no user namespaces and no "
                       "CAP_SYS_ADMIN) to mount a read-only file system for the test")
    mount = tmp_path / "mnt"
    mount.mkdir()
    done = subprocess.run([*namespace, "sh", "-c", _READ_ONLY_BUILD, "sh", str(mount), sys.executable],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    err = done.stderr
    assert "pickapic build: error:" in err, (done.returncode, err[-1500:])   # the read-only home got this far
    assert done.returncode != 0
    # the account is the home's owner: the cause is the read-only mount, and the message must say so
    assert "read-only" in err and "run them as its owner" not in err, err[-1500:]
