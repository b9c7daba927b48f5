"""``pickapic query``: read-only DuckDB over one published version.

Views (all over the chosen version only; ``latest`` is resolved once, at start):

- ``pairs``: every sidecar (one row per sample: key, shard, member offsets, every pair column,
  ``split``) with its ``num_example_per_prompt`` from ``<split>/prompt_counts.parquet``, ``shards``: one row per
  tar shard, ``images``: per-image features (no personal data), ``decisions``: keep/drop decisions,
  ``quarantine``: rejected raw lines (no raw text), ``splits_summary``: one row per split. Each reads exactly the
  files the version's ``manifest.json`` lists (:func:`_listed_tables`; a stray file in its folders is never read),
  with ``hive_partitioning = false`` (no column from a folder's name).

The connection can read only the version's own directory (``allowed_directories`` +
``enable_external_access = false`` + ``lock_configuration``; the views read it through a private alias
without glob characters, the one folder allowed: :func:`_prepare`) and only ``SELECT`` statements
(``DESCRIBE``, ``SUMMARIZE``, ``FROM ...`` included) and ``EXPLAIN [ANALYZE]`` of a ``SELECT`` run
(``EXPLAIN ANALYZE`` executes what it explains), and the parsed tree of the statement may hold only
SELECT nodes (DuckDB runs ``WITH x AS (COPY ... TO 'f') SELECT ...`` although it calls it a SELECT),
so a query can neither write files nor read anything else. DuckDB's spill folder is a private
temporary folder made for the query (by default DuckDB uses ``.tmp`` in the working directory and lets
queries read it). Every query runs under a time limit, a memory limit and a spill limit
(:class:`QueryLimits`), and results stream: a table shows the first 1,000 rows and counts the rest,
other formats write batch by batch. ``--output`` must be a new path or a regular file outside every
data home (see :func:`formats.outputs.open_output_file`).

Plain DuckDB, no pipeline installed (``latest`` resolved first, ``V=$(readlink -f HOME/datasets/pickapic/latest)``;
``hive_partitioning = false``: DuckDB would otherwise read a folder named ``split=...`` or ``dt=...`` above the
version as every sample's split or day, review rev32b)::

    SELECT split, count(*) FROM read_parquet('$V/*/pickapic-*.parquet', hive_partitioning = false) GROUP BY split;
"""
from __future__ import annotations

import argparse
import contextlib
import fnmatch
import glob
import math
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Iterator, Mapping, TextIO

import duckdb
import pyarrow as pa

from formats.dataset import MANIFEST_FILE, PROMPT_COUNTS_FILE, SHARD_PREFIX, VersionBusy, read_manifest, reading_version
from formats.duck import NO_HIVE
from formats.home import DataHome
from formats.outputs import check_output_file, open_output_file
from pipelines.query.duck_types import projection, text_columns
from pipelines.query.guard import check_read_only
from pipelines.query.output import FORMATS, TextSink, silence_closed_pipe, write_result
from pipelines.sqlrun import sql_text

META_VIEWS = ("shards", "images", "decisions", "quarantine", "splits_summary")
BATCH_ROWS = 65_536
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)$", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
          "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4}
MIN_MEMORY = 16 * 1000**2       # below it DuckDB may fail to even open the version's views
MAX_SIZE = 1024**5              # 1 PiB: far beyond any machine, well inside what DuckDB can parse


class QueryFailed(RuntimeError):
    """A query that DuckDB could not finish (error, time limit, memory limit); the message says which."""


@dataclass(frozen=True)
class QueryLimits:
    """What one query may use: wall time, DuckDB memory, and DuckDB spill space in its private temp folder."""

    timeout_s: float = 300.0        # 0: no time limit
    memory_limit: str = "2GB"
    spill_limit: str = "4GB"
    cap_process: bool = False       # also cap this process's data segment (cap_process_memory): `pickapic query` only

    def validate(self) -> "QueryLimits":
        """Raise ValueError naming the flag of a bad limit."""
        if not 0 <= self.timeout_s <= threading.TIMEOUT_MAX:   # NaN and inf too: a timer cannot wait that long
            raise ValueError(f"--timeout must be between 0 and {threading.TIMEOUT_MAX:.0f} seconds (0: none), "
                             f"got {self.timeout_s}")
        for flag, value, least in (("--memory-limit", self.memory_limit, MIN_MEMORY),
                                   ("--spill-limit", self.spill_limit, 0)):
            size = _size_bytes(value)
            if size is None:
                raise ValueError(f"{flag} must be a size such as 512MB or 4GB, got {value!r}")
            if not least <= size <= MAX_SIZE:
                raise ValueError(f"{flag} must be between {least // 1000**2}MB and 1024TiB, got {value!r}")
        return self

    def memory_bytes(self) -> int:
        """``memory_limit`` in bytes (after :meth:`validate`)."""
        return int(_size_bytes(self.memory_limit))


