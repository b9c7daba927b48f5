"""The daily partitioning of the raw exports."""
import os

import dagster as dg

# The first day a partition may exist for; simulated and real exports start after it.
PARTITIONS_START = os.environ.get("PICKAPIC_PARTITIONS_START", "2023-01-01")

daily = dg.DailyPartitionsDefinition(start_date=PARTITIONS_START, timezone="UTC")
