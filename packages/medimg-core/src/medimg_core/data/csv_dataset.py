"""A generic dataset for users' own data: a CSV of image paths and labels, or class folders.

The CSV names an image column, one label column (or several 0/1 label columns for a multi-label
task), and optionally concept columns (0/1, blank when unannotated), per-concept mask columns, a
split column and a group column (patient, lesion). Options come as keyword arguments or from a
`dataset.json` descriptor at the root (keyword arguments win)::

    {"format": "csv", "csv": "labels.csv", "image_column": "path", "label_column": "label",
     "task": "binary", "class_names": ["benign", "malignant"],
     "concept_columns": ["irregular_border"], "mask_columns": ["mask_irregular_border"],
     "split_column": "split", "group_column": null, "channels": 3,
     "card": {"name": "my-data", "title": "...", "license": "...", "extra": {...}}}

Without a CSV, a root holding one folder per class (`root/<class>/<image>`) is read as a
single-label dataset. Without a split column, splits are seeded stratified folds (grouped when a
group column is given), written to a split file once and reused.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medimg_core.data.base import FileDataset, SampleTable
from medimg_core.data.card import TASK_TYPES, DatasetCard
from medimg_core.data.errors import DatasetError, DatasetOptionError, ProblemLog
from medimg_core.data.images import CASE, EXACT, FOLDERS, IMAGE_SUFFIXES, NAME, PathResolver, walk
from medimg_core.data.registry import register_dataset
from medimg_core.data.splits import fold_split_names
from medimg_core.data.tables import ROW_OFFSET, binary_column, map_values, read_table_file, require_columns

DESCRIPTOR = "dataset.json"

OPTION_KEYS = (
    "csv",
    "image_column",
    "label_column",
    "label_columns",
    "label_separator",
    "task",
    "class_names",
    "concept_columns",
    "mask_columns",
    "split_column",
    "group_column",
    "id_column",
    "channels",
    "n_folds",
    "fold",
    "seed",
    "split_file",
    "card",
)



#: label cells that mean "no label" (R's write.csv writes NA, pandas NaN, Excel #N/A, others None, null, N/A, - or
#: ?; compared in lower case, with the rest of pandas' default missing markers): the empty-label error, never a
#: class of their own (unless class_names lists the spelling)
MISSING_LABELS = ("", "nan", "-nan", "na", "n/a", "#n/a", "#n/a n/a", "#na", "<na>", "none", "null", "-", "?")

_STR, _LIST, _INT = "a string", "a list of strings (or one comma-separated string)", "an integer"
#: what each option holds, as an error message says it
OPTION_KINDS: dict[str, str] = {
    "csv": _STR, "image_column": _STR, "label_column": _STR, "label_columns": _LIST, "label_separator": _STR,
    "task": _STR, "class_names": _LIST, "concept_columns": _LIST, "mask_columns": _LIST, "split_column": _STR,
    "group_column": _STR, "id_column": _STR, "channels": "1 or 3", "n_folds": "an integer of at least 3",
    "fold": _INT, "seed": _INT, "split_file": _STR, "card": "a mapping of dataset card fields",
}


def _fits(key: str, value: Any) -> bool:
    kind = OPTION_KINDS[key]
    if value is None:
        return key not in ("image_column", "n_folds", "fold", "seed", "channels")
    if kind == _STR:  # a number is a column named by digits (-o label_column=2019 reads 2019 as a number)
        if isinstance(value, int) and not isinstance(value, bool):
            return True
        if key in ("csv", "split_file") and isinstance(value, os.PathLike):  # a Path from Python code
            return True
        return isinstance(value, str) and (bool(value.strip()) or key in ("csv", "split_file"))
    if kind == _LIST:
        if isinstance(value, str):
            return True
        return isinstance(value, (list, tuple)) and all(
            isinstance(v, str) or (key == "class_names" and isinstance(v, int) and not isinstance(v, bool))
            for v in value)
    if kind == "1 or 3":
        return not isinstance(value, bool) and value in (1, 3, "1", "3")
    if kind.startswith("an integer"):
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value)
        ok = isinstance(value, int) and not isinstance(value, bool)
        return ok and (value >= 3 if key == "n_folds" else True)
    return isinstance(value, dict)


def check_option_values(values: dict[str, Any], where: str) -> None:
    """Each known option of the right type and value; `where` names the source ("…/dataset.json: key" or
    "option"). A wrong one is a DatasetOptionError naming it, its value and what was expected."""
    for key, value in values.items():
        if key in OPTION_KINDS and not _fits(key, value):
            raise DatasetOptionError(f"{where} '{key}': expected {OPTION_KINDS[key]}, got {value!r}")


def _read_descriptor(root: Path) -> dict[str, Any]:
    path = root / DESCRIPTOR
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a JSON object")
    unknown = sorted(set(data) - set(OPTION_KEYS) - {"format"})
    if unknown:
        raise DatasetError(f"{path}: unknown key(s) {unknown}; expected some of {sorted(OPTION_KEYS)}")
    check_option_values(data, f"{path}: key")
    csv = data.get("csv")
    if csv:  # the descriptor comes with the data: its table must lie inside the dataset, as images must
        refused = PathResolver(root).refusal(str(csv), "table")
        if refused is not None:
            raise DatasetError(f"{path}: key 'csv': {refused}; expected a table inside the dataset")
    return data


def resolve_options(root: str | Path, options: dict[str, Any]) -> dict[str, Any]:
    """The descriptor's options overridden by the keyword arguments, with defaults filled in."""
    root = Path(root)
    unknown = sorted(set(options) - set(OPTION_KEYS))
    if unknown:
        raise DatasetOptionError(f"CSVDataset: unknown option(s) {unknown}; expected some of {sorted(OPTION_KEYS)}")
    given = {k: v for k, v in options.items() if v is not None}
    check_option_values(given, f"{root}: option")
    merged = {**_read_descriptor(root), **given}
    merged.pop("format", None)
    for key, kind in OPTION_KINDS.items():
        if kind == _STR and isinstance(merged.get(key), int):
            merged[key] = str(merged[key])
    for key in ("label_columns", "concept_columns", "mask_columns", "class_names"):
        if isinstance(merged.get(key), str):  # "-o concept_columns=spots" names one column, not five letters
            merged[key] = [v.strip() for v in merged[key].split(",") if v.strip()]
    merged.setdefault("image_column", "path")
    merged.setdefault("n_folds", 5)
    merged.setdefault("fold", 0)
    merged.setdefault("seed", 0)
    merged.setdefault("card", {})
    if merged.get("task") is not None and merged["task"] not in TASK_TYPES:
        raise DatasetError(f"{root}: task {merged['task']!r} is not one of {TASK_TYPES}")
    return merged


