"""Whether the split ledger holds every user of the latest published version, told without reading its sidecars.

The splits build re-seeds the users ``latest`` published that the ledger lacks (a lost or older ledger:
:func:`pipelines.splits.assign.load_ledger`), which reads ``user_id``, ``split`` and ``dt`` of every train /
validation / test sidecar of ``latest``: about 23,000 files after a year, every night. That read can find
something only when ``latest`` holds a user the ledger does not know. Two records, neither in a version,
tell when it cannot:

- The publish records which ``split_pairs`` it published ``latest`` from: ``HOME/cache/published_split_pairs.json``
  holds the version's name, the sha256 of its ``manifest.json`` and the sha256 of the ``split_pairs`` bytes it
  read (the digest its version id is made of), rewritten at every switch of ``latest``
  (:func:`write_published_source`). A version's users are exactly the users of the train / validation / test
  rows of that ``split_pairs``.
- The splits build records, in the ledger's own Parquet key-value metadata (``pickapic.covers_split_pairs``),
  the sha256 of every ``split_pairs`` whose users the ledger holds: the one it just wrote (every user of
  ``pairs`` gets an entry) and the one ``latest`` was published from when this build found (by the record or
  by reading the sidecars and re-seeding) that the ledger holds all its users; with the sha256 of the ledger's
  set of users (every salt's) when it was written. The names of the retained published versions whose users it
  holds (``versions``: ``latest``'s and every other version ``latest`` was switched to, once read or covered;
  review rev24f) are kept beside it in ``cache/split_ledger_versions.json``, keyed by the ledger file's sha256:
  which versions existed when the splits ran is history, not data, and the ledger's bytes must not depend on it
  (a build killed after a version was recorded as switched and before the rename, then run again, wrote the same
  ledger as an uninterrupted build but for that list).

A ledger only grows: a build keeps every entry of every salt, so a ``split_pairs`` (or a version) it covered once
stays covered. The build skips the sidecars when the publish record names ``latest`` (its name and its manifest's
sha256 as they are now), the ledger's record, checked against the ledger's users as they are now, covers that
``split_pairs``, and it names every other retained version ``latest`` was switched to (:func:`ledger_record`;
with ``latest`` dangling or away, when it names them all). The skip is exact: every user the sidecars would
give is in the ledger, so the read would re-seed nobody, and the users it would add to the pseudonym-secret
check are none. Anything else reads the sidecars as before: no record (the cache deleted, a version
``latest`` was switched to by other means, a home published before this record), a ledger restored from an
older copy (its record names older ``split_pairs``, or not the versions published since: a rollback by
publishing a backed-up ``split_pairs`` again covers ``latest`` but not the version rolled back from), a ledger
edited by hand or re-keyed (:mod:`pipelines.splits.rekey` writes no record), a record that does not parse, a
record written before the versions were named in it (read once). Neither record changes a published byte;
deleting either costs one read of the sidecars.

The salt each published version was built under is a third record (``datasets/pickapic.salts``, beside the
versions: :func:`read_version_salts`), which the re-seed uses to prefer the split a version built under the
current ``splits.salt`` published (review rev24f): a version does not record its salt, so the splits build
learns it at the first build after the version became ``latest`` (the home's ``split_pairs`` is then the file it
was published from by the publish record, and records its salt) and keeps it there, outside the
tables it writes (a lost ledger or lost pins keep it; the tables' bytes do not depend on it).

The key owners (``split_key_owners``: the owner split pinned for every prompt and image of a published train /
validation / test row) carry the same kind of record in their own Parquet metadata
(``pickapic.pins_cover_split_pairs``): the sha256 of every ``split_pairs`` all of whose train / validation / test keys
(``prompt_key``, ``image_0_uid``, ``image_1_uid``) are pinned, the names of the retained published versions whose
keys are all pinned, a digest of the pinned keys (:func:`keys_digest`, every salt's, in the file's order), and the
version of the prompt key function and of the Unicode / ICU data its keys were computed with (a change re-keys). Pins are
only appended, so the build brings the pins up to date with ``latest`` only when that record does not cover the
``split_pairs`` ``latest`` was published from (:func:`pins_record`); from the home's ``split_pairs`` file when it is
that one and the record covers every older retained version, else from the sidecars of every retained version (one
read of ``latest``'s serves the ledger and the pins when both need it).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from formats.dataset import MANIFEST_FILE, latest_link
from formats.files import read_small_file, sha256_file, write_bytes_atomic
from formats.home import DataHome

RECORD_FILE = "published_split_pairs.json"       # under HOME/cache/: which split_pairs latest was published from
RECORD_MAX_BYTES = 4096
LEDGER_KEY = b"pickapic.covers_split_pairs"      # the ledger's key-value metadata: the split_pairs it covers
PINS_KEY = b"pickapic.pins_cover_split_pairs"    # the key owners' key-value metadata: the split_pairs they cover
PINNED_COLUMNS = ("salt", "kind", "key")          # what the key owners' digest is made of
_SHA256 = re.compile(r"[0-9a-f]{64}")


def record_file(home: DataHome) -> Path:
    """The publish's record of the ``split_pairs`` ``latest`` was published from (disposable, under ``cache/``)."""
    return home.cache / RECORD_FILE


