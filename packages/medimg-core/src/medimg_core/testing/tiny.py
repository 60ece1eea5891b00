"""Tiny models and datasets for tests: everything runs in seconds on a CPU, nothing is downloaded.

    splits = tiny_splits("binary", n=48, size=32)       # {"train", "val", "test"} MedicalImageDatasets
    backbone = tiny_backbone()                          # timm's test_resnet with random weights

Datasets come from the synthetic generators (`medimg_core.synthetic.make`), so they carry concepts and
pixel masks: binary = synth-derm (6 concepts), multilabel = synth-cxr (5 findings, grayscale), ordinal =
synth-grade (grades 0-4), multiclass = synth-grade's images with the grades read as 5 unordered classes.
"""

from __future__ import annotations

import torch
from torch import nn

from medimg_core.data.base import MedicalImageDataset

#: task type -> the synthetic generator behind it
TASKS: dict[str, str] = {"binary": "synth-derm", "multilabel": "synth-cxr", "ordinal": "synth-grade",
                         "multiclass": "synth-grade"}


def tiny_splits(task: str = "binary", n: int = 48, size: int = 32, seed: int = 0) -> dict[str, MedicalImageDataset]:
    """Train, val and test datasets (no transforms) of a synthetic set of `n` images of `size` px for `task`."""
    from medimg_core.synthetic import make

    if task not in TASKS:
        raise ValueError(f"task {task!r}: expected one of {list(TASKS)}")
    data = make(TASKS[task], n=n, seed=seed, size=size)
    out = {split: data.dataset(split) for split in ("train", "val", "test")}
    if task == "multiclass":
        card = data.card.with_updates(name=f"{data.card.name}-classes", task="multiclass")
        out = {k: MedicalImageDataset(v.table, card, k) for k, v in out.items()}
    return out


def tiny_dataset(task: str = "binary", n: int = 48, size: int = 32, seed: int = 0,
                 split: str = "train") -> MedicalImageDataset:
    """One split of `tiny_splits`."""
    return tiny_splits(task, n, size, seed)[split]


def tiny_backbone(name: str = "test_resnet", in_chans: int = 3, **kwargs):
    """A medimg Backbone of one of timm's `test_*` models (random weights; 0.04-0.14 s per batch on a CPU)."""
    from medimg_core.models import create_backbone

    return create_backbone(name, pretrained=False, in_chans=in_chans, **kwargs)


class TinyConvBackbone(nn.Module):
    """`forward_features`: one strided 3x3 convolution, (B, in_chans, H, W) -> (B, 4, H/2, W/2)."""

    feature_channels = 4

    def __init__(self, in_chans: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_chans, 4, 3, stride=2, padding=1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class IdentityBackbone(nn.Module):
    """`forward_features` returns its input: the test chooses the 'features'."""

    def __init__(self, channels: int):
        super().__init__()
        self.feature_channels = channels

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return x
