"""``python -m simulator --home DIR ...``: write simulated app logs and ground truth."""
from __future__ import annotations

import argparse
import json
import sys

from simulator.cli import add_arguments, run_from_args


def main(argv: list[str] | None = None) -> int:
    """Parse flags, run the simulator, print a one-line JSON summary."""
    parser = argparse.ArgumentParser(prog="python -m simulator", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        report = run_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    meta = report.metadata()
    meta.pop("defects")
    print(json.dumps(meta, sort_keys=True))
    return 0


if __name__ == "__main__":
    from formats.commands import run_command

    sys.exit(run_command('python -m simulator', main))
