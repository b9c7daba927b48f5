"""``pickapic train`` / ``python -m training`` flags, generated from ``TrainConfig`` without importing torch.

Every ``TrainConfig`` field is a flag named after it (``--learning-rate``), typed and described by the
field itself; a flag left out keeps the preset's value. Building the parser imports only the config
module, so ``--help`` answers at once; torch loads when a run starts.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
from typing import Any

from formats.commands import progress_line
from formats.settings import flag_type, knobs
from training.config import PRESETS, TrainConfig, preset

# Booleans keep the spelling users already type: each flag turns its field off.
_OFF_FLAGS = {"resampled": ("--no-resampled", "walk seeded epochs with split_by_node/split_by_worker instead of "
                                               "resampling shards"),
              "draft_decode": ("--no-draft", "full JPEG decode of train images too (evaluation always decodes "
                                             "exactly)"),
              "bf16": ("--fp32", "no bf16 autocast on CUDA")}
_REQUIRED = ("data_dir", "output_dir")


def _preset_values(name: str) -> str:
    """'demo: X, paper: Y' for the help text (the dataclass default where a preset leaves it)."""
    default = next(f.default for f in dataclasses.fields(TrainConfig) if f.name == name)
    values = {p: PRESETS[p].get(name, default) for p in sorted(PRESETS)}
    if len(set(map(repr, values.values()))) == 1:
        return f"default {values['demo']!r}"
    return ", ".join(f"{p}: {v!r}" for p, v in values.items())


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Trainer flags (mounted as ``pickapic train``): one per ``TrainConfig`` field, each with help text."""
    specs = knobs("train")   # type, range and choices of every field, as the settings file checks them
    parser.add_argument("--preset", default="demo", choices=sorted(PRESETS),
                        help="start from this recipe; the flags given override it (default demo)")
    for field in dataclasses.fields(TrainConfig):
        name, text = field.name, field.metadata["help"]
        if name == "preset":
            continue
        if name in _OFF_FLAGS:
            flag, off_help = _OFF_FLAGS[name]
            parser.add_argument(flag, dest=name, action="store_false", default=None, help=off_help)
            continue
        flag = "--" + name.replace("_", "-")
        if name in _REQUIRED:
            parser.add_argument(flag, required=True, help=text)
        elif name == "init_from":
            parser.add_argument(flag, default=None, help=f"{text} (default scratch)")
        else:
            parser.add_argument(flag, type=flag_type(specs[name]), default=None, metavar=name.upper(),
                                help=f"{text} ({_preset_values(name)}; {specs[name].allowed()})".replace("%", "%%"))
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """TrainConfig from parsed flags (preset values, then the flags given)."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    overrides = {k: v for k, v in vars(args).items() if k in names and k != "preset" and v is not None}
    return preset(args.preset, **overrides)


def run_from_args(args: argparse.Namespace) -> Any:
    """Train from parsed flags; rank 0 prints each event and a JSON summary."""
    from formats.dataset import resolve_data_dir
    from formats.home import DataHome
    from formats.outputs import check_output_dir
    from training.runs import RUN_MARKERS, check_run_folder_version
    from training.train import train

    # a new or empty folder or an earlier run's (resumed), never a link, a file or a pipeline folder of a data home
    home = DataHome.at(getattr(args, "home", None))
    check_output_dir(args.output_dir, [home.root], "--output-dir", in_home=True, markers=list(RUN_MARKERS))
    with contextlib.suppress(OSError):      # a missing data_dir is the trainer's own one-line error
        check_run_folder_version(args.output_dir, home, resolve_data_dir(args.data_dir), "--output-dir")

    def show(event: dict[str, Any]) -> None:
        if event["event"] != "done":       # a reader gone (| head) drops the lines, never the training
            progress_line(json.dumps(event))

    result = train(config_from_args(args), on_event=show)
    if int(os.environ.get("RANK", "0")) == 0:
        progress_line(json.dumps(result.metadata(), indent=1))
    return result


def main(argv: list[str] | None = None) -> int:
    """``python -m training`` (also under ``torchrun ... -m training``)."""
    parser = add_arguments(argparse.ArgumentParser(prog="python -m training", description=__doc__,
                                                   formatter_class=argparse.RawDescriptionHelpFormatter))
    run_from_args(parser.parse_args(argv))
    return 0
