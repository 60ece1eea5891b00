"""CIPL's loss terms, each a plain function of tensors (tested against hand computations).

Notation: B images, K prototype classes (multi-label: L findings then the reference class, last), M
prototypes per class, P = K * M, D feature channels, N = h * w feature cells.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

# co_attention is a layer of the network (cipl.model); importing it from here keeps
# `from cipl.losses import co_attention` working.
from cipl.model import co_attention  # noqa: F401


def classification_loss(logits: torch.Tensor, targets: torch.Tensor, multilabel: bool) -> torch.Tensor:
    """Multi-label: the two-way cross-entropy of every finding against the reference ("No Finding") logit,
    averaged over images and findings; equal to BCE(sigmoid(z_c - z_NF), y_c).

    logits (B, K); targets (B, K - 1) multi-hot over the findings (multi-label) or (B,) class indices.
    """
    if multilabel:
        return F.binary_cross_entropy_with_logits(logits[:, :-1] - logits[:, -1:], targets.float())
    return F.cross_entropy(logits, targets.long())


def cluster_separation(min_distances: torch.Tensor, class_labels: torch.Tensor,
                       prototypes_per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Multi-label cluster and separation costs (before weighting and hinge).

    cluster = mean over images of sum over the image's classes c of min_{j in class c} d_min[b, j];
    separation = mean over images of min over prototypes of classes the image does not have of d_min[b, j]
    (images that have every class are left out of it).

    min_distances (B, P); class_labels (B, K) multi-hot over the prototype classes (the reference included).
    """
    b = min_distances.shape[0]
    per_class = min_distances.view(b, -1, prototypes_per_class).min(dim=2).values  # (B, K)
    labels = class_labels.to(per_class.dtype)
    cluster = (per_class * labels).sum(dim=1).mean()
    own = labels.repeat_interleave(prototypes_per_class, dim=1).bool()  # (B, P)
    masked = min_distances.masked_fill(own, float("inf")).min(dim=1).values
    valid = torch.isfinite(masked)
    separation = masked[valid].mean() if valid.any() else min_distances.new_zeros(())
    return cluster, separation


def shared_targets(y_a: torch.Tensor, y_b: torch.Tensor, multilabel: bool) -> torch.Tensor:
    """What two paired images share: y_a AND y_b (multi-hot findings) or the common class (single-label)."""
    if multilabel:
        return y_a * y_b
    if not torch.equal(y_a, y_b):
        raise ValueError("single-label pairs must share their class")
    return y_a


def map_alignment(maps: torch.Tensor, teacher_maps: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Interpretation-level alignment: mean over images of sum over cells of 1 - cos(S[:, :, h, w], S'[:, :, h, w]),
    the cosine taken over the prototype axis. maps, teacher_maps (B, P, h, w)."""
    cos = F.cosine_similarity(maps, teacher_maps, dim=1, eps=eps)  # (B, h, w)
    return (1 - cos).flatten(1).sum(1).mean()


def two_way_probabilities(logits: torch.Tensor, multilabel: bool, temperature: float = 1.0) -> torch.Tensor:
    """(B, K) logits -> (L, B, 2) softmax([z_ref, z_c] / T) per finding, or (1, B, K) softmax (single-label)."""
    z = logits / temperature
    if not multilabel:
        return torch.softmax(z, dim=1).unsqueeze(0)
    ref = z[:, -1:].expand(-1, z.shape[1] - 1)
    pairs = torch.stack([ref, z[:, :-1]], dim=2)  # (B, L, 2)
    return torch.softmax(pairs, dim=2).transpose(0, 1)


def prediction_alignment(logits: torch.Tensor, teacher_logits: torch.Tensor, multilabel: bool,
                         temperature: float = 1.0) -> torch.Tensor:
    """Prediction-level alignment of batch relations: sum over findings c of ||G_c^T - G_c^S||_F^2 / (L B^2),
    with G_c = Q_c Q_c^T the (B, B) Gram matrix of the batch's two-way probabilities Q_c (B, 2) of finding c
    (single-label: one Gram matrix of the class probabilities). logits, teacher_logits (B, K)."""
    q_s = two_way_probabilities(logits, multilabel, temperature)
    q_t = two_way_probabilities(teacher_logits, multilabel, temperature)
    g_s = torch.bmm(q_s, q_s.transpose(1, 2))
    g_t = torch.bmm(q_t, q_t.transpose(1, 2))
    n_maps, b = g_s.shape[:2]
    return ((g_t - g_s) ** 2).sum() / (n_maps * b * b)
