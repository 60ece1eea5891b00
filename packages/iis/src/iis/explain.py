"""What an IIS head shows for one image: the concepts that survive the sparsity mask and what each adds to
the class scores (logit_k = bias_k + sum_m c_s[m] * W[k, m]), with the concepts' prototype pictures
(visual libraries) or phrases (text libraries).

Pure: a head, the image's features and the library in, an `Explanation` (medimg-core's protocol) out. Run and
checkpoint folders are read by `iis.api` (`InterpretabilityScore.explain`, `explain_image`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from iis.concepts import ConceptLibrary, concept_elements
from iis.model import ConceptHead, kept_count
from medimg_core.explain import jsonable, resolve_target
from medimg_core.figures import NEGATIVE_COLOUR, POSITIVE_COLOUR, save_figure, to_display

__all__ = ["Explanation", "explain_features", "head_probabilities", "pick_ratio"]


def __getattr__(name: str) -> Any:
    """`iis.explain.explain_image` (iis 0.1) reads run folders, so it moved to `iis.api`; importing it from
    here would make this pure module depend on the run-folder layer (an import cycle). Say where it went: an
    ImportError, since `from iis.explain import explain_image` replaces an AttributeError's message."""
    if name == "explain_image":
        raise ImportError("iis.explain.explain_image moved to iis.api.explain_image (also importable as "
                          "iis.explain_image); `from iis import explain_image` works with the same arguments")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass
class Explanation:
    """One image's decision by the head at sparsity `ratio`; concepts sorted by |contribution| to the
    explained class `target` (largest first). Implements `medimg_core.explain.Explanation`."""

    image: np.ndarray  # (H, W, 3) float in [0, 1], as the backbone saw it (before normalisation)
    backbone: str
    library: str
    ratio: float
    num_concepts: int
    class_names: list[str]
    probabilities: np.ndarray  # (K,)
    target: int  # the class whose score is explained (default: the predicted one)
    predicted: int  # the class of highest probability
    concept_index: list[int]  # surviving concepts (indices into the library)
    concept_names: list[str]
    activations: np.ndarray  # (S,) their normalised activations
    contributions: np.ndarray  # (S, K)
    bias: np.ndarray  # (K,)
    pictures: list[np.ndarray | None]  # per surviving concept, a picture of it (None for text concepts)
    top_k: int = 10  # rows shown when to_text / figure are given no top_k

    @property
    def explained(self) -> int:
        """The explained class (the name this attribute had before the shared protocol: `target`)."""
        return self.target

    def to_text(self, top_k: int | None = None) -> str:
        top_k = self.top_k if top_k is None else int(top_k)
        c = self.target
        lines = [f"backbone {self.backbone}, {self.library} concepts, sparsity {self.ratio:g}: "
                 f"{len(self.concept_index)} of {self.num_concepts} concepts survive",
                 f"prediction: {self.class_names[self.predicted]} ("
                 + ", ".join(f"{n} {p:.3f}" for n, p in zip(self.class_names, self.probabilities, strict=True)) + ")",
                 f"contributions to the score of {self.class_names[c]} (top {min(top_k, len(self.concept_index))}):"]
        for j in range(min(top_k, len(self.concept_index))):
            lines.append(f"  {self.contributions[j, c]:+.3f}  concept {self.concept_index[j]}: {self.concept_names[j]} "
                         f"(activation {self.activations[j]:+.2f})")
        rest = self.contributions[top_k:, c].sum() if len(self.concept_index) > top_k else 0.0
        if len(self.concept_index) > top_k:
            lines.append(f"  {rest:+.3f}  (the other {len(self.concept_index) - top_k} surviving concepts)")
        lines.append(f"  {self.bias[c]:+.3f}  (bias)")
        return "\n".join(lines)

    def figure(self, path: str | Path, top_k: int | None = None) -> Path:
        import matplotlib.pyplot as plt

        top_k = self.top_k if top_k is None else int(top_k)
        c, n = self.target, min(top_k, len(self.concept_index))
        pics = [(j, p) for j, p in enumerate(self.pictures[:n]) if p is not None][:8]
        rows = 2 if pics else 1
        fig = plt.figure(figsize=(11, 4.4 + 2.0 * (rows - 1)), layout="constrained")
        top, bottom = fig.subfigures(2, 1, height_ratios=[2.2, 1]) if pics else (fig, None)
        ax_img, ax = top.subplots(1, 2, width_ratios=[1, 1.7])
        ax_img.imshow(self.image)
        ax_img.set_title(f"{self.backbone}\nprediction: {self.class_names[self.predicted]}", fontsize=9)
        ax_img.axis("off")
        vals = self.contributions[:n, c][::-1]
        labels = [f"{self.concept_index[j]}: {self.concept_names[j]}"[:48] for j in range(n)][::-1]
        ax.barh(np.arange(n), vals, color=[POSITIVE_COLOUR if v >= 0 else NEGATIVE_COLOUR for v in vals])
        ax.set_yticks(np.arange(n), labels, fontsize=7)
        ax.axvline(0, color="0.3", lw=0.8)
        ax.set_xlabel(f"contribution to the score of '{self.class_names[c]}'", fontsize=8)
        ax.set_title(f"{len(self.concept_index)} of {self.num_concepts} {self.library} concepts survive "
                     f"at s = {self.ratio:g}", fontsize=9)
        if bottom is not None:
            for k, axp in enumerate(bottom.subplots(1, 8)):
                axp.axis("off")
                if k < len(pics):
                    j, pic = pics[k]
                    axp.imshow(to_display(pic))
                    axp.set_title(f"concept {self.concept_index[j]}\n{self.contributions[j, c]:+.2f}", fontsize=7)
        return save_figure(fig, path)

    def to_dict(self) -> dict[str, Any]:
        """The explanation as JSON types (pictures and the image left out): every surviving concept with its
        activation, its contribution to the explained class and to every class."""
        c = self.target
        return jsonable({
            "backbone": self.backbone, "library": self.library, "ratio": self.ratio,
            "num_concepts": self.num_concepts, "class_names": self.class_names,
            "probabilities": self.probabilities, "target": self.target, "predicted": self.predicted,
            "bias": self.bias, "surviving_concepts": len(self.concept_index),
            "concepts": [{"index": m, "name": name, "activation": a, "contribution": row[c], "contributions": row}
                         for m, name, a, row in zip(self.concept_index, self.concept_names, self.activations,
                                                    self.contributions, strict=True)],
        })


