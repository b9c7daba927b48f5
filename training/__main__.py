"""``python -m training`` = ``python -m training.train``."""
import sys

from training.train import main

sys.exit(main())
