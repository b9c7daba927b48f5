"""The one stage open_clip's WebDataset reader needs to read published Pick-a-Pic shards.

open_clip's ``get_wds_dataset`` (``open_clip_train/data.py``) keeps only samples that have an image
member named ``jpg`` / ``png`` / ``jpeg`` / ``webp`` and a ``txt`` member
(``filter_no_caption_or_no_image``). A published sample has ``0.jpg`` and ``1.jpg`` (two images for one
prompt and a preference between them), so open_clip drops every one of them silently, and its
training loop then waits for ever on an empty pipeline. Contrastive CLIP training wants one image per
caption: :func:`preferred_image` gives each labelled pair its preferred image as ``jpg``; a tie has no
preferred image and keeps no ``jpg``, so open_clip's own filter drops it. Insert it right after
``tarfile_to_samples_nothrow`` (and ``wds.tarfile_to_samples`` in the evaluation branch) as
``wds.map(preferred_image)``; the function has no dependency but ``json``, so it can be pasted there.
"""
from __future__ import annotations

import json


def preferred_image(sample: dict) -> dict:
    """The raw sample with its preferred image as ``jpg`` (none for a tie), ``0.jpg`` / ``1.jpg`` removed."""
    meta = json.loads(sample["json"])
    out = {key: value for key, value in sample.items() if key not in ("0.jpg", "1.jpg")}
    if meta["has_label"] and meta["label_0"] != meta["label_1"]:
        out["jpg"] = sample["0.jpg"] if meta["label_0"] > meta["label_1"] else sample["1.jpg"]
    return out
