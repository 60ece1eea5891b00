"""ODIR-5K: colour fundus photographs of both eyes of 5,000 patients, 8 multi-label classes per eye."""

from __future__ import annotations

import importlib.util
import re
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from medimg_core.data.base import (
    FileDataset,
    SampleTable,
    collect_missing_files,
    empty_concepts,
)
from medimg_core.data.card import DatasetCard
from medimg_core.data.common import find_dir, read_excel_file
from medimg_core.data.errors import DatasetError, ProblemLog
from medimg_core.data.images import PathResolver, walk
from medimg_core.data.registry import register_dataset
from medimg_core.data.splits import fold_split_names
from medimg_core.data.tables import ROW_OFFSET, read_table_file, require_columns

LABEL_CODES = ("N", "D", "G", "C", "A", "H", "M", "O")
CLASS_NAMES = ("Normal", "Diabetes", "Glaucoma", "Cataract", "AMD", "Hypertension", "Myopia", "Other")
EYES = ("Left", "Right")
OFFICIAL_ANNOTATIONS = "ODIR-5K_Training_Annotations(Updated)_V2.xlsx"
IMAGE_DIRS = ("ODIR-5K_Training_Dataset", "ODIR-5K_Training_Images", "Training Images", "Training_Images",
              "training_images")
#: keywords about the photograph, not the eye: they neither add nor remove a label
QUALITY_KEYWORDS = frozenset({
    "lens dust",
    "low image quality",
    "no fundus image",
    "image offset",
    "optic disk photographically invisible",
    "optic disc photographically invisible",
    "anterior segment image",
})
KEYWORD_SEPARATORS = re.compile(r"[，,]")


def keyword_label(keyword: str) -> int | None:
    """The class index (into N, D, G, C, A, H, M, O) of one diagnostic keyword; None for quality keywords.

    DR grades ("mild/moderate/severe non proliferative retinopathy", "proliferative diabetic retinopathy",
    "diabetic retinopathy") -> D; "glaucoma" -> G; "cataract" -> C; "... macular degeneration" -> A;
    "hypertensive retinopathy" -> H; "pathological myopia", "myopic ..." -> M; "normal fundus" -> N;
    any other finding -> O.
    """
    kw = " ".join(keyword.strip().lower().split())
    if not kw or kw in QUALITY_KEYWORDS:
        return None
    if "normal fundus" in kw:
        return 0
    if "hypertensive" in kw:
        return 5
    if "diabetic retinopathy" in kw or "proliferative retinopathy" in kw:
        return 1
    if "glaucoma" in kw:
        return 2
    if "cataract" in kw:
        return 3
    if "macular degeneration" in kw:
        return 4
    if "myopi" in kw:
        return 6
    return 7


def eye_labels(keywords: str) -> tuple[np.ndarray, list[str]]:
    """Multi-hot (8,) of one eye's keyword cell, with N cleared when a disease is present; and the O keywords."""
    out = np.zeros(len(LABEL_CODES), dtype=np.float32)
    other: list[str] = []
    for keyword in KEYWORD_SEPARATORS.split(str(keywords)):
        label = keyword_label(keyword)
        if label is None:
            continue
        out[label] = 1
        if label == 7:
            other.append(" ".join(keyword.strip().lower().split()))
    if out[1:].any():
        out[0] = 0
    return out, other


def find_annotations(root: Path) -> Path:
    """The official annotation sheet (.xlsx when openpyxl is installed) or the same table saved as CSV."""
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset root is not a directory")
    found: list[Path] = []
    for dirpath, dirnames, filenames in walk(root):
        if len(Path(dirpath).relative_to(root).parts) >= 2:
            dirnames[:] = []
        dirnames[:] = [d for d in dirnames if d.lower() not in {n.lower() for n in IMAGE_DIRS}]
        for name in filenames:
            low = name.lower()
            if "annotation" in low and low.endswith((".xlsx", ".csv")) and not low.startswith("~$"):
                found.append(Path(dirpath) / name)
    found.sort(key=lambda p: (len(p.relative_to(root).parts), p.name != OFFICIAL_ANNOTATIONS, p.name))
    xlsx = [p for p in found if p.suffix.lower() == ".xlsx"]
    csv = [p for p in found if p.suffix.lower() == ".csv"]
    if xlsx and (importlib.util.find_spec("openpyxl") is not None or not csv):
        return xlsx[0]
    if csv:
        return csv[0]
    raise DatasetError(
        f"{root}: ODIR-5K annotations not found; expected {OFFICIAL_ANNOTATIONS} (needs openpyxl) or the same "
        "sheet saved as CSV with 'Annotations' in its name"
    )


