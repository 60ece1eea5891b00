"""WBCAtt: white-blood-cell images of the PBC dataset with 11 morphological attributes per image."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np

from medimg_core.data.base import FileDataset, SampleTable, collect_missing_files
from medimg_core.data.card import DatasetCard
from medimg_core.data.errors import DatasetError, ProblemLog
from medimg_core.data.images import PathResolver
from medimg_core.data.registry import register_dataset
from medimg_core.data.tables import (
    expand_categorical,
    find_file,
    map_values,
    read_table_file,
    require_columns,
)

CLASSES = ("Basophil", "Eosinophil", "Lymphocyte", "Monocyte", "Neutrophil")

#: each attribute's values, in order of first appearance over the official train + val + test CSVs
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "cell_size": ("big", "small"),
    "cell_shape": ("round", "irregular"),
    "nucleus_shape": (
        "unsegmented-band",
        "unsegmented-round",
        "segmented-multilobed",
        "segmented-bilobed",
        "irregular",
        "unsegmented-indented",
    ),
    "nuclear_cytoplasmic_ratio": ("low", "high"),
    "chromatin_density": ("densely", "loosely"),
    "cytoplasm_vacuole": ("no", "yes"),
    "cytoplasm_texture": ("clear", "frosted"),
    "cytoplasm_colour": ("light blue", "blue", "purple blue"),
    "granule_type": ("small", "round", "coarse", "nil"),
    "granule_colour": ("pink", "purple", "red", "nil"),
    "granularity": ("yes", "no"),
}
#: two-valued attributes become one concept: 1 where the attribute has this value (as CRL does)
BINARY_POSITIVE = {
    "cell_size": "big",
    "cell_shape": "round",
    "nuclear_cytoplasmic_ratio": "high",
    "chromatin_density": "densely",
    "cytoplasm_vacuole": "yes",
    "cytoplasm_texture": "clear",
    "granularity": "yes",
}

CSV_NAMES = {
    "train": ("pbc_attr_v1_train.csv", "train.csv"),
    "val": ("pbc_attr_v1_val.csv", "val.csv", "valid.csv"),
    "test": ("pbc_attr_v1_test.csv", "test.csv"),
}


def _concept_layout() -> tuple[tuple[str, ...], dict[str, tuple[str, ...]]]:
    import pandas as pd

    empty = pd.DataFrame({a: [] for a in ATTRIBUTES})
    _, names, groups = expand_categorical(empty, ATTRIBUTES, BINARY_POSITIVE, "", ProblemLog())
    return tuple(names), groups


CONCEPT_NAMES, CONCEPT_GROUPS = _concept_layout()


@register_dataset("wbcatt")
class WBCAtt(FileDataset):
    """WBCAtt attributes over PBC images: 5 white-blood-cell classes, 24 binary concepts.

    Root layout, as released: the three WBCAtt CSVs (`pbc_attr_v1_{train,val,test}.csv`, or the same
    files named `train.csv`, `val.csv`, `test.csv`) with columns `img_name,label,<11 attributes>,path`,
    and the PBC image folders anywhere under the root (`PBC_dataset_normal_DIB/<class>/<img>` as the
    CSV's `path` says, or `images/<class>/<img>`).
    """

    card: ClassVar[DatasetCard] = DatasetCard(
        name="wbcatt",
        title="WBCAtt: white blood cell attributes (PBC images)",
        task="multiclass",
        class_names=CLASSES,
        concept_names=CONCEPT_NAMES,
        concept_groups=CONCEPT_GROUPS,
        channels=3,
        modality="peripheral blood smear microscopy",
        description=(
            "10,298 white-blood-cell images of five types from the PBC dataset, each annotated with 11 "
            "morphological attributes (cell size and shape, nucleus shape, N:C ratio, chromatin, cytoplasm "
            "vacuole/texture/colour, granule type/colour, granularity). Attributes with more than two values "
            "are one-hot encoded and two-valued ones kept as one concept, giving 24 binary concepts. "
            "Official split: train 6169, val 1030, test 3099."
        ),
        license="attributes: MIT (WBCAtt); images: CC BY 4.0 (PBC dataset)",
        citation=(
            "Tsutsui, Pang, Wen. WBCAtt: A White Blood Cell Dataset Annotated with Detailed Morphological "
            "Attributes. NeurIPS 2023 Datasets and Benchmarks. Acevedo et al. A dataset of microscopic "
            "peripheral blood cell images for development of automatic recognition systems. Data in Brief 2020."
        ),
        homepage="https://github.com/apple2373/wbcatt",
        download=(
            "CSVs: pbc_attr_v1_{train,val,test}.csv from the WBCAtt repository (submission/); images: the PBC "
            "dataset (Mendeley Data, dataset snkd93bnjr), unzipped under the same root."
        ),
    )

    @classmethod
    def read_table(cls, root: str | Path, split: str) -> SampleTable:
        root = Path(root)
        split = cls.normalize_split(split)
        csv_path = find_file(root, CSV_NAMES[split], f"WBCAtt {split} CSV")
        frame = read_table_file(csv_path)
        log = ProblemLog()
        if not require_columns(frame, ["img_name", "label", *ATTRIBUTES, "path"], csv_path, log):
            log.raise_if_any(f"wbcatt: cannot read {csv_path}")
        if len(frame) == 0:
            raise DatasetError(f"{csv_path}: the {split} split is empty; expected one row per image")
        targets = map_values(frame, "label", {c: i for i, c in enumerate(CLASSES)}, csv_path, log)
        concepts, names, _ = expand_categorical(frame, ATTRIBUTES, BINARY_POSITIVE, csv_path, log)
        assert tuple(names) == CONCEPT_NAMES
        for i, values in enumerate(frame[list(ATTRIBUTES)].to_numpy()):
            blank = [a for a, v in zip(ATTRIBUTES, values, strict=True) if not str(v).strip()]
            if blank:
                log.add(csv_path, f"attribute(s) {blank} are blank; expected a value for every attribute", row=i + 2)
        paths = collect_missing_files(PathResolver(root), frame["path"].tolist(), str(csv_path), "path", log)
        log.raise_if_any(f"wbcatt: cannot read the {split} split")
        return SampleTable(
            ids=frame["img_name"].tolist(),
            targets=targets,
            concepts=concepts.astype(np.float32),
            paths=paths,  # type: ignore[arg-type]
        )
