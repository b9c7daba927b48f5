"""A throwaway PostgreSQL server for tests and benchmarks: initdb + pg_ctl on a private unix socket.

Binaries come from ``$PICKAPIC_PG_BINDIR``, else the ``pgserver`` wheel (a dev extra that ships the
server), else a system install (``/usr/lib/postgresql/*/bin``, ``pg_config --bindir``). PostgreSQL
refuses to run as root, so under root (CI) the server runs as ``nobody``; the binaries are copied to
a temporary folder first when ``nobody`` cannot reach them (a checkout under ``/root``).
The server listens on no TCP port; clients connect through the socket folder as ``host``.
"""
from __future__ import annotations

import glob
import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

SUPERUSER = "postgres"


def _bindir_candidates() -> list[Path]:
    found = []
    if os.environ.get("PICKAPIC_PG_BINDIR"):
        found.append(Path(os.environ["PICKAPIC_PG_BINDIR"]))
    spec = importlib.util.find_spec("pgserver")  # located, not imported: only its bundled binaries are used
    if spec is not None and spec.submodule_search_locations:
        found.append(Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin")
    found += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
        if out.returncode == 0:
            found.append(Path(out.stdout.strip()))
    return found


def find_bindir() -> Path:
    """The first folder holding ``initdb``, ``pg_ctl`` and ``postgres``; raises naming where it looked."""
    candidates = _bindir_candidates()
    for folder in candidates:
        if all((folder / name).is_file() for name in ("initdb", "pg_ctl", "postgres")):
            return folder
    raise FileNotFoundError(
        "no PostgreSQL server binaries (initdb, pg_ctl, postgres) found; looked in "
        f"{[str(c) for c in candidates] or 'nothing'}: install the dev extra (pip install -e '.[dev]', which "
        "brings the pgserver wheel), or Debian's postgresql package, or set PICKAPIC_PG_BINDIR")


def _reachable_by_others(path: Path) -> bool:
    """True when every folder above ``path`` is searchable by other users (mode o+x)."""
    for parent in [path, *path.parents]:
        if not os.stat(parent).st_mode & 0o001:
            return False
    return True


@dataclass
class PostgresServer:
    """A running throwaway server; ``dsn(...)`` builds connection strings to it."""

    root: Path
    socket_dir: Path
    port: int
    bindir: Path
    run_as: str | None

    def dsn(self, dbname: str = "postgres", user: str = SUPERUSER, password: str | None = None) -> str:
        """A libpq key/value connection string over the socket."""
        parts = [f"host={self.socket_dir}", f"port={self.port}", f"dbname={dbname}", f"user={user}"]
        if password is not None:
            parts.append(f"password={password}")
        return " ".join(parts)

    def _run(self, args: list[str], **kwargs) -> subprocess.CompletedProcess:
        extra = {}
        if self.run_as:
            entry = pwd.getpwnam(self.run_as)
            extra = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
        done = subprocess.run(args, capture_output=True, text=True, **extra, **kwargs)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:1])} exited {done.returncode}: {done.stderr.strip()[-2000:]}")
        return done

    def stop(self) -> None:
        """Stop the server (fast shutdown) and delete its files."""
        try:
            self._run([str(self.bindir / "pg_ctl"), "-D", str(self.root / "data"), "-m", "fast", "-w", "stop"])
        except RuntimeError:
            pass  # already stopped; the files go either way
        shutil.rmtree(self.root, ignore_errors=True)


def _copy_install(bindir: Path, destination: Path) -> Path:
    """Copy an install (``.../<pkg>/<install>/bin``) keeping the layout its RPATH expects; returns the new bin.

    The wheel's binaries find their vendored libraries at ``$ORIGIN/../../../<pkg>.libs``, so the
    ``*.libs`` folders beside the package are copied to the same place relative to the new bin.
    """
    install = bindir.parent
    target = destination / install.parent.name / install.name
    shutil.copytree(install, target, symlinks=True)
    for libs in install.parent.parent.glob("*.libs"):
        shutil.copytree(libs, destination / libs.name, symlinks=True)
    return target / bindir.name


def _free_port_number() -> int:
    """A port number for the socket file's name (nothing listens on TCP)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(auth: str = "scram-sha-256", superuser_password: str = "postgres") -> PostgresServer:
    """initdb a new cluster in a temporary folder and start it; ``auth`` applies to socket logins."""
    bindir = find_bindir()
    run_as = "nobody" if os.geteuid() == 0 else None
    root = Path(tempfile.mkdtemp(prefix="pg-"))
    try:
        if run_as:
            entry = pwd.getpwnam(run_as)
            if not _reachable_by_others(bindir):
                bindir = _copy_install(bindir, root / "pgcopy")
            os.chmod(root, 0o755)
            os.chown(root, entry.pw_uid, entry.pw_gid)
        server = PostgresServer(root=root, socket_dir=root, port=_free_port_number(), bindir=bindir, run_as=run_as)
        pwfile = root / "pwfile"
        pwfile.write_text(superuser_password + "\n")
        if run_as:
            os.chown(pwfile, pwd.getpwnam(run_as).pw_uid, -1)
        server._run([str(bindir / "initdb"), "-D", str(root / "data"), "-U", SUPERUSER, f"--pwfile={pwfile}",
                     f"--auth-local={auth}", f"--auth-host={auth}", "-E", "UTF8", "--locale=C", "--no-sync"])
        pwfile.unlink()
        # dynamic shared memory in files under the data folder, removed with it: POSIX segments (/dev/shm) of a
        # server a test kills outright (a primary lost, a crash) outlived the test run, one run after another
        with open(root / "data" / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write("\ndynamic_shared_memory_type = mmap\n")
        options = (f"-c listen_addresses='' -c unix_socket_directories='{root}' -c port={server.port} "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=40")
        server._run([str(bindir / "pg_ctl"), "-D", str(root / "data"), "-o", options, "-l", str(root / "log"),
                     "-w", "-t", "60", "start"])
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return server


def create_database(server: PostgresServer, name: str, *, owner_password: str | None = None,
                    encoding: str = "UTF8") -> str:
    """Create database ``name`` (owned by a new role ``name`` when ``owner_password`` is given); returns its DSN."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(server.dsn(password="postgres"), autocommit=True) as conn:
        owner = SUPERUSER
        if owner_password is not None:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(name),
                                                                             sql.Literal(owner_password)))
            owner = name
        conn.execute(f'CREATE DATABASE "{name}" OWNER "{owner}" TEMPLATE template0 ENCODING \'{encoding}\' '
                     "LC_COLLATE 'C' LC_CTYPE 'C'")
    if owner_password is None:
        return server.dsn(name, password="postgres")
    return server.dsn(name, user=name, password=owner_password)


def create_app_database(server: PostgresServer, name: str, encoding: str = "UTF8") -> str:
    """A new empty database ``name`` holding the app's schema (``sql/app_db/schema.sql``); returns its DSN."""
    import psycopg

    from pipelines.sqlrun import sql_text

    dsn = create_database(server, name, encoding=encoding)
    with psycopg.connect(dsn) as conn:
        conn.execute(sql_text("app_db/schema"))
    return dsn


@pytest.fixture(scope="session")
def postgres_server():
    """One throwaway server per test process (xdist worker), stopped at the end of the session."""
    server = start_server()
    try:
        yield server
    finally:
        server.stop()
