"""PickScore loss and tie-aware metric against hand-computed examples."""
import math

import numpy as np
import pytest
import torch

from training.loss import pair_kl, preference_loss
from training.metric import choose_random_threshold, choose_threshold, pair_credit, random_baseline, tie_aware_accuracy


def test_loss_matches_hand_computed_kl_with_tie_and_weights():
    scores = torch.tensor([[2.0, 0.0], [0.0, 0.0], [1.0, 3.0]])
    labels = torch.tensor([[1.0, 0.0], [0.5, 0.5], [1.0, 0.0]])
    weights = torch.tensor([1.0, 0.5, 1.0 / 3.0])  # 1 / num_example_per_prompt
    q0 = 1 / (1 + math.exp(-2))                      # softmax(2, 0)[0]
    kl = [-math.log(q0),                              # KL([1,0] || q) = -log q0
          0.0,                                        # tie vs equal scores: p == q
          -math.log(1 / (1 + math.exp(2)))]           # winner scored lower by 2
    expected = (1.0 * kl[0] + 0.5 * kl[1] + kl[2] / 3) / (1.0 + 0.5 + 1 / 3)
    assert torch.allclose(pair_kl(scores, labels), torch.tensor(kl), atol=1e-6)
    assert preference_loss(scores, labels, weights).item() == pytest.approx(expected, rel=1e-6)


def test_tie_loss_penalises_confidence_and_world_scaling():
    # a tie against scores (1, 0): KL = 0.5 log(0.5/q0) + 0.5 log(0.5/q1)
    q0 = 1 / (1 + math.exp(-1))
    expected = 0.5 * math.log(0.5 / q0) + 0.5 * math.log(0.5 / (1 - q0))
    got = pair_kl(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.5, 0.5]]))
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # DDP form: a rank holding half the global weight, scaled by world size, gives sum_local(wKL) * 2 / W
    s, lab, w = torch.tensor([[2.0, 0.0]]), torch.tensor([[1.0, 0.0]]), torch.tensor([0.5])
    local = preference_loss(s, lab, w, weight_sum=torch.tensor(1.0), world_size=2)
    assert local.item() == pytest.approx(0.5 * pair_kl(s, lab).item() * 2 / 1.0)


def test_loss_rejects_bad_shapes():
    with pytest.raises(ValueError, match="shapes"):
        preference_loss(torch.zeros(3, 2), torch.zeros(3, 2), torch.ones(2))


# probabilities p0 chosen so that |p0 - p1| is easy to read: scores = (logit(p0), 0)
def _scores(p0s):
    return np.array([[math.log(p / (1 - p)), 0.0] for p in p0s])


def test_tie_aware_credit_hand_computed():
    scores = _scores([0.9, 0.52, 0.3, 0.6])    # |p0-p1| = 0.8, 0.04, 0.4, 0.2
    labels = np.array([[1, 0], [0.5, 0.5], [1, 0], [0.5, 0.5]], dtype=float)
    # t = 0: predictions 0, 0, 1, 0 -> credits 1, 0.5 (pred side, label tie), 0, 0.5
    assert pair_credit(scores, labels, 0.0).tolist() == [1.0, 0.5, 0.0, 0.5]
    # t = 0.3: predictions 0, tie, 1, tie -> 1, 1, 0, 1
    assert pair_credit(scores, labels, 0.3).tolist() == [1.0, 1.0, 0.0, 1.0]
    # t = 0.5: 0, tie, tie, tie -> 1, 1, 0.5, 1
    assert tie_aware_accuracy(scores, labels, 0.5) == pytest.approx(3.5 / 4)
    # t = 1.0: all ties -> 0.5, 1, 0.5, 1
    assert tie_aware_accuracy(scores, labels, 1.0) == pytest.approx(3.0 / 4)


def test_threshold_choice_picks_smallest_best():
    scores = _scores([0.9, 0.52, 0.3, 0.6])
    labels = np.array([[1, 0], [0.5, 0.5], [1, 0], [0.5, 0.5]], dtype=float)
    choice = choose_threshold(scores, labels)
    # t in {0.4 (|0.4| <= 0.4 -> pair 3 becomes a tie: 0.5), ...}: best is 3.5/4 first reached at t = 0.4
    assert choice.by_threshold[0.3] == pytest.approx(3.0 / 4)
    assert choice.accuracy == pytest.approx(3.5 / 4)
    assert choice.threshold == 0.4


def test_random_baseline_formula():
    labels = np.array([[1, 0]] * 6 + [[0.5, 0.5]] * 2 + [[0, 1]] * 2, dtype=float)  # 2 ties of 10
    # ties/total * (t + (1 - t)/2) + 0.5 * non_ties/total
    assert random_baseline(labels, 0.0) == pytest.approx(0.2 * 0.5 + 0.5 * 0.8)
    assert random_baseline(labels, 0.4) == pytest.approx(0.2 * (0.4 + 0.3) + 0.4)
    assert random_baseline(labels, 1.0) == pytest.approx(0.2 + 0.4)
    assert choose_random_threshold(labels) == 1.0  # the paper's 56.8 = 13.6% ties predicted as ties
    # Monte-Carlo check of the formula: uniform random p0 with threshold 0.4
    rng = np.random.default_rng(0)
    p0 = rng.uniform(size=(20000, 1))
    sim = np.log(np.hstack([p0, 1 - p0]))
    big = np.repeat(labels, 2000, axis=0)
    assert tie_aware_accuracy(sim, big, 0.4) == pytest.approx(random_baseline(labels, 0.4), abs=0.01)
