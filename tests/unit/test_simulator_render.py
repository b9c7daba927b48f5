"""Rendering: distinct images are far apart in pHash, near duplicates close, damaged blobs fail to decode."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, UnidentifiedImageError

from simulator import defects, render, world


def specs(n: int, seed: int) -> list[render.ImageSpec]:
    rng = np.random.default_rng(seed)
    target = world.draw_attributes(n, rng)
    model = rng.choice(len(world.MODELS), size=n, p=world.MIX)
    drawn = world.render_attributes(target[:, :5], model, rng)
    return [render.ImageSpec(*map(int, drawn[i]), float(world.BLUR[model[i]]), float(world.NOISE[model[i]]),
                             int(rng.poisson(world.ARTEFACTS[model[i]])), int(rng.integers(0, 2**62)))
            for i in range(n)]


def phash_int(array: np.ndarray) -> int:
    return int(str(render.phash_of(array)), 16)


@pytest.mark.parametrize("size, n", [(64, 120), (128, 80), (512, 24)])
def test_distinct_images_differ_by_at_least_10_bits(size, n):
    hashes = [phash_int(render.render_array(s, size)) for s in specs(n, size)]
    distances = [bin(a ^ b).count("1") for i, a in enumerate(hashes) for b in hashes[i + 1:]]
    assert min(distances) >= 10


@pytest.mark.parametrize("size", [64, 128, 256, 512])
@pytest.mark.parametrize("transform", render.NEAR_TRANSFORMS)
def test_near_duplicates_stay_within_4_bits(size, transform):
    for spec in specs(2, size + len(transform)):
        source = render.render_array(spec, size)
        near, detail, distance = render.near_duplicate(transform, spec, source, size)
        assert not np.array_equal(near, source) and detail
        assert distance == render.phash_of(source) - render.phash_of(near) and distance <= 4
        # the PNG round trip keeps the hash
        back = np.asarray(Image.open(io.BytesIO(render.png_bytes(near))))
        assert render.phash_of(back) - render.phash_of(near) == 0


def test_rendering_is_a_pure_function_of_the_spec():
    spec = specs(1, 5)[0]
    assert render.png_bytes(render.render_array(spec, 96)) == render.png_bytes(render.render_array(spec, 96))
    assert render.render_array(spec, 96).shape == (96, 96, 3)
    blank = render.ImageSpec(0, 0, 1, 1, 0, 0.0, 0.0, 0, 1, blank=True)
    assert render.render_array(blank, 40).max() == 0


def test_damaged_blobs_fail_the_way_they_claim():
    png = render.png_bytes(render.render_array(specs(1, 9)[0], 64))
    assert defects.damage_blob(png, "missing_blob", 0) is None
    assert defects.damage_blob(png, "empty_file", 0) == b""
    for variant in (0, 1):
        with pytest.raises(UnidentifiedImageError):
            Image.open(io.BytesIO(defects.damage_blob(png, "not_an_image", variant)))
    truncated = Image.open(io.BytesIO(defects.damage_blob(png, "truncated_image", 0)))
    with pytest.raises(OSError):
        truncated.load()
