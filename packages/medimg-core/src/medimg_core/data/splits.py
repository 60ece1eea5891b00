"""Seeded, stratified and grouped splits, written to a split file once and reused.

A split file is JSON::

    {"dataset": ..., "n_folds": 5, "seed": 0, "stratified_by": "label", "grouped_by": "lesion_id",
     "fingerprint": "<sha256 of the sorted ids>", "folds": {"<id>": fold, ...}}

It is never silently regenerated: when the data no longer match the file, loading it fails and
says which ids differ, so results stay comparable across runs and machines. The default file is named
after where the data live (the resolved root and table, `split_file_path`), not after the ids: adding
one image to a dataset finds the same file and fails, where an ids-keyed name would silently draw new
folds (issue 19's probe, D65: 8 of 12 test images moved to train).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.model_selection import KFold, StratifiedGroupKFold, StratifiedKFold

from medimg_core.data.errors import DatasetError, DatasetOptionError


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


def stratified_subset(targets: np.ndarray, size: int, seed: int = 0, what: str = "the training split") -> np.ndarray:
    """Sorted indices of a seeded subset of `size` samples with the class proportions of `targets` (N,) or, for
    multilabel targets (N, L), a plain seeded draw (label combinations are too many to stratify on).

    Small-data studies (e.g. 350 training images of a large set) use it; every class keeps at least one sample
    where `size` allows (scikit-learn's `train_test_split` with `stratify`).
    """
    from sklearn.model_selection import train_test_split

    targets = np.asarray(targets)
    n = len(targets)
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 1:
        raise DatasetOptionError(f"train_subset: expected a whole number of images >= 1, got {size!r}")
    if size > n:
        raise DatasetOptionError(f"train_subset: asked for {size} images, {what} has {n}")
    index = np.arange(n)
    if size == n:
        return index
    stratify = targets if targets.ndim == 1 else None
    if stratify is not None:
        classes = np.unique(stratify)
        if size < len(classes):
            raise DatasetOptionError(f"train_subset: {size} images cannot hold the {len(classes)} classes of {what}; "
                                     f"expected at least {len(classes)}")
        if np.unique(stratify, return_counts=True)[1].min() < 2:
            stratify = None  # a class of one sample cannot be stratified: draw plainly
    chosen, _ = train_test_split(index, train_size=int(size), random_state=int(seed), stratify=stratify)
    return np.sort(chosen)


def write_json_atomic(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, path)


def _number_option(value: object, name: str, dataset: str, kind: type = int) -> int | float:
    """A loader option given as text or a number, as `kind` (int, or float); otherwise a DatasetOptionError."""
    try:
        return kind(str(value).strip())
    except ValueError:
        expected = "an integer" if kind is int else "a number"
        raise DatasetOptionError(f"{dataset}: option '{name}': expected {expected}, got {value!r}") from None


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
    source: str | None = None,
) -> np.ndarray:
    """Read the fold of every id from `split_file`, creating the file first when it does not exist.

    A file that no longer matches the ids (images added or removed since it was drawn) is a DatasetError that
    says what changed and how to draw a new split; it is never redrawn silently.
    """
    split_file = Path(split_file)
    ids = [str(i) for i in ids]
    if split_file.exists():
        try:
            payload = json.loads(split_file.read_text())
            folds_by_id = payload["folds"]
            if not isinstance(folds_by_id, dict):
                raise TypeError(f"'folds' is a {type(folds_by_id).__name__}, expected an object")
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, OSError) as exc:
            raise DatasetError(f"{split_file}: not a medimg split file ({exc})") from None
        if payload.get("n_folds") != n_folds:
            raise DatasetError(
                f"{split_file}: written for {payload.get('n_folds')} folds, asked for {n_folds}; "
                "pass another split file or delete this one to regenerate it"
            )
        missing = [i for i in ids if i not in folds_by_id]
        extra = sorted(set(folds_by_id) - set(ids))
        if missing or extra:
            where = f" of {source}" if source else ""
            changes = ([f"{len(missing)} image(s) added since it was drawn (e.g. {missing[:3]})"] if missing else []) + (
                [f"{len(extra)} image(s) removed since it was drawn (e.g. {extra[:3]})"] if extra else [])
            raise DatasetError(
                f"{split_file}: the split file no longer matches the data{where}: {' and '.join(changes)}. Its folds are "
                "never redrawn silently: earlier runs trained and tested on them. To draw a new split, delete this "
                "file (results of earlier runs then used another split) or keep it and name a new one "
                "(`-o split_file=NEW.json`, or data.options.split_file in a config)"
            )
        bad = [i for i in ids if not (isinstance(folds_by_id[i], int) and 0 <= folds_by_id[i] < n_folds)]
        if bad:
            raise DatasetError(f"{split_file}: id {bad[0]!r} has fold {folds_by_id[bad[0]]!r}; expected an integer "
                               f"0..{n_folds - 1}")
        return np.asarray([int(folds_by_id[i]) for i in ids], dtype=np.int64)
    folds = assign_folds(labels, n_folds, seed, groups)
    write_json_atomic(
        split_file,
        {
            "dataset": dataset,
            "source": source,
            "n_folds": n_folds,
            "seed": seed,
            "stratified_by": stratified_by,
            "grouped_by": grouped_by,
            "fingerprint": ids_fingerprint(ids),
            "folds": dict(zip(ids, (int(f) for f in folds), strict=True)),
        },
    )
    return folds


def split_file_path(split_dir: str | Path | None, dataset: str, source: str | Sequence[str], n_folds: int,
                    seed: int) -> Path:
    """The default split file of a dataset: named after where the data live (`source`: the resolved root and
    table), never after the ids, so that adding or removing images finds the same file and fails loudly
    instead of drawing new folds. A sequence of ids as `source` names the file after them (the scheme before
    issue 19, kept for callers without a source)."""
    base = Path(split_dir) if split_dir is not None else default_split_dir()
    if isinstance(source, str):
        key = hashlib.sha256(source.encode()).hexdigest()[:16]
        return base / f"{dataset}-src{key}-k{n_folds}-seed{seed}.json"
    return base / f"{dataset}-{ids_fingerprint(source)}-k{n_folds}-seed{seed}.json"


def _legacy_file(dataset: str, ids: Sequence[str], n_folds: int, seed: int) -> Path | None:
    """A split file of the earlier ids-keyed scheme that belongs to these data: the one written for exactly
    these ids, else the only one of this dataset name, fold count and seed sharing more than half of them."""
    exact = split_file_path(None, dataset, ids, n_folds, seed)
    if exact.is_file():
        return exact
    wanted = set(map(str, ids))
    matches = []
    for path in default_split_dir().glob(f"{dataset}-{'[0-9a-f]' * 16}-k{n_folds}-seed{seed}.json"):
        try:
            folds = json.loads(path.read_text()).get("folds", {})
        except (ValueError, OSError, AttributeError):
            continue
        if isinstance(folds, dict) and len(wanted & set(folds)) > len(wanted) / 2:
            matches.append(path)
    return matches[0] if len(matches) == 1 else None


def default_split_file(dataset: str, ids: Sequence[str], n_folds: int, seed: int, source: str | None) -> Path:
    """The split file used when none is given: keyed by `source` (see `split_file_path`; by the ids when None).

    The first time a dataset is read under this scheme, a file the earlier ids-keyed scheme wrote for it
    (`_legacy_file`) is adopted, copied to the new name: its folds stay as they were, and if images were added
    since, the mismatch is reported instead of new folds being drawn."""
    if source is None:
        return split_file_path(None, dataset, ids, n_folds, seed)
    path = split_file_path(None, dataset, source, n_folds, seed)
    if not path.exists():
        legacy = _legacy_file(dataset, ids, n_folds, seed)
        if legacy is not None:
            try:
                payload = json.loads(legacy.read_text())
            except (ValueError, OSError):
                return path
            write_json_atomic(path, {**payload, "source": source, "adopted_from": legacy.name})
    return path


def holdout_mask(
    ids: Sequence[str],
    labels: Sequence | np.ndarray,
    fraction: float,
    seed: int,
    groups: Sequence[str] | None = None,
    split_file: str | Path | None = None,
    dataset: str = "",
    grouped_by: str | None = None,
    source: str | None = None,
) -> np.ndarray:
    """Boolean mask of a held-out part of about `fraction` (fold 0 of round(1/fraction) folds).

    Used to carve a validation split from an official training list (grouped by patient or lesion).
    """
    if not 0 < fraction < 1:
        raise DatasetOptionError(f"{dataset}: holdout fraction must be in (0, 1), got {fraction}")
    n_folds = max(2, round(1 / fraction))
    path = split_file if split_file is not None else default_split_file(f"{dataset}-holdout", ids, n_folds, seed,
                                                                          source)
    folds = load_or_create_folds(path, ids, labels, n_folds, seed, groups, dataset, grouped_by=grouped_by,
                                 source=source)
    return folds == 0


#: how `fold_split_names` draws the validation split: "train-folds" (carved from the training folds) or
#: "next-fold" (the fold after the test fold)
VAL_FROM = ("train-folds", "next-fold")


def carved_val_file(folds_file: str | Path, fold: int, val_fraction: float) -> Path:
    """The split file recording the validation part carved from the training folds of test fold `fold`: next to
    `folds_file`, named after it (`folds.json` -> `folds-fold0-val0.1.json`)."""
    folds_file = Path(folds_file)
    return folds_file.with_name(f"{folds_file.stem}-fold{fold}-val{val_fraction:g}.json")


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
    source: str | None = None,
    val_from: str = "next-fold",
    val_fraction: float = 0.1,
) -> np.ndarray:
    """The split name ("train", "val" or "test") of every id, from seeded stratified (grouped) folds.

    test = fold `fold` in both protocols. `val_from` says where the validation split comes from:

    - "next-fold": val = fold `(fold + 1) % n_folds`, train = the other `n_folds - 2` folds (3 of 5: 60 % of
      the data trains).
    - "train-folds": train + val = the `n_folds - 1` other folds (4 of 5: 80 %, the training budget of k-fold
      cross-validation as in CRL's official code); val is about `val_fraction` of them, carved with the same
      seeded stratification (and grouping) as the folds: fold 0 of round(1 / val_fraction) folds of those
      images. It is recorded in its own split file, `carved_val_file(split_file, fold, val_fraction)`, written
      the first time and read back after that (so it stays fixed, and a change in the data is an error, as for
      the folds).

    The folds are written to `split_file` (default: `default_split_file`, keyed by `source`, where the data live)
    once and reused; a file that no longer matches the ids is an error (see `load_or_create_folds`).
    """
    n_folds, fold, seed = (_number_option(n_folds, "n_folds", dataset), _number_option(fold, "fold", dataset),
                           _number_option(seed, "seed", dataset))
    if val_from not in VAL_FROM:
        raise DatasetOptionError(f"{dataset}: option 'val_from': expected one of {list(VAL_FROM)}, got {val_from!r}")
    minimum = 3 if val_from == "next-fold" else 2
    if n_folds < minimum:
        raise DatasetOptionError(f"{dataset}: n_folds must be at least {minimum} with val_from={val_from!r} "
                                 f"(train, val and test need {minimum} folds), got {n_folds}")
    if not 0 <= fold < n_folds:
        raise DatasetOptionError(f"{dataset}: fold {fold} is out of range for {n_folds} folds; expected "
                                 f"0..{n_folds - 1}")
    path = split_file if split_file is not None else default_split_file(dataset, ids, n_folds, seed, source)
    folds = load_or_create_folds(path, ids, labels, n_folds, seed, groups, dataset, grouped_by=grouped_by,
                                 source=source)
    out = np.full(len(ids), "train", dtype=object)
    out[folds == fold] = "test"
    if val_from == "next-fold":
        out[folds == (fold + 1) % n_folds] = "val"
        return out
    fraction = _number_option(val_fraction, "val_fraction", dataset, kind=float)
    if not 0 < fraction < 1:
        raise DatasetOptionError(f"{dataset}: option 'val_fraction': expected a fraction in (0, 1) of the training "
                                 f"folds, got {val_fraction!r}")
    pool = np.flatnonzero(folds != fold)
    labels_arr = np.asarray(labels)
    val = holdout_mask([str(ids[i]) for i in pool], labels_arr[pool], fraction, seed,
                       None if groups is None else [groups[i] for i in pool],
                       split_file=carved_val_file(path, fold, fraction), dataset=dataset, grouped_by=grouped_by,
                       source=source)
    out[pool[val]] = "val"
    return out
