"""ODIR-5K / OIA-ODIR: colour fundus photographs of both eyes of 5,000 patients, 8 multi-label classes per eye.

Two split protocols (option `protocol`), described on the `ODIR` class:

- `"official"` (the default; the CIPL paper's, as its released code runs it): the OIA-ODIR release
  (github.com/nkicsl/OIA-ODIR), whose three parts each come with annotations. train/val = the Training Set,
  test = the On-site Test Set, `offsite` = the Off-site Test Set.
- `"medimg-folds"` (ours): seeded patient-grouped folds of the training sheet only.

Two keyword maps (option `keywords`): `"released"` (the default; the released CIPL code's lists, verbatim)
and `"medimg-substring"` (ours). An optional crop of the fundus disc (`crop_fundus`, option `crop`).
"""

from __future__ import annotations

import importlib.util
import re
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
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
from medimg_core.data.errors import DatasetError, DatasetOptionError, ProblemLog
from medimg_core.data.images import PathResolver, walk
from medimg_core.data.registry import register_dataset
from medimg_core.data.splits import fold_split_names, holdout_mask
from medimg_core.data.tables import ROW_OFFSET, read_table_file, require_columns

LABEL_CODES = ("N", "D", "G", "C", "A", "H", "M", "O")
CLASS_NAMES = ("Normal", "Diabetes", "Glaucoma", "Cataract", "AMD", "Hypertension", "Myopia", "Other")
EYES = ("Left", "Right")
OFFICIAL_ANNOTATIONS = "ODIR-5K_Training_Annotations(Updated)_V2.xlsx"
IMAGE_DIRS = ("ODIR-5K_Training_Dataset", "ODIR-5K_Training_Images", "Training Images", "Training_Images",
              "training_images")

PROTOCOLS = ("official", "medimg-folds")
KEYWORD_MAPS = ("released", "medimg-substring")

#: OIA-ODIR's three parts: split -> (folder names, the English sheet as the released CIPL code names it)
OIA_PARTS: dict[str, tuple[tuple[str, ...], str]] = {
    "train": (("Training Set", "Training_Set"), "training annotation (English).xlsx"),
    "test": (("On-site Test Set", "On-site_Test_Set"), "on-site test annotation (English).xlsx"),
    "offsite": (("Off-site Test Set", "Off-site_Test_Set"), "off-site test annotation (English).xlsx"),
}
#: each part's annotation folder (the released code reads `<part>/Annotation/<sheet>`)
OIA_ANNOTATION_DIR = "Annotation"
#: each part's image folder in the release (the released code reads `Images_crop`, made by an unreleased step)
OIA_IMAGE_DIR = "Images"

#: the released CIPL code's keyword lists (`data/ODIRDataset.py`, `deterministic`), class index into N..O
RELEASED_KEYWORDS: dict[int, tuple[str, ...]] = {
    1: ("suspected diabetic retinopathy", "suspected moderate nonproliferative retinopathy",
        "suspicious diabetic retinopathy", "suspected moderate non proliferative retinopathy",
        "mild nonproliferative retinopathy", "mild non proliferative retinopathy",
        "moderate nonproliferative retinopathy", "moderate non proliferative retinopathy",
        "severe nonproliferative retinopathy", "severe non proliferative retinopathy",
        "proliferative diabetic retinopathy", "severe proliferative diabetic retinopathy", "diabetic retinopathy"),
    2: ("glaucoma", "suspected glaucoma"),
    3: ("cataract", "suspected cataract"),
    4: ("age-related macular degeneration", "dry age-related macular degeneration",
        "wet age-related macular degeneration"),
    5: ("mild hypertension", "sever hypertension", "hypertensive retinopathy"),
    6: ("suspected pathological myopia", "myopia retinopathy", "pathological myopia", "myopic retinopathy",
        "myopic maculopathy"),
}
RELEASED_NORMAL = "normal fundus"
#: the released code's keywords about the photograph: they neither add nor remove a label
RELEASED_QUALITY = frozenset({"lens dust", "optic disk photographically invisible", "low image quality",
                              "no fundus image", "image offset", "anterior segment image"})
