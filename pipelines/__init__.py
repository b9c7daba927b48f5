"""Pipeline stages as plain Python: no dagster import anywhere below this package.

Importing it turns off onnxruntime's telemetry for this process and the processes it starts
(``ORT_DISABLE_TELEMETRY=1``): onnxruntime 1.32 on Linux starts 1DS telemetry when it is imported,
writing a device id and an event cache under ``~/.cache/Microsoft/DeveloperTools/.onnxruntime/`` for
upload; the decision is latched at its import, so it is made here, before the feature stage's NSFW
detector (the only importer) or any Beam worker that imports a stage loads it. Nothing here may use the
network at run time.
"""
import os as _os

_os.environ["ORT_DISABLE_TELEMETRY"] = "1"
