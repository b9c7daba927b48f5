"""The home's one code location: the module ``pickapic serve`` and ``pickapic ui`` load (``-m``), which also names the
location in the UI and in the origin a build's run is stored with (:func:`dagster_project.instance.home_job_origin`).
No import: :mod:`dagster_project.serve` stays cheap, and the run storage needs no import of the serve module."""

MODULE = "dagster_project.definitions"