#: the released code splits a cell at the sheet's full-width comma only
RELEASED_SEPARATOR = "，"
_RELEASED_LOOKUP = {kw: label for label, kws in RELEASED_KEYWORDS.items() for kw in kws}

#: medimg-substring: quality keywords, compared after lower-casing and collapsing spaces
QUALITY_KEYWORDS = RELEASED_QUALITY | {"optic disc photographically invisible"}
KEYWORD_SEPARATORS = re.compile(r"[，,]")

#: `crop_fundus` defaults: a pixel is fundus when its brightest channel exceeds CROP_THRESHOLD (0..255), and a
#: row (column) is inside the disc when at least CROP_MIN_FRACTION of its pixels are fundus
CROP_THRESHOLD = 15
CROP_MIN_FRACTION = 0.02


def _check_keyword_map(keywords: str) -> None:
    if keywords not in KEYWORD_MAPS:
        raise DatasetOptionError(f"odir: unknown keywords {keywords!r}; expected one of {list(KEYWORD_MAPS)}")


def keyword_label(keyword: str, keywords: str = "released") -> int | None:
    """The class index (into N, D, G, C, A, H, M, O) of one diagnostic keyword; None for quality keywords.

    `keywords="released"` (the default, the paper's): the released CIPL code's lists (`RELEASED_KEYWORDS`),
    matched verbatim (case, spaces and spelling as in the sheet, e.g. "sever hypertension"):
    13 DR grades -> D, "(suspected) glaucoma" -> G, "(suspected) cataract" -> C, 3 AMD forms -> A,
    "mild hypertension", "sever hypertension", "hypertensive retinopathy" -> H, 5 myopia forms -> M,
    "normal fundus" -> N, the 6 `RELEASED_QUALITY` keywords -> None, any other keyword -> O.

    `keywords="medimg-substring"` (ours, the loader's map before the released lists were read): lower-cased,
    spaces collapsed, then by substring: "normal fundus" -> N; "hypertensive" -> H; "diabetic retinopathy"
    or "proliferative retinopathy" -> D; "glaucoma" -> G; "cataract" -> C; "macular degeneration" -> A;
    "myopi" -> M; quality keywords (also "optic disc ...") -> None; anything else -> O. It differs from the
    released map in that "mild hypertension" and "sever hypertension" fall to O, and any keyword outside the
    released lists that contains one of those substrings (e.g. "glaucoma suspect", "myopic fundus") gets
    the disease instead of O.
    """
    _check_keyword_map(keywords)
    if keywords == "released":
        if keyword == "" or keyword in RELEASED_QUALITY:
            return None
        if keyword in _RELEASED_LOOKUP:
            return _RELEASED_LOOKUP[keyword]
        return 0 if keyword == RELEASED_NORMAL else 7
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


def split_keywords(cell: Any, keywords: str = "released") -> list[str]:
    """One eye's keyword cell as keywords: at the full-width comma only, verbatim ("released", as the released
    code splits); at either comma, stripped ("medimg-substring"). A blank cell has none."""
    _check_keyword_map(keywords)
    text = str(cell)
    if not text.strip():
        return []
    if keywords == "released":
        return text.split(RELEASED_SEPARATOR)
    return [k.strip() for k in KEYWORD_SEPARATORS.split(text)]


def eye_labels(cell: Any, keywords: str = "released") -> tuple[np.ndarray, list[str]]:
    """Multi-hot (8,) of one eye's keyword cell, with N cleared when a disease is present; and the O keywords."""
    out = np.zeros(len(LABEL_CODES), dtype=np.float32)
    other: list[str] = []
    for keyword in split_keywords(cell, keywords):
        label = keyword_label(keyword, keywords)
        if label is None:
            continue
        out[label] = 1
        if label == 7:
            other.append(" ".join(keyword.strip().lower().split()))
    if out[1:].any():
        out[0] = 0
    return out, other


