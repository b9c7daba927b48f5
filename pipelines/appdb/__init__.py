"""The app's own PostgreSQL database as a source: export a day into the raw zone.

- ``connection``: connect with the export's session settings; errors name host, port and database,
  never the password.
- ``tables``: the four tables' expected columns and type families (from ``schemas.raw``), checked
  before anything is read; ``sql/app_db/*.sql`` statements with ``$parameters``.
- ``export``: one day -> ``raw/app_logs/dt=DAY/*.jsonl.gz`` through ``formats.rawlines``, streamed
  (a server-side cursor of binary rows), staged and published only when complete; unchanged files
  are left untouched.
- ``blobs``: the day's image blobs from the app's storage (a folder or a Beam ``FileSystems`` URL)
  into ``raw/images/``.

(The simulator's sink that loads simulated days into the app's tables is ``simulator.appdb_sink``.)

Command line: ``python -m pipelines.appdb --home DIR --day YYYY-MM-DD`` (DSN from ``$PICKAPIC_APP_DB_DSN``).
"""
