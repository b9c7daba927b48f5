"""The data-home resource: the one object assets ask for paths."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field, PrivateAttr

from formats.home import ENV_VAR, DataHome, resolve_home


def instance_home(instance: Any) -> Path | None:
    """The data home whose Dagster instance ``instance`` is, or None for an instance of no data home (an ephemeral
    one, a test's, a ``DAGSTER_HOME`` a user keeps elsewhere). A home's instance lives in ``HOME/dagster``
    (:attr:`formats.home.DataHome.dagster_home`: ``use_home`` sets ``DAGSTER_HOME`` to it, for ``pickapic build``,
    ``serve`` and ``ui``), so it is the folder holding the instance's root when that folder is named ``dagster`` and
    its parent looks like a data home; returned with links resolved."""
    from formats.outputs import looks_like_home

    try:
        root = instance.root_directory if instance is not None else None
    except Exception:   # noqa: BLE001 - an instance without a local root: of no data home
        return None
    if not root:
        return None
    folder = Path(os.path.abspath(root))          # HOME/dagster as given: a linked dagster folder still names HOME
    if folder.name != DataHome(folder.parent).dagster_home.name or not looks_like_home(folder.parent):
        return None
    return folder.parent.resolve()


def _same_folder(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name the same folder (links resolved; a bind mount of it too)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(a).resolve() == Path(b).resolve()


def check_instance_home(home: DataHome, instance: Any, source: str) -> None:
    """``ValueError`` when ``instance`` is a data home's (:func:`instance_home`) and ``home`` is not that home: a run
    recorded in home A's instance works on A only. A run launched on A's instance with ``resources.data_home.config.
    root`` naming another home B built B and recorded B's materializations, with the versions A's records give, in
    A's instance, so A's plan called its stale stage fresh while A's file was never rebuilt (review rev29f). A link
    or a relative path that resolves to A is A. One line, naming both homes."""
    own = instance_home(instance)
    if own is None or _same_folder(home.root, own):
        return
    raise ValueError(f"{source} {home.root} is not the data home of this Dagster instance ({own}): what runs on "
                     f"{own}'s instance (a run, a sensor, a schedule) works on {own} only (another home's tables "
                     f"recorded as its own would make its stale stages look fresh); leave the root empty, or run it "
                     f"from the other home's own UI or build (pickapic ui --home {home.root})")


class PickapicHome(dg.ConfigurableResource):
    """Where the raw zone, warehouse, blobs and published datasets live."""

    root: str = Field(
        default="",
        description="Data home directory; empty means $PICKAPIC_HOME, then ./data. Like the CLI's --home it must "
                    "be a data home, or a new or empty folder, and not inside another data home; on a data home's "
                    "own instance (pickapic serve / ui / build) it must be that home (a link or a relative path to "
                    "it is that home): another home's runs are recorded in its own instance.",
    )

    # the Dagster instance the resource was set up with (a run's, a sensor's or a schedule's): None outside one
    _instance: Any = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._instance = context.instance

    def home(self, instance: Any = None) -> DataHome:
        """The data home, checked as the CLI checks --home (``formats.outputs.check_home_dir``): a run never
        writes its warehouse, cache or Dagster state into a folder of other files or inside another home; and,
        where the run's instance (``instance``, else the one the resource was set up with) is a data home's, it
        must be that home (:func:`check_instance_home`: a run on home A's instance never builds home B)."""
        from formats.outputs import check_home_dir

        home = DataHome(resolve_home(self.root or None))
        source = "resources.data_home.config.root" if self.root else f"${ENV_VAR}" if os.environ.get(ENV_VAR) else "./data"
        check_home_dir(home, source)
        check_instance_home(home, instance if instance is not None else self._instance, source)
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
