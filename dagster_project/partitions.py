"""The partitions of the daily assets: one per raw day the data home has received.

Partitions are added as raw days land (by ``pickapic build``, the raw-day sensor and the nightly
schedule), so the UI shows the home's real days only: a home started on 2023-02-13 with three days of
exports shows three partitions, not every day since some fixed start date.
"""
import dagster as dg

from dagster_project.versions import PARTITIONS

raw_days = dg.DynamicPartitionsDefinition(name=PARTITIONS)
daily = raw_days  # the daily assets' partitions (the name the asset modules use)
