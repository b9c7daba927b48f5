"""Stage 5, publish: WebDataset shards + Parquet sidecars, written as one atomic version.

- ``plan``: content-defined shard boundaries (a pure function of the data).
- ``shards``: writing one shard's tar, sidecar and stats, byte-deterministically.
- ``version``: the version (reuse of unchanged shards, manifest, ``latest`` switch, retention).
- ``jpgdigests``, ``datacard``, ``openclip``: sha256 of training JPEGs, the dataset card, OpenCLIP's CSV view.

The format itself (names, globs, ``latest``) lives in :mod:`formats.dataset`.
"""
