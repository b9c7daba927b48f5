"""Stage 2, ingest: one raw day's gzipped JSON lines -> validated warehouse tables + quarantine.

- ``day``: ``ingest_day``, one day end to end (read, check references, build, write atomically) and the
  late-image refresh of earlier days.
- ``config``: the ingest's limits (``IngestConfig``) and the counts of a day (``IngestReport``).
- ``lines``: a raw file as bytes: bounded gzip streaming, numbered lines, the ``image_uid`` tap.
- ``parse``: the per-line rules (hostile input never crashes): a row or a reject with its reason.
- ``reader``: one raw file -> rows + quarantine rows, with the per-file rules (duplicates, key conflicts).
- ``references``: rankings and downloads must name an image some images export holds (late images included).
- ``uidindex``: the per-day cache of a raw images file's uids behind the reference check.
- ``builders``: Arrow tables of the accepted rows (prompt cleaning, typed columns).
- ``quarantine``: rows that fail, streamed to disk in bounded batches with a reason each.
- ``__main__``: the command line, ``python -m pipelines.ingest --home H [--day D ...]``.
"""
