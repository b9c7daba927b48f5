"""The data-home resource: the one object assets ask for paths."""
from __future__ import annotations

import dagster as dg
from pydantic import Field

from pipelines.home import DataHome, resolve_home


class PickapicHome(dg.ConfigurableResource):
    """Where the raw zone, warehouse, blobs and published datasets live."""

    root: str = Field(
        default="",
        description="Data home directory; empty means $PICKAPIC_HOME, then ./data.",
    )

    def home(self) -> DataHome:
        return DataHome(resolve_home(self.root or None))
