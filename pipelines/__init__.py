"""Pipeline stages as plain Python: no dagster import anywhere below this package.

Importing it turns off onnxruntime's telemetry for this process and the processes it starts
(``ORT_DISABLE_TELEMETRY=1``): onnxruntime 1.32 on Linux starts 1DS telemetry when it is imported,
writing a device id and an event cache under ``~/.cache/Microsoft/DeveloperTools/.onnxruntime/`` for
upload; the decision is latched at its import, so it is made here, before the feature stage's NSFW
detector (the only importer) or any Beam worker that imports a stage loads it. It also keeps gRPC from sending
this machine's own connections (Beam's workers to their runner) to a proxy. Nothing here may use the
network at run time.
"""
import os as _os

_os.environ["ORT_DISABLE_TELEMETRY"] = "1"

# gRPC, over which the feature stage's Beam workers reach the runner on this machine (localhost), sends a channel
# through $grpc_proxy / $https_proxy / $http_proxy unless $no_grpc_proxy (else $no_proxy) names its host: on a
# machine with a proxy set and loopback not listed, the workers never reached the runner and the build hung. The
# loopback names are added to the list gRPC reads (for this process and those it starts); other hosts keep it.
_LOOPBACK = ("localhost", "127.0.0.1", "::1")
_listed = [name.strip() for name in _os.environ.get("no_grpc_proxy", _os.environ.get("no_proxy", "")).split(",")]
_listed = [name for name in _listed if name]
_os.environ["no_grpc_proxy"] = ",".join(_listed + [name for name in _LOOPBACK if name not in _listed])
