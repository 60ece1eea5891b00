"""Helpers shared by the loaders of datasets without an official split or with dropped rows."""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from medimg_core.data.errors import DatasetError, ProblemLog
from medimg_core.data.images import walk


def find_dir(root: Path, names: Sequence[str], max_depth: int = 3) -> Path | None:
    """The first directory under `root` (itself included) whose name matches one of `names`, case-insensitively."""
    wanted = [n.lower() for n in names]
    root = Path(root)
    best: tuple[int, int, Path] | None = None
    base_depth = len(root.parts)
    for dirpath, dirnames, _ in walk(root):
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
