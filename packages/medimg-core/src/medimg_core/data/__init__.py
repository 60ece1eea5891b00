"""medimg_core.data: one dataset contract for every method (see `base` for the sample dict)."""

from medimg_core.data import (  # noqa: F401  (importing a loader registers it)
    chestxray14,
    csv_dataset,
    ddi,
    derm7pt,
    fitzpatrick17k,
    ham10000,
    medmnist,
    odir,
    wbcatt,
)
from medimg_core.data.base import MedicalImageDataset, SampleTable, VerifyReport
from medimg_core.data.card import DatasetCard
from medimg_core.data.chestxray14 import ChestXray14
from medimg_core.data.csv_dataset import CSVDataset
from medimg_core.data.ddi import DDI
from medimg_core.data.derm7pt import Derm7pt
from medimg_core.data.errors import DatasetError, ImageReadError, Problem
from medimg_core.data.fitzpatrick17k import Fitzpatrick17kSkinCon
from medimg_core.data.ham10000 import HAM10000
from medimg_core.data.medmnist import MedMNIST, download_medmnist
from medimg_core.data.odir import ODIR
from medimg_core.data.registry import get_dataset_class, list_datasets, load_dataset, register_dataset
from medimg_core.data.transforms import TransformConfig, eval_transform, train_transform
from medimg_core.data.wbcatt import WBCAtt

__all__ = [
    "DDI",
    "HAM10000",
    "ODIR",
    "CSVDataset",
    "ChestXray14",
    "DatasetCard",
    "DatasetError",
    "Derm7pt",
    "Fitzpatrick17kSkinCon",
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
