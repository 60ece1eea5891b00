"""One registry of dataset loaders, as timm has one of models."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from medimg_core.data.base import MedicalImageDataset
from medimg_core.data.errors import UnknownDatasetError

DATASETS: dict[str, type[MedicalImageDataset]] = {}

T = TypeVar("T", bound=type[MedicalImageDataset])


def register_dataset(name: str) -> Callable[[T], T]:
    """Class decorator: make a loader available as `load_dataset(name, ...)` and `--format name`."""

    def wrap(cls: T) -> T:
        if name in DATASETS and DATASETS[name] is not cls:
            raise ValueError(f"dataset {name!r} is registered twice ({DATASETS[name].__name__}, {cls.__name__})")
        DATASETS[name] = cls
        return cls

    return wrap


def list_datasets() -> list[str]:
    return sorted(DATASETS)


def get_dataset_class(name: str) -> type[MedicalImageDataset]:
    try:
        return DATASETS[name]
    except KeyError:
        near = difflib.get_close_matches(name, list(DATASETS), n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise UnknownDatasetError(f"unknown dataset {name!r}{hint} Known: {', '.join(list_datasets())}") from None


def load_dataset(
    name: str, root: str | Path, split: str = "train", transform: Callable | None = None, **options: Any
) -> MedicalImageDataset:
    """Load split `split` of dataset `name` from the files under `root`."""
    return get_dataset_class(name)(root, split=split, transform=transform, **options)
