"""Stage 1, ingest: one raw day's gzipped JSON lines -> validated warehouse tables + quarantine.

- ``parse``: bounded line reading and field parsing of the raw files (hostile input never crashes).
- ``quarantine``: rows that fail, streamed to disk in bounded batches with a reason each.
- ``day``: one day end to end (tables, references, late images, reconciliation) and its CLI.
"""
