"""The interpretation head of IIS: concept activations, the per-sample sparsity mask and a linear layer.

For a pooled representation x (B, D) and a concept library P (M, D)::

    c      = x @ P_unit.T                 (B, M)  projection length of x on each unit concept vector
    c      = LayerNorm_M(c)               (B, M)  learnable affine (gamma 1, beta 0, eps 1e-5 at start)
    c_s    = ratio_mask(c, s)             (B, M)  per sample, the fraction s of smallest |c| is zeroed
    logits = W c_s + b                    (B, K)

Text libraries (Label-free CBM) use raw projection rows W_c and standardise with fixed training
statistics instead of the LayerNorm: c = (x @ W_c.T - mean) / std.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["ConceptHead", "End2EndHead", "LinearProbe", "kept_count", "ratio_mask", "zeroed_index"]

#: float rounding guard of floor(M * s): 10 * 0.3 is 3.0000000000000004 but 100 * 0.29 is 28.999999999999996
_FLOOR_EPS = 1e-9


def zeroed_index(num_concepts: int, s: float) -> int:
    """The rank idx = floor(M * s) of the per-sample threshold in the ascending |activations|.

    Raises ValueError for s outside [0, 1): s = 1 would ask to zero every concept (the official code
    raises an index error there), and a negative ratio has no meaning.
    """
    s = float(s)
    if not math.isfinite(s) or s < 0.0 or s >= 1.0:
        raise ValueError(f"sparsity ratio s must be in [0, 1), got {s}")
    if num_concepts < 1:
        raise ValueError(f"the ratio mask needs at least one concept, got {num_concepts}")
    return min(int(math.floor(num_concepts * s + _FLOOR_EPS)), num_concepts - 1)


def kept_count(num_concepts: int, s: float) -> int:
    """Concepts a sample keeps at ratio s when no magnitudes tie: M - floor(M * s) - 1."""
    return num_concepts - zeroed_index(num_concepts, s) - 1


def ratio_mask(activations: torch.Tensor | np.ndarray, s: float) -> torch.Tensor:
    """Zero, per sample (row), every activation whose magnitude is not above the threshold tau.

    activations: (M,) or (B, M). With idx = floor(M * s), tau is the (idx + 1)-th smallest |value| of
    the row, and a value survives only where |value| > tau (strict). So without ties a row keeps
    M - floor(M * s) - 1 values (s = 0 still zeroes the single smallest one, as the official code
    does), and every value tied with tau is zeroed with it. Kept values are not shrunk. The threshold
    is computed on detached values; gradients flow through the kept activations only.
    Raises ValueError for s outside [0, 1) and for non-finite activations.
    """
    x = torch.as_tensor(activations)
    if x.ndim not in (1, 2):
        raise ValueError(f"activations must be (M,) or (B, M), got shape {tuple(x.shape)}")
    if not torch.is_floating_point(x):
        x = x.float()
    idx = zeroed_index(x.shape[-1], s)
    magnitude = x.detach().abs()
    if not torch.isfinite(magnitude).all():
        raise ValueError("activations contain NaN or infinite values")
    return x * (magnitude > _kth_smallest(magnitude, idx)).to(x.dtype)


def _kth_smallest(magnitude: torch.Tensor, idx: int) -> torch.Tensor:
    """The (idx + 1)-th smallest value along the last axis, keepdim. On the CPU numpy's introselect
    (np.partition) is about 15x faster than torch.kthvalue; both return the same order statistic."""
    if magnitude.device.type == "cpu":
        part = np.partition(magnitude.numpy(), idx, axis=-1)[..., idx: idx + 1]
        return torch.from_numpy(part)
    return magnitude.kthvalue(idx + 1, dim=-1, keepdim=True).values


def _init_linear(linear: nn.Linear) -> nn.Linear:
    """The official head's init: truncated normal weights (std 0.02), zero bias."""
    nn.init.trunc_normal_(linear.weight, std=0.02)
    nn.init.zeros_(linear.bias)
    return linear