def _size_bytes(value: object) -> float | None:
    """A size such as ``512MB`` or ``4GiB`` in bytes, or None when it is not one."""
    match = _SIZE.match(str(value).strip())
    return float(match.group(1)) * _UNITS[match.group(2).lower()] if match else None


PROCESS_HEADROOM = 512 * 1024**2   # the interpreter's own growth, result batches, the printed table
THREAD_HEADROOM = 16 * 1024**2     # per thread: its 8 MiB stack (counted as data) and its allocator's first arena


@contextlib.contextmanager
def process_memory_cap(limits: QueryLimits, threads: int) -> Iterator[int | None]:
    """:func:`cap_process_memory` for the ``with`` block, then the process's own soft limit put back (the hard limit
    is never changed): a process that goes on after its query (a test runner calling the CLI) keeps no cap."""
    import resource

    soft = resource.getrlimit(resource.RLIMIT_DATA)[0]
    try:
        yield cap_process_memory(limits, threads)
    finally:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_DATA, (soft, resource.getrlimit(resource.RLIMIT_DATA)[1]))


def cap_process_memory(limits: QueryLimits, threads: int = 1) -> int | None:
    """Cap this process's data segment (Linux ``RLIMIT_DATA``: its heap and private writable mappings, what every
    allocation DuckDB or Python makes draws on) at what it holds now + ``--memory-limit`` + PROCESS_HEADROOM +
    THREAD_HEADROOM for each of DuckDB's ``threads`` and 8 more (the deadline timer, Python's own), and return the
    cap; None where there is no ``/proc`` to read it from. (A 64-core machine's 64 DuckDB threads have 512 MiB of
    stacks: without their share a spilling GROUP BY failed there.) DuckDB's own limit bounds its buffer manager
    only: a huge string or list (``repeat('x', 10^9)``) is allocated outside it. Under the cap such an allocation
    fails at once, and DuckDB reports an Out of Memory error for the query instead of the machine running out.
    A lower limit already set (``ulimit -d``) is kept. It stays until it is put back: use :func:`process_memory_cap`."""
    import resource

    try:
        with open("/proc/self/status", encoding="ascii") as status:
            data_kb = next(int(line.split()[1]) for line in status if line.startswith("VmData:"))
    except (OSError, StopIteration, ValueError, IndexError):
        return None
    cap = data_kb * 1024 + limits.memory_bytes() + PROCESS_HEADROOM + (max(threads, 1) + 8) * THREAD_HEADROOM
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if soft != resource.RLIM_INFINITY and soft <= cap:
        return soft
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (cap, hard))
    return cap


ACTIVE: set = set()   # this process's open query connections (a SIGTERM interrupts them: dagster_project.cli)
STOP = threading.Event()   # set on SIGTERM: every query of this process ends at its next batch


def interrupt_active() -> None:
    """Stop every query of this process: interrupt the running ones, and make the next batch any of them
    asks for raise KeyboardInterrupt (DuckDB may swallow an exception a signal handler raised while it
    planned, so the handler's own exception is not enough). Thread-safe."""
    STOP.set()
    for con in list(ACTIVE):
        with contextlib.suppress(Exception):
            con.interrupt()


@contextlib.contextmanager
def connect(home: DataHome, version: str | None = None,
            limits: QueryLimits | None = None) -> Iterator[tuple[duckdb.DuckDBPyConnection, Path]]:
    """An in-memory, read-only DuckDB connection with the version's views and limits, and the version path.

    Where another process holds the version exclusively (another tool's ``flock`` without ``-s``), it waits for
    it at most ``limits.timeout_s`` (0: without bound), then QueryFailed naming ``--timeout`` (review rev27a: the
    wait came before the time limit started, unbounded)."""
    limits = (limits or QueryLimits()).validate()
    # the version is held for reading (the publish's retention keeps it) for as long as the connection is open
    with contextlib.ExitStack() as stack:
        try:
            path = stack.enter_context(reading_version(home, version, limits.timeout_s or None))
        except VersionBusy as exc:
            raise _time_limit(limits.timeout_s, f" while it waited to read the version: {exc}") from None
        con = stack.enter_context(_connect(path, limits))
        yield con, path


