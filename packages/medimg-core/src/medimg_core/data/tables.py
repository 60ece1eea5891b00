"""Reading metadata tables with errors that name the file, row and column."""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from medimg_core.data.errors import DatasetError, ProblemLog
from medimg_core.data.images import walk

#: spreadsheet line of a 0-based data row (the header is line 1)
ROW_OFFSET = 2


def read_table_file(path: str | Path, **kwargs) -> pd.DataFrame:
    """Read a CSV (optionally .gz) as strings; raise DatasetError naming the file on failure."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: metadata file not found")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, **kwargs)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as exc:
        raise DatasetError(f"{path}: cannot parse as CSV ({exc})") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame


def find_file(root: Path, candidates: Sequence[str], what: str) -> Path:
    """The first of `candidates` (relative to root, matched case-insensitively) that exists."""
    for name in candidates:
        path = root / name
        if path.is_file():
            return path
    lower = {}
    for dirpath, _dirnames, filenames in walk(root):  # follows linked folders, like the image index
        for name in filenames:
            path = Path(dirpath) / name
            if path.is_file():
                lower[path.relative_to(root).as_posix().lower()] = path
    for name in candidates:
        hit = lower.get(name.lower())
        if hit is not None:
            return hit
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset root is not a directory")
    raise DatasetError(f"{root}: {what} not found; expected one of {list(candidates)}")


def require_columns(frame: pd.DataFrame, columns: Sequence[str], file_label: str | Path, log: ProblemLog) -> bool:
    """Record a problem for each missing column, suggesting the nearest present one. True if all exist."""
    ok = True
    present = list(frame.columns)
    for col in columns:
        if col not in present:
            ok = False
            near = difflib.get_close_matches(col, present, n=1)
            hint = f"; did you mean '{near[0]}'?" if near else f"; columns present: {present}"
            log.add(file_label, f"required column '{col}' is missing{hint}", column=col)
    return ok


def map_values(
    frame: pd.DataFrame,
    column: str,
    mapping: Mapping[str, int],
    file_label: str | Path,
    log: ProblemLog,
    case_insensitive: bool = True,
) -> np.ndarray:
    """Map a column of strings to integers; each unknown value is a problem with its row. Unknown rows get -1."""
    lookup = {(k.lower() if case_insensitive else k): v for k, v in mapping.items()}
    out = np.full(len(frame), -1, dtype=np.int64)
    for i, raw in enumerate(frame[column].tolist()):
        key = str(raw).strip()
        key = key.lower() if case_insensitive else key
        if key in lookup:
            out[i] = lookup[key]
        else:
            log.add(
                file_label,
                f"unknown value {raw!r}; expected one of {sorted(mapping)}",
                row=i + ROW_OFFSET,
                column=column,
            )
    return out


def binary_column(
    frame: pd.DataFrame,
    column: str,
    file_label: str | Path,
    log: ProblemLog,
    positives: Sequence[str] = ("1", "1.0", "true", "yes", "y", "present"),
    negatives: Sequence[str] = ("0", "0.0", "false", "no", "n", "absent"),
    missing: Sequence[str] = ("", "nan", "na", "n/a", "-1", "?", "none"),
) -> np.ndarray:
    """A 0/1 concept column; blank or explicitly unknown values become NaN, anything else is a problem."""
    out = np.full(len(frame), np.nan, dtype=np.float32)
    pos, neg, mis = {*positives}, {*negatives}, {*missing}
    for i, raw in enumerate(frame[column].tolist()):
        key = str(raw).strip().lower()
        if key in pos:
            out[i] = 1.0
        elif key in neg:
            out[i] = 0.0
        elif key not in mis:
            log.add(
                file_label,
                f"unexpected concept value {raw!r}; expected 0/1, yes/no, true/false or blank for unannotated",
                row=i + ROW_OFFSET,
                column=column,
            )
    return out


def concept_name(value: str, attribute: str) -> str:
    """`"unsegmented-band", "nucleus_shape"` -> `"unsegmented band nucleus shape"`."""
    return f"{value} {attribute}".replace("_", " ").replace("-", " ").strip()


def expand_categorical(
    frame: pd.DataFrame,
    attributes: Mapping[str, Sequence[str]],
    binary_positive: Mapping[str, str],
    file_label: str | Path,
    log: ProblemLog,
) -> tuple[np.ndarray, list[str], dict[str, tuple[str, ...]]]:
    """Expand categorical attributes into binary concepts.

    `attributes` gives each attribute's allowed values in order. An attribute listed in
    `binary_positive` becomes one concept (1 where the value equals the positive one); any other
    becomes one-hot. Blank values give NaN for the attribute's concepts; unexpected values are problems.
    Returns (concepts (N, K) float32, concept names, groups attribute -> names).
    """
    columns: list[np.ndarray] = []
    names: list[str] = []
    groups: dict[str, tuple[str, ...]] = {}
    for attribute, values in attributes.items():
        raw = frame[attribute].astype(str).str.strip().tolist() if attribute in frame else [""] * len(frame)
        allowed = {v.lower() for v in values}
        for i, value in enumerate(raw):
            if value and value.lower() not in allowed:
                log.add(
                    file_label,
                    f"unexpected value {value!r} for attribute '{attribute}'; expected one of {list(values)}",
                    row=i + ROW_OFFSET,
                    column=attribute,
                )
        lowered = np.array([v.lower() for v in raw], dtype=object)
        blank = np.array([not v for v in raw], dtype=bool)
        if attribute in binary_positive:
            positive = binary_positive[attribute]
            col = (lowered == positive.lower()).astype(np.float32)
            col[blank] = np.nan
            name = concept_name(positive.removeprefix("yes").strip() or attribute, attribute)
            if positive.lower() == "yes":
                name = attribute.replace("_", " ").replace("-", " ")
            columns.append(col)
            names.append(name)
            groups[attribute] = (name,)
        else:
            group = []
            for value in values:
                col = (lowered == value.lower()).astype(np.float32)
                col[blank] = np.nan
                columns.append(col)
                name = concept_name(value, attribute)
                names.append(name)
                group.append(name)
            groups[attribute] = tuple(group)
    concepts = np.stack(columns, axis=1) if columns else np.zeros((len(frame), 0), dtype=np.float32)
    return concepts, names, groups
