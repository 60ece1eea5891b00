"""CIPL's training samples: label-sharing image pairs, each image in two nearly pixel-aligned views.

For image a (label set Y_a over the prototype classes, "No Finding" included): pick one of its classes at
random, then a random training image b of that class, so a and b share at least one label. Each image
gets one "common" (geometric) augmentation, then the "specific" (photometric, tiny crop) augmentation
twice: the student view and the teacher view differ by colour, blur and a crop of at most 5%, so
similarity maps can be compared cell by cell. Flips belong to the common part, so both views share them.

Warm-up epochs read the same dataset in "single" mode (image a's student view only).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

# ViewConfig lives in cipl.config; importing it from here keeps `from cipl.data import ViewConfig` working.
from cipl.config import ViewConfig
from cipl.model import LabelSpace
from medimg_core.data import MedicalImageDataset
from medimg_core.data.preprocess import DataConfig
from medimg_core.data.transforms import normalization


class FixChannels(v2.Transform):
    """1-channel images repeated to 3, RGB turned to luminance for 1-channel models (images only)."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not isinstance(inpt, tv_tensors.Image) or inpt.shape[-3] == self.channels:
            return inpt
        if self.channels == 3 and inpt.shape[-3] == 1:
            return tv_tensors.wrap(inpt.as_subclass(torch.Tensor).expand(3, *inpt.shape[-2:]).contiguous(), like=inpt)
        if self.channels == 1 and inpt.shape[-3] == 3:
            return tv_tensors.wrap(v2.functional.rgb_to_grayscale(inpt.as_subclass(torch.Tensor)), like=inpt)
        raise ValueError(f"cannot turn a {inpt.shape[-3]}-channel image into {self.channels} channels")


def common_transform(data: DataConfig, views: ViewConfig, channels: int) -> v2.Compose:
    """The geometric augmentation applied once per image (uint8 in, uint8 out)."""
    steps: list[v2.Transform] = [FixChannels(channels),
                                 v2.RandomResizedCrop(data.image_size, scale=(data.scale_min, 1.0),
                                                      ratio=views.crop_ratio, antialias=True)]
    if data.hflip:
        steps.append(v2.RandomHorizontalFlip())
    if data.vflip:
        steps.append(v2.RandomVerticalFlip())
    if data.rotation or views.translate or views.shear or tuple(views.affine_scale) != (1.0, 1.0):
        steps.append(v2.RandomAffine(degrees=data.rotation, translate=(views.translate, views.translate) if
                                     views.translate else None, scale=tuple(views.affine_scale),
                                     shear=views.shear or None))
    return v2.Compose(steps)


def specific_transform(data: DataConfig, views: ViewConfig, channels: int) -> v2.Compose:
    """The photometric augmentation drawn separately for each view, then float and normalisation."""
    j = views.jitter
    steps: list[v2.Transform] = []
    if j or views.hue:
        steps.append(v2.ColorJitter(brightness=(1 - j, 1 + j) if j else None, contrast=(1 - j, 1 + j) if j else None,
                                    saturation=(1 - j, 1 + j) if j and channels == 3 else None,
                                    hue=views.hue if views.hue and channels == 3 else None))
    if views.blur_p > 0:
        sigma = tuple(views.blur_sigma)
        kernel = 2 * int(np.ceil(3 * sigma[1])) + 1
        steps.append(v2.RandomApply([v2.GaussianBlur(kernel, sigma=sigma)], p=views.blur_p))
    steps.append(v2.RandomResizedCrop(data.image_size, scale=tuple(views.crop_scale),
                                      ratio=tuple(views.crop_ratio_specific), antialias=True))
    steps.append(v2.ToDtype(torch.float32, scale=True))
    stats = normalization(channels, data.normalize)
    if stats is not None:
        steps.append(v2.Normalize(mean=list(stats[0]), std=list(stats[1])))
    return v2.Compose(steps)


class PairDataset(Dataset):
    """Training items of CIPL over a MedicalImageDataset (its own transform is not used).

    mode "pair": {"image_a", "image_b" (student views), "view_a", "view_b" (teacher views), "target_a",
    "target_b" (dataset targets), "labels_a", "labels_b" (K,) multi-hot over the prototype classes}.
    mode "single": {"image_a", "target_a", "labels_a"}. Partner choice draws from torch's global RNG (seeded
    by the training loop and saved with its checkpoints).
    """

    def __init__(self, base: MedicalImageDataset, labels: LabelSpace, data: DataConfig, views: ViewConfig,
                 channels: int, mode: Literal["pair", "single"] = "pair"):
        self.base = base
        self.labels = labels
        self.mode = mode
        self.class_labels = labels.class_labels(np.asarray(base.targets)).numpy().astype(bool)  # (N, K)
        self.members = [np.flatnonzero(self.class_labels[:, k]) for k in range(labels.num_classes)]
        self.common = common_transform(data, views, channels)
        self.specific = specific_transform(data, views, channels)

    def __len__(self) -> int:
        return len(self.base)

    def partner(self, index: int) -> int:
        """A random image that shares a random one of `index`'s classes (itself only if it is alone)."""
        own = np.flatnonzero(self.class_labels[index])
        if len(own) == 0:  # a multi-label image with a reference column and no label: pair with anything
            return int(torch.randint(len(self), ()).item())
        k = int(own[int(torch.randint(len(own), ()).item())])
        pool = self.members[k]
        if len(pool) > 1:
            pick = int(pool[int(torch.randint(len(pool) - 1, ()).item())])
            return pick if pick != index else int(pool[-1])
        return index

    def _image(self, index: int) -> tv_tensors.Image:
        arr = self.base.load_image(index)
        tensor = torch.from_numpy(np.ascontiguousarray(arr))
        tensor = tensor.unsqueeze(0) if tensor.ndim == 2 else tensor.permute(2, 0, 1)
        return tv_tensors.Image(tensor)

    def _target(self, index: int) -> torch.Tensor:
        t = self.base.targets[index]
        return torch.as_tensor(t, dtype=torch.float32 if self.labels.multilabel else torch.int64)

    def __getitem__(self, index: int) -> dict[str, Any]:
        a = self.common(self._image(index))
        item = {"image_a": self.specific(a).as_subclass(torch.Tensor), "target_a": self._target(index),
                "labels_a": torch.from_numpy(self.class_labels[index].astype(np.float32))}
        if self.mode == "single":
            return item
        j = self.partner(index)
        b = self.common(self._image(j))
        item.update({"view_a": self.specific(a).as_subclass(torch.Tensor),
                     "image_b": self.specific(b).as_subclass(torch.Tensor),
                     "view_b": self.specific(b).as_subclass(torch.Tensor),
                     "target_b": self._target(j),
                     "labels_b": torch.from_numpy(self.class_labels[j].astype(np.float32))})
        return item
