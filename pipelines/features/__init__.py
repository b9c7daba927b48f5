"""Stage 3, features: an Apache Beam job that fingerprints every image of a day.

- ``config``: the stage's settings (``FeaturesConfig``) and the counters of a run (``FeaturesReport``).
- ``stage``: ``build_features``, the driver: inputs, reuse, the pipeline run, reconciliation, atomic commit.
- ``transforms``: the Beam DoFns (read, decode, NSFW) and the ``FingerprintImages`` PTransform.
- ``decode``: bounded image decoding (header checks before pixels; libspng for PNG).
- ``derive``: what one decode yields: perceptual hashes and the training JPEG.
- ``nsfw``: NudeNet, loaded from its bundled local weights, batched.
- ``blobs``: blob-store URLs, training-JPEG keys, atomic blob writes.
- ``reuse``: incremental reuse of rows by uid and by sha256.
- ``blobidentity``: the identity of the blob behind each row, so a row is reused by uid only while its blob is
  the file it was read from (review rev29a).
- ``staging``: the run's scratch folder: worker inputs and the pipeline's one sink.
- ``runner``: Beam options and the local runner (no Prism download).
- ``runnernames``: which runner a ``--runner`` value names, and whether the stage runs it (the settings check a
  name or a dotted path's form, importing nothing; the stage imports a dotted path when it starts, and checks
  the Beam options a runner needs to run here without a download).
- ``portable`` / ``beamworker``: running the job on Beam's portable runner with external workers, quietly.
- ``__main__``: the command line, ``python -m pipelines.features --home H --day D``.

Running it on Dataflow, Flink, Spark or the portable runner: README, section 3.
"""