def read_annotations(path: Path) -> pd.DataFrame:
    """The annotation table as strings, from .xlsx or .csv."""
    if path.suffix.lower() == ".xlsx":
        return read_excel_file(path)
    return read_table_file(path)


@register_dataset("odir")
class ODIR(FileDataset):
    """ODIR-5K, one sample per eye, multi-label over N, D, G, C, A, H, M, O; groups = patient ID.

    Root layout, as released for the ODIR-2019 challenge: `ODIR-5K_Training_Annotations(Updated)_V2.xlsx`
    (read when openpyxl is installed; otherwise the same sheet saved as a CSV with "Annotations" in its
    name) with columns `ID, Patient Age, Patient Sex, Left-Fundus, Right-Fundus, Left-Diagnostic Keywords,
    Right-Diagnostic Keywords, N, D, G, C, A, H, M, O`, and the images (`<ID>_left.jpg`,
    `<ID>_right.jpg`) in `ODIR-5K_Training_Dataset/` (or `Training Images/`, or anywhere under the root).
    `annotations=` names another annotation file.

    The N..O columns describe the patient, so each eye's labels come from its own diagnostic keywords
    (see `keyword_label`); quality keywords (lens dust, low image quality, image offset, ...) are skipped,
    N is cleared when a disease is present, and eyes left without any label are dropped and counted in
    `table.extra["eyes_without_label"]`. Eyes whose keywords fall to O are listed by keyword in
    `table.extra["other_keywords"]`; patients whose N..O row differs from the union of their eyes' labels
    are counted in `table.extra["patient_label_mismatches"]`.
    The official test labels are not public: splits are 5 seeded folds over eyes, grouped by patient
    (both eyes on one side) and stratified by the rarest label (test = fold `fold`, val = fold
    `fold + 1`, train = the rest), written to a split file once and reused.

    Options: `n_folds=5, fold=0, seed=0, split_file=None, annotations=None`.
    """

    card: ClassVar[DatasetCard] = DatasetCard(
        name="odir",
        title="ODIR-5K: Ocular Disease Intelligent Recognition (per eye)",
        task="multilabel",
        class_names=CLASS_NAMES,
        concept_names=(),
        channels=3,
        splits=("train", "val", "test"),
        official_splits=False,
        modality="colour fundus photography",
        description=(
            "Left and right colour fundus photographs of 3,500 training patients (ODIR-5K training set; "
            "7,000 images) from several Chinese hospitals, with diagnostic keywords per eye and 8 labels per "
            "patient: Normal, Diabetes (diabetic retinopathy), Glaucoma, Cataract, AMD, Hypertension "
            "(hypertensive retinopathy), Myopia (pathological) and Other. Targets are per eye, multi-hot "
            "over the 8 labels, derived from each eye's keywords. No concepts."
        ),
        license=(
            "research use under the ODIR-2019 challenge terms (Peking University / Shanggong Medical "
            "Technology); cite the challenge"
        ),
        citation=(
            "Peking University International Competition on Ocular Disease Intelligent Recognition (ODIR-2019), "
            "https://odir2019.grand-challenge.org/. Li, Chen, et al. A benchmark of ocular disease intelligent "
            "recognition: one shot for multi-disease detection. BENCH 2020."
        ),
        homepage="https://odir2019.grand-challenge.org/dataset/",
        download=(
            "Register on odir2019.grand-challenge.org and download ODIR-5K_Training_Annotations(Updated)_V2.xlsx "
            "and ODIR-5K_Training_Images.zip; unzip the images so that root/ODIR-5K_Training_Dataset/0_left.jpg "
            "exists next to the .xlsx. Without openpyxl, save the sheet as CSV in the root (keep 'Annotations' in "
            "the name). The Kaggle 'full_df.csv' is a derivative: pass it as annotations= if that is what you have."
        ),
    )

    @classmethod
    def read_table(
        cls,
        root: str | Path,
        split: str,
        n_folds: int = 5,
        fold: int = 0,
        seed: int = 0,
        split_file: str | Path | None = None,
        annotations: str | Path | None = None,
    ) -> SampleTable:
        root = Path(root)
        split = cls.normalize_split(split)
        name = cls.card.name
        if annotations is not None:
            table_path = Path(annotations) if Path(annotations).is_absolute() else root / annotations
            if not table_path.is_file():
                raise DatasetError(f"{table_path}: annotation file not found")
        else:
            table_path = find_annotations(root)
        frame = read_annotations(table_path)
        log = ProblemLog()
        fundus = {eye: f"{eye}-Fundus" for eye in EYES}
        keywords = {eye: f"{eye}-Diagnostic Keywords" for eye in EYES}
        if not require_columns(frame, ["ID", *fundus.values(), *keywords.values()], table_path, log):
            log.raise_if_any(f"{name}: cannot read {split} split from {root}")
        if len(frame) == 0:
            raise DatasetError(f"{table_path}: the {split} split is empty; the annotation table has no rows")

        eye_ids: list[str] = []
        files: list[str] = []
        file_columns: list[str] = []
        rows: list[int] = []
        patients: list[str] = []
        targets: list[np.ndarray] = []
        other = Counter()
        dropped: list[str] = []
        mismatches = 0
        seen_patients: set[str] = set()
        seen_files: set[str] = set()
        has_patient_labels = all(c in frame.columns for c in LABEL_CODES)
        duplicate_rows = 0
        for r in range(len(frame)):
            patient = str(frame["ID"].iloc[r]).strip().removesuffix(".0")
            if not patient:
                log.add(table_path, "blank ID; expected the patient number", row=r + ROW_OFFSET, column="ID")
                continue
            if patient in seen_patients:  # derivatives such as full_df.csv repeat each patient per eye
                duplicate_rows += 1
                continue
            seen_patients.add(patient)
            union = np.zeros(len(LABEL_CODES), dtype=np.float32)
            labelled = []
            for eye in EYES:
                file = str(frame[fundus[eye]].iloc[r]).strip()
                if not file:
                    log.add(table_path, f"blank {fundus[eye]}; expected the image file name", row=r + ROW_OFFSET,
                            column=fundus[eye])
                    continue
                labels, others = eye_labels(frame[keywords[eye]].iloc[r])
                if not labels.any():
                    dropped.append(Path(file).stem)
                    continue
                if file.lower() in seen_files:
                    log.add(table_path, f"image {file!r} is named twice", row=r + ROW_OFFSET, column=fundus[eye])
                    continue
                seen_files.add(file.lower())
                other.update(others)
                labelled.append(labels)
                eye_ids.append(Path(file).stem)
                files.append(file)
                file_columns.append(fundus[eye])
                rows.append(r)
                patients.append(patient)
                targets.append(labels)
            if has_patient_labels and labelled:
                for labels in labelled:
                    union = np.maximum(union, labels)
                union[0] = float(all(lab[0] == 1 for lab in labelled))
                given = np.array([_flag(frame[c].iloc[r]) for c in LABEL_CODES], dtype=np.float32)
                mismatches += int(not np.array_equal(given, union))
        log.raise_if_any(f"{name}: cannot read {split} split from {root}")
        if not eye_ids:
            raise DatasetError(f"{table_path}: no eye has a diagnostic label; expected keywords such as "
                               "'normal fundus' or 'cataract'")
        target_matrix = np.stack(targets).astype(np.float32)
        split_of = fold_split_names(name, eye_ids, target_matrix, n_folds, fold, seed, split_file, patients, "ID",
                                    source=f"{table_path.resolve()}|annotations={annotations}")
        picked = np.flatnonzero(split_of == split)
        if len(picked) == 0:
            raise DatasetError(f"{name}: the {split} split is empty ({table_path}, fold {fold} of {n_folds})")
        image_dir = find_dir(table_path.parent, IMAGE_DIRS) or find_dir(root, IMAGE_DIRS)
        resolver = PathResolver(image_dir if image_dir is not None else table_path.parent)
        paths = []
        for i in picked:  # one call per eye so that each problem names its eye's column
            paths += collect_missing_files(resolver, [files[i]], str(table_path), file_columns[i], log, [rows[i]])
        log.raise_if_any(f"{name}: cannot read {split} split from {root}")
        extra: dict[str, Any] = {
            "annotations": str(table_path),
            "eyes": len(eye_ids),
            "eyes_without_label": len(dropped),
            "eyes_without_label_ids": dropped,
            "other_keywords": dict(other.most_common()),
            "duplicate_patient_rows": duplicate_rows,
        }
        if has_patient_labels:
            extra["patient_label_mismatches"] = mismatches
        return SampleTable(
            ids=[eye_ids[i] for i in picked],
            targets=target_matrix[picked],
            concepts=empty_concepts(len(picked)),
            paths=paths,  # type: ignore[arg-type]
            groups=[patients[i] for i in picked],
            extra=extra,
        )


    @classmethod
    def verify_notes(cls, table: SampleTable) -> list[str]:
        """Notes for `verify`: notes of the eyes dropped and of patient-label mismatches."""
        extra = table.extra
        notes = [f"{extra['eyes_without_label']} eyes have only image-quality keywords and were dropped; "
                 f"{extra['eyes']} eyes kept"]
        if "patient_label_mismatches" in extra:
            notes.append(f"{extra['patient_label_mismatches']} patients' N..O columns differ from the union of "
                         "their eyes' keyword labels (targets follow the keywords)")
        return notes


def _flag(value: Any) -> float:
    try:
        return float(float(str(value).strip()) > 0)
    except ValueError:
        return float("nan")
