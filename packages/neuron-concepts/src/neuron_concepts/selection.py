"""Selecting K diverse concepts among the concept activation vectors: greedy facility location.

    ranking, gains = facility_location(cavs, k=50)               # greedy, squared cosine similarity
    facility_value(squared_cosine_similarity(cavs), ranking)     # F(S)
    d = discriminative_scores(H, y, cavs, "binary")              # optional class-discriminative term in [0, 1]
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
from sklearn.feature_selection import f_classif


def squared_cosine_similarity(vectors: np.ndarray) -> np.ndarray:
    """(n, d) -> (n, n) squared cosine similarity (apricot's metric='cosine'); zero rows are similar to nothing."""
    v = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    unit = np.divide(v, norms, out=np.zeros_like(v), where=norms > 0)
    return (unit @ unit.T) ** 2


def facility_location(vectors: np.ndarray, k: int, modular: np.ndarray | None = None,
                      similarity: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Greedy maximisation of F(S) = sum_i max_{j in S} sim(i, j) [+ sum_{j in S} modular_j].

    vectors: (n, d) concept activation vectors; sim = squared cosine similarity (or `similarity` (n, n)).
    modular: optional (n,) per-concept score added to the objective (a class-discriminative term).
    Returns (ranking (k,) indices in pick order, gains (k,) marginal gain of each pick). Ties (up to a
    relative 1e-10, so rounding does not decide them) go to the lowest index, as apricot's naive greedy.
    """
    vectors = np.asarray(vectors)
    if vectors.ndim != 2:
        raise ValueError(f"facility_location: vectors must be (n, d), got shape {vectors.shape}")
    n = vectors.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"facility_location: k must be in [1, {n}] (the number of vectors), got {k}")
    if not np.isfinite(vectors).all():
        raise ValueError("facility_location: vectors contain NaN or inf")
    sim = squared_cosine_similarity(vectors) if similarity is None else np.asarray(similarity, dtype=np.float64)
    if sim.shape != (n, n):
        raise ValueError(f"facility_location: similarity must be ({n}, {n}), got {sim.shape}")
    extra = np.zeros(n) if modular is None else np.asarray(modular, dtype=np.float64).ravel()
    if extra.shape != (n,):
        raise ValueError(f"facility_location: modular must have {n} values, got {extra.shape}")
    sim_t = torch.from_numpy(np.ascontiguousarray(sim))
    if (sim_t < 0).any():
        raise ValueError("facility_location: similarities must be non-negative")
    cur = torch.zeros(n, dtype=torch.float64)  # cur[i] = max_{j in S} sim(i, j)
    chosen = torch.zeros(n, dtype=torch.bool)
    # gain[j] = sum_i max(sim(i, j) - cur[i], 0) + modular[j], kept up to date incrementally: a pick only changes
    # the rows i it covers better than before, so each step costs (changed rows) x n instead of n x n
    gain = sim_t.sum(0) + torch.from_numpy(extra)
    ranking, gains = [], []
    for _ in range(k):
        masked = gain.masked_fill(chosen, -torch.inf)
        top = float(masked.max())
        # first maximum; gains equal up to rounding (exact ties in exact arithmetic) count as ties
        j = int(torch.nonzero(masked >= top - 1e-10 * max(1.0, abs(top)))[0])
        ranking.append(j)
        gains.append(float(masked[j]))
        chosen[j] = True
        rows = torch.nonzero(sim_t[:, j] > cur).flatten()
        if rows.numel():
            block = sim_t[rows]
            old, new = cur[rows, None], sim_t[rows, j][:, None]
            gain -= (torch.clamp(block - old, min=0) - torch.clamp(block - new, min=0)).sum(0)
            cur[rows] = new[:, 0]
    return np.asarray(ranking, dtype=np.int64), np.asarray(gains, dtype=np.float64)


def facility_value(similarity: np.ndarray, subset: Sequence[int], modular: np.ndarray | None = None) -> float:
    """F(S) of a subset (the objective `facility_location` maximises greedily)."""
    subset = list(subset)
    if not subset:
        return 0.0
    sim = np.asarray(similarity, dtype=np.float64)
    value = float(sim[:, subset].max(axis=1).sum())
    return value + (float(np.asarray(modular)[subset].sum()) if modular is not None else 0.0)


def discriminative_scores(H: np.ndarray, y: np.ndarray, cavs: np.ndarray, task: str) -> np.ndarray:
    """Class-discriminative score of each CAV in [0, 1]: the ANOVA F statistic of the projections H @ c
    across classes (mean over labels for multilabel), divided by its maximum.

    H: (N, d) features; y: (N,) class indices or (N, L) 0/1 for multilabel; cavs: (n, d). Returns (n,).
    """
    P = H @ cavs.T
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=RuntimeWarning)
        if task == "multilabel":
            F = np.nanmean([f_classif(P, y[:, j])[0] for j in range(y.shape[1])], axis=0)
        else:
            F = f_classif(P, y)[0]
    F = np.nan_to_num(F, nan=0.0, posinf=0.0)
    return F / F.max() if F.max() > 0 else F