@contextlib.contextmanager
def _connect(path: Path, limits: QueryLimits) -> Iterator[duckdb.DuckDBPyConnection]:
    # DuckDB's default spill folder is `.tmp` in the working directory, and it adds it to the readable
    # allowed_directories: a private folder instead keeps `read_text('.tmp/...')` refused everywhere. The same
    # private folder holds the version's alias (see _prepare).
    private = _private_folder()
    con = duckdb.connect(":memory:", config={
        "autoinstall_known_extensions": False,
        "autoload_known_extensions": False,
    })
    ACTIVE.add(con)
    try:
        spill, alias = os.path.join(private, "spill"), os.path.join(private, "version")
        os.mkdir(spill, 0o700)
        os.symlink(path, alias)
        try:
            _prepare(con, Path(alias), spill, limits)
        except duckdb.Error as exc:   # a limit DuckDB rejects, too little memory to open the views
            raise QueryFailed(f"the version could not be opened for queries: {str(exc).splitlines()[0]} "
                              f"(limits: --memory-limit {limits.memory_limit}, --spill-limit {limits.spill_limit})"
                              ) from None
        yield con
    finally:
        ACTIVE.discard(con)
        con.close()
        shutil.rmtree(private, ignore_errors=True)


def _glob_special(path: str) -> bool:
    """True where DuckDB's glob would not read ``path`` as itself: it holds ``*``, ``?``, ``[`` or a backslash
    (DuckDB finds no file below a folder whose name holds one, escaped or not: review rev27a)."""
    return glob.has_magic(path) or "\\" in path


def _private_folder() -> str:
    """A new private (0700) temporary folder whose path holds no glob character (``*``, ``?``, ``[``) and no
    backslash (:func:`_glob_special`): the views' globs start with it, and a glob character there would need
    escaping, which DuckDB then compares with ``allowed_directories`` as text (review rev24j). Under ``$TMPDIR``,
    or ``/tmp`` where that path has one."""
    folder = tempfile.mkdtemp(prefix="pickapic-query-")
    if not _glob_special(folder):
        return folder
    os.rmdir(folder)
    folder = tempfile.mkdtemp(prefix="pickapic-query-", dir="/tmp")
    if _glob_special(folder):
        os.rmdir(folder)
        raise QueryFailed(f"no temporary folder without a glob character (* ? [ \\) in its path: {folder}; "
                          f"set TMPDIR to one")
    return folder


def _prepare(con: duckdb.DuckDBPyConnection, alias: Path, spill: str, limits: QueryLimits) -> None:
    """Set the limits and the private spill folder, create the views, then lock the connection down.

    ``alias`` is a symbolic link to the version in a private temporary folder (:func:`_private_folder`):
    its path has no glob character, so the views' globs need no escaping, and it is the one folder in
    ``allowed_directories``, which DuckDB resolves to the version's real folder and compares every file's
    resolved path with. Review rev24j: the version's glob-escaped path (``/x/h[[]1]/...`` for a home at
    ``/x/h[1]``) was allowed too, and DuckDB compares that as text and reads a path that exists literally
    as that name: a folder literally named ``h[[]1]`` beside the home was readable."""
    spill_sql = spill.replace("'", "''")   # a temp path: quoted like any other path put into SQL
    con.execute(f"SET temp_directory = '{spill_sql}'")
    con.execute(f"SET memory_limit = '{limits.memory_limit.strip()}'")
    con.execute(f"SET max_temp_directory_size = '{limits.spill_limit.strip()}'")
    con.execute("SET enable_progress_bar = false")  # it would print into csv/json on stdout
    root = _sql_text(str(alias))
    listed = _listed_tables(alias)
    sidecars, counts = _files_sql(alias, listed["pairs"]), _files_sql(alias, listed[PROMPT_COUNTS_FILE])
    if listed[PROMPT_COUNTS_FILE]:   # the loss weight's count lives outside the shards
        con.execute(f"CREATE VIEW pairs AS SELECT p.*, c.num_example_per_prompt "
                    f"FROM read_parquet({sidecars}, {NO_HIVE}) AS p "
                    f"LEFT JOIN read_parquet({counts}, {NO_HIVE}) AS c "
                    f"ON p.split = c.split AND p.prompt_key = c.prompt_key")
    else:
        con.execute(f"CREATE VIEW pairs AS SELECT * FROM read_parquet({sidecars}, {NO_HIVE})")
    for name in META_VIEWS:   # a table is one file, or a folder of per-day files (meta/images/)
        con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet({_files_sql(alias, listed[name])}, {NO_HIVE})")
    con.execute(f"SET allowed_directories = ['{root}/']")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")