def _folder_frame(root: Path) -> pd.DataFrame:
    """A CSV-like frame for a root of class folders."""
    rows = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        images = [Path(d) / f for d, _, files in walk(class_dir) for f in files]  # follows linked folders
        for image in sorted(images):
            if image.suffix.lower() in IMAGE_SUFFIXES:
                rows.append({"path": image.relative_to(root).as_posix(), "label": class_dir.name})
    if not rows:
        raise DatasetError(
            f"{root}: no CSV given and no class folders with images found; expected a dataset.json, "
            "a csv= option, or one folder per class"
        )
    return pd.DataFrame(rows)


@lru_cache(maxsize=8)
def _parse_cached(root: str, options_json: str, stamp: tuple) -> tuple[pd.DataFrame, DatasetCard, str]:
    return _parse(Path(root), json.loads(options_json))


def _stamp(root: Path, opts: dict[str, Any]) -> tuple:
    """What changes when the table changes (size and time of the CSV, or of the class folders): a cached parse
    of an edited table is never reused."""
    paths = [root / opts["csv"]] if opts.get("csv") else ([root, *sorted(p for p in root.iterdir() if p.is_dir())]
                                                          if root.is_dir() else [])
    out = []
    for path in paths:
        try:
            st = path.stat()
        except OSError:
            continue
        out.append((str(path), st.st_mtime_ns, st.st_size))
    return tuple(out)