def fundus_box(image: np.ndarray, threshold: int = CROP_THRESHOLD,
               min_fraction: float = CROP_MIN_FRACTION) -> tuple[int, int, int, int] | None:
    """The fundus disc's bounding box `(top, bottom, left, right)` (bottom and right exclusive), or None.

    A pixel is fundus when its brightest channel is above `threshold` (0..255): the border of a fundus
    photograph is black, with JPEG noise of a few grey levels. A row is inside the box when at least
    `min_fraction` of its pixels (`ceil(min_fraction * width)`, at least 1) are fundus, a column likewise
    with the height, so that a few bright pixels in the border (text, noise) do not widen the box. None
    when no row or no column qualifies (an image that is black all over).
    """
    arr = np.asarray(image)
    if arr.ndim not in (2, 3):
        raise ValueError(f"fundus_box: expected an (H, W) or (H, W, C) image, got shape {arr.shape}")
    bright = (arr.max(axis=2) if arr.ndim == 3 else arr) > threshold
    height, width = bright.shape
    rows = np.flatnonzero(bright.sum(axis=1) >= max(1, int(np.ceil(min_fraction * width))))
    cols = np.flatnonzero(bright.sum(axis=0) >= max(1, int(np.ceil(min_fraction * height))))
    if len(rows) == 0 or len(cols) == 0:
        return None
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def crop_fundus(image: np.ndarray, threshold: int = CROP_THRESHOLD,
                min_fraction: float = CROP_MIN_FRACTION) -> np.ndarray:
    """The image cropped to its fundus disc's bounding box (`fundus_box`); unchanged when no disc is found.

    The released CIPL code reads pre-cropped images (`Images_crop`) made by a step it does not release; this is
    our crop, not theirs. A disc cut off at the top and bottom of the photograph stays wider than tall.
    """
    box = fundus_box(image, threshold, min_fraction)
    if box is None:
        return image
    top, bottom, left, right = box
    return np.ascontiguousarray(image[top:bottom, left:right])


def find_annotations(root: Path) -> Path:
    """The ODIR-2019 challenge annotation sheet (.xlsx when openpyxl is installed) or the same table as CSV.

    With the OIA-ODIR layout under `root`, its Training Set's English sheet.
    """
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset root is not a directory")
    oia = find_oia_annotations(root, "train")
    if oia is not None:
        return oia
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
    path = _prefer_xlsx(found)
    if path is not None:
        return path
    raise DatasetError(
        f"{root}: ODIR-5K annotations not found; expected {OFFICIAL_ANNOTATIONS} (needs openpyxl) or the same "
        "sheet saved as CSV with 'Annotations' in its name, or the OIA-ODIR layout "
        f"('Training Set/{OIA_ANNOTATION_DIR}/{OIA_PARTS['train'][1]}')"
    )


def _prefer_xlsx(found: list[Path]) -> Path | None:
    """The first .xlsx when openpyxl can read it (or no CSV exists), else the first .csv."""
    xlsx = [p for p in found if p.suffix.lower() == ".xlsx"]
    csv = [p for p in found if p.suffix.lower() == ".csv"]
    if xlsx and (importlib.util.find_spec("openpyxl") is not None or not csv):
        return xlsx[0]
    return csv[0] if csv else None


def find_oia_part(root: Path, split: str) -> Path | None:
    """The folder of one OIA-ODIR part ("train", "test" = on-site, "offsite") under `root`, or None."""
    return find_dir(Path(root), OIA_PARTS[split][0])


def find_oia_annotations(root: Path, split: str) -> Path | None:
    """One OIA-ODIR part's English sheet: `<part>/Annotation/*English*.xlsx` (or the sheet saved as .csv).

    The release also ships Chinese sheets, whose keywords the English lists cannot map: a part with
    only a Chinese sheet is an error, not a silent fall to "Other".
    """
    part = find_oia_part(root, split)
    if part is None:
        return None
    folder = find_dir(part, (OIA_ANNOTATION_DIR,), max_depth=1) or part
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in (".xlsx", ".csv")
                   and not p.name.startswith("~$"))
    english = sorted((p for p in files if "english" in p.name.lower()),
                     key=lambda p: (p.stem.lower() != Path(OIA_PARTS[split][1]).stem.lower(), p.name))
    path = _prefer_xlsx(english)
    if path is not None:
        return path
    names = [p.name for p in files]
    raise DatasetError(f"{folder}: no English annotation sheet (expected {OIA_PARTS[split][1]!r}, or a .csv of it); "
                       f"found {names or 'no .xlsx/.csv'}")


