"""Concept activation vectors of SAE latents, and how well latents match annotated concepts.

    cavs, kept, records = concept_vectors(H, A, latents, CAVConfig())   # one unit vector (d,) per latent
    rows = concept_matching(A_train, c_train, A_test, c_test, concept_names, names)

A latent's CAV is the unit normal of a logistic regression separating its top-activating images from images
where it is silent, in the opaque model's feature space (the framework figure of the paper; not in the
released code).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from neuron_concepts.config import CAVConfig
from neuron_concepts.naming import LatentName, auroc_matrix


def concept_vectors(H: np.ndarray, A: np.ndarray, latents: list[int], cav: CAVConfig, seed: int = 0,
                    progress: bool = True) -> tuple[np.ndarray, list[int], list[dict[str, Any]]]:
    """One CAV per latent: the unit normal of a logistic regression separating the latent's top-activating
    images (positives) from images where it is silent (negatives) in feature space H (N, d).

    Returns (cavs (n, d), the latents that got one, per-latent records (positives, negatives, probe accuracy)).
    """
    rng = np.random.default_rng(seed)
    vectors, kept, records = [], [], []
    for k in tqdm(latents, desc="CAVs", unit="latent", disable=None if progress else True):
        a = A[:, k]
        active = np.flatnonzero(a > 0)
        if len(active) < cav.min_positives:
            continue
        pos = active[np.argsort(-a[active], kind="stable")[:cav.top_n]]
        silent = np.flatnonzero(a <= 0)
        n_neg = min(cav.n_negative, len(A) - len(pos))
        if len(silent) >= n_neg:
            neg = rng.choice(silent, n_neg, replace=False)
        else:  # too few silent images: add the least active ones
            rest = np.setdiff1d(np.argsort(a, kind="stable"), np.concatenate([silent, pos]), assume_unique=False)
            neg = np.concatenate([silent, rest[: n_neg - len(silent)]])
        if len(neg) == 0:
            continue
        X = np.concatenate([H[pos], H[neg]])
        y = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))])
        with warnings.catch_warnings(), threadpool_limits(1):  # thousands of tiny fits: threads only contend
            warnings.filterwarnings("ignore", category=ConvergenceWarning)
            clf = LogisticRegression(C=cav.C, max_iter=1000).fit(X, y)
        w = clf.coef_[0]
        norm = np.linalg.norm(w)
        if not np.isfinite(norm) or norm == 0:
            continue
        vectors.append(w / norm)
        kept.append(int(k))
        records.append({"latent": int(k), "positives": int(len(pos)), "negatives": int(len(neg)),
                        "probe_accuracy": float(clf.score(X, y))})
    d = H.shape[1]
    return (np.stack(vectors) if vectors else np.zeros((0, d))), kept, records


def concept_matching(A_train: np.ndarray, c_train: np.ndarray, A_test: np.ndarray, c_test: np.ndarray,
                     concept_names: list[str], names: dict[int, LatentName]) -> list[dict[str, Any]]:
    """Per annotated concept: the latent whose activation predicts it best on train (AUROC), that latent's
    test AUROC and its name (whatever it is: how names fare is `neuron_concepts.naming.concept_naming`); also the
    best test AUROC of any latent (chosen on test: a ceiling, not a result)."""
    train = auroc_matrix(A_train, c_train)
    test = auroc_matrix(A_test, c_test)
    rows = []
    for c, concept in enumerate(concept_names):
        col = np.where(np.isnan(train[:, c]), -np.inf, train[:, c])
        if not np.isfinite(col).any():
            rows.append({"concept": concept, "best_latent": None, "train_auroc": None, "test_auroc": None,
                         "name": None, "best_test_auroc_any": None})
            continue
        k = int(np.argmax(col))
        latent_name = names.get(k)
        test_col = test[:, c]
        rows.append({"concept": concept, "best_latent": k, "train_auroc": float(train[k, c]),
                     "test_auroc": None if np.isnan(test[k, c]) else float(test[k, c]),
                     "name": latent_name.name if latent_name else None,
                     "best_test_auroc_any": None if np.isnan(test_col).all() else float(np.nanmax(test_col))})
    return rows
