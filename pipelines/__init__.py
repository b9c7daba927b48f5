"""Pipeline stages as plain Python: no dagster import anywhere below this package."""
