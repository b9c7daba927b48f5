"""``python -m training``: train (flags: ``python -m training --help``; ``torchrun ... -m training`` for DDP)."""
import sys

from training.cli import main

sys.exit(main())
