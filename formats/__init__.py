"""The shapes of data on disk, shared by every writer and reader: the bottom layer.

- ``home``: a data home's folders (``DataHome``).
- ``rawzone`` / ``rawlines``: the raw zone's day folders and its JSON lines (written by the app export
  and the simulator, read by ingest).
- ``dataset``: the published WebDataset format (splits, shard names, ``sizes.json``, ``latest``).
- ``files``: atomic writes with umask modes, sha256, Parquet options, full-disk messages.
- ``outputs``: checks on paths a user names as outputs (never a device, link or a data home's file).

Imports nothing of this project but ``schemas``; everything else may import it.
"""
