"""``python -m training``: train (flags: ``python -m training --help``; ``torchrun ... -m training`` for DDP).

Run alone, an ordinary mistake is one line (:func:`formats.commands.run_command`). Under ``torchrun`` (its
``TORCHELASTIC_RUN_ID`` in the environment) an error is left to propagate: the elastic agent then reports which
rank failed with what (``[rank1]: training.data.ShardChecksumError: ...``), where a one-line error printed by
every rank alike would not say which rank it was nor what kind of error.
"""
import os
import sys

from formats.commands import run_command
from training.cli import main

if os.environ.get("TORCHELASTIC_RUN_ID"):
    sys.exit(main())
sys.exit(run_command("python -m training", main))
