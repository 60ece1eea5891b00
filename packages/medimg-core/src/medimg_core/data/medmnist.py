"""MedMNIST v2 2D subsets, read from the official `.npz` files (and downloaded on request)."""

from __future__ import annotations

import hashlib
import os
import shutil
import urllib.request
from pathlib import Path
from typing import ClassVar

import numpy as np

from medimg_core.data.base import FileDataset, SampleTable, empty_concepts
from medimg_core.data.card import DatasetCard
from medimg_core.data.errors import DatasetError
from medimg_core.data.registry import register_dataset

CITATION = (
    "Yang, Shi, Wei, Liu, Zhao, Ke, Pfister, Ni. MedMNIST v2 - A large-scale lightweight benchmark for 2D and "
    "3D biomedical image classification. Scientific Data 2023."
)
DOWNLOAD_URL = "https://zenodo.org/records/10519652/files/{file}?download=1"

#: subset -> (task, class names, channels, modality)
SUBSETS: dict[str, tuple[str, tuple[str, ...], int, str]] = {
    "pathmnist": ("multiclass", ("adipose", "background", "debris", "lymphocytes", "mucus", "smooth muscle",
                                 "normal colon mucosa", "cancer-associated stroma",
                                 "colorectal adenocarcinoma epithelium"), 3, "colon pathology"),
    "chestmnist": ("multilabel", ("atelectasis", "cardiomegaly", "effusion", "infiltration", "mass", "nodule",
                                  "pneumonia", "pneumothorax", "consolidation", "edema", "emphysema", "fibrosis",
                                  "pleural", "hernia"), 1, "chest X-ray"),
    "dermamnist": ("multiclass", ("actinic keratoses and intraepithelial carcinoma", "basal cell carcinoma",
                                  "benign keratosis-like lesions", "dermatofibroma", "melanoma",
                                  "melanocytic nevi", "vascular lesions"), 3, "dermatoscopy"),
    "octmnist": ("multiclass", ("choroidal neovascularization", "diabetic macular edema", "drusen", "normal"), 1,
                 "retinal OCT"),
    "pneumoniamnist": ("binary", ("normal", "pneumonia"), 1, "pediatric chest X-ray"),
    "retinamnist": ("ordinal", ("0", "1", "2", "3", "4"), 3, "fundus camera (diabetic retinopathy grade)"),
    "breastmnist": ("binary", ("malignant", "normal, benign"), 1, "breast ultrasound"),
    "bloodmnist": ("multiclass", ("basophil", "eosinophil", "erythroblast", "immature granulocytes", "lymphocyte",
                                  "monocyte", "neutrophil", "platelet"), 3, "blood cell microscopy"),
    "tissuemnist": ("multiclass", ("Collecting Duct, Connecting Tubule", "Distal Convoluted Tubule",
                                   "Glomerular endothelial cells", "Interstitial endothelial cells", "Leukocytes",
                                   "Podocytes", "Proximal Tubule Segments", "Thick Ascending Limb"), 1,
                    "kidney cortex microscopy"),
    "organamnist": ("multiclass", ("bladder", "femur-left", "femur-right", "heart", "kidney-left", "kidney-right",
                                   "liver", "lung-left", "lung-right", "pancreas", "spleen"), 1, "abdominal CT"),
}
SUBSETS["organcmnist"] = (*SUBSETS["organamnist"][:3], "abdominal CT (coronal)")
SUBSETS["organsmnist"] = (*SUBSETS["organamnist"][:3], "abdominal CT (sagittal)")

#: MD5 of official files known to this project (others are downloaded without a check and say so)
KNOWN_MD5 = {"retinamnist.npz": "bd4c0672f1bba3e3a89f0e4e876791e4"}


def _card(subset: str) -> DatasetCard:
    task, classes, channels, modality = SUBSETS[subset]
    return DatasetCard(
        name=subset,
        title=f"MedMNIST v2 {subset}",
        task=task,  # type: ignore[arg-type]
        class_names=classes,
        channels=channels,
        modality=modality,
        description=f"MedMNIST v2 {subset}: {modality}, {len(classes)} classes, official train/val/test split.",
        license="CC BY 4.0",
        citation=CITATION,
        homepage="https://medmnist.com",
        download=f"medimg datasets download {subset} --out DIR (or the medmnist package); "
        f"the file is {subset}.npz (or {subset}_<size>.npz for 64/128/224 px)",
    )


def npz_file(root: str | Path, subset: str, size: int = 28) -> Path:
    """The `.npz` for `subset` at `root`: a file path, or a folder holding `<subset>[_<size>].npz`."""
    root = Path(root)
    if root.is_file():
        return root
    name = f"{subset}.npz" if size == 28 else f"{subset}_{size}.npz"
    path = root / name
    if not path.is_file():
        raise DatasetError(
            f"{path}: MedMNIST file not found; download it with `medimg datasets download {subset} --out {root}`"
        )
    return path


