"""The data-home resource: the one object assets ask for paths."""
from __future__ import annotations

import dagster as dg
from pydantic import Field

from formats.home import DataHome, resolve_home


class PickapicHome(dg.ConfigurableResource):
    """Where the raw zone, warehouse, blobs and published datasets live."""

    root: str = Field(
        default="",
        description="Data home directory; empty means $PICKAPIC_HOME, then ./data.",
    )

    def home(self) -> DataHome:
        return DataHome(resolve_home(self.root or None))


class AppDatabase(dg.ConfigurableResource):
    """The app's own PostgreSQL database and image storage: the source ``app_export`` reads."""

    dsn: str = Field(description="libpq DSN or postgresql:// URL of the app database. Give it as "
                                 "dg.EnvVar('PICKAPIC_APP_DB_DSN') so the value (and any password in it) never "
                                 "shows in run config, logs or the UI.")
    image_store: str = Field(default="", description="The app's blob folder or URL holding {image_uid}.png "
                                                     "(s3://, gs:// via Beam FileSystems); empty: "
                                                     "$PICKAPIC_APP_IMAGE_STORE, and no blob copy if unset.")
    dsn_source: str = Field(default="$PICKAPIC_APP_DB_DSN",
                            description="Where the DSN came from, for error messages (never its value).")

    def store(self) -> str:
        """The image store location ('' when none is configured)."""
        import os

        from pipelines.appdb.connection import IMAGE_STORE_ENV

        return self.image_store or os.environ.get(IMAGE_STORE_ENV, "")
