"""Concept interventions on a trained CRL, next to a plain concept bottleneck on the same concept predictions.

    crl intervene RUN [--split test] [--orders 5]       # -> RUN/interventions-<split>.json and figures/

CRL's logic layers read binary concepts (the network's concept logits > 0); an intervention replaces some of them
with the annotations and runs the logic layers again (`CRL.predict_from_concepts`). The plain concept bottleneck
(Koh et al.'s sequential model) is a logistic regression fitted on the training split's predicted concept
probabilities; its interventions set those probabilities to the annotated 0/1. The protocol and both orders are
medimg_core.interventions'.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from medimg_core.checkpoint import write_json
from medimg_core.data.errors import DatasetError
from medimg_core.data.preprocess import load_split
from medimg_core.interventions import ORDERS, intervention_curve, plot_intervention_curves
from medimg_core.metrics import metrics_with_ci


def intervene_run(run_dir: str | Path, split: str = "test", n_orders: int = 5, seed: int = 0, device: str = "cpu",
                  progress: bool = True, out: str | Path | None = None) -> dict[str, Any]:
    """Intervention curves of a CRL run and of a logistic-regression bottleneck on its concepts, on `split` of the
    run's own dataset, and the bottleneck's own test metrics with intervals (`bottleneck_metrics`); writes interventions-<split>.json and the figure interventions-<split>.png into `out`
    (default: RUN and RUN/figures)."""
    from crl.api import ConceptRuleLearner, forward_split

    run_dir = Path(run_dir)
    estimator = ConceptRuleLearner.from_pretrained(run_dir).to(device)
    cfg = estimator.resolved_config()
    card = estimator.card_
    if card.task not in ("binary", "multiclass"):
        raise DatasetError(f"{run_dir}: interventions need a single-label task; this run's is {card.task!r}")
    transform = estimator.preprocess_.eval_transform()
    data = {}
    for role, name in (("train", cfg.data.train_split), ("eval", split)):
        ds = load_split(cfg.data, name, transform=transform)
        data[role] = forward_split(estimator, ds, f"concepts of {name}", progress)
    test = data["eval"]
    if np.isnan(test["truth"]).all():
        raise DatasetError(f"{cfg.data.dataset}/{split} has no concept annotations to intervene with")
    model = estimator.model_.to(device).eval()

    def crl_predict(values: np.ndarray) -> np.ndarray:
        return model.predict_from_concepts(torch.from_numpy(values > 0.5).to(device)).cpu().numpy()

    train = data["train"]
    known = np.isfinite(train["probabilities"]).all(axis=1)
    bottleneck = LogisticRegression(max_iter=5000).fit(train["probabilities"][known], train["targets"][known])
    hard = (test["probabilities"] > 0.5).astype(np.float64)
    crl_scores = crl_predict(hard)  # (N, C): both models with no concept set, for their own metrics and counts
    bottleneck_scores = bottleneck.predict_proba(test["probabilities"])
    curves = {
        "CRL": {o: intervention_curve(crl_predict, hard, test["probabilities"], test["truth"], test["targets"], o,
                                      n_orders, seed) for o in ORDERS},
        "logistic-regression bottleneck": {
            o: intervention_curve(bottleneck.predict_proba, test["probabilities"], test["probabilities"],
                                  test["truth"], test["targets"], o, n_orders, seed) for o in ORDERS},
    }
    out_dir = Path(out) if out is not None else run_dir
    figure = plot_intervention_curves(curves, (out_dir if out is not None else run_dir / "figures")
                                      / f"interventions-{split}.png",
                                      title=f"{card.name} / {split}: concept interventions")
    result = {"run": str(run_dir), "dataset": cfg.data.dataset, "split": split, "n": int(len(test["targets"])),
              "concepts": list(card.concept_names), "n_orders": n_orders, "seed": seed,
              "bottleneck": "sklearn LogisticRegression (C = 1) on the training split's predicted concept "
                            "probabilities",
              # the bottleneck as a classifier in its own right (no intervention), with intervals as CRL's own
              "bottleneck_metrics": metrics_with_ci(card.task, test["targets"], bottleneck_scores,
                                                    list(card.class_names), seed=seed),
              # how many test images each model assigns to each class (a model collapsed to one class shows it)
              "predicted_class_counts": {
                  "CRL": np.bincount(crl_scores.argmax(1), minlength=card.num_classes).tolist(),
                  "logistic-regression bottleneck": np.bincount(
                      bottleneck.classes_[bottleneck_scores.argmax(1)].astype(np.int64),
                      minlength=card.num_classes).tolist()},
              "curves": curves, "figure": str(figure)}
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / f"interventions-{split}.json", result)
    return result


def summary_table(result: dict[str, Any], ks: tuple[int, ...] = (0, 1, 2, 4, 8)) -> str:
    """A Markdown table of test accuracy at a few k (and all K) per model and order."""
    k_all = len(result["concepts"])
    shown = [k for k in ks if k < k_all] + [k_all]
    lines = ["| model | order | " + " | ".join(f"k = {k}" for k in shown) + " |",
             "|---|---|" + "---|" * len(shown)]
    for model, by_order in result["curves"].items():
        for order, curve in by_order.items():
            cells = []
            for k in shown:
                i = curve["k"].index(k)
                sd = f" ± {curve['accuracy_sd'][i]:.3f}" if curve["n_orders"] > 1 else ""
                cells.append(f"{curve['accuracy'][i]:.3f}{sd}")
            lines.append(f"| {model} | {order} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
