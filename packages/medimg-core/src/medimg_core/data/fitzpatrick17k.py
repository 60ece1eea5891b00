"""Fitzpatrick17k images with SkinCon concepts: benign vs malignant neoplasms, 48 concepts."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from medimg_core.data.base import FileDataset, SampleTable
from medimg_core.data.card import DatasetCard
from medimg_core.data.errors import DatasetError, ProblemLog
from medimg_core.data.images import PathResolver
from medimg_core.data.registry import register_dataset
from medimg_core.data.skincon import (
    SKINCON_CITATION,
    SKINCON_CONCEPTS,
    SKINCON_HOMEPAGE,
    SKINCON_LICENSE,
    read_skincon,
)
from medimg_core.data.splits import fold_split_names
from medimg_core.data.tables import ROW_OFFSET, find_file, read_table_file, require_columns

FITZPATRICK_CSVS = ("fitzpatrick17k.csv", "fitzpatrick17k/fitzpatrick17k.csv")
SKINCON_FITZPATRICK_CSVS = (
    "annotations_fitzpatrick_final_v2.csv",
    "annotations_fitzpatrick_final.csv",
    "annotations_fitzpatrick.csv",
    "skincon/annotations_fitzpatrick_final_v2.csv",
)
THREE_PARTITION = {"benign": 0, "malignant": 1, "non-neoplastic": -1}
CLASSES = ("benign", "malignant")


@register_dataset("fitzpatrick17k-skincon")
class Fitzpatrick17kSkinCon(FileDataset):
    """Fitzpatrick17k clinical images annotated with SkinCon's 48 concepts; benign (0) vs malignant (1).

    Root layout, as released: `fitzpatrick17k.csv` (from the Fitzpatrick17k repository), SkinCon's
    `annotations_fitzpatrick_final_v2.csv`, and the images `<md5hash>.jpg` in `images/`, `raw_data/` or
    the root itself (found by file name). Rows are SkinCon's annotated images (inner join on
    `ImageID` = `<md5hash>.jpg`), less those flagged `Do not consider this image` and the non-neoplastic
    ones (`three_partition_label`). No official split: 5 seeded folds stratified by the target, computed
    over all eligible rows and written to a split file, so the split does not depend on which images were
    downloaded; test = fold `fold`. The validation split (`val_from`, see `fold_split_names`):

    - `"train-folds"`: train + val = the other 4 folds (80 % of the data), val a seeded stratified
      `val_fraction` (default 0.1) of them, recorded in a second split file next to the first. CRL's official
      code trains on the 4 other folds (and has no validation split); this keeps its 80 % budget. CRL's
      `skin` config uses it.
    - `"next-fold"` (the loader's default, ours): val = fold `fold + 1`, train = the remaining 3 folds
      (60 %).

    The official code deals the images to folds round-robin, so no fold here equals an official one.
    Images absent on disk (Fitzpatrick17k images come from URLs, many fail) are then dropped and counted
    in `table.extra["missing_images"]` and in `verify`'s notes.

    Options: `n_folds=5, fold=0, seed=0, split_file=None, val_from="next-fold", val_fraction=0.1`.
    """

    card: ClassVar[DatasetCard] = DatasetCard(
        name="fitzpatrick17k-skincon",
        title="Fitzpatrick17k with SkinCon concepts (benign vs malignant)",
        task="binary",
        class_names=CLASSES,
        concept_names=SKINCON_CONCEPTS,
        concept_groups={},
        channels=3,
        splits=("train", "val", "test"),
        official_splits=False,
        modality="clinical photography (dermatology atlases)",
        description=(
            "16,577 clinical images of 114 skin conditions from two online atlases with Fitzpatrick skin "
            "types (Fitzpatrick17k); SkinCon annotated 3,230 of them with 48 clinical concepts (primary and "
            "secondary lesions, colours, shapes). This loader keeps the SkinCon images whose "
            "three_partition_label is benign or malignant (non-neoplastic dropped) and that are not flagged "
            "'Do not consider this image'. Target: malignant (1) vs benign (0). Concepts: the 48 SkinCon "
            "columns, 0/1. `table.extra` holds the per-image Fitzpatrick type and condition label and the "
            "counts of rows dropped at each step."
        ),
        license=(
            "Fitzpatrick17k: CC BY-NC-SA 3.0 (images remain under their atlases' terms); " + SKINCON_LICENSE
        ),
        citation=(
            "Groh, Harris, Soenksen, Lau, Han, Kim, Koochek, Badri. Evaluating deep neural networks trained on "
            "clinical images in dermatology with the Fitzpatrick 17k dataset. CVPR Workshops 2021. "
            + SKINCON_CITATION
        ),
        homepage="https://github.com/mattgroh/fitzpatrick17k ; " + SKINCON_HOMEPAGE,
        download=(
            "fitzpatrick17k.csv from github.com/mattgroh/fitzpatrick17k; the images from the CSV's `url` column "
            "(saved as <md5hash>.jpg, e.g. with the repository's download script) or through the authors' "
            "request form; annotations_fitzpatrick_final_v2.csv from the SkinCon site. Put the two CSVs in the "
            "root and the images in root/images/ (or raw_data/, or the root)."
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
        val_from: str = "next-fold",
        val_fraction: float = 0.1,
    ) -> SampleTable:
        root = Path(root)
        split = cls.normalize_split(split)
        name = cls.card.name
        fitz_path = find_file(root, FITZPATRICK_CSVS, "Fitzpatrick17k table fitzpatrick17k.csv")
        skincon_path = find_file(root, SKINCON_FITZPATRICK_CSVS, "SkinCon annotations for Fitzpatrick17k")
        log = ProblemLog()
        fitz = read_table_file(fitz_path)
        fitz_ok = require_columns(fitz, ["md5hash", "label", "three_partition_label", "fitzpatrick_scale"],
                                  fitz_path, log)
        skincon = read_skincon(skincon_path, log)
        if not fitz_ok or skincon is None:
            log.raise_if_any(f"{name}: cannot read {split} split from {root}")
        assert skincon is not None
        partition = np.full(len(fitz), -2, dtype=np.int64)
        for r, raw in enumerate(fitz["three_partition_label"].tolist()):
            key = str(raw).strip().lower()
            if key in THREE_PARTITION:
                partition[r] = THREE_PARTITION[key]
            else:
                log.add(fitz_path, f"unknown value {raw!r}; expected one of {sorted(THREE_PARTITION)}",
                        row=r + ROW_OFFSET, column="three_partition_label")
        log.raise_if_any(f"{name}: cannot read {split} split from {root}")

        fitz_row = {}
        for r, md5 in enumerate(fitz["md5hash"].tolist()):
            fitz_row.setdefault(str(md5).strip().lower(), r)
        seen: set[str] = set()
        keep_sk, keep_fz = [], []
        counts = {"skincon_rows": len(skincon.image_ids), "not_in_fitzpatrick_csv": 0, "duplicate_rows": 0,
                  "do_not_consider": 0, "non_neoplastic": 0}
        for i, image_id in enumerate(skincon.image_ids):
            stem = image_id.lower().removesuffix(".jpg").removesuffix(".jpeg").removesuffix(".png")
            if stem in seen:
                counts["duplicate_rows"] += 1
                continue
            seen.add(stem)
            r = fitz_row.get(stem)
            if r is None:
                counts["not_in_fitzpatrick_csv"] += 1
            elif skincon.do_not_consider[i]:
                counts["do_not_consider"] += 1
            elif partition[r] < 0:
                counts["non_neoplastic"] += 1
            else:
                keep_sk.append(i)
                keep_fz.append(r)
        if not keep_sk:
            raise DatasetError(
                f"{name}: no benign or malignant image of {skincon_path.name} is in {fitz_path.name} "
                f"(counts: {counts}); expected SkinCon ImageIDs '<md5hash>.jpg' of Fitzpatrick17k rows"
            )
        md5 = [str(fitz["md5hash"].iloc[r]).strip() for r in keep_fz]
        targets = partition[keep_fz]
        split_of = fold_split_names(name, md5, targets, n_folds, fold, seed, split_file,
                                    source=str(fitz_path.resolve()), val_from=val_from, val_fraction=val_fraction)

        resolver = PathResolver(fitz_path.parent)
        paths = [resolver.resolve(f"{m}.jpg") for m in md5]
        present = np.array([p is not None for p in paths])
        in_split = split_of == split
        rows = np.flatnonzero(in_split & present)
        counts["eligible"] = len(md5)
        counts["missing_images"] = int((~present).sum())
        counts["missing_images_in_split"] = int((in_split & ~present).sum())
        if len(rows) == 0:
            raise DatasetError(
                f"{name}: the {split} split is empty ({int(in_split.sum())} rows of {skincon_path} are "
                f"assigned to it, {counts['missing_images_in_split']} of them without an image under "
                f"{fitz_path.parent}); expected the images as <md5hash>.jpg"
            )
        ids = [md5[i] for i in rows]
        fz = [keep_fz[i] for i in rows]
        extra: dict[str, Any] = dict(counts)
        extra["fitzpatrick_scale"] = dict(zip(ids, (_int_or_none(fitz["fitzpatrick_scale"].iloc[r]) for r in fz),
                                             strict=True))
        extra["condition"] = dict(zip(ids, (str(fitz["label"].iloc[r]) for r in fz), strict=True))
        return SampleTable(
            ids=ids,
            targets=targets[rows].astype(np.int64),
            concepts=skincon.concepts[[keep_sk[i] for i in rows]].astype(np.float32),
            paths=[paths[i] for i in rows],  # type: ignore[misc]
            extra=extra,
        )

    @classmethod
    def verify_notes(cls, table: SampleTable) -> list[str]:
        """Notes for `verify`: a note of the rows dropped (missing images above all)."""
        extra = table.extra
        notes = [
            f"{extra['missing_images']} of {extra['eligible']} eligible images are not on disk and were dropped "
            "(Fitzpatrick17k images are downloaded from URLs; re-run the download to recover them)",
            f"SkinCon rows: {extra['skincon_rows']}; dropped: {extra['do_not_consider']} 'Do not consider this "
            f"image', {extra['non_neoplastic']} non-neoplastic, {extra['not_in_fitzpatrick_csv']} not in "
            f"fitzpatrick17k.csv, {extra['duplicate_rows']} duplicates",
        ]
        return notes


def _int_or_none(value: Any) -> int | None:
    try:
        number = int(float(value))
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None  # -1 marks "no Fitzpatrick label" in the CSV
