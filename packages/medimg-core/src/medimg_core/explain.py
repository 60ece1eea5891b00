"""One explanation protocol for every method: rules, concepts, prototypes, counterfactuals and scores.

Whatever a method shows for one image, its explanation object offers the same three things, with the same
argument names::

    explanation.to_text(top_k=None) -> str          # readable; top_k caps the rows shown (None: the method's default)
    explanation.figure(path, top_k=None) -> Path    # one PNG (parent folders are made); returns its path
    explanation.to_dict() -> dict                   # JSON-serialisable: numbers, strings, lists, dicts only

and says which class it explains (`target`, an index) and what the model predicted (`predicted`).
`method.explain(x, target=None)` returns one; `target=None` explains the predicted class.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Explanation(Protocol):
    """What every method's explanation implements (see the module docstring)."""

    target: int | None
    predicted: int | None

    def to_text(self, top_k: int | None = None) -> str: ...

    def figure(self, path: str | Path, top_k: int | None = None) -> Path: ...

    def to_dict(self) -> dict[str, Any]: ...


def jsonable(obj: Any) -> Any:
    """`obj` with arrays, tensors, numpy scalars, tuples and paths turned into JSON types (NaN and inf to None)."""
    if hasattr(obj, "detach"):  # a tensor
        obj = obj.detach().cpu().numpy()
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return jsonable(obj.item())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def resolve_target(target: int | str | None, predicted: int, class_names: list[str] | tuple[str, ...]) -> int:
    """The class index to explain: `predicted` for None, else `target` as an index or a class name."""
    if target is None:
        return int(predicted)
    if isinstance(target, str):
        if target not in class_names:
            raise ValueError(f"target {target!r} is not a class; expected one of {list(class_names)}")
        return list(class_names).index(target)
    index = int(target)
    if not 0 <= index < len(class_names):
        raise ValueError(f"target {index} is out of range; expected 0..{len(class_names) - 1} "
                         f"({', '.join(class_names)})")
    return index


def class_targets(scores: Any, target: Any = None) -> list[int]:
    """The class to explain for each of N images, from the model's scores (N, K): the predicted class (argmax) for
    None, else `target`: one int for every image, or N ints (a sequence, array or tensor). Out-of-range or
    misshapen targets are errors that say what was expected. The one target rule of the map explainers
    (medimg_core.posthoc) and their protocols (medimg_core.faithfulness)."""
    if hasattr(scores, "detach"):
        scores = scores.detach().cpu().numpy()
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"the model must return (N, K) scores, got shape {scores.shape}")
    n, k = scores.shape
    if target is None:
        return [int(i) for i in scores.argmax(axis=1)]
    if hasattr(target, "detach"):
        target = target.detach().cpu().numpy()
    values = np.asarray(target)
    if values.dtype.kind not in "iu" and not (values.dtype.kind == "O" and values.ndim == 1
                                              and all(isinstance(v, (int, np.integer)) for v in values)):
        raise TypeError(f"target must be an int, N ints or None, got {type(target).__name__} of {values.dtype}")
    if values.ndim == 0:
        targets = [int(values)] * n
    elif values.ndim == 1:
        if len(values) != n:
            raise ValueError(f"target has {len(values)} entries for {n} images; expected one int per image, "
                             "one int for all, or None")
        targets = [int(v) for v in values]
    else:
        raise ValueError(f"target must be an int or N ints, got shape {values.shape}")
    bad = [t for t in targets if not 0 <= t < k]
    if bad:
        raise ValueError(f"target {bad[0]} is out of range for a model with {k} outputs; expected 0..{k - 1}")
    return targets
