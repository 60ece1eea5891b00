"""The benchmark's concept protocol: TCAV (medimg_core.tcav, Kim et al., ICML 2018) of every synth-derm concept for
the class 'malignant', on the black-box baseline, scored against the generator's rule.

Ground truth: synth-derm draws the label from its rule (default `(irregular_border & blue_white_veil) | streaks`);
the other concepts are drawn independently of the label. A faithful concept explanation therefore finds each rule
concept significant with a TCAV score above 0.5 (the logit of 'malignant' grows along it), and no other concept
significant. Per seed:

- concept images: up to `n_concept` training images annotated with the concept (the pixels show it);
- random sets: `n_random` sets of `n_concept` training images drawn at random (any class, any concept), each set
  without repetition;
- class images: up to `n_class` test images whose clean label is malignant;
- layer: the CAM layer of the map protocol (`maps.cam_layer`, the last stage with spatial extent).

Reported per concept: the mean TCAV score over the random sets, the p-value of the t-test against random
concepts, whether it is significant (Bonferroni over the concepts tested), and whether it is in the rule; per
seed: how many rule concepts were found (significant, score > 0.5) and how many other concepts were flagged
(significant). A concept with fewer than 2 annotated training images is not tested (`skipped`).

Next to it, `probe_recovery`: whether the layer encodes each concept at all, the test AUROC of a linear probe
(logistic regression, C = 1, on the standardised activations) fitted on every training image's activations
against its annotation. TCAV asks whether the decision uses a concept; the probe whether the representation holds
it: a rule concept the probe finds but TCAV does not is encoded and unused (or used in a way TCAV misses).

And `concept_head_recovery`: the same test AUROC for a model that predicts its concepts itself (CRL's concept head:
the sigmoid of its concept logits), with a 95 % percentile bootstrap interval over test images. Both AUROCs are
ours as a protocol (ROC AUC per concept against what the pixels show, as the issue asks), not a paper's.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from medimg_core.tcav import layer_activations, tcav


def score_tcav(model: nn.Module, layer: str, train_x: torch.Tensor, train_concepts: np.ndarray,
               concept_names: list[str], rule_variables: list[str], class_images: torch.Tensor, target: int,
               n_concept: int = 50, n_random: int = 10, seed: int = 0) -> dict[str, Any]:
    """TCAV of each concept (see the module docstring). train_x (N, C, H, W) model inputs of the training split,
    train_concepts (N, K) 0/1 of what their pixels show, class_images (M, C, H, W). Returns {"concepts": {name:
    ConceptScore.to_dict() + "in_rule"}, "skipped": [names], "rule_found", "rule_total", "others_flagged",
    "others_tested", "layer", "n_concept", "n_random", "class_images"}."""
    rng = np.random.default_rng(seed)
    train_concepts = np.asarray(train_concepts)
    size = min(n_concept, len(train_x))
    concepts, skipped = {}, []
    for k, name in enumerate(concept_names):
        holders = np.flatnonzero(train_concepts[:, k] > 0.5)
        if len(holders) < 2:
            skipped.append(name)
            continue
        pick = rng.choice(holders, size=min(size, len(holders)), replace=False)
        concepts[name] = train_x[np.sort(pick)]
    if not concepts:
        raise ValueError("no concept has 2 or more annotated training images: raise the number of images")
    random_sets = [train_x[np.sort(rng.choice(len(train_x), size=size, replace=False))] for _ in range(n_random)]
    scores = tcav(model, layer, class_images, target, concepts, random_sets, seed=seed)
    rows = {s.concept: {**s.to_dict(), "in_rule": s.concept in rule_variables} for s in scores}
    rule = [r for r in rows.values() if r["in_rule"]]
    others = [r for r in rows.values() if not r["in_rule"]]
    return {"concepts": rows, "skipped": skipped, "layer": layer, "n_concept": size, "n_random": n_random,
            "class_images": int(len(class_images)),
            "rule_found": sum(r["significant"] and r["tcav_mean"] > 0.5 for r in rule),
            "rule_total": len([v for v in rule_variables if v in concept_names]),
            "others_flagged": sum(r["significant"] for r in others), "others_tested": len(others)}


def probe_recovery(model: nn.Module, layer: str, train_x: torch.Tensor, train_concepts: np.ndarray,
                   test_x: torch.Tensor, test_concepts: np.ndarray, concept_names: list[str],
                   rule_variables: list[str]) -> dict[str, dict[str, Any]]:
    """{concept: {"auroc": test AUROC of the linear probe (None where train or test lacks a class), "in_rule"}}
    (see the module docstring). x (N, C, H, W); concepts (N, K) 0/1."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    a_train, a_test = layer_activations(model, layer, train_x), layer_activations(model, layer, test_x)
    out = {}
    for k, name in enumerate(concept_names):
        y_train, y_test = np.asarray(train_concepts)[:, k] > 0.5, np.asarray(test_concepts)[:, k] > 0.5
        auroc = None
        if 0 < y_train.sum() < len(y_train) and 0 < y_test.sum() < len(y_test):
            probe = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000)).fit(a_train, y_train)
            auroc = float(roc_auc_score(y_test, probe.decision_function(a_test)))
        out[name] = {"auroc": auroc, "in_rule": name in rule_variables}
    return out


def concept_head_recovery(probabilities: np.ndarray, test_concepts: np.ndarray, concept_names: list[str],
                          rule_variables: list[str], n_boot: int = 1000, seed: int = 0) -> dict[str, dict[str, Any]]:
    """{concept: {"auroc", "low", "high" (95 % bootstrap interval over images; all None where the test split lacks
    a class), "in_rule"}}: per concept, the test AUROC of a concept head's probabilities (N, K) against the
    annotations (N, K) 0/1 (see the module docstring)."""
    from sklearn.metrics import roc_auc_score

    from medimg_core.metrics import bootstrap_ci

    probabilities, truth = np.asarray(probabilities, dtype=np.float64), np.asarray(test_concepts) > 0.5
    if probabilities.shape != truth.shape or probabilities.shape[1] != len(concept_names):
        raise ValueError(f"concept_head_recovery: probabilities {probabilities.shape} and annotations {truth.shape} "
                         f"must both be (N, {len(concept_names)}), one column per concept {concept_names}")
    out = {}
    for k, name in enumerate(concept_names):
        cell: dict[str, Any] = {"auroc": None, "low": None, "high": None}
        if 0 < truth[:, k].sum() < len(truth):
            value, low, high = bootstrap_ci(roc_auc_score, truth[:, k], probabilities[:, k], n_boot=n_boot, seed=seed)
            cell = {"auroc": value, "low": low, "high": high}
        out[name] = {**cell, "in_rule": name in rule_variables}
    return out
