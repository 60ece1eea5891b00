"""How images become model inputs, for every method alike.

- `DataConfig`: which dataset, where, and how its images are prepared (the `data:` section of every config).
- `build_transforms(data, card)`: its train and eval transforms.
- `Preprocess`: the part of it a checkpoint stores (size, channels, normalisation with its mean and std), enough
  to feed a trained model a new image without the training config.
- `load_split(data, split)`: one split of the dataset `data` names, with `data.train_subset` applied to the
  training split, so every method reads its data alike.
- `load_image(path, preprocess)`: an image file as the model's input (1, C, H, W) plus the picture it saw
  (H, W, 3), so every `explain` command reads files the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medimg_core.config import FieldError, check_range
from medimg_core.data.card import DatasetCard
from medimg_core.data.images import read_image, size_note
from medimg_core.data.transforms import (
    EVAL_RESIZES,
    TRAIN_CROPS,
    TransformConfig,
    eval_transform,
    normalization,
    train_transform,
)

log = logging.getLogger("medimg")

#: the smallest image_size a config may ask for (smaller inputs vanish in the backbones' downsampling)
MIN_IMAGE_SIZE = 8

#: what `data.normalize` may name (the mean and std of "dataset" are not a DataConfig key: see Preprocess)
NORMALIZE_NAMES = ("imagenet", "inception", "none", None)


@dataclass
class DataConfig:
    """Which dataset, where, and how images are prepared for the model.

    `eval_resize` ("squash" or "short-side-center-crop") and `train_crop` ("random-resized" or
    "random-resized-then-center"): see `medimg_core.data.transforms.eval_transform` / `train_transform`."""

    dataset: str = "csv"
    root: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    image_size: int = 64
    channels: int | None = None
    normalize: str | None = "imagenet"
    hflip: bool = True
    vflip: bool = False
    rotation: float = 0.0
    scale_min: float = 0.8
    eval_resize: str = "squash"
    train_crop: str = "random-resized"
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    #: train on a stratified, seeded subset of this many training images (small-data studies); None: all
    train_subset: int | None = None
    train_subset_seed: int = 0

    def __post_init__(self) -> None:
        check_range(self, "image_size", minimum=MIN_IMAGE_SIZE, integer=True,
                    why="images are resized to image_size x image_size pixels")
        if self.channels is not None and self.channels not in (1, 3):
            raise FieldError("channels", f"expected 1, 3 or null (the dataset's), got {self.channels!r}")
        if self.normalize not in NORMALIZE_NAMES:
            raise FieldError("normalize", f"expected one of {', '.join(str(n) for n in NORMALIZE_NAMES[:-1])} or "
                                          f"null (no normalisation), got {self.normalize!r}")
        check_range(self, "rotation", minimum=0, maximum=180)
        check_range(self, "scale_min", above=0, maximum=1)
        if self.eval_resize not in EVAL_RESIZES:
            raise FieldError("eval_resize", f"expected one of {', '.join(EVAL_RESIZES)}, got {self.eval_resize!r}")
        if self.train_crop not in TRAIN_CROPS:
            raise FieldError("train_crop", f"expected one of {', '.join(TRAIN_CROPS)}, got {self.train_crop!r}")
        if not isinstance(self.options, dict):
            raise FieldError("options", f"expected a mapping of loader options, got {self.options!r}")
        check_range(self, "train_subset", minimum=1, integer=True, optional=True,
                    why="it is the number of training images kept")
        check_range(self, "train_subset_seed", minimum=0, integer=True)

    def split_name(self, split: str) -> str:
        """The dataset's split name for a role ("train", "val", "test"); any other name is returned as it is."""
        return {"train": self.train_split, "val": self.val_split, "test": self.test_split}.get(split, split)


def load_split(data: DataConfig, split: str, transform: Callable | None = None) -> Any:
    """Split `split` of the dataset `data` names: a role ("train", "val", "test", mapped through
    `data.train_split` etc.) or a split name of the dataset. The training split is cut to `data.train_subset`
    images (stratified by class, seeded by `data.train_subset_seed`; `splits.stratified_subset`) when that is
    set, whichever way it is asked for, so that training, the rule or bottleneck fits and the reports of one run
    see the same images. Returns a MedicalImageDataset with `transform` (None: none yet)."""
    from medimg_core.data.registry import load_dataset
    from medimg_core.data.splits import stratified_subset

    name = data.split_name(split)
    ds = load_dataset(data.dataset, data.root, name, transform=transform, **data.options)
    if data.train_subset is not None and name == data.train_split:
        index = stratified_subset(ds.targets, data.train_subset, data.train_subset_seed,
                                  what=f"the {name} split of {data.dataset}")
        ds = ds.subset(index)
    return ds


def build_transforms(cfg: DataConfig, card: DatasetCard) -> tuple[Any, Any]:
    """(train transform, eval transform) of `cfg` for images of `card`."""
    tc = TransformConfig(size=cfg.image_size, channels=cfg.channels or card.channels, normalize=cfg.normalize,
                         hflip=cfg.hflip, vflip=cfg.vflip, rotation=cfg.rotation, scale=(cfg.scale_min, 1.0),
                         eval_resize=cfg.eval_resize, train_crop=cfg.train_crop)
    return train_transform(tc), eval_transform(tc)