def _canonical_label(value: str) -> str:
    """One key per meaning: a number whatever its spelling ("1", "1.0", "01"), text whatever its case."""
    try:
        number = float(value)
    except ValueError:
        return " ".join(value.casefold().split())
    return repr(number) if np.isfinite(number) else value.casefold()


def _rows_text(rows: list[int]) -> str:
    return ", ".join(map(str, rows[:10])) + (" ..." if len(rows) > 10 else "")


def check_label_spellings(cells: list[str], label: str, column: str) -> None:
    """Two spellings of one class ("1" and "1.0", "Benign" and "benign") are a DatasetError naming the rows of
    each spelling: read as they are, they would silently add a class."""
    spellings: dict[str, dict[str, list[int]]] = {}
    for r, value in enumerate(cells):
        if value:
            spellings.setdefault(_canonical_label(value), {}).setdefault(value, []).append(r + ROW_OFFSET)
    clashes = [group for group in spellings.values() if len(group) > 1]
    if clashes:
        lines = ["; ".join(f"{value!r} (rows {_rows_text(rows)})" for value, rows in group.items())
                 for group in clashes]
        raise DatasetError(f"{label}, column '{column}': one class spelt {len(clashes[0])} ways: "
                           + " | ".join(lines) + "; expected one spelling per class (write them alike, or list the "
                           "classes in class_names)")


