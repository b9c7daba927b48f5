"""Reading a file as another account: what an analyst or the training job's user would see; running code
without root's privileges; an immutable file where the machine allows one."""
from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import pickle
import pwd
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

# The home's owner in tests where a forked child becomes another account (setuid without exec): the kernel checks
# ids alone, so it needs no entry in /etc/passwd (an image may have no `daemon` account); nobody's is not it.
OWNER_UID = OWNER_GID = 64999


def _as_nobody(command: list[str], timeout: int) -> subprocess.CompletedProcess:
    """Run ``command`` as the ``nobody`` account: the child drops root's uid, gid and supplementary groups
    itself before exec (``subprocess``'s ``user``/``group``/``extra_groups``), so the kernel checks the
    permissions as it would for that account, with no PAM stack needed (``runuser`` aborts on a system
    without ``/etc/pam.d``)."""
    account = pwd.getpwnam("nobody")
    return subprocess.run(command, capture_output=True, timeout=timeout, user=account.pw_uid,
                          group=account.pw_gid, extra_groups=[], cwd="/",
                          env={**os.environ, "LC_ALL": "C"})   # the messages read below are the C locale's


NOBODY_ID = 65534   # the uid and gid a forked child takes in check_as_nobody (no passwd entry needed)


def check_as_nobody(check: Callable[[], Any]) -> None:
    """Run ``check`` in a forked child that drops root to uid/gid 65534 (no supplementary groups), and fail with the
    child's traceback unless it returned: the kernel checks that account's permissions, not root's (root opens,
    writes and empties any folder). Needs root."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:                                            # pragma: no cover (the child)
        try:
            os.setgroups([])
            os.setgid(NOBODY_ID)
            os.setuid(NOBODY_ID)
            check()
            os.write(write, b"ok")
        except BaseException:                              # noqa: BLE001 - reported to the parent
            import traceback
            os.write(write, traceback.format_exc()[-4000:].encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read, "rb") as pipe:
        reported = pipe.read().decode()
    assert reported == "ok", reported


def as_another_account(check: Callable[[], Any]) -> None:
    """Run ``check`` as an account that is not the folders' owner: as root (this project's CI runs as root, and
    root opens and writes any folder), as uid/gid 65534 in a forked child (:func:`check_as_nobody`); otherwise here."""
    if os.geteuid() != 0:
        check()
        return
    check_as_nobody(check)


@contextlib.contextmanager
def shared_folder(prefix: str) -> Iterator[Path]:
    """A temporary folder every account may enter (the forked child of :func:`as_another_account` works in it),
    removed after."""
    base = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(base, 0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


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


# --------------------------------------------------------------------------- root without its privileges
_CAPABILITY_VERSION_3 = 0x20080522      # <linux/capability.h>: two 32-bit words per set


def _drop_capabilities() -> None:
    """Empty this process's effective, permitted and inheritable capability sets (``capset``; any process may
    drop its own). Root then meets file modes as every other account does: no CAP_DAC_OVERRIDE, CAP_FOWNER..."""
    libc = ctypes.CDLL(None, use_errno=True)
    header = (ctypes.c_uint32 * 2)(_CAPABILITY_VERSION_3, 0)
    sets = (ctypes.c_uint32 * 6)()
    if libc.capset(header, sets) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), "capset")


def without_privileges(fn: Callable[[], Any]) -> tuple[str, Any]:
    """``fn()`` in a forked child that dropped every capability, as the same account: ('ok', its result) or
    ('raised', 'Type: message'). For root this is the machine-independent way to meet a folder it may not
    change (a mode without write permission), which ``chattr +i`` gives only with CAP_LINUX_IMMUTABLE (not
    granted in a default container) on a file system that keeps the flag; for any other account it changes
    nothing."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:   # pragma: no cover - the child
        os.close(read_end)
        try:
            _drop_capabilities()
            out: tuple[str, Any] = ("ok", fn())
        except BaseException as exc:   # noqa: BLE001 - reported to the parent
            out = ("raised", f"{type(exc).__name__}: {exc}")
        try:
            data = pickle.dumps(out)
        except Exception as exc:   # noqa: BLE001 - an answer that does not pickle is reported too
            data = pickle.dumps(("raised", f"unpicklable answer: {exc}"))
        with os.fdopen(write_end, "wb") as pipe:
            pipe.write(data)
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    return pickle.loads(data) if data else ("raised", "the child died without an answer")


# --------------------------------------------------------------------------- immutable files
FS_IOC_GETFLAGS = 0x80086601    # <linux/fs.h>
FS_IOC_SETFLAGS = 0x40086602
FS_IMMUTABLE_FL = 0x10


def _set_flags(path: Path, change: Callable[[int], int]) -> None:
    import array

    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    try:
        flags = array.array("i", [0])
        fcntl.ioctl(fd, FS_IOC_GETFLAGS, flags, True)
        flags[0] = change(flags[0])
        fcntl.ioctl(fd, FS_IOC_SETFLAGS, flags, False)
    finally:
        os.close(fd)


def make_immutable(path: Path) -> bool:
    """Set ``path``'s immutable flag (what ``chattr +i`` does); False, with nothing changed, where this machine
    refuses it: an account without CAP_LINUX_IMMUTABLE (any but root, and root in a default container) or a
    file system without such flags. A test that needs the flag then has the kernel's answer stand in for it
    (:func:`reported_immutable`), so what it checks does not depend on the machine."""
    try:
        _set_flags(path, lambda flags: flags | FS_IMMUTABLE_FL)
    except OSError as exc:
        if exc.errno in (errno.EPERM, errno.EACCES, errno.ENOTTY, errno.EOPNOTSUPP, errno.EINVAL):
            return False
        raise
    return True


def clear_immutable(*paths: Path) -> None:
    """Clear the immutable flag of each of ``paths`` that exists and has it (a test's clean-up)."""
    for path in paths:
        try:
            _set_flags(path, lambda flags: flags & ~FS_IMMUTABLE_FL)
        except OSError:
            pass


def reported_immutable(monkeypatch: Any, *paths: Path) -> None:
    """Answer ``FS_IOC_GETFLAGS`` for ``paths`` (same device and inode) with the immutable flag set, for the rest
    of the test: what the kernel answers for a file :func:`make_immutable` could not pin on this machine. Forked
    children inherit it."""
    import array

    pinned = {(os.lstat(p).st_dev, os.lstat(p).st_ino) for p in paths}
    real = fcntl.ioctl

    def ioctl(fd: Any, request: int, arg: Any = 0, mutate_flag: bool = True) -> Any:
        if request == FS_IOC_GETFLAGS and isinstance(arg, array.array):
            info = os.fstat(fd if isinstance(fd, int) else fd.fileno())
            if (info.st_dev, info.st_ino) in pinned:
                arg[0] = FS_IMMUTABLE_FL
                return 0
        return real(fd, request, arg, mutate_flag)

    monkeypatch.setattr(fcntl, "ioctl", ioctl)
