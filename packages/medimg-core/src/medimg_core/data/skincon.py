"""SkinCon: 48 dermatology concepts annotated by dermatologists on Fitzpatrick17k and DDI images.

Shared by the `fitzpatrick17k-skincon` and `ddi` loaders. SkinCon ships one CSV per source: an
unnamed index column, `ImageID` (the image file name), the 48 concept columns (0/1) and
`Do not consider this image` (1 where the annotators judged the image unusable for concepts).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from medimg_core.data.common import match_columns
from medimg_core.data.errors import ProblemLog
from medimg_core.data.tables import ROW_OFFSET, binary_column, read_table_file

#: the 48 SkinCon concepts, in the column order of the released CSVs
SKINCON_CONCEPTS: tuple[str, ...] = (
    "Vesicle", "Papule", "Macule", "Plaque", "Abscess", "Pustule", "Bulla", "Patch", "Nodule", "Ulcer",
    "Crust", "Erosion", "Excoriation", "Atrophy", "Exudate", "Purpura/Petechiae", "Fissure", "Induration",
    "Xerosis", "Telangiectasia", "Scale", "Scar", "Friable", "Sclerosis", "Pedunculated",
    "Exophytic/Fungating", "Warty/Papillomatous", "Dome-shaped", "Flat topped", "Brown(Hyperpigmentation)",
    "Translucent", "White(Hypopigmentation)", "Purple", "Yellow", "Black", "Erythema", "Comedo",
    "Lichenification", "Blue", "Umbilicated", "Poikiloderma", "Salmon", "Wheal", "Acuminate", "Burrow",
    "Gray", "Pigmented", "Cyst",
)  # fmt: skip
DO_NOT_CONSIDER = "Do not consider this image"
IMAGE_ID = "ImageID"

SKINCON_LICENSE = "SkinCon annotations: CC BY-NC 4.0 (skincon-dataset.github.io)"
SKINCON_CITATION = (
    "Daneshjou, Yuksekgonul, Cai, Novoa, Zou. SkinCon: A skin disease dataset densely annotated by domain "
    "experts for fine-grained model debugging and analysis. NeurIPS 2022 Datasets and Benchmarks."
)
SKINCON_HOMEPAGE = "https://skincon-dataset.github.io/"


@dataclass
class SkinConTable:
    """The parsed SkinCon CSV: one row per annotated image."""

    path: Path
    image_ids: list[str]
    concepts: np.ndarray  # (N, 48) float32, NaN where blank
    do_not_consider: np.ndarray  # (N,) bool
    rows: np.ndarray  # (N,) 0-based data rows in the CSV
    duplicates: int = 0

    def lookup(self) -> dict[str, int]:
        """ImageID (lower-case, as written) -> index into this table; the first row wins for duplicates."""
        out: dict[str, int] = {}
        for i, name in enumerate(self.image_ids):
            out.setdefault(name.lower(), i)
        return out


def read_skincon(path: Path, log: ProblemLog) -> SkinConTable | None:
    """Parse a SkinCon CSV; problems (missing columns, values not 0/1) go to `log`. None if unusable."""
    frame = read_table_file(path)
    columns = match_columns(frame, [IMAGE_ID, *SKINCON_CONCEPTS, DO_NOT_CONSIDER], path, log)
    if columns is None:
        return None
    concepts = np.zeros((len(frame), len(SKINCON_CONCEPTS)), dtype=np.float32)
    for k, concept in enumerate(SKINCON_CONCEPTS):
        concepts[:, k] = binary_column(frame, columns[concept], path, log)
    flag = binary_column(frame, columns[DO_NOT_CONSIDER], path, log)
    image_ids = [str(v).strip() for v in frame[columns[IMAGE_ID]].tolist()]
    for i, name in enumerate(image_ids):
        if not name:
            log.add(path, "blank ImageID; expected the image file name", row=i + ROW_OFFSET, column=columns[IMAGE_ID])
    counts = pd.Series([n.lower() for n in image_ids]).value_counts() if image_ids else pd.Series(dtype=int)
    return SkinConTable(
        path=path,
        image_ids=image_ids,
        concepts=concepts,
        do_not_consider=np.nan_to_num(flag, nan=0.0) > 0,
        rows=np.arange(len(frame)),
        duplicates=int((counts - 1).clip(lower=0).sum()),
    )
