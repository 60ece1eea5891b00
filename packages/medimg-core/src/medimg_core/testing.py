"""Helpers for tests, shipped with the library (as captum.testing is): fixtures of real datasets in
their official layouts, written on the fly, and the location of the project's shared real data.

Every writer produces a few tiny images and the metadata files exactly as the dataset's owners
ship them, so the loaders' real code paths run without any download.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image


def shared_data_dir() -> Path | None:
    """The project's read-only real data (`$MEDIMG_SHARED_DATA`, or `../shared/data` from the repo root)."""
    env = os.environ.get("MEDIMG_SHARED_DATA")
    if env:
        return Path(env) if Path(env).is_dir() else None
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent.parent / "shared" / "data"
        if (parent / "packages").is_dir() and candidate.is_dir():
            return candidate
    return None


def write_image(path: Path, size: int = 16, channels: int = 3, seed: int = 0, value: int | None = None) -> Path:
    """A small random (or constant) PNG/JPEG at `path`; the suffix picks the format."""
    rng = np.random.default_rng(seed)
    shape = (size, size) if channels == 1 else (size, size, 3)
    arr = np.full(shape, value, dtype=np.uint8) if value is not None else rng.integers(0, 256, shape, dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def write_truncated_image(path: Path) -> Path:
    """A JPEG cut in half: it opens but cannot be decoded."""
    write_image(path.with_suffix(".jpg"), size=64)
    data = path.with_suffix(".jpg").read_bytes()
    path.with_suffix(".jpg").unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data[: len(data) // 2])
    return path


WBCATT_ROWS = [
    # img_name, label, folder, 11 attributes
    ("BA_1.jpg", "Basophil", "basophil",
     ["big", "round", "segmented-bilobed", "low", "densely", "no", "frosted", "purple blue", "coarse", "purple", "yes"]),
    ("EO_1.jpg", "Eosinophil", "eosinophil",
     ["big", "round", "segmented-bilobed", "low", "densely", "no", "frosted", "light blue", "round", "red", "yes"]),
    ("LY_1.jpg", "Lymphocyte", "lymphocyte",
     ["small", "round", "unsegmented-round", "high", "densely", "no", "clear", "blue", "nil", "nil", "no"]),
    ("MO_1.jpg", "Monocyte", "monocyte",
     ["big", "irregular", "unsegmented-indented", "low", "loosely", "yes", "frosted", "blue", "small", "pink", "yes"]),
    ("BNE_1.jpg", "Neutrophil", "neutrophil",
     ["big", "round", "unsegmented-band", "low", "densely", "no", "clear", "light blue", "small", "pink", "yes"]),
    ("SNE_1.jpg", "Neutrophil", "neutrophil",
     ["big", "round", "segmented-multilobed", "low", "densely", "no", "clear", "light blue", "small", "pink", "yes"]),
]
WBCATT_COLUMNS = ["img_name", "label", "cell_size", "cell_shape", "nucleus_shape", "nuclear_cytoplasmic_ratio",
                  "chromatin_density", "cytoplasm_vacuole", "cytoplasm_texture", "cytoplasm_colour", "granule_type",
                  "granule_colour", "granularity", "path"]


def write_wbcatt_fixture(root: Path, rows: Sequence = WBCATT_ROWS) -> Path:
    """WBCAtt as released: `pbc_attr_v1_{train,val,test}.csv` + `PBC_dataset_normal_DIB/<class>/<img>`.

    Each split holds all `rows` with the split name prefixed to the file names.
    """
    import pandas as pd

    root.mkdir(parents=True, exist_ok=True)
    for s, split in enumerate(("train", "val", "test")):
        records = []
        for i, (name, label, folder, attrs) in enumerate(rows):
            img_name = f"{split}_{name}"
            rel = f"PBC_dataset_normal_DIB/{folder}/{img_name}"
            write_image(root / rel, size=24, seed=100 * s + i)
            records.append([img_name, label, *attrs, rel])
        pd.DataFrame(records, columns=WBCATT_COLUMNS).to_csv(root / f"pbc_attr_v1_{split}.csv", index=False)
    return root


def write_medmnist_fixture(path: Path, channels: int = 3, num_classes: int = 5, n: int = 10,
                           flat_labels: bool = False, size: int = 28) -> Path:
    """A MedMNIST-style `.npz` with train/val/test images and labels ((N, 1), or (N,) if flat_labels)."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split in ("train", "val", "test"):
        shape = (n, size, size) if channels == 1 else (n, size, size, 3)
        arrays[f"{split}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
        labels = np.arange(n, dtype=np.uint8) % num_classes
        arrays[f"{split}_labels"] = labels if flat_labels else labels[:, None]
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return path


def write_chestxray14_fixture(root: Path, n_patients: int = 12, with_lists: bool = True,
                              gzip: bool = True) -> Path:
    """ChestX-ray14 as released: Data_Entry_2017_v2020.csv[.gz], the two lists, `images_001/images/*.png`."""
    import pandas as pd

    findings = ["No Finding", "Cardiomegaly", "Effusion|Infiltration", "Nodule", "Mass|Pneumothorax", "No Finding"]
    rows, train_val, test = [], [], []
    for p in range(1, n_patients + 1):
        for follow_up in range(2):
            name = f"{p:08d}_{follow_up:03d}.png"
            label = findings[(p + follow_up) % len(findings)]
            rows.append([name, label, follow_up, p, 50, "M", "PA" if follow_up == 0 else "AP", 64, 64, 0.14, 0.14])
            (test if p % 4 == 0 else train_val).append(name)
            write_image(root / "images_001" / "images" / name, size=32, channels=1, seed=p * 10 + follow_up)
    columns = ["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender",
               "View Position", "OriginalImage[Width", "Height]", "OriginalImagePixelSpacing[x", "y]"]
    frame = pd.DataFrame(rows, columns=columns)
    name = "Data_Entry_2017_v2020.csv" + (".gz" if gzip else "")
    frame.to_csv(root / name, index=False)
    if with_lists:
        (root / "train_val_list.txt").write_text("\n".join(train_val) + "\n")
        (root / "test_list.txt").write_text("\n".join(test) + "\n")
    return root
