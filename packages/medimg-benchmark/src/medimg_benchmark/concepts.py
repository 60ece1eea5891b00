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
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from medimg_core.tcav import tcav


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
