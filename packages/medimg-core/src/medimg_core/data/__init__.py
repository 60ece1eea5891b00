"""medimg_core.data: one dataset contract for every method (see `base` for the sample dict)."""

from medimg_core.data import chestxray14, csv_dataset, medmnist, wbcatt  # noqa: F401  (registers loaders)
from medimg_core.data.base import MedicalImageDataset, SampleTable, VerifyReport
from medimg_core.data.card import DatasetCard
from medimg_core.data.chestxray14 import ChestXray14
from medimg_core.data.csv_dataset import CSVDataset
from medimg_core.data.errors import DatasetError, ImageReadError, Problem
from medimg_core.data.medmnist import MedMNIST, download_medmnist
from medimg_core.data.registry import get_dataset_class, list_datasets, load_dataset, register_dataset
from medimg_core.data.transforms import TransformConfig, eval_transform, train_transform
from medimg_core.data.wbcatt import WBCAtt

__all__ = [
    "CSVDataset",
    "ChestXray14",
    "DatasetCard",
    "DatasetError",
    "ImageReadError",
    "MedMNIST",
    "MedicalImageDataset",
    "Problem",
    "SampleTable",
    "TransformConfig",
    "VerifyReport",
    "WBCAtt",
    "download_medmnist",
    "eval_transform",
    "get_dataset_class",
    "list_datasets",
    "load_dataset",
    "register_dataset",
    "train_transform",
]
