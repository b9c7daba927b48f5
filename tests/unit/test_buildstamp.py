"""The build stamp: any change a plan would see changes the key; the same state keeps it."""
import os

from dagster_project import buildstamp
from formats.home import DataHome
from tests.inplace import overwrite


def _home(tmp_path) -> DataHome:
    home = DataHome(tmp_path / "home")
    home.raw_day("2023-02-13").mkdir(parents=True)
    for table in ("users", "images", "rankings", "downloads"):
        home.raw_file("2023-02-13", table).write_bytes(b"x")
    home.table_file("pairs").parent.mkdir(parents=True)
    home.table_file("pairs").write_bytes(b"p")
    (home.datasets / "v1").mkdir(parents=True)
    (home.datasets / "v1" / "manifest.json").write_text("{}")
    (home.datasets / "latest").symlink_to("v1")
    return home


def test_same_state_same_key_and_every_input_changes_it(tmp_path):
    home = _home(tmp_path)
    key = buildstamp.stamp_key(home)
    assert buildstamp.stamp_key(home) == key and not buildstamp.is_up_to_date(home, key)
    buildstamp.write_stamp(home, key)
    assert buildstamp.is_up_to_date(home, key)
    changes = []
    assert buildstamp.stamp_key(home, assignments=["dedup.k=4"]) != key
    assert buildstamp.stamp_key(home, with_model=True) != key
    (home.root / "pickapic.toml").write_text("[dedup]\nk = 4\n")
    changes.append(buildstamp.stamp_key(home))
    overwrite(home.raw_file("2023-02-13", "rankings"), b"y")      # the same size, later (not in the same clock tick)
    changes.append(buildstamp.stamp_key(home))
    home.raw_day("2023-02-14").mkdir()
    changes.append(buildstamp.stamp_key(home))
    tmp = home.table_file("pairs").with_suffix(".tmp")
    tmp.write_bytes(b"p")
    os.replace(tmp, home.table_file("pairs"))  # rewritten by a run from the UI or the daemon: a new inode
    changes.append(buildstamp.stamp_key(home))
    (home.datasets / "v2").mkdir()
    (home.datasets / "v2" / "manifest.json").write_text("{}")
    (home.datasets / "latest").unlink()
    (home.datasets / "latest").symlink_to("v2")
    changes.append(buildstamp.stamp_key(home))
    outside = tmp_path / "phrases.txt"
    outside.write_text("nsfw\n")
    (home.root / "pickapic.toml").write_text(f"[curation]\nphrases_file = '{outside}'\n")
    before = buildstamp.stamp_key(home)
    outside.write_text("nsfw\nmore\n")
    changes.append(buildstamp.stamp_key(home))
    assert len({key, before, *changes}) == len(changes) + 2
    buildstamp.clear_stamp(home)
    assert not buildstamp.is_up_to_date(home, key)


def test_an_absolute_latest_link_is_the_same_version_and_its_model_is_watched(tmp_path):
    # a rollback by hand (`ln -sfn "$PWD/v1" latest`) names the same version as the relative link the publish
    # writes (review rev25d: formats.dataset.latest_version), so the stamp is the same and the model of that
    # version is still watched (the raw link target joined to the models folder named no model at all)
    home = _home(tmp_path)
    model = home.models / "preference_model" / "v1"
    model.mkdir(parents=True)
    (model / "eval.json").write_text("{}")
    relative = buildstamp.stamp_key(home, with_model=True)
    (home.datasets / "latest").unlink()
    (home.datasets / "latest").symlink_to(home.datasets / "v1")
    assert buildstamp.stamp_key(home, with_model=True) == relative
    tmp = model / "eval.tmp"
    tmp.write_text('{"accuracy": 1}')
    os.replace(tmp, model / "eval.json")      # the model of the version readers are on was trained again
    assert buildstamp.stamp_key(home, with_model=True) != relative