def _listed_tables(version: Path) -> dict[str, list[str]]:
    """The files of each view the version's manifest lists (its ``files``, relative paths), never a glob of its
    folders: ``pairs``: every ``<split>/pickapic-*.parquet``; ``prompt_counts.parquet``: every
    ``<split>/prompt_counts.parquet``; each of :data:`META_VIEWS`: ``meta/<name>.parquet`` or
    ``meta/<name>/*.parquet``. Review rev32b: the views globbed the folders, so a copy of a sidecar left in a
    split's folder (a file manager's ``... (copy).parquet``, a group member's file) doubled its pairs in every
    query, where the export, the trainer and ``splits_summary`` count the manifest's. A listed name that is not
    one the publish writes (a ``..``, a glob character, a backslash) is refused (:class:`QueryFailed`); a view
    with no file listed too (a version without sidecars or one of its ``meta`` tables is no complete version)."""
    try:
        files = read_manifest(version)["files"]
    except (OSError, ValueError) as exc:
        raise QueryFailed(f"the version could not be opened for queries: {exc}") from None
    tables: dict[str, list[str]] = {"pairs": [], PROMPT_COUNTS_FILE: [], **{name: [] for name in META_VIEWS}}
    for rel in sorted(files):
        parts = rel.split("/")
        if len(parts) == 2 and parts[0] != "meta" and fnmatch.fnmatchcase(parts[1], f"{SHARD_PREFIX}*.parquet"):
            table = "pairs"
        elif len(parts) == 2 and parts[0] != "meta" and parts[1] == PROMPT_COUNTS_FILE:
            table = PROMPT_COUNTS_FILE
        elif len(parts) == 2 and parts[0] == "meta" and parts[1].removesuffix(".parquet") in META_VIEWS \
                and parts[1].endswith(".parquet"):
            table = parts[1].removesuffix(".parquet")
        elif len(parts) == 3 and parts[0] == "meta" and parts[1] in META_VIEWS and parts[2].endswith(".parquet"):
            table = parts[1]
        else:
            continue
        if any(part in ("", ".", "..") or _glob_special(part) for part in parts):
            raise QueryFailed(f"the {MANIFEST_FILE} of version {version.resolve().name} lists {rel!r}, not a name "
                              f"the publish writes: the version cannot be queried (republish it)")
        tables[table].append(rel)
    for table in ("pairs", *META_VIEWS):
        if not tables[table]:
            shown = "no sidecar (<split>/pickapic-*.parquet)" if table == "pairs" else f"no file of meta/{table}"
            raise QueryFailed(f"the {MANIFEST_FILE} of version {version.resolve().name} lists {shown}: not a "
                              f"complete version, it cannot be queried")
    return tables


def _files_sql(alias: Path, rels: list[str]) -> str:
    """A DuckDB list of the files ``rels`` under ``alias``, each a quoted literal (no glob character: checked)."""
    return "[" + ", ".join(f"'{_sql_text(str(alias / rel))}'" for rel in rels) + "]"


def _sql_text(text: str) -> str:
    """``text`` for a single-quoted SQL string literal."""
    return text.replace("'", "''")


def named_queries() -> dict[str, str]:
    """Named query -> its one-line description (first header comment line of ``sql/queries/<name>.sql``)."""
    out = {}
    folder = resources.files("sql").joinpath("queries")
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".sql"):
            first = entry.read_text(encoding="utf-8").splitlines()[0]
            out[entry.name[: -len(".sql")]] = first.lstrip("- ").strip()
    return out


def _time_limit(seconds: float, during: str = "") -> QueryFailed:
    """The error of a query stopped at its time limit (``during``: where it was)."""
    return QueryFailed(f"the query was stopped at the time limit of {seconds:g} s{during} "
                       "(--timeout SECONDS raises it; 0 means none)")