def read_annotations(path: Path) -> pd.DataFrame:
    """The annotation table as strings, from .xlsx or .csv."""
    if path.suffix.lower() == ".xlsx":
        return read_excel_file(path)
    return read_table_file(path)


@dataclass
class _Eyes:
    """The labelled eyes of one annotation sheet."""

    path: Path
    ids: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)
    patients: list[str] = field(default_factory=list)
    targets: list[np.ndarray] = field(default_factory=list)
    other: Counter = field(default_factory=Counter)
    dropped: list[str] = field(default_factory=list)
    mismatches: int = 0
    duplicate_rows: int = 0
    has_patient_labels: bool = False
    all_patients: set[str] = field(default_factory=set)


def _read_eyes(table_path: Path, keywords: str, log: ProblemLog, split: str) -> _Eyes:
    """Parse one sheet into labelled eyes; problems go to `log`, raised by the caller."""
    frame = read_annotations(table_path)
    fundus = {eye: f"{eye}-Fundus" for eye in EYES}
    cells = {eye: f"{eye}-Diagnostic Keywords" for eye in EYES}
    out = _Eyes(table_path)
    if not require_columns(frame, ["ID", *fundus.values(), *cells.values()], table_path, log):
        return out
    if len(frame) == 0:
        raise DatasetError(f"{table_path}: the {split} split is empty; the annotation table has no rows")
    seen_files: set[str] = set()
    out.has_patient_labels = all(c in frame.columns for c in LABEL_CODES)
    for r in range(len(frame)):
        patient = str(frame["ID"].iloc[r]).strip().removesuffix(".0")
        if not patient:
            log.add(table_path, "blank ID; expected the patient number", row=r + ROW_OFFSET, column="ID")
            continue
        if patient in out.all_patients:  # derivatives such as full_df.csv repeat each patient per eye
            out.duplicate_rows += 1
            continue
        out.all_patients.add(patient)
        labelled = []
        for eye in EYES:
            file = str(frame[fundus[eye]].iloc[r]).strip()
            if not file:
                log.add(table_path, f"blank {fundus[eye]}; expected the image file name", row=r + ROW_OFFSET,
                        column=fundus[eye])
                continue
            labels, others = eye_labels(frame[cells[eye]].iloc[r], keywords)
            if not labels.any():
                out.dropped.append(Path(file).stem)
                continue
            if file.lower() in seen_files:
                log.add(table_path, f"image {file!r} is named twice", row=r + ROW_OFFSET, column=fundus[eye])
                continue
            seen_files.add(file.lower())
            out.other.update(others)
            labelled.append(labels)
            out.ids.append(Path(file).stem)
            out.files.append(file)
            out.columns.append(fundus[eye])
            out.rows.append(r)
            out.patients.append(patient)
            out.targets.append(labels)
        if out.has_patient_labels and labelled:
            union = np.max(labelled, axis=0)
            union[0] = float(all(lab[0] == 1 for lab in labelled))
            given = np.array([_flag(frame[c].iloc[r]) for c in LABEL_CODES], dtype=np.float32)
            out.mismatches += int(not np.array_equal(given, union))
    return out


