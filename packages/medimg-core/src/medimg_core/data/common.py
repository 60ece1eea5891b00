"""Helpers shared by the loaders of datasets without an official split or with dropped rows."""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from medimg_core.data.errors import DatasetError, ProblemLog
from medimg_core.data.images import walk


def shared_data_dirs(subfolder: str, env_var: str | None = None, anchor: str | Path | None = None) -> list[Path]:
    """Where the workspace's shared-data files of `subfolder` (e.g. "concepts/text") are: first the folder in the
    environment variable `env_var` if set, then `shared-data/<subfolder>` in the nearest parent (itself included)
    of the working directory and of `anchor` (the calling module's file: a source checkout) that has it."""
    import os

    dirs = []
    if env_var and os.environ.get(env_var):
        dirs.append(Path(os.environ[env_var]))
    starts = [Path.cwd()] + ([Path(anchor).resolve()] if anchor is not None else [])
    for start in starts:
        for parent in (start, *start.parents):
            candidate = parent / "shared-data" / subfolder
            if candidate.is_dir():
                dirs.append(candidate)
                break
    return dirs


def find_shared_file(name_or_path: str | Path, subfolder: str, env_var: str | None = None,
                     anchor: str | Path | None = None) -> tuple[Path | None, list[Path]]:
    """A file given as a path, or as a bare name (`name` or `name.txt`) looked up as <name>.txt in the
    `shared_data_dirs` of `subfolder`. Returns (the file or None, the folders searched), so the caller can say where
    it looked in its own error."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path, []
    dirs = shared_data_dirs(subfolder, env_var, anchor)
    if path.parent == Path(".") and path.suffix in ("", ".txt"):
        for folder in dirs:
            candidate = folder / f"{path.stem}.txt"
            if candidate.is_file():
                return candidate, dirs
    return None, dirs


def read_term_list(path: str | Path, what: str = "term") -> tuple[list[tuple[str, tuple[str, bool] | None]], list[str]]:
    """A list of phrases, one per line, each optionally naming the annotated concept it stands for:
    `phrase => concept` or `phrase => ~concept` (negated); `#` starts a comment, blank lines are skipped, a phrase
    repeated (case and spacing aside) is kept once with a note. The format of iis's text concept lists and
    neuron-concepts' vocabularies. Returns ([(phrase, (concept, negated) or None)], notes); `what` names a phrase
    in the errors."""
    path = Path(path)
    entries: list[tuple[str, tuple[str, bool] | None]] = []
    notes: list[str] = []
    seen: dict[str, int] = {}
    for lineno, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        phrase, arrow, target = (part.strip() for part in line.partition("=>"))
        if not phrase:
            raise ValueError(f"{path}, line {lineno}: {raw.strip()!r} has no {what} before '=>'")
        if arrow and not target.lstrip("~").strip():
            raise ValueError(f"{path}, line {lineno}: {raw.strip()!r} names no concept after '=>'")
        key = " ".join(phrase.lower().split())
        if key in seen:
            notes.append(f"line {lineno}: {phrase!r} repeats line {seen[key]}; kept once")
            continue
        seen[key] = lineno
        entries.append((phrase, (target.lstrip("~").strip(), target.startswith("~")) if target else None))
    return entries, notes


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
