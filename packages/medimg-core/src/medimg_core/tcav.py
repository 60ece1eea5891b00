"""TCAV: how much a human concept drives a classifier's decision, with the random-concept significance test.

Kim, Wattenberg, Gilmer, Cai, Wexler, Viegas, Sayres, "Interpretability Beyond Feature Attribution: Quantitative
Testing with Concept Activation Vectors (TCAV)", ICML 2018:

- **CAV** (section 3.2): a linear classifier separates a layer's activations of images showing the concept from
  those of random images; the CAV v is the unit normal of its boundary, pointing towards the concept.
- **Directional derivative** (section 3.3): S(x) = grad_a h_k(a(x)) . v, the change of class k's logit when the
  layer's activation a(x) moves along the concept.
- **TCAV score** (section 3.4): TCAV_Q = |{x in X_k : S(x) > 0}| / |X_k|, over the images X_k of class k.
- **Significance** (section 3.5): the CAV is trained against several random sets (here `n_random`), giving a
  TCAV score per set; the same is done for a random set against the other random sets, which gives the scores
  of concepts that mean nothing. A two-sided t-test (scipy.stats.ttest_ind) between the two samples, with a
  Bonferroni correction over the concepts tested, decides whether the concept matters for the class. A concept
  whose scores are not significantly different from random ones is reported as not significant, whatever its
  mean score.

Choices of ours, where the paper leaves them open: the linear classifier is scikit-learn's LogisticRegression
(C = 1, on the flattened activations, as the official code's default `logistic` option; its 'linear' default is
an SGDClassifier); the random-vs-random baseline uses random set 0 as the "concept" against random sets 1..n-1
(the official `run_tcav` pairs every random set with the others; one fixed set is the same test with fewer CAV
fits). Activations are read with a forward hook on the module named `layer` and flattened to (N, D).

Why hand-written: captum's `TCAV` (captum.concept) does the same computation but writes its CAVs to a folder
(default ./cav) and leaves the significance test to the caller; this module keeps everything in memory and gives
the test, in about as many lines as the glue around captum would take.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["ConceptScore", "cav", "directional_derivatives", "layer_activations", "tcav"]


def _module(model: nn.Module, layer: str) -> nn.Module:
    modules = dict(model.named_modules())
    if layer not in modules:
        names = [n for n in modules if n][:12]
        raise ValueError(f"layer {layer!r} is not a module of the model; expected a name from model.named_modules(), "
                         f"e.g. {names}")
    return modules[layer]


def _batches(x: torch.Tensor, batch_size: int):
    for start in range(0, len(x), batch_size):
        yield x[start:start + batch_size]


def _check_images(x: Any, what: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.ndim < 2 or len(x) == 0:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{what}: expected a non-empty tensor (N, ...) of model inputs, got {shape}")
    return x


@torch.no_grad()
def layer_activations(model: nn.Module, layer: str, x: torch.Tensor, batch_size: int = 64) -> np.ndarray:
    """The activations of module `layer` for inputs x (N, C, H, W), flattened: (N, D) float64."""
    module, seen = _module(model, layer), []
    handle = module.register_forward_hook(lambda _m, _i, out: seen.append(out.detach().flatten(1).double().cpu()))
    try:
        model.eval()
        for chunk in _batches(_check_images(x, "images"), batch_size):
            model(chunk)
    finally:
        handle.remove()
    return torch.cat(seen).numpy()


def directional_derivatives(model: nn.Module, layer: str, x: torch.Tensor, target: int, vectors: np.ndarray,
                            batch_size: int = 64) -> np.ndarray:
    """S(x) = grad of class `target`'s logit with respect to the activation of `layer`, dotted with each vector:
    x (N, C, H, W), vectors (V, D) -> (V, N)."""
    module, grads = _module(model, layer), []
    store: list[torch.Tensor] = []

    def keep(_m, _i, out):
        out.retain_grad()
        store.append(out)

    handle = module.register_forward_hook(keep)
    try:
        model.eval()
        for chunk in _batches(_check_images(x, "images"), batch_size):
            store.clear()
            logits = model(chunk.detach().requires_grad_(True))  # a graph even for a frozen model
            if not 0 <= target < logits.shape[1]:
                raise ValueError(f"target {target}: the model has {logits.shape[1]} outputs")
            model.zero_grad(set_to_none=True)
            logits[:, target].sum().backward()
            grads.append(store[-1].grad.detach().flatten(1).double().cpu())
    finally:
        handle.remove()
    g = torch.cat(grads).numpy()
    vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float64))
    if vectors.shape[1] != g.shape[1]:
        raise ValueError(f"vectors have {vectors.shape[1]} dimensions; layer {layer!r} has {g.shape[1]}")
    return vectors @ g.T


def cav(concept_activations: np.ndarray, random_activations: np.ndarray, seed: int = 0) -> np.ndarray:
    """The concept activation vector: the unit normal (D,) of a logistic regression separating concept (P, D) from
    random (R, D) activations, pointing towards the concept."""
    from sklearn.linear_model import LogisticRegression

    a, b = np.asarray(concept_activations, dtype=np.float64), np.asarray(random_activations, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or len(a) < 2 or len(b) < 2:
        raise ValueError(f"expected concept (P, D) and random (R, D) activations with P, R >= 2, got {a.shape} and "
                         f"{b.shape}")
    x = np.concatenate([a, b])
    y = np.r_[np.ones(len(a)), np.zeros(len(b))]
    w = LogisticRegression(C=1.0, max_iter=5000, random_state=seed).fit(x, y).coef_[0]
    norm = np.linalg.norm(w)
    return w / norm if norm > 0 else w


@dataclass
class ConceptScore:
    """One concept's TCAV result for one class: the scores against each random set, those of random "concepts",
    the two-sided t-test between them and whether it passes at `alpha` Bonferroni-corrected over
    `n_tests` concepts."""

    concept: str
    target: int
    scores: list[float]
    random_scores: list[float]
    p_value: float
    alpha: float
    n_tests: int
    cav_accuracy: list[float] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return float(np.mean(self.scores))

    @property
    def significant(self) -> bool:
        return bool(np.isfinite(self.p_value) and self.p_value < self.alpha / self.n_tests)

    def to_dict(self) -> dict[str, Any]:
        return {"concept": self.concept, "target": self.target, "tcav_mean": self.mean,
                "tcav_sd": float(np.std(self.scores, ddof=1)) if len(self.scores) > 1 else 0.0,
                "random_mean": float(np.mean(self.random_scores)), "p_value": self.p_value,
                "significant": self.significant, "alpha": self.alpha, "bonferroni_tests": self.n_tests,
                "scores": self.scores, "random_scores": self.random_scores, "cav_accuracy": self.cav_accuracy}


def tcav(model: nn.Module, layer: str, class_images: torch.Tensor, target: int,
         concepts: dict[str, torch.Tensor], random_sets: Sequence[torch.Tensor], alpha: float = 0.05,
         batch_size: int = 64, seed: int = 0) -> list[ConceptScore]:
    """TCAV scores of `concepts` (name -> images showing it, (P, C, H, W)) for class `target`, measured on
    `class_images` (N, C, H, W) of that class, each concept tested against `random_sets` (at least 3 tensors of
    random images) as Kim et al. (see the module docstring). Returns one ConceptScore per concept, in order."""
    from scipy.stats import ttest_ind

    if len(random_sets) < 3:
        raise ValueError(f"the significance test needs at least 3 random sets, got {len(random_sets)}")
    if not concepts:
        raise ValueError("no concepts given: expected {name: images showing the concept}")
    acts = {name: layer_activations(model, layer, x, batch_size) for name, x in concepts.items()}
    randoms = [layer_activations(model, layer, r, batch_size) for r in random_sets]

    def fit(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, float]:
        v = cav(a, b, seed)
        centre = (a.mean(0) + b.mean(0)) / 2  # accuracy of the CAV's direction, for the report only
        acc = float(np.r_[(a - centre) @ v > 0, (b - centre) @ v <= 0].mean())
        return v, acc

    # random "concepts": random set 0 against each of the others
    random_cavs = [fit(randoms[0], r)[0] for r in randoms[1:]]
    fitted = {name: [fit(a, r) for r in randoms] for name, a in acts.items()}
    vectors = np.stack(random_cavs + [v for pairs in fitted.values() for v, _ in pairs])
    derivatives = directional_derivatives(model, layer, class_images, target, vectors, batch_size)
    positive = (derivatives > 0).mean(axis=1)  # (V,) TCAV score of each CAV
    random_scores = positive[:len(random_cavs)].tolist()
    out, offset = [], len(random_cavs)
    for name, pairs in fitted.items():
        scores = positive[offset:offset + len(pairs)].tolist()
        offset += len(pairs)
        if np.ptp(scores) == 0 and np.ptp(random_scores) == 0:
            p = 1.0 if scores[0] == random_scores[0] else 0.0  # t undefined: identical constant samples or not
        else:
            with warnings.catch_warnings():  # a constant sample (every score 1.0) is a valid input here
                warnings.simplefilter("ignore", RuntimeWarning)
                p = float(ttest_ind(scores, random_scores).pvalue)
        out.append(ConceptScore(name, target, scores, random_scores, p, alpha, len(concepts),
                                [acc for _, acc in pairs]))
    return out