def write_published_source(home: DataHome, version_dir: Path, split_pairs_sha256: str) -> None:
    """Record (publish, once ``latest`` points at ``version_dir``) that it was published from the ``split_pairs``
    of sha256 ``split_pairs_sha256``. Raises OSError when it cannot be written (the next splits build then reads
    the sidecars)."""
    data = json.dumps({"version": version_dir.name, "manifest_sha256": sha256_file(version_dir / MANIFEST_FILE),
                       "split_pairs_sha256": split_pairs_sha256}, sort_keys=True).encode()
    home.cache.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(record_file(home), data)


def _read_record(path: Path) -> dict | None:
    """The publish record, or None where there is none this tool could have written: not a regular file (a link
    is not followed, a FIFO never waited on), too large, not JSON of the three fields."""
    record = _read_json(path, RECORD_MAX_BYTES)      # nested past the parser: none either (review rev38g)
    if not isinstance(record, dict) or not all(isinstance(record.get(k), str) for k in
                                               ("version", "manifest_sha256", "split_pairs_sha256")):
        return None
    if not (_SHA256.fullmatch(record["manifest_sha256"]) and _SHA256.fullmatch(record["split_pairs_sha256"])):
        return None
    return record


def latest_source(home: DataHome) -> tuple[str | None, str | None]:
    """``latest``'s version name (None when nothing is published) and the sha256 of the ``split_pairs`` it was
    published from, by the publish record when that names this version and its manifest's bytes as they are
    now (else None)."""
    link = latest_link(home)
    if not (link / MANIFEST_FILE).is_file():
        return None, None
    version = link.resolve()
    record = _read_record(record_file(home))
    if record is None or record["version"] != version.name:
        return version.name, None
    try:
        manifest = sha256_file(version / MANIFEST_FILE)
    except OSError:
        return version.name, None
    return version.name, record["split_pairs_sha256"] if manifest == record["manifest_sha256"] else None


def users_digest(users: Iterable[str]) -> str:
    """sha256 of a set of user ids (sorted, each length-prefixed): what the ledger's record is checked against."""
    digest = hashlib.sha256()
    for user in sorted(set(users)):
        data = user.encode("utf-8", "surrogatepass")
        digest.update(b"%d:" % len(data) + data)
    return digest.hexdigest()


def _read_json(path: Path, max_bytes: int) -> object:
    """The JSON value in ``path`` when it is a regular file of at most ``max_bytes`` (:func:`read_small_file`: a link
    is never followed, a FIFO never waited on); None where there is none, or it is not JSON (or nests past what the
    parser takes). Never raises. The cache records' one reader (fix38c)."""
    data = read_small_file(path, max_bytes)
    try:
        return json.loads(data) if data is not None else None
    except (ValueError, RecursionError):
        return None


def _named_strings(record: object, what: str, field: str) -> dict[str, str] | None:
    """The string -> string entries of ``record[field]`` when ``record`` is this tool's record ``what`` (a JSON
    object naming it, whose ``field`` is an object); else None."""
    if not isinstance(record, dict) or record.get("what") != what or not isinstance(record.get(field), dict):
        return None
    return {k: v for k, v in record[field].items() if isinstance(k, str) and isinstance(v, str)}


def _write_json(path: Path, body: dict, indent: int | None = None) -> None:
    """Replace ``path`` with ``body`` as JSON (keys sorted) and a newline, atomically with the umask's mode. Raises
    OSError. The cache records' one writer (fix38c)."""
    write_bytes_atomic(path, (json.dumps(body, indent=indent, sort_keys=True) + "\n").encode())


def _write_cache(home: DataHome, name: str, body: dict) -> None:
    """``cache/name`` replaced with ``body`` (:func:`_write_json`). A cache: a failed write is let go."""
    try:
        home.cache.mkdir(parents=True, exist_ok=True)
        _write_json(home.cache / name, body)
    except OSError:
        pass


LEDGER_VERSIONS_FILE = "split_ledger_versions.json"   # under cache/: the versions whose users the ledger holds


VERSION_KEYS_FILE = "split_version_keys.json"   # under cache/: the pseudonym key check each version was keyed under
VERSION_KEYS_WHAT = "pickapic splits: the pseudonym key check each published version was keyed under"


