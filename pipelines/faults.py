"""Fault injection for crash tests: ``PICKAPIC_FAULT=<point>[:<n>]`` SIGKILLs the build at a named point.

:func:`maybe_crash` is called at a few named points of the pipeline. It does nothing unless the
environment variable ``PICKAPIC_FAULT`` names that point; then, on the ``n``-th time this process
reaches the point (default: the first), it sends ``SIGKILL`` to its whole process group, so the
build and its worker processes (shard writers, Beam workers) die at once, as in a power cut or an
OOM kill of the job: no ``finally`` block, no ``atexit`` handler, no flush runs. Start the process in
its own session (``setsid``, ``subprocess.Popen(..., start_new_session=True)``) so that nothing
else is in its group. The count is per process: a forked worker starts with its parent's count.

Points (module: where):

- ``ingest.after_first_rename`` (ingest): one of a day's six warehouse files renamed into place, the
  other five still under their temporary names.
- ``shards.after_tar`` (shards, in a writer process): a shard's ``.tar`` renamed into place, its
  sidecar and its ``_stats.json`` commit marker not written (mid-shard).
- ``publish.after_link`` (publish): an unchanged shard hard-linked from an older version into the
  staged one (its stats, the commit marker, last), the other shards not yet linked or written.
- ``publish.after_shards`` (publish): every shard committed, ``sizes.json``, ``meta/`` and the
  manifest not written.
- ``publish.before_rename`` (publish): the staged version complete and verified, not yet renamed
  from ``pickapic.staging/.partial-<version>`` to ``pickapic/<version>``.
- ``publish.before_switch`` (publish): the version directory complete and in place, ``latest``
  not yet switched to it.
- ``features.after_beam`` (features): the Beam pipeline finished and
  its staged outputs written, the ``image_features`` partition not yet committed.

Never set ``PICKAPIC_FAULT`` outside tests.
"""
from __future__ import annotations

import os
import signal

ENV_VAR = "PICKAPIC_FAULT"
_hits: dict[str, int] = {}


def _target() -> tuple[str, int] | None:
    """(point, n) parsed from the environment, or None when no fault is requested."""
    value = os.environ.get(ENV_VAR, "").strip()
    if not value:
        return None
    point, _, count = value.partition(":")
    try:
        n = int(count) if count else 1
    except ValueError:
        raise ValueError(f"{ENV_VAR}={value!r}: expected <point> or <point>:<n> with n a positive integer") from None
    if n < 1:
        raise ValueError(f"{ENV_VAR}={value!r}: n must be >= 1")
    return point, n


def maybe_crash(point: str) -> None:
    """SIGKILL this process group if ``PICKAPIC_FAULT`` names ``point`` and this is its n-th hit; else no-op."""
    target = _target()
    if target is None or target[0] != point:
        return
    _hits[point] = _hits.get(point, 0) + 1
    if _hits[point] != target[1]:
        return
    os.killpg(os.getpgrp(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)  # not reached: the group signal includes this process
