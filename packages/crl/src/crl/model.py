"""The Concept Rule Learner (Gao et al., MICCAI 2025).

image -> backbone -> linear concept head (K logits) -> hard concepts c = 1[logit > 0] (straight-through)
-> literals [c, 1 - c] -> logical layers (conjunction + disjunction nodes) -> linear layer over the last
layer's rules and, through a skip connection, the previous layer's -> class scores / learnable temperature.

Every value after the concept head is the discrete rule model's: the logical layers forward their
discrete outputs and learn through gradient grafting (see `crl.layers`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from crl.layers import UnionLayer, binarize


class CRL(nn.Module):
    """forward(x) -> dict with

    - "concept_logits" (B, K), "concepts" (B, K) in {0, 1},
    - "layer_outputs": list of (B, 2 * nodes) discrete node outputs, one per logical layer,
    - "logits" (B, C): class scores of the rule model, "scaled_logits" (B, C): divided by the temperature.

    `backbone` is any module mapping images to (B, in_features) (a medimg-core Backbone), or None to
    train on cached features (then x is (B, in_features)).
    """

    def __init__(
        self,
        n_concepts: int,
        n_classes: int,
        in_features: int,
        backbone: nn.Module | None = None,
        logic_layers: Sequence[int] = (256, 256),
        use_skip: bool = True,
        temperature: float = 1.0,
    ):
        super().__init__()
        if not logic_layers:
            raise ValueError("CRL needs at least one logical layer")
        self.n_concepts, self.n_classes = n_concepts, n_classes
        self.backbone = backbone
        self.concept_head = nn.Linear(in_features, n_concepts)
        layers = []
        width = 2 * n_concepts  # literals [c, 1 - c]
        for i, nodes in enumerate(logic_layers):
            layer = UnionLayer(width, nodes, nodes, use_not=i > 0)
            layers.append(layer)
            width = layer.n_out
        self.logic = nn.ModuleList(layers)
        self.use_skip = use_skip and len(layers) > 1
        final = layers[-1].n_out + (layers[-2].n_out if self.use_skip else 0)
        self.classifier = nn.Linear(final, n_classes)
        self.log_temperature = nn.Parameter(torch.tensor(math.log(temperature)))

    def concept_logits(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone(x) if self.backbone is not None else x
        return self.concept_head(features)

    def reason(self, literals: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Literals (B, 2K) -> (class scores (B, C), per-layer node outputs)."""
        outputs = []
        h = literals
        for layer in self.logic:
            h = layer(h)
            outputs.append(h)
        final = torch.cat([outputs[-1], outputs[-2]], dim=1) if self.use_skip else outputs[-1]
        return self.classifier(final), outputs

    def forward(self, x: torch.Tensor) -> dict:
        z = self.concept_logits(x)
        literals = binarize(z.float())
        logits, outputs = self.reason(literals)
        return {
            "concept_logits": z,
            "concepts": literals[:, : self.n_concepts].detach(),
            "layer_outputs": outputs,
            "logits": logits,
            "scaled_logits": logits / self.log_temperature.exp(),
        }

    @torch.no_grad()
    def predict_from_concepts(self, concepts: torch.Tensor) -> torch.Tensor:
        """Class scores (B, C) of the rule model for given binary concepts (B, K)."""
        c = concepts.float()
        return self.reason(torch.cat([c, 1 - c], dim=1))[0]

    def clip(self) -> None:
        """Keep every logical weight in [0, 1] (call after each optimizer step)."""
        for layer in self.logic:
            layer.clip()

    def l2(self) -> torch.Tensor:
        """Sum of squared logical weights and final-layer weights (not its bias)."""
        return sum(layer.l2() for layer in self.logic) + self.classifier.weight.pow(2).sum()

    def parameter_groups(self, lr_backbone: float, lr_logic: float, wd_backbone: float = 1e-2,
                         wd_logic: float = 0.0) -> list[dict]:
        """Two groups as published: backbone + concept head, and logical layers + classifier + temperature."""
        perception = list(self.concept_head.parameters())
        if self.backbone is not None:
            perception += [p for p in self.backbone.parameters() if p.requires_grad]
        ids = {id(p) for p in perception}
        reasoning = [p for p in self.parameters() if id(p) not in ids]
        return [{"params": perception, "lr": lr_backbone, "weight_decay": wd_backbone},
                {"params": reasoning, "lr": lr_logic, "weight_decay": wd_logic}]
