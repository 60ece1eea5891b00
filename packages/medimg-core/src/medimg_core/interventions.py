"""Test-time concept interventions on a concept-bottleneck model: accuracy as k = 0..K concepts are set to their
true values.

The protocol of Koh et al., "Concept Bottleneck Models", ICML 2020 (section 6): an expert replaces the model's
predicted value of some concepts with the true one and the label predictor runs again on the corrected concepts;
the curve of task accuracy against the number of corrected concepts says how much the bottleneck's decision
follows its concepts. Two orders of correction:

- ``random``: a random order of the concepts (the same for every image, as Koh et al. intervene on concept groups
  in random order), averaged over `n_orders` seeded orders, with the sd over orders;
- ``uncertainty``: per image, the concepts whose predicted probability is closest to 0.5 first (the "uncertainty
  of concept prediction" order of Shin et al., "A Closer Look at the Intervention Procedure of Concept Bottleneck
  Models", ICML 2023); ties keep the concept order.

A concept whose true value is unknown (NaN) keeps its prediction when its turn comes. Corrected values are the
0/1 annotations; the others are the model's own values (`predicted`), which the caller gives in whatever form its
label predictor reads (probabilities for a soft bottleneck, 0/1 for a hard one such as CRL's logic layers).
Hand-written: no maintained library implements this protocol for arbitrary label predictors.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from sklearn.metrics import balanced_accuracy_score

ORDERS = ("random", "uncertainty")

Predictor = Callable[[np.ndarray], np.ndarray]


def _check(predicted: np.ndarray, probabilities: np.ndarray, truth: np.ndarray, targets: np.ndarray) -> None:
    if predicted.ndim != 2:
        raise ValueError(f"predicted concepts must be (N, K), got shape {predicted.shape}")
    for name, arr in (("concept probabilities", probabilities), ("true concepts", truth)):
        if arr.shape != predicted.shape:
            raise ValueError(f"{name} {arr.shape} do not match the predicted concepts {predicted.shape}")
    if targets.shape != (predicted.shape[0],):
        raise ValueError(f"targets {targets.shape} do not match {predicted.shape[0]} samples (expected (N,))")
    known = truth[np.isfinite(truth)]
    if not np.isin(known, (0.0, 1.0)).all():
        raise ValueError(f"true concepts must be 0, 1 or NaN (unknown); found {sorted(set(known.tolist()) - {0.0, 1.0})[:5]}")


def intervention_orders(probabilities: np.ndarray, order: str, n_orders: int = 5, seed: int = 0) -> list[np.ndarray]:
    """The correction orders: a list of (N, K) arrays whose row i lists image i's concept indices in the order
    they are corrected (one array per random order; one for the uncertainty order)."""
    n, k = probabilities.shape
    if order == "random":
        rng = np.random.default_rng(seed)
        return [np.tile(rng.permutation(k), (n, 1)) for _ in range(n_orders)]
    if order == "uncertainty":
        return [np.argsort(np.abs(probabilities - 0.5), axis=1, kind="stable")]
    raise ValueError(f"order {order!r}: expected one of {ORDERS}")


def intervention_curve(predict: Predictor, predicted: np.ndarray, probabilities: np.ndarray, truth: np.ndarray,
                       targets: np.ndarray, order: str = "random", n_orders: int = 5, seed: int = 0,
                       steps: list[int] | None = None) -> dict[str, Any]:
    """Task accuracy after correcting the first k concepts of each image's order, for k in `steps` (default 0..K).

    predict: corrected concept values (N, K) -> class scores (N, C) or class indices (N,).
    predicted: (N, K) the model's own concept values, as `predict` reads them; probabilities: (N, K) its concept
    probabilities (the uncertainty order); truth: (N, K) 0/1 annotations, NaN unknown; targets: (N,) classes.
    Returns {"order", "k", "accuracy", "accuracy_sd" (over random orders; 0 for one order), "balanced_accuracy",
    "n_orders"}.
    """
    predicted = np.asarray(predicted, dtype=np.float64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    targets = np.asarray(targets)
    _check(predicted, probabilities, truth, targets)
    n, k = predicted.shape
    steps = list(range(k + 1)) if steps is None else sorted(set(int(s) for s in steps))
    if steps and not 0 <= steps[0] <= steps[-1] <= k:
        raise ValueError(f"steps must lie in 0..{k}, got {steps[0]}..{steps[-1]}")
    known = np.isfinite(truth)
    rows = np.arange(n)[:, None]
    accuracy, balanced = [], []
    for ranks in intervention_orders(probabilities, order, n_orders, seed):
        acc_k, bal_k = [], []
        for step in steps:
            corrected = predicted.copy()
            chosen = np.zeros((n, k), dtype=bool)
            chosen[rows, ranks[:, :step]] = True
            use = chosen & known
            corrected[use] = truth[use]
            out = np.asarray(predict(corrected))
            classes = out.argmax(axis=1) if out.ndim == 2 else out
            acc_k.append(float((classes == targets).mean()))
            bal_k.append(float(balanced_accuracy_score(targets, classes)))
        accuracy.append(acc_k)
        balanced.append(bal_k)
    acc = np.array(accuracy)
    return {"order": order, "k": steps, "accuracy": acc.mean(0).tolist(),
            "accuracy_sd": (acc.std(0, ddof=1) if len(acc) > 1 else np.zeros(len(steps))).tolist(),
            "balanced_accuracy": np.array(balanced).mean(0).tolist(), "n_orders": len(acc)}


def plot_intervention_curves(curves: dict[str, dict[str, dict[str, Any]]], path: Any, title: str = "") -> Any:
    """Intervention curves of several models: {model label: {order: an `intervention_curve` result}}; one colour
    per model, solid for the random order (with the sd over orders as a band), dashed for the uncertainty order.
    Saved as a PNG at `path` (returned)."""
    import matplotlib.pyplot as plt

    from medimg_core.figures import PAPER_RC, save_figure

    with plt.rc_context(PAPER_RC):
        fig, ax = plt.subplots(figsize=(5.2, 3.6))
        for i, (model, by_order) in enumerate(curves.items()):
            for order, curve in by_order.items():
                k = np.array(curve["k"])
                acc = np.array(curve["accuracy"])
                sd = np.array(curve["accuracy_sd"])
                ax.plot(k, acc, "-" if order == "random" else "--", marker="o", ms=3, color=f"C{i}",
                        label=f"{model}, {order} order")
                if curve["n_orders"] > 1:
                    ax.fill_between(k, acc - sd, acc + sd, color=f"C{i}", alpha=0.15, linewidth=0)
        ax.set_xlabel("concepts set to their true value (k)")
        ax.set_ylabel("test accuracy")
        if title:
            ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, frameon=False)
        fig.tight_layout()
        return save_figure(fig, path)
