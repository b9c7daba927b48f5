"""Hand-run benchmarks, each printing ratios against a baseline measured in the same run."""
from __future__ import annotations

import json
from pathlib import Path


def report(result: dict, json_out: str | Path | None, indent: int = 1) -> None:
    """Print ``result`` as JSON, and write it to ``json_out`` too when given."""
    text = json.dumps(result, indent=indent)
    print(text)
    if json_out:
        Path(json_out).write_text(text + "\n")
