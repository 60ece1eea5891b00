"""`NAME[:weights]` backbone specifications: which representation a method is about, and how to rebuild it.

    loaded = load_backbone("resnet18:runs/<baseline run>")     # a LoadedBackbone, in eval mode
    loaded.backbone(x)                                          # pooled features (B, D) of images x (B, C, H, W)
    save_backbone(loaded, folder)                               # backbone.json (+ backbone.safetensors)
    restore_backbone(folder)                                    # the same weights, without the original source

weights is one of

* ``random``: the architecture at a seeded random initialisation with every layer active. timm
  zero-initialises the last normalisation of each residual branch of ResNet-like models
  (``zero_init_last``), which turns a random ResNet into its stem and shortcut convolutions; random models
  are built with ``zero_init_last=False`` where the model takes it, as torchvision initialises them;
* ``pretrained``: timm's pretrained weights (``timm.create_model(..., pretrained=True)``), which only
  work where they are already in the local cache; offline this fails with a message saying so;
* a named offline weight source (``tf_efficientnet_lite0:imagenet-lite0``, see ``medimg weights list``):
  real ImageNet weights that a pip package ships, frozen as published;
* a weights file (``.safetensors``, or ``.pth``/``.pt``/``.bin`` read with ``weights_only=True``) or a
  timm ``save_for_hf`` folder;
* a medimg-core baseline run or checkpoint folder (``medimg train-baseline``): its best checkpoint's
  backbone, with the run's input size, channels and normalisation.

Without ``:weights`` the spec means ``pretrained``. Moved here from ``iis.backbones`` (which re-exports it),
since every method that studies a given representation needs it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from medimg_core.baseline import load_baseline
from medimg_core.checkpoint import CheckpointError, write_extra_file
from medimg_core.config import ConfigError
from medimg_core.models.backbones import (
    Backbone,
    BackboneError,
    create_backbone,
    resolve_name,
    weights_fingerprint,
)
from medimg_core.models.weights import get_source, is_weight_source

__all__ = ["BackboneSpec", "LoadedBackbone", "backbone_files", "load_backbone", "parse_backbone_spec",
           "restore_backbone", "save_backbone"]


@dataclass(frozen=True)
class BackboneSpec:
    """A parsed `NAME[:weights]`."""

    name: str
    weights: str

    @property
    def kind(self) -> str:
        """random, pretrained, source (a named offline source), run (a baseline run folder) or file."""
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

    image_size / normalize are None where the weights do not fix them (the run's data config decides);
    seed is the one a random initialisation was drawn with.
    """

    spec: BackboneSpec
    backbone: Any
    in_chans: int
    image_size: int | None
    normalize: str | None
    fingerprint: str
    seed: int = 0

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
    spec = parse_backbone_spec(spec) if isinstance(spec, str) else spec
    image_size = normalize = None
    if spec.weights == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            try:  # every residual branch active, as torchvision initialises (see the module docstring)
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
    return LoadedBackbone(spec, backbone, in_chans, image_size, normalize, weights_fingerprint(backbone), seed)


def backbone_files(loaded: LoadedBackbone, name: str = "backbone") -> dict[str, Any]:
    """What rebuilds `loaded`, as checkpoint extra files (`medimg_core.checkpoint.save_checkpoint`): `<name>.json`
    (the spec, input settings, seed and weights fingerprint) and, unless it is a seeded random initialisation
    (rebuilt from its spec), `<name>.safetensors` with its weights, so that a folder holding them needs neither
    the original weights file, run folder nor cache."""
    weights = None if loaded.spec.kind == "random" else f"{name}.safetensors"
    files: dict[str, Any] = {f"{name}.json": {**loaded.to_dict(), "seed": loaded.seed, "weights_file": weights}}
    if weights is not None:
        files[weights] = loaded.backbone
    return files


def save_backbone(loaded: LoadedBackbone, folder: str | Path, name: str = "backbone") -> Path:
    """Write `backbone_files(loaded, name)` into `folder`; returns the path of `<name>.json`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for file, payload in backbone_files(loaded, name).items():
        write_extra_file(folder / file, payload)
    return folder / f"{name}.json"


def restore_backbone(folder: str | Path, name: str = "backbone") -> LoadedBackbone:
    """The backbone `save_backbone` wrote into `folder`, in eval mode; its weights are checked against the
    stored fingerprint (a CheckpointError names both when they differ)."""
    folder = Path(folder)
    path = folder / f"{name}.json"
    try:
        record = json.loads(path.read_text())
        if not isinstance(record, dict):
            raise TypeError(f"expected a JSON object with spec, in_chans and weights_fingerprint, found "
                            f"{type(record).__name__}")
        spec = parse_backbone_spec(record["spec"])
        in_chans, fingerprint = int(record["in_chans"]), str(record["weights_fingerprint"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: cannot read the backbone record ({type(exc).__name__}: {exc})") from None
    weights = record.get("weights_file")
    if weights:
        try:
            state = load_file(str(folder / weights))
        except Exception as exc:  # safetensors raises several types on missing or corrupt files
            raise CheckpointError(f"{folder / weights}: cannot read the backbone weights ({exc})") from None
        with torch.random.fork_rng(devices=[]):  # its random init is overwritten: leave the global state alone
            backbone: Backbone = create_backbone(spec.name, pretrained=False, in_chans=in_chans)
        try:
            backbone.load_state_dict(state)
        except RuntimeError as exc:
            raise CheckpointError(f"{folder / weights}: the weights do not fit {spec.name} ({exc})") from None
        backbone.pretrained_source = str(record.get("pretrained_source", ""))
        loaded = LoadedBackbone(spec, backbone.eval(), in_chans, record.get("image_size"), record.get("normalize"),
                                weights_fingerprint(backbone), int(record.get("seed", 0)))
    else:
        loaded = load_backbone(spec, in_chans, int(record.get("seed", 0)))
    if loaded.fingerprint != fingerprint:
        raise CheckpointError(f"{path}: the rebuilt {spec} has weights fingerprint {loaded.fingerprint}, not the "
                              f"stored {fingerprint}; the folder was written with other weights or library versions")
    return loaded
