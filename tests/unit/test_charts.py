"""Charts for the Dagster UI read their Parquet files by a bound path: quotes in a path are data, not SQL."""
import base64
import re

import pyarrow as pa
import pyarrow.parquet as pq

from dagster_project.charts import cluster_size_histogram, nsfw_histogram, split_sizes
from schemas.features import NSFW_CLASSES


def _png(value) -> bytes:
    return base64.b64decode(re.search(r"base64,([A-Za-z0-9+/=]+)\)", value.value).group(1))


def test_paths_with_a_single_quote_are_read_not_executed(tmp_path):
    folder = tmp_path / "it's a home'); SELECT 1; --"
    folder.mkdir()
    clusters = folder / "duplicate_clusters.parquet"
    pq.write_table(pa.table({"cluster_id": ["a", "a", "b"], "cluster_size": [2, 2, 1]}), clusters)
    split_pairs = folder / "split_pairs.parquet"
    pq.write_table(pa.table({"split": ["train", "train", "test"], "label_0": [1.0, 0.5, 0.0]}), split_pairs)
    features = folder / "image_features.parquet"
    nsfw = pa.array([{name: 0.5 for name in NSFW_CLASSES}, None])
    pq.write_table(pa.table({"nsfw_max": nsfw}), features)
    for chart in (cluster_size_histogram(str(clusters)), split_sizes(str(split_pairs)), nsfw_histogram(str(features))):
        assert _png(chart).startswith(b"\x89PNG")
