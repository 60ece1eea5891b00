"""Small deterministic pieces shared by the tests."""

import torch
from torch import nn

from cipl.model import CIPL, LabelSpace


class TinyBackbone(nn.Module):
    """forward_features: one strided 3x3 convolution, (B, 1, H, W) -> (B, 4, H/2, W/2)."""

    feature_channels = 4

    def __init__(self, in_chans: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_chans, 4, 3, stride=2, padding=1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class IdentityBackbone(nn.Module):
    """forward_features returns the input: the 'features' are chosen by the test."""

    def __init__(self, channels: int):
        super().__init__()
        self.feature_channels = channels

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return x


def tiny_cipl(classes=("a", "b", "c"), task="multilabel", m=2, d=8, seed=0) -> CIPL:
    torch.manual_seed(seed)
    return CIPL(TinyBackbone(), LabelSpace.for_task(task, classes), prototypes_per_class=m, prototype_dim=d,
                reduce_dim=8, add_on_layers=2)
