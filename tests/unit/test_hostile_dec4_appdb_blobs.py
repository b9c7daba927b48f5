"""Hostile review of December 4, 2026: blobs compared byte for byte with a URL store (``blobs._matches_copy``).

Reproduced a defect of that day's code, fixed the same day.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from apache_beam.io.localfilesystem import LocalFileSystem

from pipelines.appdb import blobs


class _VanishingStore(LocalFileSystem):
    """Beam's local file system behind a URL scheme (as ``s3://`` / ``gs://`` are reached), whose object is
    deleted by the app right after the export sized it (the app's storage deletes or rewrites objects)."""

    PREFIX = "pickapic-vanishing-store://"

    @classmethod
    def scheme(cls) -> str:
        return cls.PREFIX.split(":")[0]

    def match(self, patterns, limits=None):
        found = super().match([p.removeprefix(self.PREFIX) for p in patterns], limits)
        for pattern in patterns:
            Path(pattern.removeprefix(self.PREFIX)).unlink(missing_ok=True)
        return found

    def open(self, path, *args, **kwargs):
        return super().open(path.removeprefix(self.PREFIX), *args, **kwargs)


def test_an_object_deleted_after_sizing_is_counted_not_a_crash(tmp_path):
    """Before the byte comparison a present copy of the same size never opened the object; now it does, and a
    URL store's object deleted in between raises out of ``_copy_one`` (through ``pool.map``, the whole
    ``copy_day_blobs`` and the day's export) instead of being counted like the local store's 'missing'."""
    store, images = tmp_path / "store", tmp_path / "images"
    store.mkdir()
    images.mkdir()
    uid = "0b6c3c40-6b0f-4c5e-9a7e-3d8a3b1e2f10"
    (store / f"{uid}.png").write_bytes(b"png bytes" * 100)
    (images / f"{uid}.png").write_bytes(b"png bytes" * 100)        # copied by an earlier export
    assert blobs._copy_one(str(store), uid, images) == "present"    # the local branch
    assert blobs._copy_one(_VanishingStore.PREFIX + str(store), uid, images) in ("missing", "present")
    assert (images / f"{uid}.png").read_bytes() == b"png bytes" * 100


def test_an_object_deleted_before_its_first_copy_is_counted_and_leaves_no_file(tmp_path):
    """The copy branch had the same race: an object gone between its sizing and its read is 'missing', and no
    partial or temporary file is left in the raw zone."""
    store, images = tmp_path / "store", tmp_path / "images"
    store.mkdir()
    images.mkdir()
    uid = "0b6c3c40-6b0f-4c5e-9a7e-3d8a3b1e2f11"
    (store / f"{uid}.png").write_bytes(b"png bytes" * 100)
    assert blobs._copy_one(_VanishingStore.PREFIX + str(store), uid, images) == "missing"
    assert list(images.iterdir()) == []


def test_a_read_error_of_an_object_still_there_is_raised(tmp_path, monkeypatch):
    """Only a vanished object is counted: any other failure of the store (the object still exists) is raised."""
    store, images = tmp_path / "store", tmp_path / "images"
    store.mkdir()
    images.mkdir()
    uid = "0b6c3c40-6b0f-4c5e-9a7e-3d8a3b1e2f12"
    (store / f"{uid}.png").write_bytes(b"png bytes" * 100)

    class _BrokenStore(_VanishingStore):
        PREFIX = "pickapic-broken-store://"

        def match(self, patterns, limits=None):
            return LocalFileSystem.match(self, [p.removeprefix(self.PREFIX) for p in patterns], limits)

        def exists(self, path):
            return LocalFileSystem.exists(self, path.removeprefix(self.PREFIX))

        def open(self, path, *args, **kwargs):
            raise OSError("connection reset by the store")

    with pytest.raises(OSError, match="connection reset"):
        blobs._copy_one(_BrokenStore.PREFIX + str(store), uid, images)
    assert list(images.iterdir()) == []


class _PlainStore(_VanishingStore):
    """Beam's local file system behind a URL scheme, objects left alone."""

    PREFIX = "pickapic-plain-store://"

    def match(self, patterns, limits=None):
        return LocalFileSystem.match(self, [p.removeprefix(self.PREFIX) for p in patterns], limits)

    def exists(self, path):
        return LocalFileSystem.exists(self, path.removeprefix(self.PREFIX))


@pytest.mark.parametrize("url", [False, True])
def test_an_object_over_max_bytes_is_copied_only_up_to_the_cap(tmp_path, url):
    """No stage reads past features.max_bytes (the feature stage rejects a larger blob as file_too_large), so
    the copy stops one byte past it: the same rejection, and the raw zone does not grow with the object. A
    re-export compares the capped copy with the object's start (nothing to warn about unless that changed)."""
    from pipelines.features.config import FeaturesConfig
    from pipelines.features.decode import FILE_TOO_LARGE, ImageRejected, read_capped

    assert blobs.DEFAULT_MAX_BYTES == FeaturesConfig().max_bytes
    store, images = tmp_path / "store", tmp_path / "images"
    store.mkdir()
    images.mkdir()
    where = _PlainStore.PREFIX + str(store) if url else str(store)
    big, exact = "0b6c3c40-6b0f-4c5e-9a7e-3d8a3b1e2f20", "0b6c3c40-6b0f-4c5e-9a7e-3d8a3b1e2f21"
    data = bytes(range(256)) * 40                   # 10,240 bytes
    (store / f"{big}.png").write_bytes(data)
    (store / f"{exact}.png").write_bytes(data[:1000])
    assert blobs._copy_one(where, big, images, 1000) == "too_large"
    assert blobs._copy_one(where, exact, images, 1000) == "copied"
    assert (images / f"{big}.png").read_bytes() == data[:1001]
    assert (images / f"{exact}.png").read_bytes() == data[:1000]
    with open(images / f"{big}.png", "rb") as handle, pytest.raises(ImageRejected) as rejected:
        read_capped(handle, f"raw/images/{big}.png", 1000)
    assert rejected.value.reason == FILE_TOO_LARGE
    assert blobs._copy_one(where, big, images, 1000) == "present"          # re-export: the copy is its start
    (store / f"{big}.png").write_bytes(data[:5000] + b"changed past the cap")
    assert blobs._copy_one(where, big, images, 1000) == "present"
    (store / f"{big}.png").write_bytes(b"X" + data[1:])                     # changed inside the copy
    assert blobs._copy_one(where, big, images, 1000) == "differs_in_store"
    assert (images / f"{big}.png").read_bytes() == data[:1001]               # frozen
