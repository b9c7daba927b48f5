"""Stage 7, reading a published version: ``engine`` (the read-only DuckDB connection over one version, its
limits and the ``pickapic query`` command), ``guard`` (one SELECT, nothing that writes), ``output``
(table, CSV, JSON lines, Parquet, batch by batch) and ``export`` (PickScore Parquet, eval prompts)."""
