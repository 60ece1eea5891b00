"""One image's post-hoc map as an explanation (medimg_core.explain's protocol): `explain` and `SaliencyExplanation`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medimg_core.explain import jsonable
from medimg_core.posthoc.methods import METHODS, _check_inputs, attribute


def _display_image(x: torch.Tensor) -> np.ndarray:
    """(C, H, W) model input -> (H, W, 3) in [0, 1], min-max scaled (the input may be normalised)."""
    from medimg_core.figures import to_display

    arr = x.detach().cpu().float()
    lo, hi = float(arr.min()), float(arr.max())
    arr = (arr - lo) / (hi - lo) if hi > lo else torch.zeros_like(arr)
    return to_display(arr)


@dataclass
class SaliencyExplanation:
    """One image's post-hoc map (medimg_core.explain.Explanation).

    `map` (H, W) is what `attribute` gives for this image; `image` (H, W, 3) in [0, 1] is what the figure shows;
    `target` the class explained, `predicted` the argmax of the logits; `logits` (K,) the model's output.
    """

    method: str
    map: np.ndarray
    image: np.ndarray
    target: int
    predicted: int
    logits: np.ndarray
    class_names: list[str] | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def _name(self, index: int) -> str:
        return self.class_names[index] if self.class_names else f"class {index}"

    @property
    def peak(self) -> tuple[int, int]:
        """(y, x) of the map's maximum."""
        y, x = np.unravel_index(int(np.argmax(self.map)), self.map.shape)
        return int(y), int(x)

    def top_pixels(self, top_k: int = 5) -> list[tuple[int, int, float]]:
        """The `top_k` highest pixels of the map as (y, x, value), highest first."""
        if int(top_k) < 1:
            raise ValueError(f"top_k must be at least 1 (or None for the default 5), got {top_k}")
        order = np.argsort(-self.map, axis=None, kind="stable")[:int(top_k)]  # ties: the first pixel, as `peak`
        return [(int(i // self.map.shape[1]), int(i % self.map.shape[1]), float(self.map.flat[i])) for i in order]

    def to_text(self, top_k: int | None = None) -> str:
        """Method, target and prediction with the logits, the map's range, and its `top_k` (default 5) peak pixels."""
        peaks = self.top_pixels(5 if top_k is None else top_k)
        lines = [f"{self.method} map for {self._name(self.target)} (logit {float(self.logits[self.target]):.3f}); "
                 f"predicted {self._name(self.predicted)} (logit {float(self.logits[self.predicted]):.3f})",
                 f"map {self.map.shape[0]}x{self.map.shape[1]}, min {float(self.map.min()):.4g}, "
                 f"max {float(self.map.max()):.4g}, mean {float(self.map.mean()):.4g}",
                 f"top {len(peaks)} pixels (y, x: value): "
                 + ", ".join(f"({y}, {x}: {v:.4g})" for y, x, v in peaks)]
        if float(self.map.max()) == float(self.map.min()):
            lines.append("the map is constant: no pixel stands out"
                         + (" (a CAM is 0 where the ReLU removed every location: the layer holds no evidence for "
                            "this class, or its feature map is too coarse)" if METHODS[self.method].kind == "cam"
                            else ""))
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """Method, options (as strings where not JSON), target, predicted, logits, peak and the map itself."""
        options = {k: (v if isinstance(v, (int, float, str, type(None))) else repr(v)) for k, v in self.options.items()}
        return jsonable({"method": self.method, "options": options, "target": self.target,
                         "predicted": self.predicted, "class_names": self.class_names, "logits": self.logits,
                         "peak": self.peak, "map_shape": self.map.shape, "map": self.map})

    def figure(self, path: str | Path, top_k: int | None = None) -> Path:
        """One PNG: the image, and the map overlaid on it (`heatmap_overlay`) with its peak(s) marked (`top_k`,
        default 1)."""
        import matplotlib.pyplot as plt

        from medimg_core.figures import PAPER_RC, heatmap_overlay, save_figure

        peaks = self.top_pixels(1 if top_k is None else top_k)
        with plt.rc_context(PAPER_RC):
            fig, axes = plt.subplots(1, 2, figsize=(5.2, 2.9))
            axes[0].imshow(self.image, interpolation="nearest")
            axes[0].set_title("image", fontsize=9)
            axes[1].imshow(heatmap_overlay(self.image, self.map, alpha=0.5), interpolation="nearest")
            axes[1].plot([p[1] for p in peaks], [p[0] for p in peaks], "+", color="white", markersize=9, mew=2)
            axes[1].set_title(f"{self.method}: {self._name(self.target)}", fontsize=9)
            for ax in axes:
                ax.axis("off")
            fig.suptitle(f"predicted {self._name(self.predicted)}", fontsize=9)
            fig.tight_layout()
            return save_figure(fig, path)


def explain(model: nn.Module, x: torch.Tensor, target: int | str | None = None, method: str = "gradcam",
            layer: nn.Module | str | None = None, image: Any = None, class_names: Sequence[str] | None = None,
            **options: Any) -> SaliencyExplanation:
    """One image's map as a `SaliencyExplanation`.

    x: one image (C, H, W) or (1, C, H, W), as the model takes it; target: an index, a class name (with
    `class_names`) or None (the predicted class); image: what the figure shows ((C, H, W) or (H, W[, C]), in
    [0, 1] or uint8; default: x min-max scaled). Other arguments as `attribute`.
    """
    from medimg_core.explain import resolve_target
    from medimg_core.figures import to_display

    if isinstance(x, torch.Tensor) and x.ndim == 3:
        x = x.unsqueeze(0)
    x = _check_inputs(x)
    if x.shape[0] != 1:
        raise ValueError(f"explain takes one image, got a batch of {x.shape[0]}; use attribute() for batches")
    param = next(model.parameters(), None)
    x = x.to(param.device) if param is not None else x
    training = model.training
    try:
        with torch.no_grad():
            logits = model.eval()(x)
    finally:
        model.train(training)
    if logits.ndim != 2:
        raise ValueError(f"{type(model).__name__} gave {tuple(logits.shape)}; expected logits (1, K)")
    k = int(logits.shape[1])
    names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
    if len(names) != k:
        raise ValueError(f"{len(names)} class names for a model with {k} outputs")
    predicted = int(logits.argmax(dim=1))
    if isinstance(target, str) and class_names is None:
        raise ValueError(f"target {target!r} is a name but no class_names were given")
    index = resolve_target(target, predicted, names)
    maps = attribute(model, x, index, method=method, layer=layer, **options)
    shown = _display_image(x[0]) if image is None else to_display(image)
    if shown.shape[:2] != maps.shape[1:]:
        raise ValueError(f"image of shape {shown.shape[:2]} does not match the map's {maps.shape[1:]}")
    if layer is not None:
        options = {"layer": layer if isinstance(layer, str) else type(layer).__name__, **options}
    return SaliencyExplanation(method, maps[0], shown, index, predicted, logits[0].detach().cpu().numpy(),
                               list(class_names) if class_names is not None else None, dict(options))
