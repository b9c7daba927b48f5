"""The app's PostgreSQL database as the source, end to end: simulate into it, export, build, publish.

The key test: the same simulated history written into PostgreSQL (then exported by the ``app_export``
asset through ``pickapic build --from-app-db``) and written as files give byte-identical published
datasets. Both run with the file exporter's defects off (``--no-export-defects``; see the README,
"The app database as the source"): a typed table cannot hold a malformed or mistyped line.
The homes live on tmpfs when the machine has one (``scratch``, ``tests/fast_tmp.py``).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from dagster_project.cli import main
from formats.home import DataHome
from tests.postgres_server import create_database, postgres_server  # noqa: F401 - fixture

SIM = ["--days", "2", "--users", "12", "--rankings-per-day", "24", "--image-size", "32", "--seed", "3", "--quiet"]
SMALL_HOME = ["--set", "splits.min_users=3", "--set", "splits.min_unique_rows=1", "--write"]  # 12 users, 2 days


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _holding(root: Path, needle: bytes) -> list[str]:
    """Every file under ``root`` whose bytes contain ``needle``."""
    return [str(p) for p in root.rglob("*") if p.is_file() and not p.is_symlink() and needle in p.read_bytes()]


def _published(home: DataHome) -> tuple[str, dict[str, bytes]]:
    latest = home.datasets / "latest"
    return os.readlink(latest), _tree(latest.resolve())


def test_database_source_publishes_the_same_dataset_and_never_shows_the_password(
        postgres_server, scratch, monkeypatch, capfd):  # noqa: F811 - pytest fixture injection
    secret = f"pw-{os.getpid()}-{scratch.name}-e2e-9c41"
    dsn = create_database(postgres_server, "appe2e", owner_password=secret)
    files_home, db_home, store = scratch / "files", scratch / "db", scratch / "app-storage"

    for home in (files_home, db_home):   # both homes: the same small-home settings, written before anything else
        assert main(["settings", "--home", str(home), *SMALL_HOME]) == 0
    assert main(["simulate", "--home", str(files_home), *SIM, "--no-export-defects"]) == 0
    assert main(["build", "--home", str(files_home)]) == 0

    monkeypatch.setenv("PGPASSWORD", secret)  # the simulator's DSN carries no password
    assert main(["simulate", "--home", str(db_home), *SIM, "--to-postgres", dsn.replace(f" password={secret}", ""),
                 "--image-store", str(store)]) == 0
    monkeypatch.delenv("PGPASSWORD")
    assert not DataHome(db_home).raw_logs.exists()  # the history is in the database, not in the raw zone
    monkeypatch.setenv("PICKAPIC_APP_DB_DSN", dsn)
    monkeypatch.setenv("PICKAPIC_APP_IMAGE_STORE", str(store))
    assert main(["build", "--home", str(db_home), "--from-app-db"]) == 0

    files, db = DataHome(files_home), DataHome(db_home)
    assert _published(db) == _published(files)
    for day in ("2023-02-13", "2023-02-14"):
        for table in ("images", "rankings", "downloads"):
            assert db.raw_file(day, table).read_bytes() == files.raw_file(day, table).read_bytes(), (day, table)
    assert _tree(db.raw_images) == _tree(files.raw_images)

    # a refused login: the Dagster run fails naming the server; the raw zone is untouched
    from dagster_project.build import BuildError, run_build

    raw_before = _tree(db.raw)
    wrong = f"wrong-{secret}"
    monkeypatch.setenv("PICKAPIC_APP_DB_DSN", dsn.replace(secret, wrong))
    with pytest.raises(BuildError) as error:
        run_build(db, ["2023-02-14"], from_app_db=True)
    message = str(error.value)
    assert "app_export_job" in message and "password authentication failed" in message
    assert "'appe2e'" in message and str(postgres_server.port) in message and wrong not in message
    assert _tree(db.raw) == raw_before

    output = capfd.readouterr()
    for needle in (secret, wrong):
        assert needle not in output.out and needle not in output.err
        assert _holding(db_home, needle.encode()) == []  # data home, Dagster runs, event logs, compute logs
