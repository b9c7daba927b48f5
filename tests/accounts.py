"""Reading a file as another account: what an analyst or the training job's user would see."""
from __future__ import annotations

import os
import pwd
import stat
import subprocess
from pathlib import Path


def _as_nobody(command: list[str], timeout: int) -> subprocess.CompletedProcess:
    """Run ``command`` as the ``nobody`` account: the child drops root's uid, gid and supplementary groups
    itself before exec (``subprocess``'s ``user``/``group``/``extra_groups``), so the kernel checks the
    permissions as it would for that account, with no PAM stack needed (``runuser`` aborts on a system
    without ``/etc/pam.d``)."""
    account = pwd.getpwnam("nobody")
    return subprocess.run(command, capture_output=True, timeout=timeout, user=account.pw_uid,
                          group=account.pw_gid, extra_groups=[], cwd="/")


def read_as_other_account(path: Path) -> bytes | None:
    """The bytes the unprivileged ``nobody`` account reads from ``path`` (``cat`` run as that account), or None.

    Without root there is no second account to switch to; then the permission bits decide, as the kernel
    would for ``nobody``: read on the file, search on every folder above it.
    """
    if os.geteuid() == 0:
        done = _as_nobody(["cat", str(path)], timeout=60)
        assert done.returncode == 0 or b"Permission denied" in done.stderr, done.stderr
        return done.stdout if done.returncode == 0 else None
    readable = path.stat().st_mode & stat.S_IROTH and all(p.stat().st_mode & stat.S_IXOTH for p in path.parents)
    return path.read_bytes() if readable else None


def unreadable_by_other_account(folder: Path) -> list[Path]:
    """Every file (or unsearchable folder) under ``folder`` that the ``nobody`` account cannot read; [] when none."""
    if os.geteuid() != 0:
        return [p for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()
                and read_as_other_account(p) is None]
    done = _as_nobody(["find", str(folder), "-type", "f", "!", "-readable"], timeout=120)
    denied = [line for line in done.stderr.decode().splitlines() if "Permission denied" in line]
    return [Path(line) for line in done.stdout.decode().splitlines()] + [Path(line) for line in denied]
