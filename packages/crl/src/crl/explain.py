"""What CRL shows: for one image, its predicted concepts, the rules that fired and what each adds to each
class score (instance-level logic), as text, as a figure and as a dict.

Pure: a rule set and a binary concept vector in, an `Explanation` out (`explain_concepts`). Explaining an image
of a trained model is `ConceptRuleLearner.explain(x)` (`crl.api`), which runs the network for the concepts and
calls `explain_concepts`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from crl.rules import RuleSet, _evaluate
from medimg_core.explain import jsonable, resolve_target

#: how many fired rules the figure shows when top_k is None
FIGURE_TOP_K = 10


@dataclass
class Explanation:
    """One image's decision under the rule set: scores = bias + sum of the weights of the fired rules.

    Implements `medimg_core.explain.Explanation`: `predicted` is the class with the highest rule score,
    `target` the class whose rule contributions are shown (default: the predicted class).
    `network_scores` (C,) are the network's class probabilities and `network_predicted` its class (None when
    only the rules were given): under support pruning the rule set can disagree with the network on a concept
    pattern unseen in training, and the text, the figure and the dict then show both. `compact` holds, per
    class, the compact rule (`crl.compact`, exact mode) and whether it holds for these concepts.
    """

    image: np.ndarray  # (H, W, 3) float in [0, 1], as the model saw it (before normalisation)
    concept_names: list[str]
    concept_probs: np.ndarray  # (K,)
    concepts: np.ndarray  # (K,) in {0, 1}
    class_names: list[str]
    scores: np.ndarray  # (C,) rule-model scores
    predicted: int
    fired_rules: list[str]
    contributions: np.ndarray  # (R_fired, C)
    bias: np.ndarray  # (C,)
    target: int | None = None  # the class explained; None: the predicted class
    network_scores: np.ndarray | None = None  # (C,) the network's class probabilities
    network_predicted: int | None = None
    compact: dict[str, dict[str, Any]] | None = None  # class -> {"rule": text, "holds": bool}

    def __post_init__(self) -> None:
        self.target = resolve_target(self.target, self.predicted, self.class_names)
        if self.network_scores is not None and self.network_predicted is None:
            self.network_predicted = int(np.argmax(self.network_scores))

    @property
    def agrees(self) -> bool | None:
        """Whether the rule set's class is the network's (None when the network's is not known)."""
        return None if self.network_predicted is None else self.network_predicted == self.predicted

    def _disagreement(self) -> str:
        return (f"the rule set's class ({self.class_names[self.predicted]}) differs from the network's "
                f"({self.class_names[self.network_predicted]}): the network's is the model's prediction; the rules "
                "below explain the rule set's (pruned rules can fire differently on a concept pattern not seen in "
                "training)")

    def _order(self, top_k: int | None) -> np.ndarray:
        """Indices of the fired rules by |contribution to target|, at most top_k of them (None: all)."""
        if not len(self.fired_rules):
            return np.zeros(0, dtype=np.int64)
        order = np.argsort(-np.abs(self.contributions[:, self.target]))
        return order if top_k is None else order[:max(int(top_k), 0)]

    def to_text(self, top_k: int | None = None) -> str:
        """The rule set's prediction with every class score, the network's with its probabilities (and a warning
        when they differ), the target's compact rule, the concepts present, and the fired rules by their
        contribution to the target class (the `top_k` largest; None: all), then the target's bias."""
        c = self.target
        lines = [f"prediction: {self.class_names[self.predicted]} (the rule set's scores: "
                 + ", ".join(f"{n} {s:+.3f}" for n, s in zip(self.class_names, self.scores, strict=True)) + ")"]
        if self.network_predicted is not None:
            lines.append(f"the network's prediction: {self.class_names[self.network_predicted]} (probabilities: "
                         + ", ".join(f"{n} {s:.3f}" for n, s in zip(self.class_names, self.network_scores,
                                                                      strict=True)) + ")")
            if not self.agrees:
                lines.append("WARNING: " + self._disagreement())
        if self.compact and self.class_names[c] in self.compact:
            entry = self.compact[self.class_names[c]]
            lines.append(f"compact rule: {self.class_names[c]} <=> {entry['rule']} "
                         f"({'holds' if entry['holds'] else 'does not hold'} for these concepts)")
        present = [n for n, v in zip(self.concept_names, self.concepts, strict=True) if v > 0.5]
        lines += ["concepts present: " + (", ".join(present) or "none"),
                  f"rules that fired ({len(self.fired_rules)}), contribution to {self.class_names[c]}:"]
        order = self._order(top_k)
        for i in order:
            lines.append(f"  {self.contributions[i, c]:+.3f}  {self.fired_rules[i]}")
        if len(order) < len(self.fired_rules):
            lines.append(f"  ({len(self.fired_rules) - len(order)} more rules)")
        lines.append(f"  {self.bias[c]:+.3f}  (bias)")
        return "\n".join(lines)

    def figure(self, path: str | Path, top_k: int | None = None) -> Path:
        """The image, the concept probabilities and the `top_k` (None: 10) fired rules by contribution to the
        target class, as one PNG at `path`."""
        import matplotlib.pyplot as plt

        from medimg_core.figures import save_figure

        c = self.target
        top_k = FIGURE_TOP_K if top_k is None else top_k
        fig, axes = plt.subplots(1, 3, figsize=(14, 4.2), gridspec_kw={"width_ratios": [1, 1.3, 1.8]})
        axes[0].imshow(self.image)
        title = f"prediction: {self.class_names[self.predicted]}"
        if self.network_predicted is not None and not self.agrees:
            title = (f"rules: {self.class_names[self.predicted]}, "
                     f"network: {self.class_names[self.network_predicted]} (differ)")
        axes[0].set_title(title, fontsize=10, color="k" if self.agrees is not False else "#d55e00")
        axes[0].axis("off")
        y = np.arange(len(self.concept_names))
        colours = ["#d55e00" if v > 0.5 else "#999999" for v in self.concepts]
        axes[1].barh(y, self.concept_probs, color=colours)
        axes[1].axvline(0.5, color="k", lw=0.8, ls="--")
        axes[1].set_yticks(y, self.concept_names, fontsize=8)
        axes[1].invert_yaxis()
        axes[1].set_xlim(0, 1)
        axes[1].set_xlabel("concept probability (orange: present)", fontsize=8)
        order = self._order(top_k)
        if len(order):
            vals = self.contributions[order, c]
            labels = [self.fired_rules[i] if len(self.fired_rules[i]) < 60 else self.fired_rules[i][:57] + "..."
                      for i in order]
            yy = np.arange(len(order))
            axes[2].barh(yy, vals, color=["#d55e00" if v > 0 else "#0072b2" for v in vals])
            axes[2].set_yticks(yy, labels, fontsize=7)
            axes[2].invert_yaxis()
            axes[2].axvline(0, color="k", lw=0.8)
        axes[2].set_xlabel(f"contribution to the score of '{self.class_names[c]}'", fontsize=8)
        axes[2].set_title(f"rules that fired ({len(self.fired_rules)}; top {len(order)})", fontsize=10)
        fig.tight_layout()
        return save_figure(fig, path)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable: classes, scores, prediction and target, concepts with their probabilities, and every
        fired rule with its contribution to each class (the image is left out); the network's class and
        probabilities and whether the rule set agrees with it (None where the network's is not known); the compact
        rules and whether each holds."""
        return jsonable({
            "method": "crl", "class_names": self.class_names, "predicted": self.predicted, "target": self.target,
            "scores": dict(zip(self.class_names, self.scores, strict=True)),
            "network_predicted": self.network_predicted,
            "network_scores": None if self.network_scores is None
            else dict(zip(self.class_names, self.network_scores, strict=True)),
            "rules_agree_with_network": self.agrees, "compact_rules": self.compact,
            "bias": dict(zip(self.class_names, self.bias, strict=True)),
            "concepts": [{"name": n, "present": bool(v > 0.5), "probability": p}
                         for n, v, p in zip(self.concept_names, self.concepts, self.concept_probs, strict=True)],
            "fired_rules": [{"rule": r, "contributions": dict(zip(self.class_names, w, strict=True))}
                            for r, w in zip(self.fired_rules, self.contributions, strict=True)],
        })


def explain_concepts(rules: RuleSet, concepts: np.ndarray, concept_probs: np.ndarray | None = None,
                     image: np.ndarray | None = None, target: int | str | None = None,
                     network_scores: np.ndarray | None = None) -> Explanation:
    """The explanation of one binary concept vector (K,) under `rules`; `concept_probs` (K,) are the concept
    head's probabilities (default: the binary concepts), `image` (H, W, 3) the picture, `target` the class whose
    contributions are shown (an index or a class name; None: the predicted class), `network_scores` (C,) the
    network's class probabilities for the same image (shown next to the rule set's, flagged when they differ)."""
    concepts = np.asarray(concepts, dtype=np.float32).reshape(1, -1)
    if concepts.shape[1] != len(rules.concept_names):
        raise ValueError(f"the rule set reads {len(rules.concept_names)} concepts, got a vector of "
                         f"{concepts.shape[1]}")
    fired = rules.fired(concepts)[0]
    fired_rules = [r for r, f in zip(rules.rules, fired, strict=True) if f]
    scores = rules.scores(concepts)[0]
    compact = None
    if rules.compact is not None and rules.compact.method == "exact":
        compact = {c.class_name: {"rule": c.text, "holds": bool(_evaluate(c.formula, concepts)[0])}
                   for c in rules.compact.classes}
    if network_scores is not None:
        network_scores = np.asarray(network_scores, dtype=np.float64).reshape(-1)
        if len(network_scores) != len(rules.class_names):
            raise ValueError(f"network_scores has {len(network_scores)} values; the rule set has "
                             f"{len(rules.class_names)} classes {list(rules.class_names)}")
    return Explanation(
        image=image if image is not None else np.zeros((8, 8, 3)),
        concept_names=list(rules.concept_names),
        concept_probs=concept_probs if concept_probs is not None else concepts[0],
        concepts=concepts[0], class_names=list(rules.class_names), scores=scores, predicted=int(scores.argmax()),
        fired_rules=[r.text for r in fired_rules],
        contributions=np.array([r.weights for r in fired_rules]).reshape(len(fired_rules), len(rules.class_names)),
        bias=rules.bias, target=target, network_scores=network_scores, compact=compact,
    )
