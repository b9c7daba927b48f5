"""The feature stage on Beam's portable runner: a job service and a worker pool in their own processes.

The workers get nothing from this test process: they run in their own folder, import the project only
from its wheel (built here and installed with ``pip install --no-deps --target``, as
docker/worker.Dockerfile installs it), and can import no third-party package outside
requirements-worker.txt and its dependencies (an import guard in their ``sitecustomize``). Their
``image_features`` and ``image_rejects`` must equal the in-process DirectRunner's byte for byte.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pyarrow.parquet as pq
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from formats.home import DataHome
from pipelines.features.config import FeaturesConfig
from pipelines.features.portable import LocalPortableCluster
from pipelines.features.stage import build_features

REPO = Path(__file__).resolve().parents[2]
WHEEL_SOURCES = ("pyproject.toml", "README.md", "dagster_project", "formats", "pipelines", "schemas", "sql", "data_contracts",
                 "training")
DAY = "2023-02-13"

GUARD = '''"""Import guard of a test worker (written by tests/e2e/test_features_portable.py)."""
import importlib.abc, importlib.machinery, json, os, sys

BLOCKED = set({blocked!r})
PROJECT = set({project!r})
SITE = {site!r}
LOG = {log!r}


def _note(**event):
    with open(LOG, "a") as handle:
        handle.write(json.dumps(dict(event, pid=os.getpid())) + "\\n")


class _WorkerImportGuard(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if "." in name:
            return None
        if name in BLOCKED:
            _note(blocked=name)
            raise ModuleNotFoundError(f"No module named {{name!r}}: not in requirements-worker.txt or its "
                                      "dependencies (worker import guard)", name=name)
        if name in PROJECT:
            spec = importlib.machinery.PathFinder.find_spec(name, [SITE])
            if spec is None:
                raise ModuleNotFoundError(f"No module named {{name!r}} in the installed wheel {{SITE}}", name=name)
            _note(project=name, origin=spec.origin)
            return spec
        return None


sys.meta_path.insert(0, _WorkerImportGuard())
_note(started=sys.argv[:2], cwd=os.getcwd())
'''


def requirement_closure(lines: list[str]) -> set[str]:
    """Canonical names of the installed distributions the requirement lines need, dependencies included."""
    todo = [Requirement(line) for line in lines]
    seen: set[str] = set()
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        if name in seen:
            continue
        seen.add(name)
        for text in metadata.distribution(requirement.name).requires or []:
            needed = Requirement(text)
            extras = list(requirement.extras) or [""]
            if needed.marker is None or any(needed.marker.evaluate({"extra": extra}) for extra in extras):
                todo.append(needed)
    return seen


def worker_requirements() -> list[str]:
    lines = (REPO / "requirements-worker.txt").read_text().splitlines()
    return [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]


def worker_site(root: Path) -> tuple[Path, Path, Path]:
    """(wheel install folder, guard folder, guard log): the project's wheel and the import guard for workers."""
    source = root / "src"
    source.mkdir(parents=True)
    for name in WHEEL_SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(REPO / name, source / name)
    build = subprocess.run([sys.executable, "-c", "import sys; from setuptools import build_meta; "
                            "print(build_meta.build_wheel(sys.argv[1]))", str(root / "dist")],
                           cwd=source, capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-3000:]
    wheel = root / "dist" / build.stdout.strip().splitlines()[-1]
    site = root / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                              "--target", str(site), str(wheel)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-3000:]

    project = sorted(p.name for p in site.iterdir() if (p / "__init__.py").is_file())
    allowed = requirement_closure(worker_requirements())
    blocked = sorted(top for top, dists in metadata.packages_distributions().items()
                     if top not in project and top not in sys.stdlib_module_names
                     and not any(canonicalize_name(d) in allowed for d in dists))
    guard, log = root / "guard", root / "guard.log"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(GUARD.format(blocked=blocked, project=project, site=str(site), log=str(log)))
    return site, guard, log


def simulated_day(root: Path) -> DataHome:
    """One small simulated day (64 px images, the simulator's planted defects included), ingested."""
    from pipelines.ingest.__main__ import main as ingest
    from simulator.__main__ import main as simulate

    assert simulate(["--home", str(root), "--days", "1", "--start-date", DAY, "--users", "8", "--rankings-per-day", "12",
                     "--image-size", "64", "--seed", "11", "--quiet", "--workers", "1"]) == 0
    assert ingest(["--home", str(root), "--day", DAY]) == 0
    return DataHome.at(root)


def outputs(home: DataHome) -> dict[str, bytes]:
    """Every file the stage wrote: the two partitions and the training-JPEG store, relative path -> bytes."""
    files = {f"{ds}": home.partition_file(ds, DAY).read_bytes() for ds in ("image_features", "image_rejects")}
    files.update({p.relative_to(home.root).as_posix(): p.read_bytes() for p in home.blobs.rglob("*") if p.is_file()})
    return files


def test_portable_runner_with_external_workers_matches_the_direct_runner(tmp_path: Path, monkeypatch) -> None:
    site, guard, guard_log = worker_site(tmp_path / "worker")
    direct = simulated_day(tmp_path / "direct")
    shutil.copytree(direct.root, tmp_path / "portable", symlinks=True)
    monkeypatch.chdir(tmp_path)        # the driver is given a relative home; workers run elsewhere

    reference = build_features(direct, DAY, FeaturesConfig(workers=0))
    assert reference.processed > 20 and reference.rejected_total > 0

    with LocalPortableCluster(tmp_path / "cluster", pythonpath=[str(guard), str(site)]) as cluster:
        try:
            report = build_features(DataHome.at("portable"), DAY, FeaturesConfig(), cluster.beam_args(workers=2))
        except Exception:
            print("job service:\n", cluster.log("jobservice")[-4000:], "\nworker pool:\n", cluster.log("workerpool")[-4000:])
            raise
    assert report.runner == "PortableRunner"
    assert (report.processed, report.rejected) == (reference.processed, reference.rejected)
    portable = outputs(DataHome.at(tmp_path / "portable"))
    assert portable == outputs(direct)                       # identical rows, bytes and training JPEGs
    assert pq.read_table(tmp_path / "portable" / "warehouse" / "image_features" / f"dt={DAY}" / "part-0.parquet").num_rows \
        == reference.features_rows

    events = [json.loads(line) for line in guard_log.read_text().splitlines()]
    harnesses = {e["pid"] for e in events if e.get("started") == ["-c"]}
    assert len(harnesses) == 2 and os.getpid() not in harnesses          # two SDK harness processes did the work
    assert {e["cwd"] for e in events if "started" in e} == {str(tmp_path / "cluster")}
    origins = {e["origin"] for e in events if e.get("project") == "pipelines" and e["pid"] in harnesses}
    assert origins == {str(site / "pipelines" / "__init__.py")}           # the wheel's code, nothing else
    # nothing staged is left: only the staging folder's lock file, beside it in the stage's own area
    left = sorted(str(p.relative_to(tmp_path / "portable")) for p in (tmp_path / "portable").rglob("*")
                  if ".staging" in p.parts)
    assert left == [".staging", ".staging/features", f".staging/features/.dt={DAY}.lock"], left
