"""``python -m training``: train (flags: ``python -m training --help``; ``torchrun ... -m training`` for DDP)."""
import sys

from formats.commands import run_command
from training.cli import main

sys.exit(run_command("python -m training", main))
