"""Stage 2, features: an Apache Beam job that fingerprints every image of a day.

- ``job``: the stage's config, the Beam transforms (read, decode, hash, NSFW), incremental reuse and the CLI.
- ``decode``: bounded image decoding (header checks before pixels; libspng for PNG).
- ``nsfw``: NudeNet, loaded from its bundled local weights, batched.
- ``portable`` / ``beamworker``: running the job on Beam's portable runner with external workers.
"""
