"""In-batch contrastive term, own-pair score extraction, and train-image augmentation."""
import math

import pytest
import torch

from training.config import TrainConfig, preset
from training.loss import contrastive_loss, preference_loss
from training.model import own_pair_scores
from training.train import augment_images


def test_own_pair_scores_picks_each_captions_two_images():
    all_scores = torch.arange(3 * 6, dtype=torch.float32).view(3, 6)
    assert own_pair_scores(all_scores).tolist() == [[0.0, 1.0], [8.0, 9.0], [16.0, 17.0]]


def test_contrastive_loss_hand_computed_and_reduces_to_pairwise_for_one_pair():
    all_scores = torch.tensor([[2.0, 0.0, 1.0, 1.0], [0.0, 0.0, 3.0, 1.0]])
    labels = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    weights = torch.tensor([1.0, 0.5])
    lse0 = math.log(math.exp(2) + 1 + 2 * math.e)
    lse1 = math.log(2 + math.exp(3) + math.e)
    ce = [-(2 - lse0), -(0.5 * (3 - lse1) + 0.5 * (1 - lse1))]
    expected = (ce[0] + 0.5 * ce[1]) / 1.5
    assert contrastive_loss(all_scores, labels, weights).item() == pytest.approx(expected, rel=1e-6)
    # a batch of one pair has no other images: the term is the pairwise cross-entropy (KL + label entropy)
    one, lab, w = torch.tensor([[1.0, 3.0]]), torch.tensor([[1.0, 0.0]]), torch.tensor([1.0])
    assert contrastive_loss(one, lab, w).item() == pytest.approx(preference_loss(one, lab, w).item(), rel=1e-6)
    with pytest.raises(ValueError, match="shapes"):
        contrastive_loss(torch.zeros(2, 3), labels, weights)


@pytest.mark.parametrize("kind", ["hflip", "dihedral"])
def test_augment_images_keeps_each_image_a_symmetry_of_itself(kind):
    pixels = torch.randn(4, 2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    out = augment_images(pixels, kind, torch.Generator().manual_seed(0))
    assert out.shape == pixels.shape
    changed = 0
    for src, dst in zip(pixels.flatten(0, 1), out.flatten(0, 1)):
        variants = [torch.rot90(img, k, dims=(-2, -1)) for img in (src, src.flip(-1)) for k in range(4)]
        if kind == "hflip":
            variants = [src, src.flip(-1)]
        assert any(torch.equal(dst, v) for v in variants)
        changed += not torch.equal(dst, src)
    assert changed > 0
    assert torch.equal(augment_images(pixels, "none"), pixels)
    again = augment_images(pixels, kind, torch.Generator().manual_seed(0))
    assert torch.equal(again, out)  # drawn from the given generator


def test_config_validates_new_knobs():
    with pytest.raises(ValueError, match="augment"):
        preset("demo", augment="rotate")
    with pytest.raises(ValueError, match="contrastive_weight"):
        preset("demo", contrastive_weight=-1.0)
    assert TrainConfig.from_dict(preset("demo").to_dict()) == preset("demo")