def _parse(root: Path, opts: dict[str, Any]) -> tuple[pd.DataFrame, DatasetCard, str]:
    """Read the whole CSV once, check it, and build the card. Returns (frame, card, file label)."""
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset root is not a directory")
    if opts.get("csv"):
        csv_path = root / str(opts["csv"]).replace("\\", "/")
        frame = read_table_file(csv_path)
        label = str(csv_path)
    else:
        frame = _folder_frame(root)
        opts.setdefault("label_column", "label")
        label = f"{root} (class folders)"
    log = ProblemLog()
    multilabel = bool(opts.get("label_columns"))
    label_cols = list(opts["label_columns"]) if multilabel else [opts.get("label_column") or "label"]
    concept_cols = list(opts.get("concept_columns") or [])
    mask_cols = list(opts.get("mask_columns") or [])
    if mask_cols and len(mask_cols) != len(concept_cols):
        log.add(label, f"mask_columns has {len(mask_cols)} entries, concept_columns {len(concept_cols)}; expected one mask column per concept")
    needed = [opts["image_column"], *label_cols, *concept_cols, *mask_cols]
    for key in ("split_column", "group_column", "id_column"):
        if opts.get(key):
            needed.append(opts[key])
    require_columns(frame, needed, label, log)
    log.raise_if_any(f"cannot read dataset at {root}")
    if len(frame) == 0:
        raise DatasetError(f"{label}: the table has no rows")

    task = opts.get("task")
    if multilabel:
        task = task or "multilabel"
        if task != "multilabel":
            raise DatasetError(f"{label}: several label_columns need task 'multilabel', got {task!r}")
        class_names = tuple(opts.get("class_names") or label_cols)
    elif opts.get("label_separator"):
        task = task or "multilabel"
        values = sorted({v.strip() for cell in frame[label_cols[0]] for v in str(cell).split(opts["label_separator"]) if v.strip()})
        if not opts.get("class_names"):
            check_label_spellings(values, label, label_cols[0])
        class_names = tuple(opts.get("class_names") or values)
    else:
        cells = [str(v).strip() for v in frame[label_cols[0]]]
        given = {str(c) for c in opts.get("class_names") or ()}
        empty = [r + ROW_OFFSET for r, v in enumerate(cells) if v.lower() in MISSING_LABELS and v not in given]
        if empty:
            raise DatasetError(f"{label}, column '{label_cols[0]}': empty label in {len(empty)} row(s) "
                               f"(rows {_rows_text(empty)}); every image needs a label (blank, NaN, NA, N/A, #N/A, "
                               "None, null, - and ? all mean missing)")
        present = sorted(set(cells))
        if not given:
            check_label_spellings(cells, label, label_cols[0])
        if opts.get("class_names"):
            class_names = tuple(str(c) for c in opts["class_names"])
        elif task == "ordinal":
            try:
                grades = sorted({int(v) for v in present})
            except ValueError:
                raise DatasetError(f"{label}: ordinal labels must be integers, found {present[:5]}") from None
            class_names = tuple(str(g) for g in range(min(grades), max(grades) + 1))
        else:
            class_names = tuple(present)
        if task is None:
            task = "binary" if len(class_names) == 2 else "multiclass"
    if task == "binary" and len(class_names) != 2:
        raise DatasetError(f"{label}: task 'binary' needs exactly 2 classes, found {len(class_names)}: {list(class_names)}")
    if task in ("multiclass", "ordinal") and len(class_names) < 2:
        raise DatasetError(f"{label}: a single class {list(class_names)} in column '{label_cols[0]}'; expected at least 2")

    card_fields = dict(opts.get("card") or {})
    for key in ("task", "class_names", "concept_names", "channels", "has_masks", "splits", "official_splits"):
        card_fields.pop(key, None)
    card_fields.setdefault("name", root.name)
    card_fields.setdefault("title", card_fields["name"])
    card_fields.setdefault("description", f"User dataset read from {label}.")
    try:
        card = DatasetCard.from_dict(
            {
                **card_fields,
                "task": task,
                "class_names": class_names,
                "concept_names": tuple(concept_cols),
                "channels": int(opts.get("channels", 3)),
                "has_masks": bool(mask_cols),
                "official_splits": bool(opts.get("split_column")),
            }
        )
    except (TypeError, ValueError) as exc:  # the descriptor's "card" mapping: unknown or ill-typed fields
        where = root / DESCRIPTOR if (root / DESCRIPTOR).is_file() else root
        raise DatasetError(f"{where}: key 'card': {exc}") from None
    return frame, card, label


def _targets(frame: pd.DataFrame, card: DatasetCard, opts: dict[str, Any], label: str, log: ProblemLog) -> np.ndarray:
    if opts.get("label_columns"):
        cols = [binary_column(frame, c, label, log, missing=()) for c in opts["label_columns"]]
        return np.stack(cols, axis=1).astype(np.float32)
    column = opts.get("label_column") or "label"
    if card.task == "multilabel":
        sep = opts["label_separator"]
        out = np.zeros((len(frame), card.num_classes), dtype=np.float32)
        index = {name: i for i, name in enumerate(card.class_names)}
        for r, cell in enumerate(frame[column].tolist()):
            for value in (v.strip() for v in str(cell).split(sep) if v.strip()):
                if value in index:
                    out[r, index[value]] = 1
                else:
                    log.add(label, f"unknown label {value!r}; expected one of {list(card.class_names)}",
                            row=r + ROW_OFFSET, column=column)
        return out
    mapping = {name: i for i, name in enumerate(card.class_names)}
    return map_values(frame, column, mapping, label, log, case_insensitive=False)


_FALLBACK_TEXT = {FOLDERS: "after dropping leading folders", NAME: "by the file name alone"}