def read_npz(path: Path, split: str, channels: int, num_classes: int, task: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, H, W[, 3]) uint8 and labels of one split, checked against the subset's card."""
    try:
        with np.load(path, allow_pickle=False) as data:
            keys = set(data.files)
            need = {f"{split}_images", f"{split}_labels"}
            if not need <= keys:
                raise DatasetError(f"{path}: keys {sorted(need - keys)} missing; found {sorted(keys)}")
            images, labels = data[f"{split}_images"], data[f"{split}_labels"]
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: not a readable MedMNIST .npz ({exc})") from None
    if images.dtype != np.uint8:
        raise DatasetError(f"{path}: {split}_images has dtype {images.dtype}; expected uint8")
    expected_ndim = 3 if channels == 1 else 4
    if images.ndim != expected_ndim or (channels == 3 and images.shape[-1] != 3):
        raise DatasetError(
            f"{path}: {split}_images has shape {images.shape}; expected (N, H, W)"
            + (" for this gray subset" if channels == 1 else ", 3) for this RGB subset")
        )
    if len(images) == 0:
        raise DatasetError(f"{path}: the {split} split is empty")
    if len(labels) != len(images):
        raise DatasetError(f"{path}: {len(images)} {split} images but {len(labels)} labels")
    if task == "multilabel":
        labels = labels.reshape(len(labels), -1).astype(np.float32)
        if labels.shape[1] != num_classes:
            raise DatasetError(f"{path}: {split}_labels has {labels.shape[1]} columns; expected {num_classes}")
    else:
        labels = labels.reshape(len(labels), -1)
        if labels.shape[1] != 1:
            raise DatasetError(f"{path}: {split}_labels has shape {labels.shape}; expected (N,) or (N, 1)")
        labels = labels[:, 0].astype(np.int64)
        bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
        if len(bad):
            raise DatasetError(
                f"{path}: {split}_labels row {int(bad[0])} has value {int(labels[bad[0]])}; "
                f"expected 0..{num_classes - 1} ({len(bad)} such rows)"
            )
    return images, labels


class MedMNIST(FileDataset):
    """One MedMNIST 2D subset; `root` is the `.npz` file or the folder holding it."""

    subset: ClassVar[str] = "retinamnist"
    card: ClassVar[DatasetCard] = _card("retinamnist")

    @classmethod
    def read_table(cls, root: str | Path, split: str, size: int = 28) -> SampleTable:
        split = cls.normalize_split(split)
        path = npz_file(root, cls.subset, size)
        card = cls.card
        images, labels = read_npz(path, split, card.channels, card.num_classes, card.task)
        ids = [f"{cls.subset}-{split}-{i:05d}" for i in range(len(images))]
        return SampleTable(ids=ids, targets=labels, concepts=empty_concepts(len(ids)), images=images)


def _subset_class(subset: str) -> type[MedMNIST]:
    cls = type(f"MedMNIST_{subset}", (MedMNIST,), {"subset": subset, "card": _card(subset),
                                                    "__doc__": f"MedMNIST v2 {subset} (.npz)."})
    return register_dataset(subset)(cls)


SUBSET_CLASSES = {name: _subset_class(name) for name in SUBSETS}
RetinaMNIST = SUBSET_CLASSES["retinamnist"]
BreastMNIST = SUBSET_CLASSES["breastmnist"]
PneumoniaMNIST = SUBSET_CLASSES["pneumoniamnist"]


def download_medmnist(subset: str, out: str | Path, size: int = 28, url: str | None = None) -> Path:
    """Download `<subset>[_<size>].npz` into `out` (atomic; MD5-checked where the hash is known).

    Needs internet access; `url` overrides the official Zenodo address (a mirror, or a file:// URL).
    """
    if subset not in SUBSETS:
        raise KeyError(f"unknown MedMNIST subset {subset!r}; expected one of {sorted(SUBSETS)}")
    name = f"{subset}.npz" if size == 28 else f"{subset}_{size}.npz"
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    target = out / name
    tmp = out / f".{name}.part-{os.getpid()}"
    source = url or DOWNLOAD_URL.format(file=name)
    try:
        with urllib.request.urlopen(source, timeout=60) as response, open(tmp, "wb") as fh:
            shutil.copyfileobj(response, fh)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise DatasetError(f"cannot download {source} ({exc}); download it by hand into {out}") from None
    expected = KNOWN_MD5.get(name)
    if expected is not None:
        digest = hashlib.md5(tmp.read_bytes()).hexdigest()
        if digest != expected:
            tmp.unlink(missing_ok=True)
            raise DatasetError(f"{source}: MD5 {digest} does not match the official {expected}")
    os.replace(tmp, target)
    return target
