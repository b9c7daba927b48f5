"""The blob store: URLs under the blob base (a local folder or a bucket), training-JPEG keys, atomic blob writes."""
from __future__ import annotations

import uuid

# First: it imports apache_beam quietly (no apitools notice, no root log handler left behind).
from pipelines.features import beamworker  # noqa: F401  # isort: skip

from apache_beam.io.filesystem import BeamIOError, CompressionTypes
from apache_beam.io.filesystems import FileSystems

from formats.files import is_url


def join_url(base: str, relpath: str) -> str:
    """``base`` + ``/`` + ``relpath`` for local paths and ``scheme://`` URLs alike."""
    return base.rstrip("/") + "/" + relpath


def is_local(base: str) -> bool:
    """True for a local path (no ``scheme://`` at its start)."""
    return not is_url(base)


def train_jpg_key(prefix: str, sha256: str) -> str:
    """Content-addressed key of a training JPEG, relative to the home."""
    return f"{prefix}/{sha256[:2]}/{sha256}.jpg"


def write_blob_atomic(base: str, key: str, data: bytes) -> None:
    """Write ``data`` at ``base/key`` through Beam's ``FileSystems`` unless a non-empty file is already there.

    Readers never see a partial file: a local file is written under a unique temporary name in the same
    folder and renamed into place (with the umask's permissions); an object store makes an object
    visible only when its upload completes.
    """
    url = join_url(base, key)
    filesystem = FileSystems.get_filesystem(url)   # one plugin lookup per write, not one per call below
    try:   # metadata of one path; FileSystems.match would compile a glob per image (~2 ms)
        if filesystem.metadata(url).size_in_bytes > 0:
            return
    except BeamIOError:
        pass   # not there yet
    if not is_local(base):
        with filesystem.create(url, mime_type="image/jpeg", compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            handle.write(data)
        return
    folder, name = url.rsplit("/", 1)
    temporary = f"{folder}/.{name}.{uuid.uuid4().hex}.tmp"
    try:
        with filesystem.create(temporary, mime_type="image/jpeg", compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            handle.write(data)
        filesystem.rename([temporary], [url])
    except BaseException:
        if filesystem.exists(temporary):
            filesystem.delete([temporary])
        raise
