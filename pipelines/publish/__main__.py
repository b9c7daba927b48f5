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


def main(argv: Sequence[str] | None = None) -> PublishReport:
    """Publish the home's ``split_pairs`` with its settings file's ``[publish]`` values, then the flags given."""
    parser = argparse.ArgumentParser(prog="python -m pipelines.publish", allow_abbrev=False, description=__doc__)
    parser.add_argument("--home", default=None, help="data home (default: $PICKAPIC_HOME, else ./data)")
    add_flags(parser, "publish")
    args = parser.parse_args(argv)
    home = DataHome.at(args.home)

    def progress(message: str, done: int | None = None, total: int | None = None) -> None:
        print(message if done is None else f"{message}: {done}/{total}", file=sys.stderr, flush=True)

    report = publish_dataset(home, stage_config(home.root, "publish", args), progress)
    print(json.dumps({k: v for k, v in report.metadata().items() if k != "splits"}, indent=2, sort_keys=True))
    return report


def run(argv: Sequence[str] | None = None) -> int:
    """:func:`main` as a command (:func:`formats.commands.run_command`, as every stage module): 0, or 1 and the
    error on stderr (every line of it: a version that differs from its manifest is named file by file) without a
    traceback for what a publish refuses or finds wrong; a bug (an interpreter's RuntimeError among them) keeps
    its traceback; a closed stdout ends it quietly."""
    return run_command("python -m pipelines.publish", main, argv)


if __name__ == "__main__":
    sys.exit(run())
