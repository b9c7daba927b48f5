"""The shapes of data on disk, shared by every writer and reader: the bottom layer.

- ``home``: a data home's folders (``DataHome``).
- ``rawzone`` / ``rawlines``: the raw zone's day folders and its JSON lines (written by the app export
  and the simulator, read by ingest).
- ``dataset``: the published WebDataset format (splits, shard names, ``sizes.json``, ``latest``).
- ``files``: atomic writes with umask modes, sha256, Parquet options, full-disk messages.
- ``outputs``: checks on paths a user names as outputs (never a device, link or a data home's file).
- ``settings``: ``knob()`` fields and the home's settings file ``pickapic.toml`` (flags, validation).
- ``progress``: the one progress callback signature.
- ``trees``: removing a folder tree whatever its depth (no recursion, relative to open folders).

The bottom layer: everything may import it, and it imports no other package of this project. One
deliberate exception, by name only: ``settings.SECTIONS`` names each stage's config class as a
``"module:Class"`` string, imported when that section is read (a registry, like entry points), and
those modules import no Dagster (``tests/unit/test_layering.py`` checks both).
"""