class _Deadline:
    """Interrupts the connection's running query once ``seconds`` have passed since ``started`` (a
    ``time.monotonic()``; default now), at once where they have already; never for 0 seconds."""

    def __init__(self, con: duckdb.DuckDBPyConnection, seconds: float, started: float | None = None) -> None:
        self.seconds, self.fired = seconds, False
        self._con = con
        left = seconds - (time.monotonic() - started) if started is not None else seconds
        self._timer = threading.Timer(max(left, 0.0), self._fire) if seconds > 0 else None

    def _fire(self) -> None:
        self.fired = True
        # and again every 0.1 s until the block ends: an interrupt before DuckDB began the query (a limit spent
        # waiting for the version's lock) would be lost
        while True:
            with contextlib.suppress(Exception):
                self._con.interrupt()
            if self._timer is None or self._timer.finished.wait(0.1):
                return

    def __enter__(self) -> "_Deadline":
        if self._timer is not None:
            self._timer.daemon = True
            self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def failure(self, exc: BaseException, limits: QueryLimits) -> QueryFailed:
        """The error to report for ``exc``, naming the limit that stopped the query."""
        if self.fired:
            return _time_limit(self.seconds)
        message = str(exc)
        if isinstance(exc, duckdb.OutOfMemoryException) or "Out of Memory" in message:
            message = (message.split("\n")[0] + f" (limits: --memory-limit {limits.memory_limit}, "
                       f"--spill-limit {limits.spill_limit})")
        return QueryFailed(message)


