"""The simulator playing the app: simulated days go into the app's tables, blobs into a storage folder.

``AppDatabaseSink`` is what ``pickapic simulate --to-postgres DSN --image-store DIR`` writes through
instead of the raw zone's files: it creates the schema (``sql/app_db/schema.sql``) in a database whose
app tables do not exist yet or are empty, loads each day's rows with ``COPY ... FROM STDIN`` (the
simulator's own JSON lines, parsed back, so the database holds exactly what the files would), moves
the id sequences past the loaded ids (so rows the app adds later get fresh ids) and commits once at
the end: an interrupted simulation leaves the database as it was.
"""
from __future__ import annotations

import json
from pathlib import Path

import psycopg

from pipelines.appdb.connection import connect, database_error, server_name
from pipelines.appdb.tables import statement
from schemas import get_schema
from schemas.raw import RAW_TABLES

SERIAL_IDS = {"images": "image_id", "rankings": "ranking_id", "downloads": "download_id"}


class AppDatabaseSink:
    """Writes simulated days into the app's schema and blobs into ``image_store``."""

    def __init__(self, dsn: str, image_store: str | Path | None, source: str = "--to-postgres"):
        self.dsn, self.source = dsn, source
        self.name = server_name(dsn, source)
        self.image_root = Path(image_store) if image_store else None
        self.conn = connect(dsn, source=source, read_only=False)
        self.rows = {table: 0 for table in RAW_TABLES}
        try:
            self._prepare()
        except BaseException:
            self.conn.close()
            raise

    def _prepare(self) -> None:
        try:
            present = [t for t in RAW_TABLES if self.conn.execute("SELECT to_regclass(%s)", (t,)).fetchone()[0]]
            if present and len(present) != len(RAW_TABLES):
                raise ValueError(f"the app {self.name} has only some of the app tables ({', '.join(present)}); "
                                 "use a database with all four or none")
            if not present:
                self.conn.execute(statement("schema"))
            for table in RAW_TABLES:
                (count,) = self.conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()
                if count:
                    raise ValueError(f"table {table!r} of the app {self.name} already holds {count} rows; "
                                     "simulate into an empty database (nothing was written)")
        except psycopg.Error as exc:
            raise database_error(exc, self.dsn, self.name, "preparing the app schema") from None

    def write_table(self, day: str, table: str, lines: list[str]) -> None:
        """Load one day's lines of ``table`` (each a well-formed JSON object of the raw schema)."""
        columns = get_schema(f"raw_{table}").names
        try:
            with self.conn.cursor().copy(f'COPY "{table}" ({", ".join(columns)}) FROM STDIN') as copy:
                for number, line in enumerate(lines, 1):
                    try:
                        row = json.loads(line)
                        copy.write_row([row[c] for c in columns])
                    except (ValueError, KeyError, TypeError) as exc:
                        raise ValueError(f"{table} line {number} of {day} cannot go into a typed table ({exc}); "
                                         "the simulator must run with export_defects off") from None
        except psycopg.Error as exc:
            raise database_error(exc, self.dsn, self.name, f"loading {table} of {day}") from None
        self.rows[table] += len(lines)

    def finish(self) -> None:
        """Move the id sequences past the loaded rows, commit and close."""
        try:
            for table, column in SERIAL_IDS.items():
                self.conn.execute(f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'), "
                                  f"greatest((SELECT max({column}) FROM \"{table}\"), 1))")
            self.conn.commit()
        except psycopg.Error as exc:
            raise database_error(exc, self.dsn, self.name, "committing the simulated history") from None
        finally:
            self.conn.close()

    def abort(self) -> None:
        """Roll back everything written and close."""
        try:
            self.conn.rollback()
        finally:
            self.conn.close()
