"""Nothing the pipeline runs may reach the network: onnxruntime's telemetry is off in every process that imports
a stage (``pipelines/__init__.py``), and every DuckDB connection refuses to install an extension by itself
(``pipelines.sqlrun.offline_connection``)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from pipelines import sqlrun

ROOT = Path(__file__).resolve().parents[2]


def _run(code: str, home: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    env.update(HOME=str(home), PYTHONPATH=str(ROOT), XDG_CACHE_HOME=str(home / ".cache"))
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_the_nsfw_detector_starts_no_onnxruntime_telemetry(tmp_path) -> None:
    # onnxruntime 1.32 writes a device id and an upload cache under ~/.cache/Microsoft/DeveloperTools/.onnxruntime
    # when imported, unless ORT_DISABLE_TELEMETRY=1 was set before (it is latched at the import)
    home = tmp_path / "home"
    home.mkdir()
    done = _run("from pipelines.features.nsfw import FastNudeDetector\nFastNudeDetector()\n"
                "import os; print(os.environ['ORT_DISABLE_TELEMETRY'])", home)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1"
    assert [p for p in home.rglob("*")] == []


# onnxruntime latches ORT_DISABLE_TELEMETRY when its native module loads: record the variable at that moment (an
# audit hook sees the import), so the check does not depend on whether this machine's onnxruntime build writes its
# telemetry files at all (a CI machine's did not, so a check on the files alone could not fail there)
_RECORD = (
    "import os, sys\n"
    "seen = []\n"
    "def hook(event, args):\n"
    "    if event == 'import' and args[0] == 'onnxruntime.capi.onnxruntime_pybind11_state' and not seen:\n"
    "        seen.append(os.environ.get('ORT_DISABLE_TELEMETRY'))\n"
    "sys.addaudithook(hook)\n"
)


def test_telemetry_is_off_before_onnxruntime_loads_through_a_stage(tmp_path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    done = _run(_RECORD + "from pipelines.features.nsfw import FastNudeDetector\nFastNudeDetector()\nprint(seen)", home)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['1']"


def test_the_check_itself_sees_a_bare_import_load_onnxruntime_with_telemetry_on(tmp_path) -> None:
    # the same record on a process that imports onnxruntime first (so the test above can fail)
    home = tmp_path / "home"
    home.mkdir()
    done = _run(_RECORD + "import onnxruntime\nprint(seen)", home)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[None]"


def test_every_pipeline_connection_refuses_to_install_an_extension() -> None:
    con = sqlrun.offline_connection()
    try:
        assert con.sql("SELECT current_setting('autoinstall_known_extensions'), "
                       "current_setting('autoload_known_extensions')").fetchall() == [(False, False)]
        with pytest.raises(duckdb.Error) as caught:       # httpfs is not built in: DuckDB's default would fetch it
            con.sql("SELECT * FROM read_parquet('https://example.invalid/x.parquet')").fetchall()
        assert "httpfs" in str(caught.value)
        # what the pipeline needs is built in: Parquet, JSON, ICU
        assert con.sql("SELECT to_json({'a': 1}), TIMESTAMPTZ '2023-02-13 00:00:00+00' AT TIME ZONE 'UTC'").fetchall()
    finally:
        con.close()
    con = sqlrun.connect({})
    try:
        assert con.sql("SELECT current_setting('autoinstall_known_extensions')").fetchall() == [(False,)]
    finally:
        con.close()


def test_no_stage_opens_duckdb_with_the_default_settings() -> None:
    # every connection goes through offline_connection (or the query engine's own offline config)
    found = []
    for folder in ("pipelines", "dagster_project", "training", "formats", "simulator", "data_contracts", "benchmarks"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            text = path.read_text(encoding="utf-8")
            for needle in ("duckdb.connect(", "duckdb.execute(", "duckdb.sql(", "duckdb.query("):
                if needle in text:
                    found.append(f"{path.relative_to(ROOT)}: {needle}")
    assert sorted(found) == ["formats/duck.py: duckdb.connect(", "pipelines/query/engine.py: duckdb.connect("]
