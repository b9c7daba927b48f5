"""Dagster assets, one module per group: ingest, features, curation, splits, publish, model."""