@contextlib.contextmanager
def _ctrl_c_interrupts(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """While the query runs in the main thread under Python's own Ctrl-C handler: a Ctrl-C (SIGINT) also interrupts
    the connection, as SIGTERM's handler does (:func:`interrupt_active`). DuckDB noticed Python's bare
    KeyboardInterrupt only now and then while it computed a result with no row yet: the query went on to its time
    limit (review rev34e, by hand). Python's handler is put back when the query ends; any other is left alone."""
    if threading.current_thread() is not threading.main_thread() \
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return

    def handler(signum: int, frame: object) -> None:
        with contextlib.suppress(Exception):
            con.interrupt()
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        if signal.getsignal(signal.SIGINT) is handler:
            signal.signal(signal.SIGINT, signal.default_int_handler)


def _stop_if_signalled(exc: BaseException) -> None:
    """Raise KeyboardInterrupt where ``exc`` is how DuckDB ended a query that a signal stopped: a SIGTERM / SIGHUP
    (:func:`interrupt_active` ran: its interrupt, or the handler's exception DuckDB swallowed) or a Ctrl-C, which
    DuckDB reports as ``RuntimeError('Query interrupted')`` when the signal came while it computed, before the
    result's first row (an aggregate: review rev34e, a traceback and exit 1). The command then ends as for
    Ctrl-C ("interrupted", or "terminated" for SIGTERM), its temporary files removed. A time limit's interrupt
    comes from another thread as a ``duckdb.InterruptException`` and is not one of these."""
    if STOP.is_set() or (type(exc) is RuntimeError and str(exc).strip() == "Query interrupted"):
        raise KeyboardInterrupt("stopped by a signal") from None


def statement_body(sql: str) -> str:
    """``sql`` without the semicolons and comments that end it, to stand inside a subquery (review rev27g: DuckDB's
    ``relation.project`` pasted the text into ``(...)`` as it was, and ``SELECT ...; -- done`` failed to parse).
    The select list goes on the query's first line, before its text, so DuckDB's ``LINE n`` of an error in it is
    the user's line n (``project`` put the text two lines lower)."""
    tokens = duckdb.tokenize(sql)
    ends = [offset for offset, _ in tokens[1:]] + [len(sql)]
    cut = len(sql)
    for (offset, kind), end in reversed(list(zip(tokens, ends))):
        if kind == duckdb.token_type.comment or (kind == duckdb.token_type.operator
                                                  and set(sql[offset:end].strip()) <= {";"}):
            cut = offset
            continue
        break
    return sql[:cut].rstrip() if cut < len(sql) else sql


@contextlib.contextmanager
def stream(home: DataHome, sql: str, version: str | None = None, params: Mapping[str, Any] | None = None,
           limits: QueryLimits | None = None, batch_rows: int | None = None,
           fmt: str | None = None) -> Iterator[tuple[pa.Schema, Iterator[pa.RecordBatch]]]:
    """Run one read-only statement under ``limits``; yield its schema and its record batches as they come.

    With ``fmt`` (an output format), a column whose DuckDB type Arrow cannot carry (an INTERVAL, a BIT, a
    BIGNUM, a VARIANT, a TIMETZ, a UHUGEINT, at any depth) is selected with those values as DuckDB's own text
    (:func:`pipelines.query.duck_types.text_columns`).

    Raises QueryRefused (not read-only), FileNotFoundError (no such version) or QueryFailed (DuckDB error,
    time or memory limit), also while the batches are read. With ``limits.cap_process`` the process's data
    segment is capped once DuckDB is open, and its own limit put back afterwards (:func:`process_memory_cap`).
    """
    limits = limits or QueryLimits()
    started = time.monotonic()   # the time limit counts from here: the wait for the version's lock included
    with connect(home, version, limits) as (con, _):
        # once DuckDB is open, with its thread count known: the query runs under the cap, put back when it ends
        cap = (process_memory_cap(limits, int(con.execute("SELECT current_setting('threads')").fetchall()[0][0]))
               if limits.cap_process else contextlib.nullcontext())
        with cap:
            try:
                check_read_only(con, sql)
            except duckdb.Error as exc:  # a parser error
                raise QueryFailed(str(exc)) from None
            with _Deadline(con, limits.timeout_s, started) as deadline, _ctrl_c_interrupts(con):
                try:
                    if deadline.fired:   # spent before the query started (its version's lock, opening it)
                        raise deadline.failure(TimeoutError(), limits)
                    relation = con.sql(sql, params=dict(params)) if params else con.sql(sql)
                    if fmt is not None:
                        cast = text_columns(relation.types)
                        if cast:   # review rev27d: DuckDB's text, not Arrow's wrong value
                            reselect = (f"SELECT {projection(relation.columns, cast)} FROM ({statement_body(sql)}\n) "
                                        "AS __pickapic_result")
                            relation = con.sql(reselect, params=dict(params)) if params else con.sql(reselect)
                    reader = relation.to_arrow_reader(batch_rows or BATCH_ROWS)
                except duckdb.Error as exc:
                    _stop_if_signalled(exc)
                    raise deadline.failure(exc, limits) from None
                except RuntimeError as exc:
                    _stop_if_signalled(exc)
                    raise

                def batches() -> Iterator[pa.RecordBatch]:
                    while True:
                        if STOP.is_set():
                            raise KeyboardInterrupt("stopped by a signal")
                        if deadline.fired:   # the time also counts while the caller writes what it was given
                            raise deadline.failure(TimeoutError(), limits)
                        try:
                            batch = reader.read_next_batch()
                        except StopIteration:
                            return
                        except (OSError, pa.ArrowException, duckdb.Error) as exc:  # DuckDB errors surface via Arrow
                            _stop_if_signalled(exc)
                            raise deadline.failure(exc, limits) from None
                        except RuntimeError as exc:
                            _stop_if_signalled(exc)
                            raise
                        yield batch

                yield reader.schema, batches()


def execute(home: DataHome, sql: str, version: str | None = None,
            params: Mapping[str, Any] | None = None, limits: QueryLimits | None = None) -> pa.Table:
    """Run one read-only statement over a version and return Arrow (raises QueryRefused / QueryFailed)."""
    with stream(home, sql, version, params, limits) as (schema, batches):
        return pa.Table.from_batches(list(batches), schema=schema)


def run_query(home: DataHome, sql: str | None = None, named: str | None = None, version: str | None = None,
              fmt: str = "table", output: Path | None = None, params: Mapping[str, Any] | None = None,
              stdout: TextIO | None = None, stderr: TextIO | None = None, limits: QueryLimits | None = None,
              prog: str | None = None) -> int:
    """Run a query (SQL text or a named one) and print/write the result; returns the exit code. An error is one
    line on ``stderr``, ``PROG: error: ...`` (``prog``: the command, as every ``pickapic`` command says it;
    None: ``error: ...``)."""
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    error = f"{prog}: error:" if prog else "error:"
    if (sql is None) == (named is None):
        print(f"{error} give either SQL text or --named NAME (see --list)", file=stderr)
        return 2
    if fmt not in FORMATS:
        print(f"{error} unknown format {fmt!r}; choose one of {', '.join(FORMATS)}", file=stderr)
        return 2
    if fmt == "parquet" and output is None:
        print(f"{error} --format parquet needs --output FILE", file=stderr)
        return 2
    try:
        limits = (limits or QueryLimits()).validate()
        if output is not None:
            check_output_file(output, [home.root], "--output")  # before running: refuse early
    except ValueError as exc:
        print(f"{error} {exc}", file=stderr)
        return 2
    if named is not None:
        known = named_queries()
        if named not in known:
            print(f"{error} no named query {named!r}; known: {', '.join(known)}", file=stderr)
            return 2
        sql = sql_text(f"queries/{named}")
    try:
        with stream(home, sql, version, params, limits, fmt=fmt) as (schema, batches):
            if output is None:
                try:
                    write_result(schema, batches, fmt, TextSink(stdout), to_terminal=stdout.isatty())
                    stdout.flush()
                except BrokenPipeError:  # the reader stopped early (`| head`): what it wanted was delivered
                    silence_closed_pipe(stdout)
                return 0
            else:
                with open_output_file(output, [home.root], "--output") as handle:
                    written = write_result(schema, batches, fmt, handle)
    except (FileNotFoundError, ValueError) as exc:  # no such version / refused statement / refused output
        print(f"{error} {exc}", file=stderr)
        return 2
    except QueryFailed as exc:
        print(f"{error} {exc}", file=stderr)
        return 1
    except MemoryError:      # Python's own allocations (the printed table) under the process cap
        print(f"{error} out of memory while the result was written (this process may use --memory-limit "
              f"{limits.memory_limit} and {PROCESS_HEADROOM // 1024**2} MiB more): raise --memory-limit, select fewer "
              "or narrower columns, or write it with --format csv|json|parquet --output FILE", file=stderr)
        return 1
    if output is not None:
        rows = written.rows
        if written.shown < rows or written.columns_shown < written.columns:   # a table holds its first rows / columns
            what = f"the first {written.shown} of {rows} rows" if written.shown < rows else \
                f"{rows} row{'' if rows == 1 else 's'}"
            if written.columns_shown < written.columns:
                what += f" and the first {written.columns_shown} of {written.columns} columns"
            print(f"wrote {what} ({fmt}) to {output} (use --format csv|json|parquet for all)", file=stderr)
        else:
            print(f"wrote {rows} row{'' if rows == 1 else 's'} ({fmt}) to {output}", file=stderr)
    return 0


_CANONICAL_INT = re.compile(r"-?(?:0|[1-9][0-9]*)")
_CANONICAL_DECIMAL = re.compile(r"-?(?:0|[1-9][0-9]*)\.[0-9]+")
_INT_TEXT = re.compile(r"[+-]?[0-9]+")
# linear: `[0-9]+\.?[0-9]*` backtracked quadratically (32,000 digits and an `x` took 10 s to refuse: rev27d)
_DOUBLE_TEXT = re.compile(r"[+-]?(?:(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|inf|infinity|nan)",
                          re.IGNORECASE)
PARAM_TYPES = ("text", "int", "double")
PARAM_HELP = ("a $NAME parameter for the query (repeatable), always bound, never spliced into the SQL. VALUE is bound "
              "as a number only where it is that number's own spelling: an integer (42, -7: no sign +, leading zero "
              "or _, within BIGINT) or a decimal (0.5, -1.25: no exponent, as Python and DuckDB write that DOUBLE); "
              "anything else as text, as typed (0123, 12e3, nan, 1_0). NAME:text=VALUE binds it as text always "
              "(a pseudonym or prompt of digits compared with a VARCHAR column), NAME:int=VALUE and "
              "NAME:double=VALUE as that number (12e3, inf)")


def _shown(text: str, most: int = 80) -> str:
    """``repr(text)``, cut to its first ``most`` characters (an error line stays one short line)."""
    return repr(text) if len(text) <= most else f"{text[:most]!r}... ({len(text)} characters)"


def _parse_param(text: str) -> tuple[str, Any]:
    """``NAME=VALUE`` or ``NAME:TYPE=VALUE`` -> (NAME, the value to bind): see :data:`PARAM_HELP`. Review rev27a:
    every value int() or float() took was bound as a number, so a pseudonym 0123 was bound as 123, 12e3 as
    12000.0 and nan as NaN, with no way to pass them as text."""
    name, sep, value = text.partition("=")
    name, colon, kind = name.partition(":")
    if not sep or not name.isidentifier() or (colon and kind not in PARAM_TYPES):
        raise argparse.ArgumentTypeError(f"--param {_shown(text)}: expected NAME=VALUE or NAME:TYPE=VALUE with "
                                         f"TYPE one of {', '.join(PARAM_TYPES)}")
    if kind == "text":
        return name, value
    if kind == "int":
        # the digits without their leading zeros: int() of more than 4,300 digits raises (review rev27d)
        digits = value.lstrip("+-").lstrip("0") or "0"
        number = int(value[:1] + digits if value[:1] == "-" else digits) \
            if _INT_TEXT.fullmatch(value) and len(digits) <= 19 else None
        if number is None or not -2**63 <= number < 2**63:
            raise argparse.ArgumentTypeError(f"--param {_shown(text)}: not an integer within BIGINT")
        return name, number
    if kind == "double":
        try:
            number = float(value) if _DOUBLE_TEXT.fullmatch(value) else None
        except ValueError:
            number = None
        if number is None or math.isinf(number) and value.lower().lstrip("+-") not in ("inf", "infinity"):
            raise argparse.ArgumentTypeError(f"--param {_shown(text)}: not a number a DOUBLE holds "
                                             "(a decimal, an exponent, inf or nan)")
        return name, number
    if _CANONICAL_INT.fullmatch(value) and value != "-0" and len(value) <= 20 and -2**63 <= int(value) < 2**63:
        return name, int(value)
    if _CANONICAL_DECIMAL.fullmatch(value) and repr(float(value)) == value:
        return name, float(value)
    return name, value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``pickapic query``."""
    parser.add_argument("sql", nargs="?", help="one SELECT statement over the views pairs, shards, images, "
                        "decisions, quarantine, splits_summary")
    parser.add_argument("--named", metavar="NAME", help="run sql/queries/NAME.sql instead (see --list)")
    parser.add_argument("--list", action="store_true", help="list the named queries and exit")
    parser.add_argument("--version", dest="dataset_version", metavar="V", help="published version (default: latest)")
    parser.add_argument("--format", dest="fmt", choices=FORMATS, default="table", help="output format (default: table)")
    parser.add_argument("--output", type=Path, metavar="FILE",
                        help="write the result to FILE instead of stdout (a new path or a regular file outside the "
                             "data home; says on stderr how many rows it wrote)")
    parser.add_argument("--param", action="append", type=_parse_param, default=[], metavar="NAME[:TYPE]=VALUE",
                        help=PARAM_HELP)
    defaults = QueryLimits()
    parser.add_argument("--timeout", type=float, default=defaults.timeout_s, metavar="SECONDS",
                        help=f"stop the query after SECONDS (default {defaults.timeout_s:g}; 0: no limit)")
    parser.add_argument("--memory-limit", default=defaults.memory_limit, metavar="SIZE",
                        help=f"DuckDB memory limit (default {defaults.memory_limit}); beyond it DuckDB spills to a "
                             "private temporary folder")
    parser.add_argument("--spill-limit", default=defaults.spill_limit, metavar="SIZE",
                        help=f"most disk the query may spill to (default {defaults.spill_limit})")


def run_from_args(args: argparse.Namespace, home: DataHome | None = None, prog: str = "pickapic query") -> int:
    """Entry point for ``pickapic query`` (``args`` from :func:`add_arguments`); an error says ``PROG: error: ...``."""
    if args.list:
        for name, description in named_queries().items():
            print(f"{name:28s} {description}")
        return 0
    home = home or DataHome.at(getattr(args, "home", None))
    limits = QueryLimits(args.timeout, args.memory_limit, args.spill_limit, cap_process=True)
    names = [name for name, _ in args.param]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:       # the last one silently won before: say which value is meant
        print(f"{prog}: error: --param {', '.join(twice)} given more than once: give each parameter once", file=sys.stderr)
        return 2
    if args.named and args.param:    # DuckDB said only "argument count mismatch ... Expected 0, got N"
        print(f"{prog}: error: the named query {args.named!r} takes no --param (given: {', '.join(names)}); "
              "write the SQL yourself to use parameters", file=sys.stderr)
        return 2
    return run_query(home, args.sql, args.named, args.dataset_version, args.fmt, args.output, dict(args.param) or None,
                     limits=limits, prog=prog)


def main(argv: list[str] | None = None) -> int:
    """``python -m pipelines.query.engine [--home HOME] "SQL" ...``."""
    parser = argparse.ArgumentParser(prog="python -m pipelines.query.engine", description=__doc__.splitlines()[0])
    parser.add_argument("--home", help="data home (default: $PICKAPIC_HOME or ./data)")
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv), prog=parser.prog)


if __name__ == "__main__":
    from formats.commands import run_command

    sys.exit(run_command('python -m pipelines.query.engine', main))
