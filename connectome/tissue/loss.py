"""Masked (partial-label) cross-entropy: each pixel names the set of classes its source allows.

A training source labels only some classes: EPFL marks mitochondria, so its other pixels say "not a
mitochondrion" (any of the other classes); VNC separates glia and mitochondria from neuropil. A
pixel's target is a bit set of allowed classes, and its loss is -log of the probability mass on that
set: -log sum_{c in S} p_c. Classes the source does not tell apart share the mass freely (no
gradient moves probability between them), and a pixel whose set is empty (unlabelled) or holds every
class carries no loss. A one-class set is the ordinary cross-entropy.
"""

from __future__ import annotations

import torch

from connectome.tissue.classes import ALL


def allowed_from_bits(target: torch.Tensor, n_classes: int) -> torch.Tensor:
    """(N, ...) bit sets -> (N, C, ...) bool, True where class c is allowed."""
    shifts = torch.arange(n_classes, device=target.device).view(1, n_classes, *([1] * (target.dim() - 1)))
    return ((target.long().unsqueeze(1) >> shifts) & 1).bool()


def masked_cross_entropy(logits: torch.Tensor, target: torch.Tensor,
                         weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over labelled pixels of -log P(class in allowed set); logits (N, C, ...), target (N, ...) bit sets.

    `weight` (N, ...) optionally weights each pixel (e.g. to balance rare labels)."""
    n_classes = logits.shape[1]
    allowed = allowed_from_bits(target, n_classes)
    log_all = torch.logsumexp(logits, dim=1)
    log_set = torch.logsumexp(logits.masked_fill(~allowed, float("-inf")), dim=1)
    labelled = (target != 0) & (target != (ALL & ((1 << n_classes) - 1)))
    nll = torch.where(labelled, log_all - log_set, torch.zeros_like(log_all))
    w = labelled.to(logits.dtype) if weight is None else weight * labelled.to(logits.dtype)
    return (nll * w).sum() / w.sum().clamp_min(1e-12)


def balance_weights(target: torch.Tensor) -> torch.Tensor:
    """Per-pixel weights 1/sqrt(frequency of its label set in the batch), mean 1 over labelled pixels."""
    values, inverse, counts = torch.unique(target, return_inverse=True, return_counts=True)
    w = counts.double().rsqrt()[inverse].to(torch.float32)
    labelled = target != 0
    return w / w[labelled].mean().clamp_min(1e-12) if labelled.any() else w
