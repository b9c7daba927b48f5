"""Stage 6, publish: WebDataset shards + Parquet sidecars, written as one atomic version.

- ``version``: ``publish_dataset``, the orchestration: stage, verify, check contracts, rename, switch ``latest``.
- ``config``: the stage's settings (``PublishConfig``) and what a publish did (``PublishReport``).
- ``samples``: the sample table, its splits, the version id and one task per planned shard.
- ``plan``: content-defined shard boundaries (a pure function of the data).
- ``shardphase``: resume committed shards, link unchanged ones, write the rest in a process pool.
- ``shards``: writing one shard's tar, sidecar and stats, byte-deterministically.
- ``reuse``: hard links (or copies) of unchanged shards and snapshots from older versions.
- ``meta``: the ``meta/`` snapshots of the query tables.
- ``manifest``: ``manifest.json`` and its verification.
- ``versions``: the atomic ``latest`` switch, retention, the publish lock, fsyncs.
- ``jpgdigests``, ``datacard``, ``openclip``: sha256 of training JPEGs, the dataset card, OpenCLIP's CSV view.
- ``__main__``: the command line, ``python -m pipelines.publish --home H [flags]``.

The format itself (names, globs, ``latest``) lives in :mod:`formats.dataset`.
"""
