"""A private mount namespace for tests that need a file system of their own (a tmpfs, remounted read-only).

Mounting needs CAP_SYS_ADMIN in a mount namespace: a user namespace gives it to any account where the kernel
allows unprivileged user namespaces; root may also use its own. Which of the two a machine allows differs
(root in a default container has neither capability nor user namespaces; some kernels turn user namespaces
off), so it is asked once, by mounting a tmpfs and remounting it read-only, as the tests do.
"""
from __future__ import annotations

import functools
import shutil
import subprocess
import tempfile

_WAYS = (
    ["--mount", "--map-root-user", "--propagation", "private"],   # a user namespace: no root needed
    ["--mount", "--propagation", "private"],                      # root's (CAP_SYS_ADMIN) own
)
_PROBE = 'mount -t tmpfs -o size=1m none "$1" && mount -o remount,ro "$1" && ! touch "$1/x" 2>/dev/null'


@functools.cache
def mount_namespace() -> tuple[str, ...] | None:
    """The ``unshare`` command prefix that runs a command where it may mount a tmpfs and remount it read-only,
    or None where this machine allows neither way."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    with tempfile.TemporaryDirectory(prefix="pickapic-mount-probe-") as point:
        for way in _WAYS:
            done = subprocess.run([unshare, *way, "sh", "-c", _PROBE, "sh", point], capture_output=True, timeout=60)
            if done.returncode == 0:
                return (unshare, *way)
    return None
