"""Matplotlib figures saved as deterministic PNGs (training curve, leaderboard, best-of-n)."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from formats.files import write_bytes_atomic


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (no display needed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path) -> Path:
    """Write ``fig`` to ``path`` as a PNG at 90 dpi without the Software stamp (same figure, same bytes), close it."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, metadata={"Software": None})
    pyplot().close(fig)
    write_bytes_atomic(Path(path), buffer.getvalue())
    return Path(path)
