"""Train and eval transform presets (torchvision.transforms.v2), applied to images and masks alike.

Images arrive as uint8 tv_tensors.Image (C, H, W); masks as tv_tensors.Mask (K, H, W), which the
geometric transforms move with the image (nearest-neighbour) and the photometric ones leave alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: for 1-channel input: the ImageNet statistics of the luminance (timm reports 3-channel ones regardless)
IMAGENET_GRAY_MEAN = (0.449,)
IMAGENET_GRAY_STD = (0.226,)
#: timm's IMAGENET_INCEPTION_MEAN/STD: what TensorFlow-trained weights (EfficientNet-Lite, Inception) expect
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)
#: the values `normalize` takes
NORMALIZATIONS = ("imagenet", "inception", "dataset", None)
#: how `eval_transform` brings an image to size x size: "squash" (resize both sides, aspect ratio lost, nothing
#: cut) or "short-side-center-crop" (short side to size, aspect kept, then the central size x size)
EVAL_RESIZES = ("squash", "short-side-center-crop")
#: how `train_transform` crops: "random-resized" (RandomResizedCrop(size)) or "random-resized-then-center"
#: (RandomResizedCrop(round(size * 256 / 224)), flips and rotation, then CenterCrop(size): the torchvision
#: ImageNet recipe's 256 -> 224, as CRL's official training)
TRAIN_CROPS = ("random-resized", "random-resized-then-center")


def normalization(
    channels: int, normalize: str | None = "imagenet", mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """Mean and std for `channels` output channels: 'imagenet', 'inception' (0.5 / 0.5, for TensorFlow-trained
    weights such as the imagenet-lite sources), 'dataset' (pass mean/std) or None."""
    if normalize is None or normalize == "none":
        return None
    if normalize == "imagenet":
        return (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else (IMAGENET_GRAY_MEAN, IMAGENET_GRAY_STD)
    if normalize == "inception":
        return INCEPTION_MEAN[:channels], INCEPTION_STD[:channels]
    if normalize == "dataset":
        if mean is None or std is None:
            raise ValueError("normalize='dataset' needs mean and std (see dataset_statistics)")
        mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        if len(mean) == 1 and channels == 3:
            mean, std = mean * 3, std * 3
        if len(mean) != channels:
            raise ValueError(f"mean has {len(mean)} values; the images have {channels} channels")
        return mean, std
    raise ValueError(f"normalize must be 'imagenet', 'inception', 'dataset' or None, got {normalize!r}")


@dataclass(frozen=True)
class TransformConfig:
    """What the presets do. `channels` is what the model sees: 1-channel images are repeated to 3
    when `channels=3` (ImageNet backbones) and RGB images turned to luminance when `channels=1`.
    `eval_resize` is one of `EVAL_RESIZES`, `train_crop` one of `TRAIN_CROPS`."""

    size: int = 224
    channels: int = 3
    normalize: str | None = "imagenet"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    hflip: bool = True
    vflip: bool = False
    rotation: float = 0.0
    scale: tuple[float, float] = (0.8, 1.0)
    color_jitter: float = 0.0
    eval_resize: str = "squash"
    train_crop: str = "random-resized"

    def __post_init__(self) -> None:
        if self.eval_resize not in EVAL_RESIZES:
            raise ValueError(f"eval_resize must be one of {list(EVAL_RESIZES)}, got {self.eval_resize!r}")
        if self.train_crop not in TRAIN_CROPS:
            raise ValueError(f"train_crop must be one of {list(TRAIN_CROPS)}, got {self.train_crop!r}")


def _channels(channels: int) -> v2.Transform:
    def fix(image: torch.Tensor) -> torch.Tensor:
        if image.shape[-3] == channels:
            return image
        if channels == 3 and image.shape[-3] == 1:
            return image.expand(*image.shape[:-3], 3, *image.shape[-2:])
        if channels == 1 and image.shape[-3] == 3:
            return v2.functional.rgb_to_grayscale(image)
        raise ValueError(f"cannot turn a {image.shape[-3]}-channel image into {channels} channels")

    return _ImageOnly(fix)


class _ImageOnly(v2.Transform):
    """Apply a function to images only (masks pass through)."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def transform(self, inpt, params):
        from torchvision import tv_tensors

        if isinstance(inpt, tv_tensors.Image):
            return tv_tensors.wrap(self.fn(inpt.as_subclass(torch.Tensor)), like=inpt)
        return inpt