def pick_ratio(ratios: Sequence[float], num_concepts: int, ratio: float | None, top_k: int) -> float:
    """The head to use: `ratio` when given (one of the swept `ratios`), else the sparsest swept ratio whose head
    still keeps `top_k` concepts per image (or as many as the library can: M - 1)."""
    ratios = [float(s) for s in ratios]
    if ratio is not None:
        match = [s for s in ratios if abs(s - float(ratio)) < 1e-9]
        if not match:
            raise ValueError(f"ratio {float(ratio):g} was not swept; the run has heads for {ratios}")
        return match[0]
    want = min(top_k, num_concepts - 1)
    fitting = [s for s in ratios if kept_count(num_concepts, s) >= want]
    return max(fitting) if fitting else min(ratios)


def head_probabilities(logits: torch.Tensor, multilabel: bool) -> torch.Tensor:
    """Class probabilities from head logits (..., K): sigmoid per label (multi-label), else softmax."""
    return torch.sigmoid(logits) if multilabel else torch.softmax(logits, dim=-1)


@torch.no_grad()
def explain_features(head: ConceptHead, features: torch.Tensor, library: ConceptLibrary, class_names: Sequence[str],
                     multilabel: bool = False, target: int | str | None = None, *, image: np.ndarray | None = None,
                     backbone: str = "", picture: Callable[[int], np.ndarray | None] | None = None,
                     top_k: int = 10) -> Explanation:
    """Explain one image from its pooled features (1, D) through a trained `head` of `library`.

    target: the class to explain (an index or a class name; None: the predicted one). picture: element index
    -> its picture (H, W[, 3]) uint8 or None, asked for the first `top_k` surviving concepts of visual libraries.
    image: the picture the backbone saw (H, W, 3), shown in the figure.
    """
    head = head.eval()
    if features.ndim != 2 or features.shape[0] != 1:
        raise ValueError(f"explain_features takes the features of one image (1, D), got {tuple(features.shape)}")
    logits = head(features)[0].cpu()
    contrib = head.contributions(features)[0].cpu().numpy()
    acts = head.sparse_scores(features)[0].cpu().numpy()
    probs = head_probabilities(logits, multilabel).numpy()
    predicted = int(probs.argmax())
    explained = resolve_target(target, predicted, list(class_names))
    alive = np.flatnonzero(acts != 0)
    alive = alive[np.argsort(-np.abs(contrib[alive, explained]), kind="stable")]
    pictures: list[np.ndarray | None] = [None] * len(alive)
    if picture is not None and library.kind != "text":
        elements = concept_elements(library, head)
        for j, m in enumerate(alive[:top_k]):
            if elements[m] is not None:
                pictures[j] = picture(elements[m])
    return Explanation(
        image=np.zeros((1, 1, 3)) if image is None else image, backbone=backbone, library=library.kind,
        ratio=float(head.ratio), num_concepts=library.num_concepts, class_names=list(class_names),
        probabilities=probs, target=explained, predicted=predicted, concept_index=[int(m) for m in alive],
        concept_names=[library.names[m] for m in alive], activations=acts[alive], contributions=contrib[alive],
        bias=head.linear.bias.detach().cpu().numpy(), pictures=pictures, top_k=top_k)