def _resolve_files(resolver: PathResolver, frame: pd.DataFrame, opts: dict[str, Any], label: str,
                   rows: np.ndarray, log: ProblemLog) -> tuple[list[Path | None], list[list[Path | None]] | None,
                                                                list[str]]:
    """The image and mask files of the split's `rows`; problems of those rows go to `log`.

    Every row of the table is resolved, so that a path found only by a fallback (leading folders dropped, or
    the file name alone) can be refused when it lands on a file another column names, or in the folder of
    another column's files: with `masks/` missing, `masks/x.png` would otherwise resolve to the image
    `images/x.png` and every image would be its own mask. Returns (image paths, mask paths or None, notes on
    the fallbacks used)."""
    image_col = opts["image_column"]
    mask_cols = list(opts.get("mask_columns") or [])
    columns = [image_col, *mask_cols]
    in_split = {int(r) for r in rows}
    found: dict[str, list[tuple[str, Path | None, str]]] = {}
    claims: dict[Path, list[tuple[str, int]]] = {}
    own_folders: dict[str, set[Path]] = {c: set() for c in columns}
    for col in columns:
        entries = []
        for r, raw in enumerate(frame[col].astype(str).tolist()):
            rel = raw if col == image_col else raw.strip()
            what = "image" if col == image_col else "mask"
            if col != image_col and not rel:
                entries.append((rel, None, ""))
                continue
            refused = resolver.check_inside(rel)
            path, how = (None, "") if refused else resolver.resolve_how(rel)
            if path is None and r in in_split:
                log.add(label, refused or resolver.missing(rel, what), row=r + ROW_OFFSET, column=col)
            if path is not None:
                claims.setdefault(path, []).append((col, r))
                if how in (EXACT, CASE):
                    own_folders[col].add(path.parent)
            entries.append((rel, path, how))
        found[col] = entries
    used: dict[tuple[str, str], list[tuple[int, str, Path]]] = {}
    for col in columns:
        what = "image" if col == image_col else "mask"
        for r, (rel, path, how) in enumerate(found[col]):
            if path is None or how not in _FALLBACK_TEXT:
                continue
            clash = [(c, r2) for c, r2 in claims[path] if c != col]
            folder = [c for c in columns if c != col and path.parent in own_folders[c]]
            if clash or folder:
                found[col][r] = (rel, None, how)
                if r in in_split:
                    shown = path.relative_to(resolver.root) if path.is_relative_to(resolver.root) else path
                    whose = (f"the file of column '{clash[0][0]}' in row {clash[0][1] + ROW_OFFSET}" if clash else
                             f"in the folder of column '{folder[0]}''s files")
                    log.add(label, f"{what} {rel!r} was found only {_FALLBACK_TEXT[how]}, as {shown}, which is "
                            f"{whose}; expected a file of its own (is its folder missing or misspelt?)",
                            row=r + ROW_OFFSET, column=col)
                continue
            used.setdefault((col, how), []).append((r, rel, path))
    notes = []
    for (col, how), hits in used.items():
        r, rel, path = hits[0]
        shown = path.relative_to(resolver.root) if path.is_relative_to(resolver.root) else path
        notes.append(f"column '{col}': {len(hits)} path(s) found only {_FALLBACK_TEXT[how]}, not where the table "
                     f"says (e.g. row {r + ROW_OFFSET}: {rel!r} -> {shown}); check that these are the right files")
    paths = [found[image_col][r][1] for r in rows]
    masks = [[found[c][r][1] for c in mask_cols] for r in rows] if mask_cols else None
    return paths, masks, notes


