"""HAM10000: 10,015 dermoscopic images of 7 diagnostic categories, split by lesion."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from medimg_core.data.base import FileDataset, SampleTable, empty_concepts
from medimg_core.data.card import DatasetCard
from medimg_core.data.errors import DatasetError, ProblemLog
from medimg_core.data.images import PathResolver
from medimg_core.data.registry import register_dataset
from medimg_core.data.splits import fold_split_names
from medimg_core.data.tables import ROW_OFFSET, find_file, map_values, read_table_file, require_columns

#: the `dx` codes, in the order of the class indices
DX_CODES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
CLASS_NAMES = (
    "actinic keratoses and intraepithelial carcinoma (akiec)",
    "basal cell carcinoma (bcc)",
    "benign keratosis-like lesions (bkl)",
    "dermatofibroma (df)",
    "melanoma (mel)",
    "melanocytic nevi (nv)",
    "vascular lesions (vasc)",
)
METADATA_FILES = ("HAM10000_metadata.csv", "HAM10000_metadata", "HAM10000_metadata.tab",
                  "HAM10000/HAM10000_metadata.csv")
IMAGE_DIRS = ("HAM10000_images_part_1", "HAM10000_images_part_2", "HAM10000_images", "images")


@register_dataset("ham10000")
class HAM10000(FileDataset):
    """HAM10000, 7 classes (akiec, bcc, bkl, df, mel, nv, vasc); no concepts; groups = lesion_id.

    Root layout, as released (Harvard Dataverse, doi:10.7910/DVN/DBW86T): `HAM10000_metadata.csv`
    (columns `lesion_id,image_id,dx,dx_type,age,sex,localization[,dataset]`; the Dataverse's tab-separated
    `HAM10000_metadata.tab` is read too) and the image folders `HAM10000_images_part_1/` and
    `HAM10000_images_part_2/` holding `<image_id>.jpg`. No official split: 5 seeded folds stratified by
    `dx` and grouped by `lesion_id`, so the images of one lesion are never on both sides (test = fold
    `fold`, val = fold `fold + 1`, train = the rest), written to a split file once and reused.

    Options: `n_folds=5, fold=0, seed=0, split_file=None`.
    """

    card: ClassVar[DatasetCard] = DatasetCard(
        name="ham10000",
        title="HAM10000: Human Against Machine with 10,000 training images",
        task="multiclass",
        class_names=CLASS_NAMES,
        concept_names=(),
        channels=3,
        splits=("train", "val", "test"),
        official_splits=False,
        modality="dermoscopy",
        description=(
            "10,015 dermoscopic images of 7,470 pigmented lesions in 7 diagnostic categories, over half "
            "histopathologically confirmed (dx_type). Classes, in index order: akiec, bcc, bkl, df, mel, nv, "
            "vasc. No concept annotations. Splits are seeded folds stratified by dx and grouped by lesion_id; "
            "groups = lesion_id. `table.extra` holds dx_type, age, sex and localization per image."
        ),
        license="CC BY-NC 4.0",
        citation=(
            "Tschandl, Rosendahl, Kittler. The HAM10000 dataset, a large collection of multi-source "
            "dermatoscopic images of common pigmented skin lesions. Scientific Data 5, 180161 (2018)."
        ),
        homepage="https://doi.org/10.7910/DVN/DBW86T",
        download=(
            "From the Harvard Dataverse page download HAM10000_metadata (as the original .csv), "
            "HAM10000_images_part_1.zip and HAM10000_images_part_2.zip; unzip both archives into the root so "
            "that root/HAM10000_images_part_1/ISIC_0024306.jpg exists, next to HAM10000_metadata.csv."
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
    ) -> SampleTable:
        root = Path(root)
        split = cls.normalize_split(split)
        name = cls.card.name
        meta_path = find_file(root, METADATA_FILES, "HAM10000 metadata HAM10000_metadata.csv")
        frame = read_table_file(meta_path, sep=_separator(meta_path))
        log = ProblemLog()
        if not require_columns(frame, ["lesion_id", "image_id", "dx"], meta_path, log):
            log.raise_if_any(f"{name}: cannot read {split} split from {root}")
        if len(frame) == 0:
            raise DatasetError(f"{meta_path}: the {split} split is empty; the metadata table has no rows")
        targets = map_values(frame, "dx", {c: i for i, c in enumerate(DX_CODES)}, meta_path, log)
        image_ids = [str(v).strip() for v in frame["image_id"].tolist()]
        lesions = [str(v).strip() for v in frame["lesion_id"].tolist()]
        for r, (image, lesion) in enumerate(zip(image_ids, lesions, strict=True)):
            if not image:
                log.add(meta_path, "blank image_id", row=r + ROW_OFFSET, column="image_id")
            if not lesion:
                log.add(meta_path, "blank lesion_id; every image needs its lesion", row=r + ROW_OFFSET,
                        column="lesion_id")
        if len(set(image_ids)) != len(image_ids):
            seen: set[str] = set()
            for r, image in enumerate(image_ids):
                if image in seen:
                    log.add(meta_path, f"image_id {image!r} repeats an earlier row", row=r + ROW_OFFSET,
                            column="image_id")
                seen.add(image)
        log.raise_if_any(f"{name}: cannot read {split} split from {root}")

        split_of = fold_split_names(name, image_ids, targets, n_folds, fold, seed, split_file, lesions, "lesion_id",
                                    source=str(meta_path.resolve()))
        rows = np.flatnonzero(split_of == split)
        if len(rows) == 0:
            raise DatasetError(f"{name}: the {split} split is empty ({meta_path}, fold {fold} of {n_folds})")
        resolver = PathResolver(meta_path.parent)
        paths = []
        for r in rows:
            path = _resolve_image(resolver, image_ids[r])
            if path is None:
                log.add(meta_path, f"image '{image_ids[r]}.jpg' not found under {resolver.root} "
                        f"(looked in {', '.join(IMAGE_DIRS)} and the root)", row=int(r) + ROW_OFFSET,
                        column="image_id")
            paths.append(path)
        log.raise_if_any(f"{name}: cannot read {split} split from {root}")
        ids = [image_ids[r] for r in rows]
        extra: dict[str, Any] = {}
        for column in ("dx_type", "age", "sex", "localization"):
            if column in frame.columns:
                extra[column] = dict(zip(ids, (str(frame[column].iloc[r]) for r in rows), strict=True))
        return SampleTable(
            ids=ids,
            targets=targets[rows],
            concepts=empty_concepts(len(rows)),
            paths=paths,
            groups=[lesions[r] for r in rows],
            extra=extra,
        )


def _resolve_image(resolver: PathResolver, image_id: str) -> Path | None:
    """`<image_id>.jpg` in one of the official folders, else anywhere under the root."""
    for folder in IMAGE_DIRS:
        if (resolver.root / folder / f"{image_id}.jpg").is_file():
            found = resolver.resolve(f"{folder}/{image_id}.jpg")  # refuses a file link that leaves the root
            if found is not None:
                return found
    return resolver.resolve(f"{image_id}.jpg")


def _separator(path: Path) -> str:
    """Tab for the Dataverse's tab-separated export, comma otherwise (sniffed from the header line)."""
    try:
        with path.open("r", encoding="utf-8", errors="replace") as handle:
            header = handle.readline()
    except OSError:
        return ","
    return "\t" if "\t" in header and "," not in header else ","
