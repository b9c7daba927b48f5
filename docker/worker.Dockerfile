# Beam SDK worker image of the feature stage, for Dataflow (--sdk_container_image), Flink and Spark
# (--environment_type=DOCKER --environment_config=IMAGE).
#
# NOT BUILT on the machine this project is developed on (it has no Docker engine). It is written
# against the documented layout of Beam's Python SDK image: python:3.11-bullseye with pip at
# /usr/local/bin/pip, Beam 2.77 and its GCP dependencies preinstalled, and the SDK worker launcher
# /opt/apache/beam/boot as the entrypoint. What it installs, and how, is exactly what the portable
# e2e test (tests/e2e/test_features_portable.py) gives its workers: the project's wheel installed
# with --no-deps, plus requirements-worker.txt. Build it from the repository root:
#
#   pip wheel --no-deps -w dist .                 # dist/pickapic_pipeline-0.1.0-py3-none-any.whl
#   docker build -f docker/worker.Dockerfile -t REGISTRY/pickapic-beam-worker:0.1.0 .
#   docker push REGISTRY/pickapic-beam-worker:0.1.0
FROM apache/beam_python3.11_sdk:2.77.0

# The worker's third-party packages. The NudeNet 320n model (320n.onnx) ships inside the nudenet
# wheel, so it is in the image from here on: nothing is downloaded when a worker starts.
COPY requirements-worker.txt /tmp/pickapic/requirements-worker.txt
RUN pip install --no-cache-dir -r /tmp/pickapic/requirements-worker.txt

# The project's own code. --no-deps: the wheel's dependency list is the whole project's (torch,
# dagster, transformers), which no worker imports.
COPY dist/pickapic_pipeline-0.1.0-py3-none-any.whl /tmp/pickapic/
RUN pip install --no-cache-dir --no-deps /tmp/pickapic/pickapic_pipeline-0.1.0-py3-none-any.whl \
    && rm -rf /tmp/pickapic \
    && python -c "import pipelines.features.stage, pipelines.features.nsfw; pipelines.features.nsfw.FastNudeDetector(intra_op_threads=1); print('NudeNet model:', pipelines.features.nsfw.model_path())"

# Unchanged from the base image: Beam's launcher fetches the pipeline options and starts the SDK harness.
ENTRYPOINT ["/opt/apache/beam/boot"]
