"""CRL's settings: the model, the loss, and the run config that holds them with the data, training and
optimiser sections. Defaults are the paper's (ResNet-34, 224 px, 300 epochs, lr 5e-4 / 5e-6, seed 3); the
shipped presets in `crl/configs/` hold the CPU settings.

Every key stays where YAML files and the command line already put it: sections (`model.backbone`,
`loss.concept_weight`, `train.epochs`) and top-level keys (`mode`, `lr_backbone`, `seed`, `bootstrap`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from medimg_core.data.preprocess import DataConfig
from medimg_core.experiment import RunConfig
from medimg_core.training import OptimConfig, TrainConfig


@dataclass
class CRLModelConfig:
    """The backbone (any timm name or torchvision alias), how its weights start, the widths of the logical
    layers (each layer has that many AND and as many OR nodes), the skip connection from the layer before the
    last into the final linear layer, and the initial temperature of the class scores."""

    backbone: str = "resnet34"
    pretrained: str = "true"
    logic_layers: tuple[int, ...] = (256, 256)
    use_skip: bool = True
    temperature: float = 1.0


@dataclass
class CRLLossConfig:
    """Weights of the concept BCE and of the L2 penalty on the logical and final-layer weights (the class
    cross-entropy has weight 1)."""

    concept_weight: float = 1.0
    l2_weight: float = 5e-6


@dataclass
class CRLCompactConfig:
    """The compact rules (`crl.compact`): an exact minimal formula per class up to `exact_max_concepts` concepts
    (at most 18), else the smallest prefix of the rules by importance that agrees with the network on at least
    `prefix_fidelity` of the training images."""

    exact_max_concepts: int = 16
    prefix_fidelity: float = 0.95


@dataclass
class CRLConfig(RunConfig):
    """A CRL training: data, model, loss, training and optimiser sections, the backbone's own learning rate and
    weight decay, the mode ("end2end": the backbone trains; "features": a frozen backbone's cached features),
    how rules are pruned ("support" as published, or "logical"; see `crl.rules`) and how they are condensed
    (`compact`, see `crl.compact`). The run keys (seed, device, out, name, bootstrap) come from RunConfig; the
    paper's seed 3 stays the default."""

    data: DataConfig = field(default_factory=lambda: DataConfig(image_size=224, vflip=True, rotation=15.0))
    model: CRLModelConfig = field(default_factory=CRLModelConfig)
    loss: CRLLossConfig = field(default_factory=CRLLossConfig)
    compact: CRLCompactConfig = field(default_factory=CRLCompactConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=300, batch_size=64))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(optimizer="adamw", lr=5e-4, weight_decay=0.0,
                                                                   scheduler="cosine"))
    lr_backbone: float = 5e-6
    wd_backbone: float = 1e-2
    mode: Literal["end2end", "features"] = "end2end"
    rule_pruning: Literal["support", "logical"] = "support"
    seed: int = 3
