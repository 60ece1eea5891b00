"""What the concept bottleneck shows for one image: the concepts that carry its class logit.

logit(class) = sum_k contribution_k + residual, contribution_k = w_k (W_class . c_k) where w is the image's
sparse code over the selected concept vectors c_k; residual = the decomposition intercept's term + bias.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


@dataclass
class Explanation:
    """One image's decision under the concept bottleneck."""

    image: np.ndarray  # (H, W, 3) float in [0, 1], as the model saw it (before normalisation)
    class_names: list[str]
    probabilities: np.ndarray  # (C,) CBM
    predicted: int
    explained: int  # the class whose logit is decomposed
    opaque_predicted: int
    concept_names: list[str]  # (K,) selected concepts (with their latent)
    contributions: np.ndarray  # (K,) to the explained class's logit
    residual: float
    logit: float

    def top(self, k: int = 10) -> np.ndarray:
        """Indices of the k concepts with the largest |contribution| (non-zero only)."""
        order = np.argsort(-np.abs(self.contributions), kind="stable")
        return np.array([i for i in order if self.contributions[i] != 0][:k], dtype=np.int64)

    def to_text(self, k: int = 10) -> str:
        c = self.explained
        lines = [f"prediction: {self.class_names[self.predicted]} (CBM probability "
                 f"{self.probabilities[self.predicted]:.3f}); opaque model: {self.class_names[self.opaque_predicted]}",
                 f"logit of '{self.class_names[c]}' = {self.logit:+.3f} = sum of concept contributions "
                 f"{self.contributions.sum():+.3f} + residual {self.residual:+.3f}",
                 f"top concepts ({int((self.contributions != 0).sum())} active):"]
        for i in self.top(k):
            lines.append(f"  {self.contributions[i]:+.3f}  {self.concept_names[i]}")
        return "\n".join(lines)

    def figure(self, path: str | Path, k: int = 10) -> Path:
        import matplotlib.pyplot as plt

        from medimg_core.figures import NEGATIVE_COLOUR, POSITIVE_COLOUR, save_figure

        idx = self.top(k)
        labels = [self.concept_names[i] for i in idx] + ["residual (intercept + bias)"]
        vals = np.concatenate([self.contributions[idx], [self.residual]])
        fig, axes = plt.subplots(1, 2, figsize=(10, 0.9 + 0.32 * max(len(vals), 6)),
                                 gridspec_kw={"width_ratios": [1, 2.2]})
        axes[0].imshow(self.image)
        axes[0].axis("off")
        axes[0].set_title(f"CBM: {self.class_names[self.predicted]}\nopaque: "
                          f"{self.class_names[self.opaque_predicted]}", fontsize=9)
        y = np.arange(len(vals))
        colours = [POSITIVE_COLOUR if v >= 0 else NEGATIVE_COLOUR for v in vals]
        colours[-1] = "0.6"
        axes[1].barh(y, vals, color=colours, height=0.7)
        axes[1].set_yticks(y, [s if len(s) < 50 else s[:47] + "..." for s in labels], fontsize=8)
        axes[1].invert_yaxis()
        axes[1].axvline(0, color="0.3", lw=0.8)
        span = float(np.abs(vals).max()) or 1.0
        for yy, v in zip(y, vals, strict=True):
            axes[1].text(v + (0.01 if v >= 0 else -0.01) * span, yy, f"{v:+.2f}", va="center",
                         ha="left" if v >= 0 else "right", fontsize=7)
        axes[1].set_xlim(min(0.0, vals.min()) - 0.2 * span, max(0.0, vals.max()) + 0.2 * span)
        axes[1].set_xlabel(f"contribution to the logit of '{self.class_names[self.explained]}' "
                           f"(total {self.logit:+.2f})", fontsize=8)
        axes[1].set_title(f"top {len(idx)} concepts", fontsize=9)
        fig.tight_layout()
        return save_figure(fig, path)


def _resolve_class(value: str | int | None, class_names: list[str]) -> int | None:
    if value is None:
        return None
    if isinstance(value, int) or str(value).isdigit():
        index = int(value)
        if not 0 <= index < len(class_names):
            raise ValueError(f"class index {index} is out of range; classes: {class_names}")
        return index
    if value not in class_names:
        raise ValueError(f"unknown class {value!r}; expected one of {class_names} or an index")
    return class_names.index(value)


def explain_image(cbm_dir: str | Path, image_path: str | Path, target: str | int | None = None,
                  device: str = "cpu") -> Explanation:
    """Run one image file through the opaque model's backbone and the concept bottleneck of `cbm_dir`;
    decompose the logit of `target` (a class name or index; default the predicted class)."""
    from dataclasses import replace

    from torchvision import tv_tensors

    from medimg_core.baseline import build_transforms
    from medimg_core.data.images import read_image
    from medimg_core.figures import to_display
    from neuron_concepts.train import _opaque_data, load_cbm, require_stage, stage_chain

    cbm_dir = require_stage(cbm_dir, "cbm")
    chain = stage_chain(cbm_dir)
    model, _config, bcfg, card = _opaque_data(chain["opaque"])
    data = bcfg.data
    cbm = load_cbm(cbm_dir)
    arr = read_image(image_path, card.channels)
    tensor = torch.from_numpy(np.ascontiguousarray(arr))
    image = tv_tensors.Image(tensor[None] if tensor.ndim == 2 else tensor.permute(2, 0, 1))
    x = build_transforms(data, card)[1](image).as_subclass(torch.Tensor)[None].to(device)  # as in encode
    shown = build_transforms(replace(data, normalize=None), card)[1](image).as_subclass(torch.Tensor)
    model = model.to(device).eval()
    with torch.no_grad():
        h = model.backbone(x)
        opaque_logits = model.head(h).float().cpu().numpy()[0]
    H = h.double().cpu().numpy()
    class_names = list(card.class_names)
    proba = cbm.predict_proba(H)[0]
    predicted = int(np.argmax(proba))
    explained = _resolve_class(target, class_names)
    contrib = cbm.contributions(H, None if explained is None else explained)
    latents = getattr(cbm, "latents", None) or list(range(len(cbm.concepts)))
    names = [f"{n} (#{k})" for n, k in zip(cbm.concept_names or [], latents, strict=False)]
    return Explanation(image=to_display(shown), class_names=class_names, probabilities=proba, predicted=predicted,
                       explained=int(contrib.classes[0]), opaque_predicted=int(np.argmax(opaque_logits)),
                       concept_names=names, contributions=contrib.values[0], residual=float(contrib.residual[0]),
                       logit=float(contrib.logits[0]))
