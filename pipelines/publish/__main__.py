"""``python -m pipelines.publish --home H [flags]``: publish ``split_pairs`` as a dataset version, switch ``latest``."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from formats.commands import run_command
from formats.home import DataHome
from formats.settings import add_flags, stage_config
from pipelines.publish.config import PublishReport
from pipelines.publish.version import publish_dataset


def main(argv: Sequence[str] | None = None) -> PublishReport | dict:
    """Publish the home's ``split_pairs`` with its settings file's ``[publish]`` values, then the flags given (with
    ``--version NAME``: check that published version instead, :func:`check_published`)."""
    parser = argparse.ArgumentParser(prog="python -m pipelines.publish", allow_abbrev=False, description=__doc__)
    parser.add_argument("--home", default=None, help="data home (default: $PICKAPIC_HOME, else ./data)")
    parser.add_argument("--version", dest="check_version", metavar="NAME", default=None,
                        help="publish nothing: check the published version NAME (or latest) against its "
                             "manifest.json, every file's size (and sha256 with --verify-checksums), naming each "
                             "file that differs (exit 1); what a checksum error of export, train or query "
                             "recommends")
    add_flags(parser, "publish")
    args = parser.parse_args(argv)
    home = DataHome.at(args.home)
    if args.check_version is not None:
        return check_published(home, args.check_version, stage_config(home.root, "publish", args).verify_checksums)

    def progress(message: str, done: int | None = None, total: int | None = None) -> None:
        print(message if done is None else f"{message}: {done}/{total}", file=sys.stderr, flush=True)

    report = publish_dataset(home, stage_config(home.root, "publish", args), progress)
    print(json.dumps({k: v for k, v in report.metadata().items() if k != "splits"}, indent=2, sort_keys=True))
    return report


def check_published(home: DataHome, version: str, checksums: bool) -> dict:
    """Check the published ``version`` (``latest``: the version it names) of ``home`` against its manifest
    (:func:`pipelines.publish.manifest.verify_version`: exactly its files, each a regular file of its size, and with
    ``checksums`` of its sha256), held for reading meanwhile (retention keeps it); print what was checked as JSON.
    A file that differs is a :class:`~pipelines.publish.manifest.ManifestMismatch` naming each, one line a file.
    Nothing is written, published or switched (review rev32b: the advice of a checksum error named the publish
    alone, which checks the version of the home's current inputs, not the older version that failed)."""
    from formats.dataset import LATEST, reading_version
    from pipelines.publish.manifest import verify_version

    with reading_version(home, None if version == LATEST else version) as path:
        manifest = verify_version(path, checksums=checksums)
    result = {"version": path.name, "files": len(manifest["files"]), "checked": "sha256" if checksums else "bytes",
              "differ": 0}
    print(json.dumps(result, indent=2, sort_keys=True))
    return result


def run(argv: Sequence[str] | None = None) -> int:
    """:func:`main` as a command (:func:`formats.commands.run_command`, as every stage module): 0, or 1 and the
    error on stderr (every line of it: a version that differs from its manifest is named file by file) without a
    traceback for what a publish refuses or finds wrong; a bug (an interpreter's RuntimeError among them) keeps
    its traceback; a closed stdout ends it quietly."""
    return run_command("python -m pipelines.publish", main, argv)


if __name__ == "__main__":
    sys.exit(run())
