"""`NAME[:weights]` backbone specifications: which representation a score is about.

weights is one of

* ``random``: the architecture at a seeded random initialisation with every layer active. timm
  zero-initialises the last normalisation of each residual branch of ResNet-like models
  (``zero_init_last``), which turns a random ResNet into its stem and shortcut convolutions; IIS builds
  random models with ``zero_init_last=False`` where the model takes it, as torchvision (whose models the
  paper scores) initialises them;
* ``pretrained``: timm's pretrained weights (``timm.create_model(..., pretrained=True)``), which only
  work where they are already in the local cache; offline this fails with a message saying so;
* a named offline weight source of medimg-core (``tf_efficientnet_lite0:imagenet-lite0``, see
  ``medimg weights list``): real ImageNet weights that a pip package ships, frozen as published;
* a weights file (``.safetensors``, or ``.pth``/``.pt``/``.bin`` read with ``weights_only=True``) or a
  timm ``save_for_hf`` folder;
* a medimg-core baseline run folder (``medimg train-baseline``): its best checkpoint's backbone, with
  the run's input size, channels and normalisation.

Without ``:weights`` the spec means ``pretrained``. This parsing is generic (not specific to IIS) and
could move to medimg-core.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from medimg_core.config import ConfigError

__all__ = ["BackboneSpec", "LoadedBackbone", "load_backbone", "parse_backbone_spec"]


@dataclass(frozen=True)
class BackboneSpec:
    """A parsed `NAME[:weights]`."""

    name: str
    weights: str

    @property
    def kind(self) -> str:
        """random, pretrained, source (a named offline source), run (a baseline run folder) or file."""
        from medimg_core.models.weights import is_weight_source

        if self.weights in ("random", "pretrained"):
            return self.weights
        if is_weight_source(self.weights):
            return "source"
        path = Path(self.weights).expanduser()
        is_run = (path / "checkpoints").is_dir()
        return "run" if is_run or _is_baseline_checkpoint(path) else "file"

    @property
    def label(self) -> str:
        """A short display name: resnet18:random, resnet18:<run folder or file name>."""
        if self.kind in ("random", "pretrained", "source"):
            return f"{self.name}:{self.weights}"
        return f"{self.name}:{Path(self.weights).expanduser().name}"

    def __str__(self) -> str:
        return f"{self.name}:{self.weights}"


def _is_baseline_checkpoint(path: Path) -> bool:
    """A medimg-core checkpoint folder (not a timm save_for_hf folder, which also has a config.json)."""
    import json

    try:
        return json.loads((path / "config.json").read_text()).get("kind") == "medimg-baseline"
    except (OSError, ValueError, AttributeError):
        return False


def parse_backbone_spec(spec: str) -> BackboneSpec:
    """`"resnet18:random"` -> BackboneSpec("resnet18", "random"); no `:weights` means pretrained."""
    name, _, weights = str(spec).strip().partition(":")
    name, weights = name.strip(), weights.strip()
    if not name:
        raise ConfigError(f"--backbone {spec!r}: expected NAME[:weights], e.g. resnet18:random")
    return BackboneSpec(name, weights or "pretrained")


@dataclass
class LoadedBackbone:
    """A backbone ready for feature extraction, with the input settings its weights expect.

    image_size / normalize are None where the weights do not fix them (the run's data config decides).
    """

    spec: BackboneSpec
    backbone: Any
    in_chans: int
    image_size: int | None
    normalize: str | None
    fingerprint: str

    def input_normalize(self, configured: str | None) -> str | None:
        """The normalisation to use: the weights' own (a baseline run's, a weight source's) or `configured`."""
        return self.normalize if self.image_size or self.spec.kind == "source" else configured

    def to_dict(self) -> dict[str, Any]:
        return {"spec": str(self.spec), "label": self.spec.label, "kind": self.spec.kind,
                "timm_name": self.backbone.timm_name, "in_chans": self.in_chans, "image_size": self.image_size,
                "normalize": self.normalize, "num_features": self.backbone.num_features,
                "weights_fingerprint": self.fingerprint,
                "pretrained_source": getattr(self.backbone, "pretrained_source", "")}


def load_backbone(spec: BackboneSpec | str, in_chans: int = 3, seed: int = 0) -> LoadedBackbone:
    """Build the backbone of `spec` in eval mode (random init seeded with `seed`, without touching the
    global random state)."""
    from medimg_core.models import create_backbone, weights_fingerprint
    from medimg_core.models.backbones import BackboneError, resolve_name

    spec = parse_backbone_spec(spec) if isinstance(spec, str) else spec
    image_size = normalize = None
    if spec.weights == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            try:  # every residual branch active, as torchvision initialises (see RANDOM_INIT)
                backbone = create_backbone(spec.name, pretrained=False, in_chans=in_chans, zero_init_last=False)
            except TypeError:  # models without residual-branch zero init
                torch.manual_seed(seed)
                backbone = create_backbone(spec.name, pretrained=False, in_chans=in_chans)
    elif spec.weights == "pretrained":
        try:
            backbone = create_backbone(spec.name, pretrained=True, in_chans=in_chans)
        except BackboneError as exc:
            raise ConfigError(f"--backbone {spec}: {exc} Or score another representation: {spec.name}:random, "
                              f"{spec.name}:/path/to/weights.safetensors or {spec.name}:/path/to/baseline-run") from None
    elif spec.kind == "source":
        from medimg_core.models.weights import get_source

        try:
            backbone = create_backbone(spec.name, pretrained=spec.weights, in_chans=in_chans)
        except BackboneError as exc:
            raise ConfigError(f"--backbone {spec}: {exc}") from None
        # the weights fix the normalisation (TensorFlow-trained: mean = std = 0.5), not the input size
        normalize = "inception" if get_source(spec.weights).architecture.startswith("tf_") else "imagenet"
    else:
        path = Path(spec.weights).expanduser()
        if not path.exists():
            raise ConfigError(f"--backbone {spec}: weights {spec.weights!r} not found; expected random, pretrained, "
                              "a .safetensors file or a medimg-core baseline run folder")
        if spec.kind == "run":
            from medimg_core.baseline import load_baseline

            model, config = load_baseline(path)
            if resolve_name(config["backbone"]) != resolve_name(spec.name):
                raise ConfigError(f"--backbone {spec}: the run {path} trained {config['backbone']!r}, not "
                                  f"{spec.name!r}; write {config['backbone']}:{spec.weights}")
            backbone = model.backbone
            in_chans, image_size = int(config["in_chans"]), int(config["image_size"])
            normalize = config.get("normalize", "imagenet")
        else:
            try:
                backbone = create_backbone(spec.name, pretrained=str(path), in_chans=in_chans)
            except BackboneError as exc:
                raise ConfigError(f"--backbone {spec}: {exc}") from None
    backbone = backbone.eval()
    return LoadedBackbone(spec, backbone, in_chans, image_size, normalize, weights_fingerprint(backbone))