@dataclass(frozen=True)
class Preprocess:
    """What a trained model expects of an image: brought to `image_size` x `image_size` as `eval_resize` says
    ("squash": the whole image, no crop; "short-side-center-crop": short side resized, the centre kept), `channels`
    channels, scaled to [0, 1] and normalised with `mean` / `std` (both None: no normalisation).

    `source_channels` is how images of the training data are decoded (1: grayscale, 3: RGB); `normalize` keeps
    the config's name for it ("imagenet", "inception", ...) for the model card.
    """

    image_size: int
    channels: int
    normalize: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    source_channels: int | None = None
    eval_resize: str = "squash"

    @classmethod
    def from_config(cls, data: DataConfig, card: DatasetCard | None = None, channels: int | None = None
                    ) -> Preprocess:
        """The preprocessing of `data` for images of `card` (`channels` overrides what the model sees)."""
        source = card.channels if card is not None else None
        seen = channels or data.channels or source
        if seen is None:
            raise ValueError("Preprocess.from_config needs the dataset card or the number of channels")
        stats = normalization(seen, data.normalize)
        return cls(image_size=data.image_size, channels=seen, normalize=data.normalize,
                   mean=None if stats is None else tuple(stats[0]), std=None if stats is None else tuple(stats[1]),
                   source_channels=source, eval_resize=data.eval_resize)

    # -- (de)serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"image_size": self.image_size, "channels": self.channels, "normalize": self.normalize,
                "mean": None if self.mean is None else list(self.mean),
                "std": None if self.std is None else list(self.std), "source_channels": self.source_channels,
                "eval_resize": self.eval_resize}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "preprocess") -> Preprocess:
        """From `to_dict` output; a missing or ill-typed entry is a ValueError naming it."""
        try:
            size, channels = int(data["image_size"]), int(data["channels"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{where}: expected integer image_size and channels ({exc})") from None
        if size <= 0 or channels not in (1, 3):
            raise ValueError(f"{where}: image_size {size} and channels {channels} are not usable "
                             "(expected a positive size and 1 or 3 channels)")
        mean, std = data.get("mean"), data.get("std")
        if (mean is None) != (std is None) or (mean is not None and len(mean) != len(std)):
            raise ValueError(f"{where}: mean and std must both be given, with one value per channel")
        source = data.get("source_channels")
        eval_resize = data.get("eval_resize", "squash")  # checkpoints written before it existed squashed
        if eval_resize not in EVAL_RESIZES:
            raise ValueError(f"{where}: eval_resize {eval_resize!r}; expected one of {list(EVAL_RESIZES)}")
        return cls(size, channels, data.get("normalize"), None if mean is None else tuple(float(m) for m in mean),
                   None if std is None else tuple(float(s) for s in std),
                   None if source is None else int(source), eval_resize)

    # -- transforms --------------------------------------------------------------------------------
    def transform_config(self) -> TransformConfig:
        if self.mean is None:
            return TransformConfig(size=self.image_size, channels=self.channels, normalize=None,
                                   eval_resize=self.eval_resize)
        return TransformConfig(size=self.image_size, channels=self.channels, normalize="dataset", mean=self.mean,
                               std=self.std, eval_resize=self.eval_resize)

    def eval_transform(self) -> Callable:
        """uint8 (C, H, W) image tensor -> the model's input (channels, image_size, image_size), float."""
        return eval_transform(self.transform_config())

    def display_transform(self) -> Callable:
        """The same resize (and crop) without normalisation: what the model saw, in [0, 1]."""
        return eval_transform(self.transform_config(), normalize=None)

    def to_display(self, x: torch.Tensor) -> np.ndarray:
        """A model input (C, H, W) back to a picture (H, W, 3) float in [0, 1] (the normalisation undone)."""
        arr = x.detach().float().cpu()
        if self.mean is not None:
            arr = arr * torch.tensor(self.std).view(-1, 1, 1) + torch.tensor(self.mean).view(-1, 1, 1)
        arr = arr.clamp(0, 1).permute(1, 2, 0).numpy()
        return np.repeat(arr, 3, axis=2) if arr.shape[2] == 1 else arr


def image_tensor(arr: np.ndarray) -> torch.Tensor:
    """A decoded uint8 image (H, W) or (H, W, 3) as a (C, H, W) tensor."""
    tensor = torch.from_numpy(np.ascontiguousarray(arr))
    return tensor[None] if tensor.ndim == 2 else tensor.permute(2, 0, 1)


def load_image(path: str | Path, preprocess: Preprocess) -> tuple[torch.Tensor, np.ndarray]:
    """An image file as a trained model's input and as the picture it saw.

    Returns (x (1, C, H, W) float, normalised as in training; shown (H, W, 3) float in [0, 1]). The file is
    decoded as the training data were (`source_channels`, else what the model sees); a missing, truncated or
    non-image file is an ImageReadError naming it.
    """
    arr = read_image(path, preprocess.source_channels or preprocess.channels)
    note = size_note(arr.shape)
    if note is not None:  # explained all the same, but the user should know what the model saw
        how = "stretched" if preprocess.eval_resize == "squash" else "resized and centre-cropped"
        log.warning("%s: %s; it is %s to %d x %d pixels, so the prediction and its explanation rest on "
                    "little of it", path, note, how, preprocess.image_size, preprocess.image_size)
    tensor = image_tensor(arr)
    x = preprocess.eval_transform()(tensor)[None]
    shown = preprocess.display_transform()(tensor).float()
    if shown.max() > 1.5:  # uint8 passed through a transform without scaling
        shown = shown / 255.0
    shown_arr = shown.clamp(0, 1).permute(1, 2, 0).numpy()
    if shown_arr.shape[2] == 1:
        shown_arr = np.repeat(shown_arr, 3, axis=2)
    return x, shown_arr
