"""The PickScore objective: KL(label distribution || softmax of the two scores), prompt-weighted."""
from __future__ import annotations

import torch
import torch.distributed as dist


def pair_kl(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-pair KL(p || softmax(scores)) for ``scores``/``labels`` of shape [B, 2] (0 * log 0 = 0)."""
    log_q = torch.log_softmax(scores.float(), dim=-1)
    p = labels.float()
    log_p = torch.where(p > 0, torch.log(p.clamp_min(1e-30)), torch.zeros_like(p))
    return (p * (log_p - log_q)).sum(dim=-1)


def global_weight_sum(weights: torch.Tensor) -> torch.Tensor:
    """Sum of the example weights over the whole (DDP) batch: an all-reduce when distributed."""
    total = weights.detach().float().sum()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def preference_loss(scores: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor,
                    weight_sum: torch.Tensor | None = None, world_size: int = 1) -> torch.Tensor:
    """sum_i w_i KL_i / sum_global w, with w_i = 1/num_example_per_prompt.

    Under DDP pass ``weight_sum=global_weight_sum(weights)`` and ``world_size``: the local loss is scaled
    by ``world_size`` because DDP averages gradients over ranks, so the summed gradient is exactly that
    of the global weighted mean.
    """
    if scores.shape != labels.shape or scores.shape[-1] != 2 or weights.shape != scores.shape[:1]:
        raise ValueError(f"shapes scores {tuple(scores.shape)}, labels {tuple(labels.shape)}, "
                         f"weights {tuple(weights.shape)} do not describe a batch of pairs")
    total = global_weight_sum(weights) if weight_sum is None else weight_sum
    return (weights.float() * pair_kl(scores, labels)).sum() * world_size / total


def contrastive_loss(all_scores: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor,
                     weight_sum: torch.Tensor | None = None, world_size: int = 1) -> torch.Tensor:
    """In-batch CLIP-style term: each caption against all 2B images of the (local) batch, soft target = its
    pair's label on its own two images (0 elsewhere); cross-entropy weighted like ``preference_loss``.

    Other prompts' images are negatives, which teaches caption/attribute matching from every batch (the
    pairwise objective alone only compares two images made for the same prompt).
    """
    batch = labels.shape[0]
    if all_scores.shape != (batch, 2 * batch) or weights.shape != (batch,):
        raise ValueError(f"shapes all_scores {tuple(all_scores.shape)}, labels {tuple(labels.shape)}, "
                         f"weights {tuple(weights.shape)} do not describe a batch of pairs")
    target = torch.zeros_like(all_scores, dtype=torch.float32)
    target.view(batch, batch, 2)[torch.arange(batch), torch.arange(batch)] = labels.float()
    ce = -(target * torch.log_softmax(all_scores.float(), dim=-1)).sum(dim=-1)
    total = global_weight_sum(weights) if weight_sum is None else weight_sum
    return (weights.float() * ce).sum() * world_size / total