@register_dataset("csv")
class CSVDataset(FileDataset):
    """Users' own data from a CSV (or class folders); see the module docstring for the options."""

    card = DatasetCard(
        name="csv",
        title="Generic CSV or class-folder dataset",
        task="multiclass",
        class_names=("class_a", "class_b"),
        description="Your own images: a CSV with an image path column and label column(s), "
        "optional concept, mask, split and group columns; or one folder per class.",
    )

    @classmethod
    def _load(cls, root: str | Path, options: dict[str, Any]) -> tuple[pd.DataFrame, DatasetCard, str, dict]:
        opts = resolve_options(root, options)
        resolved = Path(root).resolve()
        frame, card, label = _parse_cached(str(resolved), json.dumps(opts, default=str), _stamp(resolved, opts))
        return frame, card, label, opts

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        return OPTION_KEYS

    @classmethod
    def card_for(cls, root: str | Path, **options: Any) -> DatasetCard:
        return cls._load(root, options)[1]

    @classmethod
    def read_table(cls, root: str | Path, split: str, **options: Any) -> SampleTable:
        frame, card, label, opts = cls._load(root, options)
        split = cls.normalize_split(split)
        log = ProblemLog()
        root = Path(root)
        targets = _targets(frame, card, opts, label, log)
        concepts = (
            np.stack([binary_column(frame, c, label, log) for c in card.concept_names], axis=1)
            if card.num_concepts
            else np.zeros((len(frame), 0), dtype=np.float32)
        )
        ids = (
            frame[opts["id_column"]].astype(str).tolist()
            if opts.get("id_column")
            else [Path(p).stem for p in frame[opts["image_column"]]]
        )
        first_row: dict[str, int] = {}
        for r, rel in enumerate(frame[opts["image_column"]].astype(str)):
            key = Path(rel.strip()).as_posix().lower()
            if key in first_row:  # the same image twice could sit in train and test at once
                log.add(label, f"image {rel!r} is also named in row {first_row[key] + ROW_OFFSET}; expected one row "
                        "per image", row=r + ROW_OFFSET, column=opts["image_column"])
            else:
                first_row[key] = r
        if opts.get("id_column") and len(set(ids)) != len(ids):
            seen: set[str] = set()
            for r, value in enumerate(ids):
                if value in seen:
                    log.add(label, f"duplicate id {value!r}; expected unique ids", row=r + ROW_OFFSET,
                            column=opts["id_column"])
                seen.add(value)
        elif len(set(ids)) != len(ids):
            ids = [f"{i}:{s}" for i, s in enumerate(ids)]  # file stems repeat across folders: keep ids unique
        groups = frame[opts["group_column"]].astype(str).tolist() if opts.get("group_column") else None
        split_of_row = cls._split_assignment(frame, card, opts, ids, targets, groups, label, log, root)
        if len(log):
            log.raise_if_any(f"{card.name}: cannot read {label}")
        rows = np.flatnonzero(split_of_row == split)
        if len(rows) == 0:
            raise DatasetError(f"{card.name}: the {split!r} split of {label} is empty")
        paths, mask_paths, notes = _resolve_files(PathResolver(root), frame, opts, label, rows, log)
        log.raise_if_any(f"{card.name}: cannot read the {split} split of {label}")
        return SampleTable(
            ids=[ids[i] for i in rows],
            targets=targets[rows],
            concepts=concepts[rows],
            paths=paths,  # type: ignore[arg-type]
            groups=None if groups is None else [groups[i] for i in rows],
            mask_paths=mask_paths,
            extra={"notes": notes},
        )

    @staticmethod
    def _split_assignment(frame, card, opts, ids, targets, groups, label, log, root) -> np.ndarray:
        if opts.get("split_column"):
            col = opts["split_column"]
            out = np.empty(len(frame), dtype=object)
            for r, value in enumerate(frame[col].tolist()):
                try:
                    name = CSVDataset.normalize_split(str(value))
                except ValueError:
                    name = None
                if name is None:
                    log.add(label, f"unknown split {value!r}; expected train, val or test", row=r + ROW_OFFSET, column=col)
                out[r] = name
            return out
        if len(log):  # targets are unreliable: no point splitting
            return np.full(len(frame), "", dtype=object)
        try:
            return fold_split_names(card.name, ids, targets, opts["n_folds"], opts["fold"], opts["seed"],
                                    opts.get("split_file"), groups, grouped_by=opts.get("group_column"),
                                    source=f"{Path(root).resolve()}|{opts.get('csv') or 'class folders'}")
        except DatasetError:
            raise
        except ValueError as exc:
            raise DatasetError(str(exc)) from None