def read_version_keys(home: DataHome) -> dict[str, str]:
    """The pseudonym key check (:func:`pipelines.curation.pseudonym.key_check`) each published version's ``user_id``
    values were keyed under, as the splits build learned it (:func:`pipelines.splits.assign.version_keys`, fix37a):
    version name -> key check. Empty without a readable record of this tool's (a cache: a version not named keeps
    its erased accounts' key owner pins until it is deleted). Never raises."""
    return _named_strings(_read_json(home.cache / VERSION_KEYS_FILE, 1 << 20), VERSION_KEYS_WHAT, "keys") or {}


def write_version_keys(home: DataHome, keys: dict[str, str]) -> None:
    """Replace the record of each published version's key check with ``keys`` (atomically; a cache: a failed write
    only leaves the versions it would have named keeping their erased accounts' pins)."""
    _write_cache(home, VERSION_KEYS_FILE, {"what": VERSION_KEYS_WHAT, "keys": dict(sorted(keys.items()))})


def ledger_metadata(users: Iterable[str], covered: Iterable[str]) -> dict[bytes, bytes]:
    """The ledger's key-value metadata: the ``split_pairs`` digests ``covered`` (sorted) and its users' digest."""
    record = {"split_pairs_sha256": sorted(set(covered)), "users_sha256": users_digest(users)}
    return {LEDGER_KEY: json.dumps(record, sort_keys=True).encode()}


def record_ledger_versions(home: DataHome, ledger_file: Path, versions: Iterable[str]) -> None:
    """Keep the retained published ``versions`` whose users the ledger file just written holds, keyed by its
    sha256 (``cache/split_ledger_versions.json``). A cache: a failed write only costs one read of the sidecars."""
    try:
        digest = sha256_file(ledger_file)
    except OSError:
        return
    _write_cache(home, LEDGER_VERSIONS_FILE, {"ledger_sha256": digest, "versions": sorted(set(versions))})


def _ledger_versions(home: DataHome, ledger_file: Path) -> set[str]:
    """The versions recorded for the ledger file as it is now (its sha256); none for another ledger (one restored
    from an older copy, rebuilt, re-keyed) or without a readable record."""
    try:
        record = _read_json(home.cache / LEDGER_VERSIONS_FILE, 1 << 22)
        if not (isinstance(record, dict) and record.get("ledger_sha256") == sha256_file(ledger_file)):
            return set()
        versions = record.get("versions")
        return {v for v in versions if isinstance(v, str)} if isinstance(versions, list) else set()
    except Exception:   # noqa: BLE001 - a damaged or foreign record names nothing
        return set()


def ledger_record(home: DataHome, ledger_file: Path, users: Iterable[str]) -> tuple[set[str], set[str]]:
    """(the ``split_pairs`` digests, the published version names) the ledger file's record covers, when the
    record's users' digest is that of ``users`` (the users read from that file, every salt's); else none. The
    versions come from ``cache/split_ledger_versions.json`` when it names this very file (else none: every
    retained version is then read once, review rev24f). Never raises."""
    try:
        metadata = pq.read_schema(ledger_file).metadata or {}
        record = json.loads(metadata[LEDGER_KEY])
        if record["users_sha256"] != users_digest(users):
            return set(), set()
        digests = {d for d in record["split_pairs_sha256"] if isinstance(d, str) and _SHA256.fullmatch(d)}
        return digests, _ledger_versions(home, ledger_file)
    except Exception:   # noqa: BLE001 - whatever a damaged or foreign record raises, it covers nothing
        return set(), set()


def covered_split_pairs(ledger_file: Path, users: Iterable[str]) -> set[str]:
    """The ``split_pairs`` digests the ledger file's record covers (:func:`ledger_record`)."""
    return ledger_record(ledger_file, users)[0]


def latest_is_covered(home: DataHome, ledger_file: Path, users: Iterable[str]) -> tuple[str | None, str | None, bool]:
    """(``latest``'s name, the sha256 of the ``split_pairs`` it was published from or None, whether the ledger's
    record covers it: every user of ``latest`` is among ``users``, the ledger's)."""
    version, source = latest_source(home)
    if source is None:
        return version, None, False
    return version, source, source in covered_split_pairs(ledger_file, users)


def keys_digest(pins: pa.Table) -> str:
    """sha256 of the pinned keys of a ``split_key_owners`` table (salt, kind and key of every row, in the table's
    order: each column's value lengths, then its bytes): what the pins' record is checked against. Hashes the Arrow
    buffers, not Python strings (2.5 million keys in a fraction of a second)."""
    digest = hashlib.sha256(b"%d:" % pins.num_rows)
    for name in PINNED_COLUMNS:
        column = pins.column(name).combine_chunks() if pins.num_rows else pa.array([], pa.string())
        column = column.cast(pa.large_string())      # one offset width, whatever the file was read as
        digest.update(pc.binary_length(column).to_numpy(zero_copy_only=False).astype("<i8").tobytes())
        if len(column):
            offsets = np.frombuffer(column.buffers()[1], dtype="<i8")[column.offset:column.offset + len(column) + 1]
            digest.update(memoryview(column.buffers()[2])[int(offsets[0]):int(offsets[-1])])
    return digest.hexdigest()


