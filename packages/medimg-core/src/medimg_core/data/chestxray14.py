"""NIH ChestX-ray14: 14 findings per frontal chest X-ray, from the official label table and lists."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from medimg_core.data.base import FileDataset, SampleTable, collect_missing_files, empty_concepts
from medimg_core.data.card import DatasetCard
from medimg_core.data.errors import DatasetError, ProblemLog
from medimg_core.data.images import PathResolver
from medimg_core.data.registry import register_dataset
from medimg_core.data.splits import holdout_mask
from medimg_core.data.tables import ROW_OFFSET, find_file, read_table_file, require_columns

FINDINGS = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
NO_FINDING = "No Finding"
LABEL_TABLES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017_v2020.csv.gz", "Data_Entry_2017.csv",
                "Data_Entry_2017.csv.gz")
BBOX_TABLES = ("BBox_List_2017.csv", "BBox_List_2017.csv.gz")


def read_lists(root: Path) -> tuple[set[str], set[str]] | None:
    """The official (train_val, test) image lists, or None when the list files are absent."""
    paths = [root / "train_val_list.txt", root / "test_list.txt"]
    if not all(p.is_file() for p in paths):
        return None
    train_val, test = ({line.strip() for line in p.read_text().splitlines() if line.strip()} for p in paths)
    return train_val, test


#: the box table's spelling of findings that the label table spells otherwise
BOX_FINDING_NAMES = {"Infiltrate": "Infiltration"}
#: the released PNGs are 1024 x 1024; BBox_List_2017's coordinates are in their pixels
BOX_FRAME_PX = (1024, 1024)


def read_bboxes(root: Path) -> dict[str, list[tuple[str, float, float, float, float]]]:
    """Image id -> [(finding, x, y, w, h)] from BBox_List_2017 (pixels of the 1024 x 1024 released images,
    `BOX_FRAME_PX`), if present. Findings are named as in the label table (`Infiltrate` -> `Infiltration`); a row
    with an unknown finding or a box that is not finite, positive and inside the frame is refused, naming it."""
    for name in BBOX_TABLES:
        path = root / name
        if path.is_file():
            frame = read_table_file(path)
            log = ProblemLog()
            if len(frame.columns) < 6 or list(frame.columns[:2]) != ["Image Index", "Finding Label"]:
                raise DatasetError(f"{path}: expected the columns 'Image Index, Finding Label, Bbox [x, y, w, h]' "
                                   f"(six values a row), got {list(frame.columns)}")
            out: dict[str, list] = {}
            for r, row in enumerate(frame.itertuples(index=False)):
                finding = BOX_FINDING_NAMES.get(str(row[1]).strip(), str(row[1]).strip())
                if finding not in FINDINGS:
                    log.add(path, f"unknown finding {row[1]!r}; expected one of {[*FINDINGS, *BOX_FINDING_NAMES]}",
                            row=r + ROW_OFFSET, column="Finding Label")
                    continue
                try:
                    x, y, w, h = (float(v) for v in row[2:6])
                except (TypeError, ValueError):
                    x = y = w = h = float("nan")
                if not (np.isfinite([x, y, w, h]).all() and w > 0 and h > 0 and x >= 0 and y >= 0
                        and x + w <= BOX_FRAME_PX[1] + 1 and y + h <= BOX_FRAME_PX[0] + 1):
                    log.add(path, f"box {tuple(row[2:6])} is not x, y >= 0, w, h > 0 inside the "
                                  f"{BOX_FRAME_PX[1]} x {BOX_FRAME_PX[0]} image", row=r + ROW_OFFSET,
                            column="Bbox [x,y,w,h]")
                    continue
                out.setdefault(str(row[0]).strip(), []).append((finding, x, y, w, h))
            log.raise_if_any("chestxray14: cannot read the box table")
            return out
    return {}


@register_dataset("chestxray14")
class ChestXray14(FileDataset):
    """NIH ChestX-ray14, multi-label over 14 findings ("No Finding" = all zeros).

    Root layout, as released by the NIH: `Data_Entry_2017*.csv[.gz]`, `train_val_list.txt`,
    `test_list.txt` and the image folders (`images/`, or `images_001/images/` ... as the archives
    unpack). Test = the official test list. Validation is carved from train_val, grouped by patient
    (`val_fraction`, `seed`), and written to a split file: checkpoints are never selected on the test list.

    Boxes: where `BBox_List_2017.csv[.gz]` is in the root, `boxes(i, size)` gives image i's boxes (984 boxes of 8
    findings over 880 images in the NIH release) in the pixels of the image resized to `size`.

    Options: `views` (e.g. `["PA"]`); `missing_images="error"|"drop"` (drop rows whose image is not on
    disk, counted in `table.extra`); `official_split=False` to split by patient with a seed when the
    list files are absent (the label table alone, as in the project's shared copy).
    """

    card: ClassVar[DatasetCard] = DatasetCard(
        name="chestxray14",
        title="NIH ChestX-ray14",
        task="multilabel",
        class_names=FINDINGS,
        channels=1,
        modality="chest X-ray (frontal)",
        description=(
            "112,120 frontal chest X-rays of 30,805 patients with 14 text-mined findings (multi-label; 'No "
            "Finding' means none). Official patient-wise train_val (86,524) / test (25,596) lists; 984 "
            "bounding boxes for 8 findings."
        ),
        license="public (NIH Clinical Center); see the dataset's terms",
        citation=(
            "Wang, Peng, Lu, Lu, Bagheri, Summers. ChestX-ray8: Hospital-scale chest X-ray database and "
            "benchmarks on weakly-supervised classification and localization of common thorax diseases. CVPR 2017."
        ),
        homepage="https://nihcc.app.box.com/v/ChestXray-NIHCC",
        download="Data_Entry_2017_v2020.csv, train_val_list.txt, test_list.txt and images_001..012.tar.gz "
        "from the NIH box folder, unpacked under one root.",
    )

    @classmethod
    def read_table(
        cls,
        root: str | Path,
        split: str,
        views: list[str] | None = None,
        missing_images: str = "error",
        official_split: bool = True,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        seed: int = 0,
        split_file: str | Path | None = None,
    ) -> SampleTable:
        root = Path(root)
        split = cls.normalize_split(split)
        if missing_images not in ("error", "drop"):
            raise ValueError(f"missing_images must be 'error' or 'drop', got {missing_images!r}")
        table_path = find_file(root, LABEL_TABLES, "ChestX-ray14 label table Data_Entry_2017*.csv")
        frame = read_table_file(table_path)
        log = ProblemLog()
        columns = ["Image Index", "Finding Labels", "Patient ID", "View Position"]
        if not require_columns(frame, columns, table_path, log):
            log.raise_if_any("chestxray14: cannot read the label table")
        if views:
            frame = frame[frame["View Position"].isin(views)].reset_index(drop=True)
        targets = np.zeros((len(frame), len(FINDINGS)), dtype=np.float32)
        index = {f.lower(): i for i, f in enumerate(FINDINGS)}
        for r, cell in enumerate(frame["Finding Labels"].tolist()):
            for finding in (f.strip() for f in cell.split("|")):
                if finding.lower() in index:
                    targets[r, index[finding.lower()]] = 1
                elif finding != NO_FINDING:
                    log.add(table_path, f"unknown finding {finding!r}; expected one of {[*FINDINGS, NO_FINDING]}",
                            row=r + ROW_OFFSET, column="Finding Labels")
        log.raise_if_any("chestxray14: cannot read the label table")

        ids = frame["Image Index"].tolist()
        patients = frame["Patient ID"].tolist()
        source = f"{root.resolve()}|views={sorted(views) if views else None}"
        split_of_row = cls._assign(root, ids, patients, targets, official_split, val_fraction, test_fraction,
                                   seed, split_file, source)
        rows = np.flatnonzero(split_of_row == split)
        extra: dict[str, Any] = {}
        resolver = PathResolver(root)
        if missing_images == "drop":
            found = [resolver.resolve(ids[r]) for r in rows]
            keep = [i for i, p in enumerate(found) if p is not None]
            extra["dropped_missing_images"] = len(rows) - len(keep)
            extra["notes"] = [f"{split}: {len(rows) - len(keep)} listed images are not on disk and were dropped "
                              "(missing_images='drop')"]
            rows, paths = rows[keep], [found[i] for i in keep]
        else:
            paths = collect_missing_files(resolver, [ids[r] for r in rows], str(table_path), "Image Index", log, rows)
        log.raise_if_any(f"chestxray14: cannot read the {split} split")
        if len(rows) == 0:
            raise DatasetError(f"chestxray14: the {split} split at {root} is empty"
                               + (" (no listed image is on disk)" if missing_images == "drop" else ""))
        boxes = read_bboxes(root)
        extra["bboxes"] = {ids[r]: boxes[ids[r]] for r in rows if ids[r] in boxes}
        return SampleTable(
            ids=[ids[r] for r in rows],
            targets=targets[rows],
            concepts=empty_concepts(len(rows)),
            paths=paths,  # type: ignore[arg-type]
            groups=[patients[r] for r in rows],
            extra=extra,
        )

    def boxes(self, index: int, size: tuple[int, int] | None = None,
              crop: tuple[float, float, float, float] | None = None) -> list[tuple[str, tuple[float, ...]]]:
        """Image `index`'s ground-truth boxes [(finding, (x0, y0, x1, y1))] in the pixels of the whole image resized
        to `size` (H, W) (default: the released 1024 x 1024), after an optional `crop` (top, left, height, width in
        1024-pixel coordinates); boxes cropped away are left out. Empty for an image without boxes."""
        from medimg_core.localisation import rescale_box

        size = tuple(size) if size is not None else BOX_FRAME_PX
        out = []
        for finding, *xywh in self.table.extra.get("bboxes", {}).get(self.table.ids[index], []):
            box = rescale_box(xywh, BOX_FRAME_PX, size, crop)
            if box is not None:
                out.append((finding, box))
        return out

    @staticmethod
    def _assign(root, ids, patients, targets, official_split, val_fraction, test_fraction, seed, split_file,
                source=None):
        out = np.full(len(ids), "", dtype=object)
        lists = read_lists(root)
        if official_split:
            if lists is None:
                raise DatasetError(
                    f"{root}: train_val_list.txt and test_list.txt not found; put the official lists there, "
                    "or pass official_split=False to split by patient with a seed"
                )
            train_val, test = lists
            in_test = np.array([i in test for i in ids])
            in_train_val = np.array([i in train_val for i in ids])
        else:
            in_test = holdout_mask(ids, targets, test_fraction, seed, patients, None, "chestxray14-test",
                                   grouped_by="Patient ID", source=source)
            in_train_val = ~in_test
        out[in_test] = "test"
        tv = np.flatnonzero(in_train_val)
        if len(tv):
            val = holdout_mask([ids[i] for i in tv], targets[tv], val_fraction, seed, [patients[i] for i in tv],
                               split_file, "chestxray14-val", grouped_by="Patient ID",
                               source=f"{source}|official_split={bool(official_split)}")
            out[tv] = np.where(val, "val", "train")
        return out
