"""What CRL shows: for one image, its predicted concepts, the rules that fired and what each adds to each
class score (instance-level logic), as text and as a figure."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from crl.rules import RuleSet


@dataclass
class Explanation:
    """One image's decision: scores = bias + sum of the weights of the fired rules."""

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

    def to_text(self) -> str:
        c = self.predicted
        lines = [f"prediction: {self.class_names[c]} (scores: "
                 + ", ".join(f"{n} {s:+.3f}" for n, s in zip(self.class_names, self.scores, strict=True)) + ")",
                 "concepts present: " + (", ".join(n for n, v in zip(self.concept_names, self.concepts, strict=True)
                                                   if v > 0.5) or "none"),
                 f"rules that fired ({len(self.fired_rules)}), contribution to {self.class_names[c]}:"]
        order = np.argsort(-np.abs(self.contributions[:, c])) if len(self.fired_rules) else []
        for i in order:
            lines.append(f"  {self.contributions[i, c]:+.3f}  {self.fired_rules[i]}")
        lines.append(f"  {self.bias[c]:+.3f}  (bias)")
        return "\n".join(lines)

    def figure(self, path: str | Path, top_k: int = 10) -> Path:
        import matplotlib.pyplot as plt

        from medimg_core.figures import save_figure

        c = self.predicted
        fig, axes = plt.subplots(1, 3, figsize=(14, 4.2), gridspec_kw={"width_ratios": [1, 1.3, 1.8]})
        axes[0].imshow(self.image)
        axes[0].set_title(f"prediction: {self.class_names[c]}", fontsize=10)
        axes[0].axis("off")
        y = np.arange(len(self.concept_names))
        colours = ["#d55e00" if v > 0.5 else "#999999" for v in self.concepts]
        axes[1].barh(y, self.concept_probs, color=colours)
        axes[1].axvline(0.5, color="k", lw=0.8, ls="--")
        axes[1].set_yticks(y, self.concept_names, fontsize=8)
        axes[1].invert_yaxis()
        axes[1].set_xlim(0, 1)
        axes[1].set_xlabel("concept probability (orange: present)", fontsize=8)
        if len(self.fired_rules):
            order = np.argsort(-np.abs(self.contributions[:, c]))[:top_k]
            vals = self.contributions[order, c]
            labels = [self.fired_rules[i] if len(self.fired_rules[i]) < 60 else self.fired_rules[i][:57] + "..."
                      for i in order]
            yy = np.arange(len(order))
            axes[2].barh(yy, vals, color=["#d55e00" if v > 0 else "#0072b2" for v in vals])
            axes[2].set_yticks(yy, labels, fontsize=7)
            axes[2].invert_yaxis()
            axes[2].axvline(0, color="k", lw=0.8)
        axes[2].set_xlabel(f"contribution to the score of '{self.class_names[c]}'", fontsize=8)
        axes[2].set_title(f"rules that fired ({len(self.fired_rules)}; top {min(top_k, len(self.fired_rules))})",
                          fontsize=10)
        fig.tight_layout()
        return save_figure(fig, path)


def explain_concepts(rules: RuleSet, concepts: np.ndarray, concept_probs: np.ndarray | None = None,
                     image: np.ndarray | None = None) -> Explanation:
    """The explanation of one binary concept vector (K,) under `rules`."""
    concepts = np.asarray(concepts, dtype=np.float32).reshape(1, -1)
    fired = rules.fired(concepts)[0]
    fired_rules = [r for r, f in zip(rules.rules, fired, strict=True) if f]
    scores = rules.scores(concepts)[0]
    return Explanation(
        image=image if image is not None else np.zeros((8, 8, 3)),
        concept_names=list(rules.concept_names),
        concept_probs=concept_probs if concept_probs is not None else concepts[0],
        concepts=concepts[0], class_names=list(rules.class_names), scores=scores, predicted=int(scores.argmax()),
        fired_rules=[r.text for r in fired_rules],
        contributions=np.array([r.weights for r in fired_rules]).reshape(len(fired_rules), len(rules.class_names)),
        bias=rules.bias,
    )


def explain_image(run_dir: str | Path, image_path: str | Path, device: str = "cpu") -> Explanation:
    """Load a trained run, run one image file through it and explain the decision."""
    from crl.rules import load_rules
    from crl.train import load_crl
    from medimg_core.data.images import read_image
    from medimg_core.data.transforms import TransformConfig, eval_transform
    from medimg_core.figures import to_display

    model, config = load_crl(run_dir)
    cfg = config["cfg"]
    rules = load_rules(Path(run_dir) / "rules.json")
    arr = read_image(image_path, config["card"]["channels"])
    tensor = torch.from_numpy(arr)
    tensor = tensor[None] if tensor.ndim == 2 else tensor.permute(2, 0, 1)
    tf_cfg = TransformConfig(size=cfg.data.image_size, channels=config["in_chans"], normalize=cfg.data.normalize)
    shown = eval_transform(tf_cfg, normalize=None)(tensor)
    x = eval_transform(tf_cfg)(tensor)[None].to(device)
    with torch.no_grad():
        out = model.to(device)(x)
    probs = torch.sigmoid(out["concept_logits"])[0].cpu().numpy()
    return explain_concepts(rules, out["concepts"][0].cpu().numpy(), probs, to_display(shown))