class LinearProbe(nn.Module):
    """The reference classifier h: Linear(D, K) on the pooled representation (the ARR denominator).

    With `standardize=(mean, std)` (each (D,), training statistics) the features are standardised first:
    an affine map the linear layer could absorb, so the probe's function class is unchanged; it only
    conditions the optimisation (raw features with a large shared offset train slowly).
    """

    def __init__(self, in_features: int, num_outputs: int,
                 standardize: tuple[torch.Tensor, torch.Tensor] | None = None):
        super().__init__()
        self.linear = _init_linear(nn.Linear(in_features, num_outputs))
        if standardize is not None:
            mean, std = (torch.as_tensor(t, dtype=torch.float32).reshape(-1) for t in standardize)
            if mean.numel() != in_features or std.numel() != in_features:
                raise ValueError(f"standardize needs mean and std of {in_features} values")
            self.register_buffer("mean", mean)
            self.register_buffer("std", std.clamp_min(1e-8))
        else:
            self.mean = self.std = None

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features (B, D) -> logits (B, K)."""
        if self.mean is not None:
            features = (features - self.mean) / self.std
        return self.linear(features)


class ConceptHead(nn.Module):
    """g_cls o g_s o g_C with a frozen concept matrix: concept scores, ratio mask, Linear(M, K).

    concepts: (M, D). Visual libraries: rows are L2-normalised here and scores pass a learnable
    LayerNorm over the M concepts. Text libraries (`standardize=(mean, std)`, each (M,)): rows are used
    as given (the learned W_c) and scores are standardised with those fixed statistics.
    """

    def __init__(self, concepts: torch.Tensor, num_outputs: int, ratio: float = 0.0,
                 standardize: tuple[torch.Tensor, torch.Tensor] | None = None):
        super().__init__()
        concepts = torch.as_tensor(concepts, dtype=torch.float32)
        if concepts.ndim != 2 or concepts.shape[0] < 1:
            raise ValueError(f"concepts must be (M, D) with M >= 1, got shape {tuple(concepts.shape)}")
        zeroed_index(concepts.shape[0], ratio)  # validates the ratio now, not at the first forward pass
        self.ratio = float(ratio)
        self.num_concepts = int(concepts.shape[0])
        if standardize is None:
            self.register_buffer("concepts", F.normalize(concepts, dim=1))
            self.norm: nn.Module | None = nn.LayerNorm(self.num_concepts)
        else:
            mean, std = (torch.as_tensor(t, dtype=torch.float32).reshape(-1) for t in standardize)
            if mean.numel() != self.num_concepts or std.numel() != self.num_concepts:
                raise ValueError(f"standardize needs mean and std of {self.num_concepts} values, "
                                 f"got {mean.numel()} and {std.numel()}")
            self.register_buffer("concepts", concepts.clone())
            self.register_buffer("mean", mean)
            self.register_buffer("std", std.clamp_min(1e-8))
            self.norm = None
        self.linear = _init_linear(nn.Linear(self.num_concepts, num_outputs))

    def concept_matrix(self) -> torch.Tensor:
        """The concept vectors (M, D) the features are projected on."""
        return self.concepts

    def scores(self, features: torch.Tensor) -> torch.Tensor:
        """Normalised concept activations (B, M) before the mask."""
        c = features @ self.concept_matrix().T
        return self.norm(c) if self.norm is not None else (c - self.mean) / self.std

    def sparse_scores(self, features: torch.Tensor) -> torch.Tensor:
        """The activations the linear layer sees (B, M): `scores` after the ratio mask."""
        return ratio_mask(self.scores(features), self.ratio)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features (B, D) -> logits (B, K)."""
        return self.linear(self.sparse_scores(features))

    @torch.no_grad()
    def contributions(self, features: torch.Tensor) -> torch.Tensor:
        """Per-concept contributions (B, M, K) to the logits: c_s[b, m] * W[k, m] (logits = sum + bias)."""
        return self.sparse_scores(features)[:, :, None] * self.linear.weight.T[None]


class End2EndHead(ConceptHead):
    """The End2End library: M concepts learned as a hard assignment of the N elements, with the head.

    A learnable q (N, M) (truncated normal, std 0.02) passes a LayerNorm over M and a hard
    Gumbel-softmax (temperature `tau`) per element, so each element belongs to exactly one concept;
    a concept vector is the L2-normalised sum of its elements' unit embeddings. In training the
    Gumbel noise is drawn (straight-through gradients); in eval mode the assignment is the argmax,
    so evaluation is deterministic. elements: (N, D).
    """

    def __init__(self, elements: torch.Tensor, num_concepts: int, num_outputs: int, ratio: float = 0.0,
                 tau: float = 0.1):
        elements = F.normalize(torch.as_tensor(elements, dtype=torch.float32), dim=1)
        if elements.shape[0] < num_concepts:
            raise ValueError(f"End2End needs at least as many elements as concepts: {elements.shape[0]} "
                             f"elements for {num_concepts} concepts")
        super().__init__(elements[:num_concepts], num_outputs, ratio)
        del self.concepts
        self.register_buffer("elements", elements, persistent=False)  # kept by the library, not per head
        self.tau = float(tau)
        self.assignment_logits = nn.Parameter(torch.empty(elements.shape[0], num_concepts))
        nn.init.trunc_normal_(self.assignment_logits, std=0.02)
        self.assignment_norm = nn.LayerNorm(num_concepts)

    def assignment(self) -> torch.Tensor:
        """One-hot assignment (N, M) of elements to concepts."""
        logits = self.assignment_norm(self.assignment_logits)
        if self.training:
            return F.gumbel_softmax(logits, tau=self.tau, hard=True, dim=1)
        return F.one_hot(logits.argmax(dim=1), self.num_concepts).to(logits.dtype)

    def concept_matrix(self) -> torch.Tensor:
        return F.normalize(self.assignment().T @ self.elements, dim=1)
