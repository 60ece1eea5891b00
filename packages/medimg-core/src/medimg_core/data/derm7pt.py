"""Derm7pt: the seven-point checklist dermatology dataset (dermoscopic and clinical images, 1,011 cases)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from medimg_core.data.base import FileDataset, SampleTable, collect_missing_files
from medimg_core.data.card import DatasetCard
from medimg_core.data.errors import DatasetError, ProblemLog
from medimg_core.data.images import PathResolver
from medimg_core.data.registry import register_dataset
from medimg_core.data.tables import ROW_OFFSET, find_file, read_table_file, require_columns

#: every diagnosis in meta.csv (Kawahara et al.'s derm7pt `ArgenzianoDataset`), grouped into the 5
#: classes of their "group infrequent" variant; melanoma vs not is the default task
DIAGNOSES: dict[str, tuple[str, ...]] = {
    "basal cell carcinoma": ("basal cell carcinoma",),
    "nevus": ("nevus", "blue nevus", "clark nevus", "combined nevus", "congenital nevus", "dermal nevus",
              "recurrent nevus", "reed or spitz nevus"),
    "melanoma": ("melanoma", "melanoma (in situ)", "melanoma (less than 0.76 mm)", "melanoma (0.76 to 1.5 mm)",
                 "melanoma (more than 1.5 mm)", "melanoma metastasis"),
    "miscellaneous": ("dermatofibroma", "lentigo", "melanosis", "miscellaneous", "vascular lesion"),
    "seborrheic keratosis": ("seborrheic keratosis",),
}
TASKS: dict[str, tuple[str, ...]] = {
    "melanoma": ("not melanoma", "melanoma"),
    "diagnosis": tuple(DIAGNOSES),
}

#: seven-point criteria: each categorical value -> the binary concepts it switches on ("absent" none).
#: "grouped" follows the literature (regular/irregular, as in Kawahara et al.'s grouped labels);
#: "full" keeps every sub-type. Regression "combinations" means blue and white areas together.
CRITERIA: dict[str, dict[str, dict[str, tuple[str, ...]]]] = {
    "grouped": {
        "pigment_network": {"absent": (), "typical": ("typical pigment network",),
                            "atypical": ("atypical pigment network",)},
        "streaks": {"absent": (), "regular": ("regular streaks",), "irregular": ("irregular streaks",)},
        "pigmentation": {"absent": (), "diffuse regular": ("regular pigmentation",),
                         "localized regular": ("regular pigmentation",),
                         "diffuse irregular": ("irregular pigmentation",),
                         "localized irregular": ("irregular pigmentation",)},
        "regression_structures": {"absent": (), "blue areas": ("regression structures",),
                                  "white areas": ("regression structures",),
                                  "combinations": ("regression structures",)},
        "dots_and_globules": {"absent": (), "regular": ("regular dots and globules",),
                              "irregular": ("irregular dots and globules",)},
        "blue_whitish_veil": {"absent": (), "present": ("blue whitish veil",)},
        "vascular_structures": {"absent": (), "arborizing": ("regular vascular structures",),
                                "comma": ("regular vascular structures",),
                                "hairpin": ("regular vascular structures",),
                                "within regression": ("regular vascular structures",),
                                "wreath": ("regular vascular structures",),
                                "dotted": ("irregular vascular structures",),
                                "linear irregular": ("irregular vascular structures",)},
    },
    "full": {
        "pigment_network": {"absent": (), "typical": ("typical pigment network",),
                            "atypical": ("atypical pigment network",)},
        "streaks": {"absent": (), "regular": ("regular streaks",), "irregular": ("irregular streaks",)},
        "pigmentation": {"absent": (), "diffuse regular": ("diffuse regular pigmentation",),
                         "localized regular": ("localized regular pigmentation",),
                         "diffuse irregular": ("diffuse irregular pigmentation",),
                         "localized irregular": ("localized irregular pigmentation",)},
        "regression_structures": {"absent": (), "blue areas": ("blue areas regression structures",),
                                  "white areas": ("white areas regression structures",),
                                  "combinations": ("blue areas regression structures",
                                                   "white areas regression structures")},
        "dots_and_globules": {"absent": (), "regular": ("regular dots and globules",),
                              "irregular": ("irregular dots and globules",)},
        "blue_whitish_veil": {"absent": (), "present": ("blue whitish veil",)},
        "vascular_structures": {"absent": (), "arborizing": ("arborizing vascular structures",),
                                "comma": ("comma vascular structures",),
                                "hairpin": ("hairpin vascular structures",),
                                "within regression": ("within regression vascular structures",),
                                "wreath": ("wreath vascular structures",),
                                "dotted": ("dotted vascular structures",),
                                "linear irregular": ("linear irregular vascular structures",)},
    },
}
META_FILES = ("meta/meta.csv", "meta.csv", "release_v0/meta/meta.csv")
INDEX_FILES = {
    "train": ("train_indexes.csv",),
    "val": ("valid_indexes.csv", "val_indexes.csv"),
    "test": ("test_indexes.csv",),
}
IMAGE_COLUMNS = ("derm", "clinic")


def concept_layout(concept_set: str) -> tuple[tuple[str, ...], dict[str, tuple[str, ...]]]:
    """(concept names, groups criterion -> names) of a concept set ("grouped" or "full")."""
    if concept_set not in CRITERIA:
        raise ValueError(f"derm7pt: concept_set must be one of {list(CRITERIA)}, got {concept_set!r}")
    names: list[str] = []
    groups: dict[str, tuple[str, ...]] = {}
    for criterion, values in CRITERIA[concept_set].items():
        group: list[str] = []
        for concepts in values.values():
            group += [c for c in concepts if c not in group]
        groups[criterion] = tuple(group)
        names += group
    return tuple(names), groups


GROUPED_CONCEPTS, GROUPED_GROUPS = concept_layout("grouped")
FULL_CONCEPTS, FULL_GROUPS = concept_layout("full")


def diagnosis_class(diagnosis: str) -> str | None:
    """The grouped diagnosis ("melanoma", "nevus", ...) of a meta.csv diagnosis, or None if unknown."""
    key = " ".join(diagnosis.strip().lower().split())
    for group, names in DIAGNOSES.items():
        if key in names:
            return group
    return None


@register_dataset("derm7pt")
class Derm7pt(FileDataset):
    """Derm7pt: melanoma vs not (default) from dermoscopic images, with seven-point checklist concepts.

    Root layout, as released (release_v0): `meta/meta.csv`, the official split lists
    `meta/train_indexes.csv`, `meta/valid_indexes.csv`, `meta/test_indexes.csv` (column `indexes`: 0-based
    rows of meta.csv) and `images/` with the paths the `derm` and `clinic` columns give (e.g.
    `NEL/Nel026.jpg`; folder and extension case differ between the CSV and the download and are matched
    case-insensitively).

    Options: `task="melanoma"` (binary: any "melanoma ..." diagnosis vs everything else) or
    `"diagnosis"` (the 5 grouped classes BCC, nevus, melanoma, miscellaneous, SK of Kawahara et al.);
    `concept_set="grouped"` (12 concepts, the literature's) or `"full"` (20, every sub-type);
    `image="derm"` (dermoscopy) or `"clinic"` (the clinical photograph of the same lesion).
    """

    card: ClassVar[DatasetCard] = DatasetCard(
        name="derm7pt",
        title="Derm7pt: seven-point checklist dermatology dataset",
        task="binary",
        class_names=TASKS["melanoma"],
        concept_names=GROUPED_CONCEPTS,
        concept_groups=GROUPED_GROUPS,
        channels=3,
        splits=("train", "val", "test"),
        official_splits=True,
        modality="dermoscopy",
        description=(
            "1,011 skin lesion cases, each with a dermoscopic and a clinical image, a diagnosis and the seven-point "
            "checklist criteria (pigment network, streaks, pigmentation, regression structures, dots and "
            "globules, blue-whitish veil, vascular structures). Official split: train 413, valid 203, "
            "test 395 cases. Default target: melanoma (any melanoma diagnosis, in situ to metastasis) vs "
            "not. Concepts (concept_set='grouped', 12, 'absent' = all zeros): " + ", ".join(GROUPED_CONCEPTS)
            + ". concept_set='full' (20): " + ", ".join(FULL_CONCEPTS)
            + " (regression 'combinations' sets both blue and white areas)."
        ),
        license="free for research and education (Derm7pt terms of use at derm.cs.sfu.ca); no redistribution",
        citation=(
            "Kawahara, Daneshvar, Argenziano, Hamarneh. Seven-point checklist and skin lesion classification "
            "using multitask multimodal neural nets. IEEE Journal of Biomedical and Health Informatics 23(2), "
            "538-546 (2019)."
        ),
        homepage="https://derm.cs.sfu.ca",
        download=(
            "Register at derm.cs.sfu.ca and download release_v0.zip; unzip it and point root at release_v0/ "
            "(holding meta/meta.csv, meta/{train,valid,test}_indexes.csv and images/). Nothing needs renaming."
        ),
    )

    @classmethod
    def card_for(
        cls, root: str | Path, task: str = "melanoma", concept_set: str = "grouped", image: str = "derm",
        **options: Any,
    ) -> DatasetCard:
        """The card for the chosen task, concept set and image type."""
        if task not in TASKS:
            raise ValueError(f"derm7pt: task must be one of {list(TASKS)}, got {task!r}")
        if image not in IMAGE_COLUMNS:
            raise ValueError(f"derm7pt: image must be one of {list(IMAGE_COLUMNS)}, got {image!r}")
        names, groups = concept_layout(concept_set)
        return cls.card.with_updates(
            task="binary" if task == "melanoma" else "multiclass",
            class_names=TASKS[task],
            concept_names=names,
            concept_groups=groups,
            modality="dermoscopy" if image == "derm" else "clinical photography",
        )

    @classmethod
    def read_table(
        cls, root: str | Path, split: str, task: str = "melanoma", concept_set: str = "grouped", image: str = "derm",
    ) -> SampleTable:
        root = Path(root)
        split = cls.normalize_split(split)
        card = cls.card_for(root, task=task, concept_set=concept_set, image=image)
        header = f"{card.name}: cannot read {split} split from {root}"
        meta_path = find_file(root, META_FILES, "Derm7pt metadata meta/meta.csv")
        meta_dir = meta_path.parent
        data_root = meta_dir.parent if meta_dir.name.lower() == "meta" else meta_dir
        frame = read_table_file(meta_path)
        log = ProblemLog()
        criteria = CRITERIA[concept_set]
        if not require_columns(frame, ["case_num", "diagnosis", *criteria, image], meta_path, log):
            log.raise_if_any(header)

        index_paths = {s: find_file(meta_dir, INDEX_FILES[s], f"Derm7pt {s} index list") for s in card.splits}
        index_lists = {s: _read_indexes(p, len(frame), log) for s, p in index_paths.items()}
        rows = index_lists[split]
        for other, other_rows in index_lists.items():
            overlap = sorted(set(rows) & set(other_rows)) if other != split else []
            if overlap:
                log.add(index_paths[split], f"{len(overlap)} meta.csv rows are also in the {other} split "
                        f"({index_paths[other].name}), e.g. rows {overlap[:5]}", column="indexes")
        if not rows and not len(log):
            raise DatasetError(f"{card.name}: the {split} split is empty; {index_paths[split]} lists no rows "
                               "of meta.csv")
        sub = frame.iloc[rows] if rows else frame.iloc[:0]

        class_index = {c: i for i, c in enumerate(card.class_names)}
        targets = np.full(len(rows), -1, dtype=np.int64)
        for k, (r, raw) in enumerate(zip(rows, sub["diagnosis"].tolist(), strict=True)):
            group = diagnosis_class(str(raw))
            if group is None:
                known = [n for names in DIAGNOSES.values() for n in names]
                log.add(meta_path, f"unknown diagnosis {raw!r}; expected one of {known}", row=r + ROW_OFFSET,
                        column="diagnosis")
            elif task == "melanoma":
                targets[k] = int(group == "melanoma")
            else:
                targets[k] = class_index[group]
        concepts = _criteria_concepts(sub, rows, criteria, card.concept_names, meta_path, log)
        relatives = [f"images/{str(v).strip()}" for v in sub[image].tolist()]
        paths = collect_missing_files(PathResolver(data_root), relatives, str(meta_path), image, log, rows)
        log.raise_if_any(header)
        return SampleTable(
            ids=[str(v).strip() for v in sub["case_num"].tolist()],
            targets=targets,
            concepts=concepts,
            paths=paths,  # type: ignore[arg-type]
            extra={"diagnosis": dict(zip((str(v).strip() for v in sub["case_num"]), sub["diagnosis"], strict=True)),
                   "index_file": str(index_paths[split])},
        )


def _read_indexes(path: Path, n_rows: int, log: ProblemLog) -> list[int]:
    """The 0-based meta.csv rows an index CSV lists; bad entries are problems."""
    frame = read_table_file(path)
    if not require_columns(frame, ["indexes"], path, log):
        return []
    out: list[int] = []
    for i, raw in enumerate(frame["indexes"].tolist()):
        try:
            value = int(float(str(raw).strip()))
        except ValueError:
            log.add(path, f"{raw!r} is not a row number of meta.csv", row=i + ROW_OFFSET, column="indexes")
            continue
        if not 0 <= value < n_rows:
            log.add(path, f"row {value} is out of range; meta.csv has {n_rows} rows (0-based)", row=i + ROW_OFFSET,
                    column="indexes")
            continue
        out.append(value)
    return out


def _criteria_concepts(
    frame: pd.DataFrame,
    rows: list[int],
    criteria: dict[str, dict[str, tuple[str, ...]]],
    names: tuple[str, ...],
    file_label: Path,
    log: ProblemLog,
) -> np.ndarray:
    """Binary concepts (N, K) from the seven criteria's categorical values; blank -> NaN for that criterion."""
    column_of = {n: k for k, n in enumerate(names)}
    out = np.zeros((len(frame), len(names)), dtype=np.float32)
    for criterion, values in criteria.items():
        group = sorted({column_of[c] for cs in values.values() for c in cs})
        for k, (r, raw) in enumerate(zip(rows, frame[criterion].tolist(), strict=True)):
            value = " ".join(str(raw).strip().lower().split())
            if not value:
                out[k, group] = np.nan
            elif value not in values:
                out[k, group] = np.nan
                log.add(file_label, f"unexpected value {raw!r} for criterion '{criterion}'; expected one of "
                        f"{list(values)}", row=r + ROW_OFFSET, column=criterion)
            else:
                for concept in values[value]:
                    out[k, column_of[concept]] = 1.0
    return out
