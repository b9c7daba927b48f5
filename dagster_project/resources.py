"""The data-home resource: the one object assets ask for paths."""
from __future__ import annotations

import os

import dagster as dg
from pydantic import Field

from formats.home import ENV_VAR, DataHome, resolve_home


class PickapicHome(dg.ConfigurableResource):
    """Where the raw zone, warehouse, blobs and published datasets live."""

    root: str = Field(
        default="",
        description="Data home directory; empty means $PICKAPIC_HOME, then ./data. Like the CLI's --home it must "
                    "be a data home, or a new or empty folder, and not inside another data home.",
    )

    def home(self) -> DataHome:
        """The data home, checked as the CLI checks --home (``formats.outputs.check_home_dir``): a run never
        writes its warehouse, cache or Dagster state into a folder of other files or inside another home."""
        from formats.outputs import check_home_dir

        home = DataHome(resolve_home(self.root or None))
        source = "resources.data_home.config.root" if self.root else f"${ENV_VAR}" if os.environ.get(ENV_VAR) else "./data"
        check_home_dir(home, source)
        return home


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