@register_dataset("odir")
class ODIR(FileDataset):
    """ODIR-5K / OIA-ODIR, one sample per eye, multi-label over N, D, G, C, A, H, M, O; groups = patient ID.

    **protocol="official"** (the default, the CIPL paper's): the OIA-ODIR release (github.com/nkicsl/OIA-ODIR),
    laid out as the released CIPL code reads it (`utlis/utlis_func.py`), `root` holding (at any depth up to 3)::

        Training Set/Annotation/training annotation (English).xlsx      3,500 patients
        Training Set/Images/<ID>_left.jpg, <ID>_right.jpg
        On-site Test Set/Annotation/on-site test annotation (English).xlsx   1,000 patients
        On-site Test Set/Images/...
        Off-site Test Set/Annotation/off-site test annotation (English).xlsx   500 patients
        Off-site Test Set/Images/...

    Each sheet has the columns `ID, Patient Age, Patient Sex, Left-Fundus, Right-Fundus, Left-Diagnostic
    Keywords, Right-Diagnostic Keywords, N, D, G, C, A, H, M, O`. Any `*English*.xlsx` (or a .csv of the same
    sheet) in a part's `Annotation/` is accepted; the Chinese sheets are not read. Splits: `test` = the on-site
    set (the paper's test set; the released code counts 1,972 labelled eyes), `offsite` (alias `off-site`) =
    the off-site set (991 eyes by the same count), `train` and `val` = the Training Set, with a seeded
    patient-grouped holdout of about `val_fraction` of the eyes as `val` (both eyes of a patient on one side;
    written to a split file once and reused). The released code selects its model on the on-site test set
    itself; carving validation from training is our change, so that nothing is selected on test.
    Where the sources stop: the sheet names, folders and columns above come from the released CIPL code and
    from other public code that reads the release; the `Images/` folder name from that other code only (the
    release's own README does not list its files), hence the option `images=`. The per-part patient counts come
    from public descriptions of the release (its README gives only the 5,000 total); the eye counts are comments
    in the released code. Neither is checked here: the data are not on this machine.

    **protocol="medimg-folds"** (ours): 5 seeded folds over the eyes of the training sheet, grouped by patient
    and stratified by the rarest label (test = fold `fold`, val = fold `fold + 1`, train = the rest). It reads
    the OIA-ODIR Training Set or the ODIR-2019 challenge release (`ODIR-5K_Training_Annotations(Updated)_V2.xlsx`
    next to `ODIR-5K_Training_Dataset/`, which has no test labels; `annotations=` names another sheet, such as
    Kaggle's `full_df.csv`). Its numbers cannot be compared with the paper's ODIR table. No `offsite` split.

    **Labels per eye.** The N..O columns describe the patient, so each eye's labels come from its own
    diagnostic keywords (`keyword_label`): `keywords="released"` (default, the paper's lists verbatim,
    hypertension included) or `"medimg-substring"` (ours; how it differs is in `keyword_label`). Quality
    keywords are skipped, N is cleared when a disease is present, and eyes left without any label are dropped
    (as the released code does) and counted in `table.extra["eyes_without_label"]`. Keywords that fall to O
    are counted in `table.extra["other_keywords"]`; patients whose N..O row differs from the union of their
    eyes' labels are counted in `table.extra["patient_label_mismatches"]`.

    **Crop** (`crop=True`, the default): each image is cropped to its fundus disc's bounding box when loaded
    (`crop_fundus`: brightest channel > `CROP_THRESHOLD` = 15 of 255, rows and columns with at least 2 % such
    pixels). On by default because the paper's code trains and tests on cropped fundus images (`Images_crop`,
    cropping step unreleased), and because resizing an uncropped, wide photograph to a square squashes the
    disc; our crop is not theirs. It applies to this dataset's samples only: a file given to an `explain`
    command is not cropped, so crop it first with `crop_fundus`. With images already cropped, pass
    `images="Images_crop", crop=False`.

    Options: `protocol="official", keywords="released", crop=True, images="Images", val_fraction=0.1,
    seed=0, split_file=None` (official); `n_folds=5, fold=0, seed=0, split_file=None, annotations=None`
    (medimg-folds).
    """

    card: ClassVar[DatasetCard] = DatasetCard(
        name="odir",
        title="ODIR-5K / OIA-ODIR: Ocular Disease Intelligent Recognition (per eye)",
        task="multilabel",
        class_names=CLASS_NAMES,
        concept_names=(),
        channels=3,
        splits=("train", "val", "test", "offsite"),
        official_splits=True,
        modality="colour fundus photography",
        description=(
            "Left and right colour fundus photographs of 5,000 patients (OIA-ODIR: 3,500 training, 1,000 on-site "
            "and 500 off-site test patients) from several Chinese hospitals, with diagnostic keywords per eye and 8 "
            "labels per patient: Normal, Diabetes (diabetic retinopathy), Glaucoma, Cataract, AMD, Hypertension "
            "(hypertensive retinopathy), Myopia (pathological) and Other. Targets are per eye, multi-hot over the "
            "8 labels, derived from each eye's keywords. No concepts."
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
        homepage="https://github.com/nkicsl/OIA-ODIR",
        download=(
            "Download OIA-ODIR from the links in github.com/nkicsl/OIA-ODIR (Baidu or Google Drive) and unpack it so "
            "that 'Training Set', 'On-site Test Set' and 'Off-site Test Set' lie under the root, each with "
            "Annotation/ and Images/. Without openpyxl, save each English sheet as CSV next to it. The ODIR-2019 "
            "challenge release (ODIR-5K_Training_Annotations(Updated)_V2.xlsx + ODIR-5K_Training_Dataset/) has no "
            "test labels: read it with protocol=medimg-folds."
        ),
    )
    split_aliases: ClassVar[dict[str, str]] = {**FileDataset.split_aliases, "off-site": "offsite",
                                               "on-site": "test", "onsite": "test"}

    @classmethod
    def card_for(cls, root: str | Path, **options: Any) -> DatasetCard:
        """The card of the protocol: medimg-folds has no `offsite` split and its splits are seeded folds."""
        if options.get("protocol", "official") == "medimg-folds":
            return cls.card.with_updates(splits=("train", "val", "test"), official_splits=False)
        return cls.card

    @classmethod
    def read_table(
        cls,
        root: str | Path,
        split: str,
        protocol: str = "official",
        keywords: str = "released",
        crop: bool = True,
        images: str = OIA_IMAGE_DIR,
        val_fraction: float = 0.1,
        n_folds: int = 5,
        fold: int = 0,
        seed: int = 0,
        split_file: str | Path | None = None,
        annotations: str | Path | None = None,
    ) -> SampleTable:
        root = Path(root)
        split = cls.normalize_split(split)
        name = cls.card.name
        if protocol not in PROTOCOLS:
            raise DatasetOptionError(f"{name}: unknown protocol {protocol!r}; expected one of {list(PROTOCOLS)}")
        _check_keyword_map(keywords)
        if not isinstance(crop, bool):
            raise DatasetOptionError(f"{name}: crop must be true or false, got {crop!r}")
        if not root.is_dir():
            raise DatasetError(f"{root}: dataset root is not a directory")
        log = ProblemLog()
        if protocol == "medimg-folds":
            if split == "offsite":
                raise DatasetError(f"{name}: the offsite split exists under protocol 'official' only (the OIA-ODIR "
                                   "Off-site Test Set); protocol 'medimg-folds' has train, val and test")
            table_path = cls._folds_sheet(root, annotations)
            eyes = _read_eyes(table_path, keywords, log, split)
            log.raise_if_any(f"{name}: cannot read {split} split from {root}")
            targets = cls._targets(eyes)
            split_of = fold_split_names(name, eyes.ids, targets, n_folds, fold, seed, split_file, eyes.patients, "ID",
                                        source=f"{table_path.resolve()}|annotations={annotations}|keywords={keywords}")
            picked = np.flatnonzero(split_of == split)
            if len(picked) == 0:
                raise DatasetError(f"{name}: the {split} split is empty ({table_path}, fold {fold} of {n_folds})")
            image_dir = find_dir(table_path.parent, IMAGE_DIRS) or find_dir(root, IMAGE_DIRS)
            if image_dir is None and find_oia_part(root, "train") is not None:
                image_dir = find_oia_part(root, "train") / images
            resolver = PathResolver(image_dir if image_dir is not None else table_path.parent)
        else:
            if annotations is not None:
                raise DatasetOptionError(f"{name}: annotations= is an option of protocol 'medimg-folds'; protocol "
                                         "'official' reads the three OIA-ODIR sheets")
            part = "train" if split in ("train", "val") else split
            table_path = find_oia_annotations(root, part)
            if table_path is None:
                folders = " / ".join(OIA_PARTS[part][0])
                hint = (" This looks like the ODIR-2019 challenge release, which has no test labels: use "
                        "protocol='medimg-folds'." if any(root.glob("*Annotations*")) else "")
                raise DatasetError(f"{root}: OIA-ODIR folder '{folders}' not found; the paper's protocol needs the "
                                   f"OIA-ODIR release (github.com/nkicsl/OIA-ODIR).{hint}")
            eyes = _read_eyes(table_path, keywords, log, split)
            log.raise_if_any(f"{name}: cannot read {split} split from {root}")
            targets = cls._targets(eyes)
            if part == "train":
                in_val = holdout_mask(eyes.ids, targets, val_fraction, seed, eyes.patients, split_file, f"{name}-val",
                                      grouped_by="ID", source=f"{table_path.resolve()}|keywords={keywords}")
                picked = np.flatnonzero(in_val if split == "val" else ~in_val)
            else:
                picked = np.arange(len(eyes.ids))
            if len(picked) == 0:
                raise DatasetError(f"{name}: the {split} split is empty ({table_path}, val_fraction {val_fraction})")
            image_dir = table_path.parent.parent / images
            if not image_dir.is_dir():
                raise DatasetError(f"{image_dir}: image folder not found; expected the {OIA_PARTS[part][0][0]}'s "
                                   f"images in '{images}/' next to '{table_path.parent.name}/' (option images=)")
            resolver = PathResolver(image_dir)
        paths = []
        for i in picked:  # one call per eye so that each problem names its eye's column
            paths += collect_missing_files(resolver, [eyes.files[i]], str(table_path), eyes.columns[i], log,
                                           [eyes.rows[i]])
        log.raise_if_any(f"{name}: cannot read {split} split from {root}")
        extra: dict[str, Any] = {
            "annotations": str(table_path),
            "protocol": protocol,
            "keywords": keywords,
            "eyes": len(eyes.ids),
            "eyes_without_label": len(eyes.dropped),
            "eyes_without_label_ids": eyes.dropped,
            "other_keywords": dict(eyes.other.most_common()),
            "duplicate_patient_rows": eyes.duplicate_rows,
            "crop": crop,
        }
        if crop:
            extra["image_op"] = partial(crop_fundus, threshold=CROP_THRESHOLD, min_fraction=CROP_MIN_FRACTION)
        if eyes.has_patient_labels:
            extra["patient_label_mismatches"] = eyes.mismatches
        if protocol == "official" and split in ("test", "offsite"):
            train_sheet = find_oia_annotations(root, "train")
            if train_sheet is not None:
                shared = _read_eyes(train_sheet, keywords, ProblemLog(), "train").all_patients & eyes.all_patients
                extra["patients_also_in_training"] = sorted(shared)
        return SampleTable(
            ids=[eyes.ids[i] for i in picked],
            targets=targets[picked],
            concepts=empty_concepts(len(picked)),
            paths=paths,  # type: ignore[arg-type]
            groups=[eyes.patients[i] for i in picked],
            extra=extra,
        )

    @staticmethod
    def _targets(eyes: _Eyes) -> np.ndarray:
        if not eyes.ids:
            raise DatasetError(f"{eyes.path}: no eye has a diagnostic label; expected keywords such as "
                               "'normal fundus' or 'cataract'")
        return np.stack(eyes.targets).astype(np.float32)

    @staticmethod
    def _folds_sheet(root: Path, annotations: str | Path | None) -> Path:
        if annotations is None:
            return find_annotations(root)
        path = Path(annotations) if Path(annotations).is_absolute() else root / annotations
        if not path.is_file():
            raise DatasetError(f"{path}: annotation file not found")
        return path

    @classmethod
    def verify_notes(cls, table: SampleTable) -> list[str]:
        """Notes for `verify`: the protocol, the eyes dropped and patient-label mismatches."""
        extra = table.extra
        notes = [f"protocol {extra['protocol']}, keyword map {extra['keywords']}, fundus crop "
                 f"{'on' if extra['crop'] else 'off'}",
                 f"{extra['eyes_without_label']} eyes have only image-quality keywords and were dropped; "
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
