"""DDI (Diverse Dermatology Images): benign vs malignant, an out-of-distribution test set, SkinCon concepts."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from medimg_core.data.base import FileDataset, SampleTable, collect_missing_files
from medimg_core.data.card import DatasetCard
from medimg_core.data.errors import DatasetError, DatasetOptionError, ProblemLog
from medimg_core.data.images import PathResolver
from medimg_core.data.registry import register_dataset
from medimg_core.data.skincon import (
    SKINCON_CITATION,
    SKINCON_CONCEPTS,
    SKINCON_HOMEPAGE,
    SKINCON_LICENSE,
    read_skincon,
)
from medimg_core.data.tables import ROW_OFFSET, find_file, map_values, read_table_file, require_columns

METADATA_CSVS = ("ddi_metadata.csv", "ddidiversedermatologyimages/ddi_metadata.csv")
SKINCON_DDI_CSVS = (
    "annotations_ddi_final.csv",
    "annotations_ddi.csv",
    "annotations_ddi_final_v2.csv",
    "skincon/annotations_ddi_final.csv",
    "skincon/annotations_ddi.csv",
)
MALIGNANT = {"true": 1, "false": 0, "1": 1, "0": 0, "1.0": 1, "0.0": 0}
SKIN_TONES = ("12", "34", "56")
CLASSES = ("benign", "malignant")
#: the values of the `subset` option: every image of the release, or CRL's published test set
SUBSETS = ("all", "skincon-annotated")


@register_dataset("ddi")
class DDI(FileDataset):
    """DDI: 656 biopsy-proven clinical images over Fitzpatrick I-VI; one split, "test".

    Root layout, as released (Stanford AIMI): `ddi_metadata.csv` (columns: an unnamed index,
    `DDI_ID, DDI_file, skin_tone, malignant, disease`) and the images `<DDI_file>` next to it (or in
    `images/`). Optionally SkinCon's DDI annotation CSV (`annotations_ddi_final.csv` or
    `annotations_ddi.csv`) in the same root: then the 48 concepts come from it; images it does not
    annotate, or flags `Do not consider this image`, keep their label but get NaN concepts (the test set
    stays whole). Without that CSV every concept is NaN. `table.extra` holds the skin tone (12, 34, 56)
    and disease of every image, for per-skin-tone evaluation. No groups.

    Option `subset`:

    - `"all"` (default): every image of `ddi_metadata.csv` (656 in the release).
    - `"skincon-annotated"`: CRL's published DDI test set (official `test_ood.py`): the images SkinCon's DDI
      CSV annotates (an inner join on `DDI_file` = `ImageID`), less those it flags `Do not consider this
      image`. Needs that CSV. `table.extra["n_all"]` keeps the size of the whole set.
    """

    card: ClassVar[DatasetCard] = DatasetCard(
        name="ddi",
        title="DDI: Diverse Dermatology Images (benign vs malignant, SkinCon concepts)",
        task="binary",
        class_names=CLASSES,
        concept_names=SKINCON_CONCEPTS,
        concept_groups={},
        channels=3,
        splits=("test",),
        official_splits=True,
        modality="clinical photography (dermatology)",
        description=(
            "656 clinical images of 570 patients with pathologically confirmed diagnoses, balanced over "
            "Fitzpatrick skin types I-II, III-IV and V-VI (skin_tone 12, 34, 56). Target: malignant (1) vs "
            "benign (0). An external, out-of-distribution test set: its only split is 'test'. Concepts: "
            "SkinCon's 48 concept columns (0/1; NaN where SkinCon does not annotate the image or flags it "
            "'Do not consider this image', or where SkinCon's DDI CSV is absent)."
        ),
        license="DDI: Stanford University Dataset Research Use Agreement (non-commercial research); "
        + SKINCON_LICENSE,
        citation=(
            "Daneshjou, Vodrahalli, Novoa, Jenkins, Liang, Rotemberg, Ko, Swetter, Bailey, Gevaert, Mukherjee, "
            "Phung, Yekrang, Fong, Sahasrabudhe, Allerup, Okata-Karigane, Zou, Chiou. Disparities in "
            "dermatology AI performance on a diverse, curated clinical image set. Science Advances 2022. "
            + SKINCON_CITATION
        ),
        homepage="https://ddi-dataset.github.io/ ; " + SKINCON_HOMEPAGE,
        download=(
            "Request access and download ddidiversedermatologyimages.zip from the Stanford AIMI shared datasets "
            "page (linked from ddi-dataset.github.io); unzip so that ddi_metadata.csv and the images are in the "
            "root. Optionally add SkinCon's DDI annotation CSV (annotations_ddi_final.csv) from the SkinCon "
            "site to the same root."
        ),
    )

    @classmethod
    def read_table(cls, root: str | Path, split: str = "test", subset: str = "all") -> SampleTable:
        root = Path(root)
        split = cls.normalize_split(split)
        name = cls.card.name
        if subset not in SUBSETS:
            raise DatasetOptionError(f"{name}: option 'subset': expected one of {list(SUBSETS)}, got {subset!r}")
        meta_path = find_file(root, METADATA_CSVS, "DDI metadata ddi_metadata.csv")
        frame = read_table_file(meta_path)
        log = ProblemLog()
        if not require_columns(frame, ["DDI_file", "skin_tone", "malignant", "disease"], meta_path, log):
            log.raise_if_any(f"{name}: cannot read {split} split from {root}")
        if len(frame) == 0:
            raise DatasetError(f"{meta_path}: the {split} split is empty; expected one row per image")
        targets = map_values(frame, "malignant", MALIGNANT, meta_path, log)
        tones = [str(v).strip() for v in frame["skin_tone"].tolist()]
        for r, tone in enumerate(tones):
            if tone.removesuffix(".0") not in SKIN_TONES:
                log.add(meta_path, f"unknown value {tone!r}; expected one of {list(SKIN_TONES)}",
                        row=r + ROW_OFFSET, column="skin_tone")
        files = [str(v).strip() for v in frame["DDI_file"].tolist()]
        paths = collect_missing_files(PathResolver(meta_path.parent), files, str(meta_path), "DDI_file", log)

        concepts = np.full((len(frame), len(SKINCON_CONCEPTS)), np.nan, dtype=np.float32)
        extra: dict[str, Any] = {"skincon_file": None, "skincon_annotated": 0, "skincon_do_not_consider": 0,
                                 "subset": subset, "n_all": len(frame)}
        in_skincon = np.zeros(len(frame), dtype=bool)  # annotated by SkinCon and not flagged
        try:
            skincon_path: Path | None = find_file(meta_path.parent, SKINCON_DDI_CSVS, "SkinCon DDI annotations")
        except DatasetError:
            skincon_path = None
        if skincon_path is not None:
            skincon = read_skincon(skincon_path, log)
            if skincon is not None:
                lookup = skincon.lookup()
                extra["skincon_file"] = str(skincon_path)
                for r, file in enumerate(files):
                    i = lookup.get(file.lower())
                    if i is None:
                        continue
                    if skincon.do_not_consider[i]:
                        extra["skincon_do_not_consider"] += 1
                        continue
                    concepts[r] = skincon.concepts[i]
                    in_skincon[r] = True
                    extra["skincon_annotated"] += 1
                known = {f.lower() for f in files}
                extra["skincon_not_in_metadata"] = sum(i.lower() not in known for i in skincon.image_ids)
        log.raise_if_any(f"{name}: cannot read {split} split from {root}")
        ids = [Path(f).stem for f in files]
        if len(set(ids)) != len(ids):
            raise DatasetError(f"{meta_path}: DDI_file names repeat; expected one row per image")
        diseases = [str(d) for d in frame["disease"].tolist()]
        keep = np.arange(len(frame))
        if subset == "skincon-annotated":
            if extra["skincon_file"] is None:
                raise DatasetError(f"{name}: subset 'skincon-annotated' needs SkinCon's DDI annotation CSV (one of "
                                   f"{list(SKINCON_DDI_CSVS)}) next to {meta_path}; none was found")
            keep = np.flatnonzero(in_skincon)
            if len(keep) == 0:
                raise DatasetError(f"{extra['skincon_file']}: annotates none of the images of {meta_path} (or flags "
                                   "all of them 'Do not consider this image'); expected ImageID = DDI_file")
        ids = [ids[r] for r in keep]
        extra["skin_tone"] = {ids[j]: int(tones[r].removesuffix(".0")) for j, r in enumerate(keep)}
        extra["disease"] = {ids[j]: diseases[r] for j, r in enumerate(keep)}
        return SampleTable(ids=ids, targets=np.asarray(targets)[keep], concepts=concepts[keep],
                           paths=[paths[r] for r in keep], extra=extra)  # type: ignore[arg-type,misc]

    @classmethod
    def verify_notes(cls, table: SampleTable) -> list[str]:
        """Notes for `verify`: a note of how many images SkinCon annotates."""
        extra = table.extra
        if extra["skincon_file"] is None:
            note = "SkinCon's DDI annotation CSV not found: all concepts are NaN"
        else:
            note = (f"SkinCon concepts for {extra['skincon_annotated']} of {extra['n_all']} images "
                    f"({extra['skincon_do_not_consider']} flagged 'Do not consider this image' left NaN); subset "
                    f"{extra['subset']!r}: {len(table)} images")
        return [note]
