"""``python -m pipelines.features --home H --day D [flags] [beam options]``: fingerprint one day's images."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from formats.commands import progress_line, run_command
from formats.home import DataHome
from formats.settings import add_flags, stage_config
from pipelines.features.config import FeaturesReport
from pipelines.features.stage import build_features


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipelines.features", allow_abbrev=False,
                                     description=build_features.__doc__,
                                     epilog="Unknown options are passed to Beam's PipelineOptions unchanged.")
    parser.add_argument("--home", default=None, help="data home (default $PICKAPIC_HOME or ./data)")
    parser.add_argument("--day", required=True, help="partition day YYYY-MM-DD")
    add_flags(parser, "features", exclude=("runner",))  # --runner stays Beam's own option
    return parser


def run(argv: Sequence[str] | None = None) -> FeaturesReport:
    """Command line: parse our options (over the home's settings file), pass the rest to Beam, print the report.
    A closed stdout drops the progress lines, never the work (``formats.commands.progress_line``)."""
    args, beam_args = _parser().parse_known_args(argv)
    home = DataHome.at(args.home)
    report = build_features(home, args.day, stage_config(home.root, "features", args), beam_args,
                            progress=progress_line)
    print(json.dumps({k: v for k, v in report.metadata().items() if k != "summary"}, indent=2, sort_keys=True))
    return report


if __name__ == "__main__":
    sys.exit(run_command("python -m pipelines.features", run))
