"""Hostile review rev22j of 4bc8bd4 (answer to rev22i: ``settings --set ... --write`` refuses a secret from
``--set``, names ``--set`` as its values' source, runs ``FeaturesConfig.validate(home)`` when a ``features.*``
key is set, and lists the home with ``load`` afterwards).

Each test asserts the correct behaviour of a defect confirmed by running the real CLI (``dagster_project.cli.main``
and ``python -m dagster_project.cli``), filed as a strict xfail; all 3 are fixed (the twenty-second session; the markers are gone). The first two share one cause: ``check_staging``
catches only ``FileNotFoundError`` from ``os.lstat(staging)``, and ``--write`` now calls it.

Tried and held up (no test):
- a brand-new home (folder absent) with ``--set features.jpeg_quality=80 --write``: written, listed, rc 0;
- ``features.staging=gs://bucket/stage`` and ``features.blob_base=gs://bucket/base`` on a new home: written;
  a new absolute staging folder outside the home: written;
- ``--home FILE --set features.jpeg_quality=80 --write``: one line, nothing written;
- keys with spaces are stripped by ``parse_assignment`` before the ``startswith("features.")`` test, so
  ``" features.staging"`` cannot skip the check;
- a secret in the file (0600) while ``--write`` sets ``splits.heldout_fraction``: file stays 0600, the secret is
  never printed, the new key lands in its own table;
- ``--set dedup.max_iterations=3 --write`` (retired): one line naming the reason, nothing created;
- a file whose ``features.staging`` is the home: ``--set features.staging= --write`` repairs it (written, listed);
- ``--section features`` after ``--write``: only that section listed, source ``pickapic.toml of the data home``;
- ``dagster_project/demo.py`` calls ``write_settings`` directly (untouched by 4bc8bd4); its ``DEMO_SETTINGS``
  hold no ``features.*`` key, so the new check is never on its path.
Not pursued: ``features.staging=file:///HOME/...`` is a URL to ``check_staging`` and is not checked against a
local home (the deletion step still refuses a folder without the marker); a blob base that does not exist yet is
refused by ``--write`` as by every run.
"""
from __future__ import annotations

import pytest

from dagster_project.cli import main
from formats.settings import settings_path


def test_a_staging_folder_below_a_file_is_a_one_line_refusal(tmp_path, capsys):
    (tmp_path / "afile").write_text("x", encoding="utf-8")
    home = tmp_path / "home"
    try:
        code = main(["settings", "--home", str(home), "--set", f"features.staging={tmp_path / 'afile' / 'x'}",
                     "--write"])
    except OSError as exc:          # the defect: a traceback out of the CLI
        pytest.fail(f"traceback: {exc!r}")
    err = capsys.readouterr().err
    assert code == 1 and "staging" in err and "Traceback" not in err
    assert not settings_path(home).exists()


def test_a_staging_path_too_long_is_refused_naming_the_setting(tmp_path, capsys):
    long = "/" + "a" * 300 + "/x"
    code = main(["settings", "--home", str(tmp_path / "home"), "--set", f"features.staging={long}", "--write"])
    err = capsys.readouterr().err
    assert code == 1
    assert "staging" in err and "a" * 300 not in err


def test_a_refused_file_value_is_not_blamed_on_set(tmp_path, capsys):
    settings_path(tmp_path).write_text(f'[features]\nstaging = "{tmp_path}"\n', encoding="utf-8")
    before = settings_path(tmp_path).read_bytes()
    code = main(["settings", "--home", str(tmp_path), "--set", "features.jpeg_quality=80", "--write"])
    err = capsys.readouterr().err
    assert code == 1 and settings_path(tmp_path).read_bytes() == before
    assert "pickapic.toml" in err and "--set of [features] is refused" not in err