def train_transform(config: TransformConfig | None = None, **overrides) -> v2.Compose:
    """Random resized crop, flips, rotation, optional colour jitter, then tensor float and normalisation.

    With `train_crop="random-resized-then-center"` the random resized crop is round(size * 256 / 224) pixels and
    the flips and rotation are followed by the central size x size crop (CRL's official order: crop, rotation,
    flips, centre crop; the flips and a rotation uniform in +-rotation commute in distribution)."""
    cfg = _config(config, overrides)
    then_center = cfg.train_crop == "random-resized-then-center"
    crop = round(cfg.size * 256 / 224) if then_center else cfg.size
    steps: list[v2.Transform] = [
        _channels(cfg.channels),
        v2.RandomResizedCrop(crop, scale=cfg.scale, antialias=True),
    ]
    if cfg.hflip:
        steps.append(v2.RandomHorizontalFlip())
    if cfg.vflip:
        steps.append(v2.RandomVerticalFlip())
    if cfg.rotation:
        steps.append(v2.RandomRotation(cfg.rotation))
    if cfg.color_jitter:
        j = cfg.color_jitter
        steps.append(v2.ColorJitter(brightness=j, contrast=j, saturation=j if cfg.channels == 3 else 0))
    if then_center:
        steps.append(v2.CenterCrop(cfg.size))
    return v2.Compose(steps + _to_float(cfg))


def eval_transform(config: TransformConfig | None = None, **overrides) -> v2.Compose:
    """Bring the image to size x size, then tensor float and normalisation.

    `eval_resize="squash"` (default) resizes both sides to `size`: the whole image, no crop (lesions near the border
    stay), but a non-square image changes its aspect ratio. `"short-side-center-crop"` resizes the short side to
    `size` (aspect ratio kept) and keeps the central size x size (torchvision's Resize(size) + CenterCrop(size), as
    CRL's official evaluation): the ends of the long side are cut."""
    cfg = _config(config, overrides)
    steps: list[v2.Transform] = [_channels(cfg.channels)]
    if cfg.eval_resize == "short-side-center-crop":
        steps += [v2.Resize(cfg.size, antialias=True), v2.CenterCrop(cfg.size)]
    else:
        steps.append(v2.Resize((cfg.size, cfg.size), antialias=True))
    return v2.Compose(steps + _to_float(cfg))


def _config(config: TransformConfig | None, overrides: dict) -> TransformConfig:
    from dataclasses import replace

    return replace(config or TransformConfig(), **overrides)


def _to_float(cfg: TransformConfig) -> list[v2.Transform]:
    steps: list[v2.Transform] = [v2.ToDtype(torch.float32, scale=True)]
    stats = normalization(cfg.channels, cfg.normalize, cfg.mean, cfg.std)
    if stats is not None:
        steps.append(v2.Normalize(mean=list(stats[0]), std=list(stats[1])))
    return steps


def dataset_statistics(dataset, max_samples: int = 2000) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of a dataset's raw images in [0, 1] (over up to `max_samples` images)."""
    n = min(len(dataset), max_samples)
    total = total_sq = None
    count = 0
    for i in range(n):
        arr = torch.as_tensor(dataset.load_image(i), dtype=torch.float64) / 255.0
        arr = arr.reshape(-1, 1) if arr.ndim == 2 else arr.reshape(-1, arr.shape[-1])
        total = arr.sum(0) if total is None else total + arr.sum(0)
        total_sq = (arr**2).sum(0) if total_sq is None else total_sq + (arr**2).sum(0)
        count += arr.shape[0]
    mean = total / count
    std = (total_sq / count - mean**2).clamp_min(1e-12).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())
