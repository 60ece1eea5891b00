"""Seeded, stratified and grouped splits, written to a split file once and reused.

A split file is JSON::

    {"dataset": ..., "n_folds": 5, "seed": 0, "stratified_by": "label", "grouped_by": "lesion_id",
     "fingerprint": "<sha256 of the sorted ids>", "folds": {"<id>": fold, ...}}

It is never silently regenerated: when the data no longer match the file, loading it fails and
says which ids differ, so results stay comparable across runs and machines.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.model_selection import KFold, StratifiedGroupKFold, StratifiedKFold

from medimg_core.data.errors import DatasetError


def default_split_dir() -> Path:
    """Where split files go when none is given: $MEDIMG_HOME/splits (default ~/.cache/medimg/splits)."""
    home = os.environ.get("MEDIMG_HOME") or Path.home() / ".cache" / "medimg"
    return Path(home) / "splits"


def ids_fingerprint(ids: Sequence[str]) -> str:
    digest = hashlib.sha256("\n".join(sorted(map(str, ids))).encode()).hexdigest()
    return digest[:16]


def assign_folds(
    labels: Sequence | np.ndarray,
    n_folds: int,
    seed: int,
    groups: Sequence[str] | None = None,
) -> np.ndarray:
    """Fold index (0..n_folds-1) per sample, stratified by `labels`, keeping each group in one fold.

    Labels may be class indices, or a multi-hot matrix (stratified on the label combination's most
    frequent single label, a common approximation). Falls back to plain KFold when a class has fewer
    members than folds.
    """
    if n_folds < 2:
        raise ValueError(f"n_folds must be at least 2, got {n_folds}")
    labels = np.asarray(labels)
    n = len(labels)
    if n < n_folds:
        raise DatasetError(f"cannot split {n} samples into {n_folds} folds; use fewer folds")
    if labels.ndim == 2:  # multi-label: stratify on the rarest positive label of each row
        freq = labels.sum(axis=0)
        rarest = np.where(labels > 0, freq[None, :], np.inf)
        strat = np.where(labels.sum(axis=1) > 0, rarest.argmin(axis=1), -1)
    else:
        strat = labels
    _, counts = np.unique(strat, return_counts=True)
    can_stratify = counts.min() >= n_folds
    folds = np.empty(n, dtype=np.int64)
    dummy = np.zeros(n)
    if groups is not None:
        groups_arr = np.asarray([str(g) for g in groups])
        if len(np.unique(groups_arr)) < n_folds:
            raise DatasetError(
                f"cannot split {len(np.unique(groups_arr))} groups into {n_folds} folds; "
                "use fewer folds (or a larger held-out fraction)"
            )
        splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        iterator = splitter.split(dummy, strat if can_stratify else np.zeros(n), groups_arr)
    elif can_stratify:
        iterator = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed).split(dummy, strat)
    else:
        iterator = KFold(n_splits=n_folds, shuffle=True, random_state=seed).split(dummy)
    for fold, (_, test_idx) in enumerate(iterator):
        folds[test_idx] = fold
    return folds


def write_json_atomic(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, path)


def load_or_create_folds(
    split_file: str | Path,
    ids: Sequence[str],
    labels: Sequence | np.ndarray,
    n_folds: int,
    seed: int,
    groups: Sequence[str] | None = None,
    dataset: str = "",
    stratified_by: str = "label",
    grouped_by: str | None = None,
) -> np.ndarray:
    """Read the fold of every id from `split_file`, creating the file first when it does not exist."""
    split_file = Path(split_file)
    ids = [str(i) for i in ids]
    if split_file.exists():
        try:
            payload = json.loads(split_file.read_text())
            folds_by_id = payload["folds"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise DatasetError(f"{split_file}: not a medimg split file ({exc})") from None
        if payload.get("n_folds") != n_folds:
            raise DatasetError(
                f"{split_file}: written for {payload.get('n_folds')} folds, asked for {n_folds}; "
                "pass another split file or delete this one to regenerate it"
            )
        missing = [i for i in ids if i not in folds_by_id]
        extra = sorted(set(folds_by_id) - set(ids))
        if missing or extra:
            raise DatasetError(
                f"{split_file}: does not match the data ({len(missing)} ids not in the file, e.g. {missing[:3]}; "
                f"{len(extra)} ids in the file but not in the data, e.g. {extra[:3]}); "
                "delete the file to regenerate it, knowing earlier results used the old split"
            )
        return np.asarray([int(folds_by_id[i]) for i in ids], dtype=np.int64)
    folds = assign_folds(labels, n_folds, seed, groups)
    write_json_atomic(
        split_file,
        {
            "dataset": dataset,
            "n_folds": n_folds,
            "seed": seed,
            "stratified_by": stratified_by,
            "grouped_by": grouped_by,
            "fingerprint": ids_fingerprint(ids),
            "folds": dict(zip(ids, (int(f) for f in folds), strict=True)),
        },
    )
    return folds


def split_file_path(split_dir: str | Path | None, dataset: str, ids: Sequence[str], n_folds: int, seed: int) -> Path:
    """The default split file name for a dataset: it changes when the ids change."""
    base = Path(split_dir) if split_dir is not None else default_split_dir()
    return base / f"{dataset}-{ids_fingerprint(ids)}-k{n_folds}-seed{seed}.json"


def holdout_mask(
    ids: Sequence[str],
    labels: Sequence | np.ndarray,
    fraction: float,
    seed: int,
    groups: Sequence[str] | None = None,
    split_file: str | Path | None = None,
    dataset: str = "",
    grouped_by: str | None = None,
) -> np.ndarray:
    """Boolean mask of a held-out part of about `fraction` (fold 0 of round(1/fraction) folds).

    Used to carve a validation split from an official training list (grouped by patient or lesion).
    """
    if not 0 < fraction < 1:
        raise ValueError(f"holdout fraction must be in (0, 1), got {fraction}")
    n_folds = max(2, round(1 / fraction))
    path = split_file if split_file is not None else split_file_path(None, f"{dataset}-holdout", ids, n_folds, seed)
    folds = load_or_create_folds(path, ids, labels, n_folds, seed, groups, dataset, grouped_by=grouped_by)
    return folds == 0


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
