"""What the concept bottleneck shows for one image: the concepts that carry its class logit.

logit(class) = sum_k contribution_k + residual, contribution_k = w_k (W_class . c_k) where w is the image's
sparse code over the selected concept vectors c_k; residual = the decomposition intercept's term + bias.
The coefficient w_k can be negative: the image then holds the concept's opposite, so "+12.3 no streaks" with
w_k < 0 speaks for streaks. The text, figure and dict show w_k's sign and each concept's naming score.

    e = explain_tensor(model, cbm, x, shown)       # x (1, C, H, W) preprocessed; model: the opaque classifier
    e.to_text(top_k=5); e.figure("e.png"); e.to_dict()

`Explanation` implements medimg-core's explanation protocol (medimg_core.explain). Run folders and image files
come in through `neuron_concepts.api` (`ConceptsFromNeurons.explain`, `explain_image`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch

from medimg_core.baseline import ImageClassifier
from medimg_core.explain import jsonable
from medimg_core.figures import NEGATIVE_COLOUR, POSITIVE_COLOUR, save_figure
from neuron_concepts.bottleneck import ConceptBottleneck

#: concepts shown when top_k is None
DEFAULT_TOP_K = 10


@dataclass
class Explanation:
    """One image's decision under the concept bottleneck."""

    image: np.ndarray | None  # (H, W, 3) float in [0, 1], as the model saw it (before normalisation)
    class_names: list[str]
    probabilities: np.ndarray  # (C,) CBM
    predicted: int
    target: int  # the class whose logit is decomposed
    opaque_predicted: int
    concept_names: list[str]  # (K,) selected concepts (with their latent)
    contributions: np.ndarray  # (K,) to the target class's logit
    residual: float
    logit: float
    coefficients: np.ndarray | None = None  # (K,) the image's decomposition coefficients w_k (sign: for / against)
    naming_scores: list[float | None] | None = None  # (K,) each concept's naming score (None: unknown)
    naming_sources: list[str] | None = None  # (K,) where each name came from

    def naming_score(self, i: int) -> float | None:
        """Concept i's naming score, None when unknown."""
        return self.naming_scores[i] if self.naming_scores and i < len(self.naming_scores) else None

    def naming_source(self, i: int) -> str | None:
        """Where concept i's name came from, None when unknown."""
        return self.naming_sources[i] if self.naming_sources and i < len(self.naming_sources) else None

    def concept_note(self, i: int) -> str:
        """What sits beside concept i's name: its coefficient (and "against" when negative) and naming score."""
        bits = []
        if self.coefficients is not None:
            w = float(self.coefficients[i])
            bits.append(f"coefficient {w:+.3f}" + (" (against: the image holds the opposite)" if w < 0 else ""))
        source, score = self.naming_source(i), self.naming_score(i)
        if score is not None:
            bits.append(f"naming score {score:.3f}" + (f" ({source})" if source else ""))
        elif source:
            bits.append(f"named by {source}")
        return "; ".join(bits)

    @property
    def explained(self) -> int:
        """The class whose logit is decomposed (the older name of `target`)."""
        return self.target

    def top(self, top_k: int = DEFAULT_TOP_K) -> np.ndarray:
        """Indices of the top_k concepts with the largest |contribution| (non-zero only)."""
        order = np.argsort(-np.abs(self.contributions), kind="stable")
        return np.array([i for i in order if self.contributions[i] != 0][:top_k], dtype=np.int64)

    def to_text(self, top_k: int | None = None, *, k: int | None = None) -> str:
        """The prediction, the logit's decomposition and the top_k concepts (default 10; `k` is the older name)."""
        top_k = _top_k(top_k, k)
        c = self.target
        lines = [f"prediction: {self.class_names[self.predicted]} (CBM probability "
                 f"{self.probabilities[self.predicted]:.3f}); opaque model: {self.class_names[self.opaque_predicted]}",
                 f"logit of '{self.class_names[c]}' = {self.logit:+.3f} = sum of concept contributions "
                 f"{self.contributions.sum():+.3f} + residual {self.residual:+.3f}",
                 f"top concepts ({int((self.contributions != 0).sum())} active; contribution = coefficient x the "
                 "concept's class weight):"]
        for i in self.top(top_k):
            note = self.concept_note(i)
            lines.append(f"  {self.contributions[i]:+.3f}  {self.concept_names[i]}" + (f"  [{note}]" if note else ""))
        return "\n".join(lines)

    def figure(self, path: str | Path, top_k: int | None = None, *, k: int | None = None) -> Path:
        """The image beside a bar chart of the top_k contributions and the residual; one PNG at `path`."""
        idx = self.top(_top_k(top_k, k))
        labels = [self._label(i) for i in idx] + ["residual (intercept + bias)"]
        vals = np.concatenate([self.contributions[idx], [self.residual]])
        fig, axes = plt.subplots(1, 2, figsize=(10, 0.9 + 0.32 * max(len(vals), 6)),
                                 gridspec_kw={"width_ratios": [1, 2.2]})
        if self.image is not None:
            axes[0].imshow(self.image)
        axes[0].axis("off")
        axes[0].set_title(f"CBM: {self.class_names[self.predicted]}\nopaque: "
                          f"{self.class_names[self.opaque_predicted]}", fontsize=9)
        y = np.arange(len(vals))
        colours = [POSITIVE_COLOUR if v >= 0 else NEGATIVE_COLOUR for v in vals]
        colours[-1] = "0.6"
        axes[1].barh(y, vals, color=colours, height=0.7)
        axes[1].set_yticks(y, [s if len(s) < 70 else s[:67] + "..." for s in labels], fontsize=8)
        axes[1].invert_yaxis()
        axes[1].axvline(0, color="0.3", lw=0.8)
        span = float(np.abs(vals).max()) or 1.0
        for yy, v in zip(y, vals, strict=True):
            axes[1].text(v + (0.01 if v >= 0 else -0.01) * span, yy, f"{v:+.2f}", va="center",
                         ha="left" if v >= 0 else "right", fontsize=7)
        axes[1].set_xlim(min(0.0, vals.min()) - 0.2 * span, max(0.0, vals.max()) + 0.2 * span)
        axes[1].set_xlabel(f"contribution to the logit of '{self.class_names[self.target]}' "
                           f"(total {self.logit:+.2f}); w: the image's coefficient (< 0: against the concept)",
                           fontsize=8)
        axes[1].set_title(f"top {len(idx)} concepts", fontsize=9)
        fig.tight_layout()
        return save_figure(fig, path)

    def _label(self, i: int) -> str:
        """Concept i's name in the figure, with its coefficient and naming score."""
        bits = [] if self.coefficients is None else [f"w {float(self.coefficients[i]):+.2f}"]
        score = self.naming_score(i)
        if score is not None:
            bits.append(f"name {score:.2f}")
        return self.concept_names[i] + (f" [{', '.join(bits)}]" if bits else "")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable: the classes, probabilities, the decomposed logit and every active concept's
        contribution (largest |contribution| first); not the image."""
        active = self.top(len(self.contributions))
        return jsonable({
            "method": "neuron-concepts", "class_names": self.class_names,
            "probabilities": {n: p for n, p in zip(self.class_names, self.probabilities, strict=True)},
            "predicted": self.predicted, "target": self.target, "opaque_predicted": self.opaque_predicted,
            "logit": self.logit, "residual": self.residual, "contributions_sum": float(self.contributions.sum()),
            "concepts": [{"name": self.concept_names[i], "contribution": self.contributions[i],
                          "coefficient": None if self.coefficients is None else self.coefficients[i],
                          "naming_score": self.naming_score(i), "naming_source": self.naming_source(i)}
                         for i in active],
        })


def _top_k(top_k: int | None, k: int | None) -> int:
    if top_k is not None and k is not None and top_k != k:
        raise TypeError(f"top_k={top_k} and k={k} disagree; k is the older name of top_k, give one")
    value = top_k if top_k is not None else k
    return DEFAULT_TOP_K if value is None else int(value)


def resolve_class(value: str | int | None, class_names: Sequence[str]) -> int | None:
    """A class given as an index, a digit string or a name, as an index (None stays None)."""
    if value is None:
        return None
    if isinstance(value, (int, np.integer)) or str(value).isdigit():
        index = int(value)
        if not 0 <= index < len(class_names):
            raise ValueError(f"class index {index} is out of range; classes: {list(class_names)}")
        return index
    if value not in class_names:
        raise ValueError(f"unknown class {value!r}; expected one of {list(class_names)} or an index")
    return list(class_names).index(value)


@torch.no_grad()
def explain_tensor(model: ImageClassifier, cbm: ConceptBottleneck, x: torch.Tensor, image: np.ndarray | None = None,
                   target: str | int | None = None, class_names: Sequence[str] | None = None) -> Explanation:
    """Explain one preprocessed image x (1, C, H, W): the opaque model's backbone gives its features h (1, d),
    the bottleneck its probabilities and the decomposition of the `target` class's logit (a name or index;
    default the predicted class). `image` (H, W, 3) is what the figure shows; `class_names` default to the
    bottleneck's."""
    if x.ndim != 4 or x.shape[0] != 1:
        raise ValueError(f"explain_tensor takes one image (1, C, H, W), got shape {tuple(x.shape)}")
    class_names = list(class_names if class_names is not None else cbm.class_names or [])
    device = next(model.parameters()).device
    model.eval()
    h = model.backbone(x.to(device))
    opaque_logits = model.head(h).float().cpu().numpy()[0]
    H = h.double().cpu().numpy()
    proba = cbm.predict_proba(H)[0]
    predicted = int(np.argmax(proba))
    explained = resolve_class(target, class_names)
    contrib = cbm.contributions(H, None if explained is None else explained)
    coef, _ = cbm.decompose(H)
    latents = getattr(cbm, "latents", None) or list(range(len(cbm.concepts)))
    names = [f"{n} (#{k})" for n, k in zip(cbm.concept_names or [], latents, strict=False)]
    sources = getattr(cbm, "sources", None) or None
    return Explanation(image=image, class_names=class_names, probabilities=proba, predicted=predicted,
                       target=int(contrib.classes[0]), opaque_predicted=int(np.argmax(opaque_logits)),
                       concept_names=names, contributions=contrib.values[0], residual=float(contrib.residual[0]),
                       logit=float(contrib.logits[0]), coefficients=coef[0], naming_scores=cbm.naming_scores,
                       naming_sources=list(sources) if sources else None)