def pins_metadata(pins: pa.Table, covered: Iterable[str], versions: Iterable[str] = (),
                  key_version: str | None = None, key_data: str | None = None) -> dict[bytes, bytes]:
    """The key owners' key-value metadata: the ``split_pairs`` digests ``covered`` and the published ``versions``
    whose keys are all pinned (both sorted), the keys' digest, the version of the prompt key function every
    salt's prompt pins were re-keyed to (``pipelines.splits.assign.KEY_VERSION``) and the versions of the Unicode /
    ICU data it was computed with (``key_data``: ``pipelines.splits.assign.key_data_version``)."""
    record = {"split_pairs_sha256": sorted(set(covered)), "versions": sorted(set(versions)),
              "keys_sha256": keys_digest(pins)}
    if key_version is not None:
        record["key_version"] = key_version
        if key_data is not None:
            record["key_data"] = key_data
    return {PINS_KEY: json.dumps(record, sort_keys=True).encode()}


def pins_record(pins_file: Path, pins: pa.Table) -> tuple[set[str], set[str], str | None, str | None]:
    """(the ``split_pairs`` digests, the published version names, the prompt key function's version, the versions of
    the Unicode / ICU data its keys were computed with) the key owners file's record names, when the record's keys
    digest is that of ``pins`` (the table read from that file); else none. A record written before the versions
    (or the key version, or the data versions) were recorded names none. Never raises."""
    key_version = key_data = None
    try:
        metadata = pq.read_schema(pins_file).metadata or {}
        record = json.loads(metadata[PINS_KEY])
        if record["keys_sha256"] != keys_digest(pins):
            return set(), set(), None, None
        key_version = record.get("key_version") if isinstance(record.get("key_version"), str) else None
        key_data = record.get("key_data") if isinstance(record.get("key_data"), str) else None
        digests = {d for d in record["split_pairs_sha256"] if isinstance(d, str) and _SHA256.fullmatch(d)}
        versions = record.get("versions", [])
        return (digests, {v for v in versions if isinstance(v, str)} if isinstance(versions, list) else set(),
                key_version, key_data)
    except Exception:   # noqa: BLE001 - whatever a damaged or foreign record raises, it covers nothing
        return set(), set(), key_version, key_data


def pins_cover(pins_file: Path, pins: pa.Table) -> set[str]:
    """The ``split_pairs`` digests the key owners file's record covers (:func:`pins_record`)."""
    return pins_record(pins_file, pins)[0]


# The salt each published version was built under (review rev24f): beside the versions' folder, as the records of
# switched versions and of the publish history are (``datasets/pickapic.salts``), outside every table the build
# writes, so a lost ledger, lost key owner pins or a deleted cache keep it.
SALTS_SUFFIX = "salts"
SALTS_MAX_BYTES = 1 << 20
SALTS_WHAT = "pickapic splits: the splits.salt each published version was built under"


def salts_file(home: DataHome) -> Path:
    """``datasets/pickapic.salts``: the salt each present published version was built under, as the splits build
    learned it (:func:`pipelines.splits.assign.version_salts`)."""
    return home.datasets.parent / f"{home.datasets.name}.{SALTS_SUFFIX}"


def read_version_salts(home: DataHome) -> dict[str, str] | None:
    """The record of the salt each published version was built under (version name -> ``splits.salt``): empty when
    there is none, None when something is at its path that this tool did not write (a link, which is never
    followed; a FIFO, a folder, a file too large or of other content). Never raises."""
    path = salts_file(home)
    record = _read_json(path, SALTS_MAX_BYTES)
    if record is None:
        return None if os.path.lexists(path) else {}
    return _named_strings(record, SALTS_WHAT, "salts")


def write_version_salts(home: DataHome, salts: dict[str, str]) -> str | None:
    """Replace the record of the salt each published version was built under with ``salts`` (atomically, with the
    umask's mode). Something at its path this tool did not write is left as it is. Returns why it was not written,
    or None."""
    path = salts_file(home)
    if read_version_salts(home) is None:
        return (f"{path} is not a record of the salts this tool wrote: left as it is, so which salt each published "
                "version was built under is learned anew by each build (remove it to let the splits build keep it)")
    try:
        _write_json(path, {"what": SALTS_WHAT, "salts": dict(sorted(salts.items()))}, indent=1)
    except OSError as exc:
        return f"the record of the salts {path} was not written ({exc})"
    return None
