"""Helpers shared by the loaders of datasets without an official split or with dropped rows."""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medimg_core.data.base import VerifyReport
from medimg_core.data.errors import DatasetError, ProblemLog
from medimg_core.data.splits import load_or_create_folds, split_file_path


def fold_split_names(
    dataset: str,
    ids: Sequence[str],
    labels: Sequence | np.ndarray,
    n_folds: int = 5,
    fold: int = 0,
    seed: int = 0,
    split_file: str | Path | None = None,
    groups: Sequence[str] | None = None,
    grouped_by: str | None = None,
) -> np.ndarray:
    """The split name ("train", "val" or "test") of every id, from seeded stratified (grouped) folds.

    test = fold `fold`, val = fold `(fold + 1) % n_folds`, train = the rest. The folds are written to
    `split_file` (default: `split_file_path(None, dataset, ids, n_folds, seed)`) once and reused.
    """
    n_folds, fold, seed = int(n_folds), int(fold), int(seed)
    if n_folds < 3:
        raise ValueError(f"{dataset}: n_folds must be at least 3 (train, val and test folds), got {n_folds}")
    if not 0 <= fold < n_folds:
        raise ValueError(f"{dataset}: fold {fold} is out of range for {n_folds} folds; expected 0..{n_folds - 1}")
    path = split_file if split_file is not None else split_file_path(None, dataset, ids, n_folds, seed)
    folds = load_or_create_folds(path, ids, labels, n_folds, seed, groups, dataset, grouped_by=grouped_by)
    out = np.full(len(ids), "train", dtype=object)
    out[folds == fold] = "test"
    out[folds == (fold + 1) % n_folds] = "val"
    return out


def find_dir(root: Path, names: Sequence[str], max_depth: int = 3) -> Path | None:
    """The first directory under `root` (itself included) whose name matches one of `names`, case-insensitively."""
    wanted = [n.lower() for n in names]
    root = Path(root)
    best: tuple[int, int, Path] | None = None
    base_depth = len(root.parts)
    for dirpath, dirnames, _ in os.walk(root):
        depth = len(Path(dirpath).parts) - base_depth
        if depth >= max_depth:
            dirnames[:] = []
        for d in dirnames:
            if d.lower() in wanted:
                key = (wanted.index(d.lower()), depth, Path(dirpath) / d)
                if best is None or key[:2] < best[:2]:
                    best = key
    return None if best is None else best[2]


def normalise_name(name: str) -> str:
    """`"Brown (Hyperpigmentation)"` -> `"brownhyperpigmentation"`: for tolerant column matching."""
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


def match_columns(
    frame: pd.DataFrame, wanted: Sequence[str], file_label: str | Path, log: ProblemLog
) -> dict[str, str] | None:
    """Map each wanted column to the frame's column of that name, ignoring case, spaces and punctuation.

    Each column not found is a problem suggesting the nearest present one. None when any is missing.
    """
    present = list(frame.columns)
    by_norm = {}
    for col in present:
        by_norm.setdefault(normalise_name(col), col)
    out: dict[str, str] = {}
    for col in wanted:
        if col in present:
            out[col] = col
        elif normalise_name(col) in by_norm:
            out[col] = by_norm[normalise_name(col)]
        else:
            near = difflib.get_close_matches(col, present, n=1)
            hint = f"; did you mean '{near[0]}'?" if near else f"; columns present: {present}"
            log.add(file_label, f"required column '{col}' is missing{hint}", column=col)
    return out if len(out) == len(wanted) else None


def read_excel_file(path: Path) -> pd.DataFrame:
    """Read the first sheet of an .xlsx as strings; needs openpyxl (a clear error says so)."""
    try:
        import openpyxl  # noqa: F401
    except ImportError:
        raise DatasetError(
            f"{path}: reading .xlsx needs openpyxl; run `pip install openpyxl`, or save the sheet as CSV "
            "next to it (same columns)"
        ) from None
    try:
        frame = pd.read_excel(path, dtype=str, keep_default_na=False, engine="openpyxl")
    except Exception as exc:  # openpyxl raises many types for a bad workbook
        raise DatasetError(f"{path}: cannot read as an Excel workbook ({exc})") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame


@dataclass
class NotedVerifyReport(VerifyReport):
    """A verify report with notes: counts of rows a loader dropped on purpose (not errors)."""

    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["notes"] = list(self.notes)
        return out

    def to_text(self) -> str:
        lines = super().to_text().split("\n")
        at = next((i for i, line in enumerate(lines) if line.startswith("errors:")), len(lines))
        return "\n".join(lines[:at] + [f"note: {n}" for n in self.notes] + lines[at:])


def with_notes(report: VerifyReport, notes: Sequence[str]) -> NotedVerifyReport:
    """A copy of `report` carrying `notes`."""
    values = {f.name: getattr(report, f.name) for f in fields(VerifyReport)}
    return NotedVerifyReport(**values, notes=list(notes))
