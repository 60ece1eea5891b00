"""The decision hyperplane in the semantic latent space and its ordinal calibration (Atad et al.).

    boundary = LatentBoundary(classifier="svm").fit(z_train, grades_train)   # label = grade >= positive_min_grade
    boundary.distance(z)       # signed distance to the hyperplane (N,)
    boundary.grade(z)          # calibrated grade alpha * distance + beta (N,)
    boundary.edit_to_grade(z, [0, 1, 2, 3, 4])   # (N, 5, D): latents whose calibrated grade is each target

A linear classifier (scikit-learn's SVC with a linear kernel, as in the paper's notebooks, or a
logistic regression) separates the binary pathology in z_sem, optionally after per-dimension
standardisation with the training mean mu and std sigma (DiffAE's manipulation works on
standardised latents). With u = (z - mu) / sigma (or u = z) and the hyperplane w . u + b = 0:

    d(z) = (w . u + b) / ||w||                      signed Euclidean distance in u
    grade(z) = alpha d(z) + beta                    linear regression of the grade on d (training set)
    edit_to_grade(z, g):  d* = (g - beta) / alpha,  u' = u + (d* - d(z)) w / ||w||,  z' = mu + sigma u'

u' is the point nearest to u (L2) whose calibrated grade is exactly g. `edit_fixed_step` is the rule
of the paper's notebooks: u' = u + direction * step * w / (||w|| sqrt(D)). With along="mean-difference" (ours)
it steps along the unit difference of the two classes' mean u on the training set instead of the normal: on
RetinaMNIST the normal is nearly orthogonal to that difference and the decoder hardly renders it (package README).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from medimg_core.checkpoint import CheckpointError, bad_value, write_json

FORMAT = "dae-counterfactual/latent-boundary"


def _as_latents(z: Any, name: str = "z", dim: int | None = None) -> np.ndarray:
    arr = np.asarray(z.detach().cpu().numpy() if hasattr(z, "detach") else z, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise ValueError(f"{name}: expected latents of shape (N, D) with N >= 1, got {arr.shape}")
    if not np.isfinite(arr).all():
        bad = np.argwhere(~np.isfinite(arr))[0]
        raise ValueError(f"{name}: row {bad[0]}, dimension {bad[1]} is {arr[tuple(bad)]}; latents must be finite")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(f"{name}: latents have {arr.shape[1]} dimensions; this boundary was fitted on {dim}")
    return arr


class LatentBoundary(BaseEstimator):
    """Linear decision boundary on z_sem + linear calibration of the grade on the distance to it.

    Parameters
    ----------
    classifier: "svm" (SVC, linear kernel; the paper) or "logistic" (LogisticRegression).
    C: inverse regularisation strength of either classifier.
    standardize: fit and edit in per-dimension standardised latents (mu, sigma of the training set).
    positive_min_grade: the binary pathology is grade >= this (1: grade > 0).
    class_weight: None or "balanced", passed to the classifier.

    Fitted attributes: coef_ (D,) w, intercept_ b, slope_ alpha, offset_ beta, mean_ (D,), scale_ (D,),
    n_features_in_, calibration_ (r2 of the regression on the training set), mean_difference_ (D,) the mean u
    of the positive training latents minus that of the negative ones (None for a boundary written before it was
    stored).
    """

    def __init__(self, classifier: Literal["svm", "logistic"] = "svm", C: float = 1.0, standardize: bool = True,
                 positive_min_grade: float = 1, class_weight: str | None = None, random_state: int = 42):
        self.classifier = classifier
        self.C = C
        self.standardize = standardize
        self.positive_min_grade = positive_min_grade
        self.class_weight = class_weight
        self.random_state = random_state

    # ---------------------------------------------------------------- fitting
    def fit(self, z: Any, grades: Any, labels: Any | None = None) -> LatentBoundary:
        """Fit on latents z (N, D) and grades (N,); binary labels default to grade >= positive_min_grade."""
        from sklearn.linear_model import LinearRegression, LogisticRegression
        from sklearn.svm import SVC

        z = _as_latents(z)
        grades = np.asarray(grades, dtype=np.float64).reshape(-1)
        if grades.shape[0] != z.shape[0]:
            raise ValueError(f"grades: {grades.shape[0]} values for {z.shape[0]} latents")
        if not np.isfinite(grades).all():
            raise ValueError(f"grades: row {int(np.flatnonzero(~np.isfinite(grades))[0])} is not a finite number")
        y = (grades >= self.positive_min_grade) if labels is None else np.asarray(labels).reshape(-1)
        y = y.astype(np.int64)
        if y.shape[0] != z.shape[0]:
            raise ValueError(f"labels: {y.shape[0]} values for {z.shape[0]} latents")
        if set(np.unique(y)) != {0, 1}:
            raise ValueError(f"the binary labels must contain both 0 and 1 (positive = grade >= "
                             f"{self.positive_min_grade}); got {sorted(set(np.unique(y).tolist()))}")
        if self.classifier not in ("svm", "logistic"):
            raise ValueError(f"classifier must be 'svm' or 'logistic', got {self.classifier!r}")
        self.n_features_in_ = z.shape[1]
        if self.standardize:
            self.mean_ = z.mean(axis=0)
            std = z.std(axis=0)
            self.scale_ = np.where(std > 1e-12, std, 1.0)
        else:
            self.mean_, self.scale_ = np.zeros(z.shape[1]), np.ones(z.shape[1])
        u = (z - self.mean_) / self.scale_
        if self.classifier == "svm":
            clf = SVC(kernel="linear", C=self.C, class_weight=self.class_weight, random_state=self.random_state)
        else:
            clf = LogisticRegression(C=self.C, class_weight=self.class_weight, max_iter=5000)
        clf.fit(u, y)
        self.mean_difference_ = u[y == 1].mean(axis=0) - u[y == 0].mean(axis=0)
        self.coef_ = np.asarray(clf.coef_, dtype=np.float64).reshape(-1)
        self.intercept_ = float(np.asarray(clf.intercept_).reshape(-1)[0])
        if not np.linalg.norm(self.coef_) > 0:
            raise ValueError("the linear classifier found no direction (w = 0); the latents do not separate the classes")
        reg = LinearRegression().fit(self.distance(z)[:, None], grades)
        self.slope_, self.offset_ = float(reg.coef_[0]), float(reg.intercept_)
        self.calibration_ = float(reg.score(self.distance(z)[:, None], grades))
        return self

    @classmethod
    def from_hyperplane(cls, w: Sequence[float], b: float, slope: float, offset: float,
                        mean: Sequence[float] | None = None, scale: Sequence[float] | None = None,
                        mean_difference: Sequence[float] | None = None, **params: Any) -> LatentBoundary:
        """A boundary with a given hyperplane w . u + b = 0 and calibration grade = slope * d + offset (and,
        optionally, the class-mean difference in u space that along="mean-difference" edits follow)."""
        w_arr = np.asarray(w, dtype=np.float64).reshape(-1)
        obj = cls(standardize=mean is not None or scale is not None, **params)
        obj.n_features_in_ = w_arr.shape[0]
        obj.coef_, obj.intercept_ = w_arr, float(b)
        obj.mean_ = np.zeros_like(w_arr) if mean is None else np.asarray(mean, dtype=np.float64)
        obj.scale_ = np.ones_like(w_arr) if scale is None else np.asarray(scale, dtype=np.float64)
        obj.slope_, obj.offset_ = float(slope), float(offset)
        obj.calibration_ = float("nan")
        obj.mean_difference_ = None if mean_difference is None else np.asarray(mean_difference, dtype=np.float64)
        return obj

    # ---------------------------------------------------------------- geometry
    def _u(self, z: Any) -> np.ndarray:
        check_is_fitted(self, "coef_")
        return (_as_latents(z, dim=self.n_features_in_) - self.mean_) / self.scale_

    @property
    def normal_(self) -> np.ndarray:
        """The unit normal w / ||w|| (D,) in the (standardised) space of the classifier."""
        return self.coef_ / np.linalg.norm(self.coef_)

    def decision_function(self, z: Any) -> np.ndarray:
        """The classifier's score w . u + b (N,)."""
        return self._u(z) @ self.coef_ + self.intercept_

    def distance(self, z: Any) -> np.ndarray:
        """Signed distance (N,) of each latent to the hyperplane (positive side = pathology)."""
        return self.decision_function(z) / np.linalg.norm(self.coef_)

    def predict(self, z: Any) -> np.ndarray:
        """Binary prediction (N,) int: 1 = pathology (distance > 0)."""
        return (self.distance(z) > 0).astype(np.int64)

    def score_proba(self, z: Any) -> np.ndarray:
        """A monotone score in (0, 1) of the pathology, sigmoid(distance) (N,): for AUROC, not a calibrated probability."""
        return 1.0 / (1.0 + np.exp(-self.distance(z)))

    def grade(self, z: Any) -> np.ndarray:
        """Calibrated grade alpha * distance + beta (N,), continuous."""
        return self.slope_ * self.distance(z) + self.offset_

    def distance_for_grade(self, grades: Any) -> np.ndarray:
        """The signed distance d* = (g - beta) / alpha at which the calibrated grade is g."""
        check_is_fitted(self, "coef_")
        if not abs(self.slope_) > 1e-12:
            raise ValueError("the grade calibration is flat (slope 0): the distance to the hyperplane does not "
                             "predict the grade, so no edit can reach a target grade")
        return (np.asarray(grades, dtype=np.float64) - self.offset_) / self.slope_

    # ---------------------------------------------------------------- edits
    def _back(self, u: np.ndarray) -> np.ndarray:
        return u * self.scale_ + self.mean_

    def edit_to_distance(self, z: Any, distances: Any) -> np.ndarray:
        """Move each latent along the normal to each signed distance: (N, D), (K,) -> (N, K, D)."""
        u = self._u(z)
        target = np.atleast_1d(np.asarray(distances, dtype=np.float64))
        delta = target[None, :] - (u @ self.normal_ + self.intercept_ / np.linalg.norm(self.coef_))[:, None]
        return self._back(u[:, None, :] + delta[..., None] * self.normal_)

    def edit_to_grade(self, z: Any, grades: Any) -> np.ndarray:
        """The minimal (standardised-L2) edits whose calibrated grade equals each target: (N, D), (K,) -> (N, K, D)."""
        return self.edit_to_distance(z, self.distance_for_grade(np.atleast_1d(grades)))

    def edit_direction(self, along: Literal["normal", "mean-difference"] = "normal") -> np.ndarray:
        """The unit vector (D,) in u space that `edit_fixed_step` moves along: the hyperplane normal, or the unit
        difference of the classes' mean training latents (pointing to the pathology)."""
        if along == "normal":
            return self.normal_
        if along != "mean-difference":
            raise ValueError(f"along must be 'normal' or 'mean-difference', got {along!r}")
        diff = getattr(self, "mean_difference_", None)
        if diff is None:
            raise ValueError("this boundary stores no class-mean difference (fitted before it was stored): refit "
                             "it with `dae-cf fit-boundary RUN`")
        return diff / np.linalg.norm(diff)

    def edit_fixed_step(self, z: Any, steps: Any, direction: Any | None = None,
                        along: Literal["normal", "mean-difference"] = "normal") -> np.ndarray:
        """The paper notebooks' edit u' = u + direction * step * v / sqrt(D): (N, D), (K,) -> (N, K, D), with v
        the unit normal w / ||w|| (the notebooks') or, along="mean-difference", the unit class-mean difference.

        direction: +1 (towards pathology), -1, an (N,) array of those, or None for "across the
        hyperplane" (-sign of the current distance). The notebooks take it from the ground truth.
        """
        u = self._u(z)
        steps = np.atleast_1d(np.asarray(steps, dtype=np.float64))
        if direction is None:
            sign = np.where(self.distance(z) > 0, -1.0, 1.0)
        else:
            sign = np.broadcast_to(np.asarray(direction, dtype=np.float64), (u.shape[0],)).copy()
            if not np.isin(sign, (-1.0, 1.0)).all():
                raise ValueError(f"direction must be +1 or -1, got {np.unique(sign).tolist()}")
        unit = self.edit_direction(along)
        shift = sign[:, None, None] * steps[None, :, None] * unit / np.sqrt(self.n_features_in_)
        return self._back(u[:, None, :] + shift)

    # ---------------------------------------------------------------- persistence (JSON, nothing pickled)
    def to_dict(self) -> dict[str, Any]:
        check_is_fitted(self, "coef_")
        return {"format": FORMAT, "params": self.get_params(), "coef": self.coef_.tolist(),
                "intercept": self.intercept_, "slope": self.slope_, "offset": self.offset_,
                "mean": self.mean_.tolist(), "scale": self.scale_.tolist(), "calibration_r2": self.calibration_,
                "mean_difference": None if getattr(self, "mean_difference_", None) is None
                else self.mean_difference_.tolist()}

    @classmethod
    def from_dict(cls, data: Any, source: str = "boundary") -> LatentBoundary:
        """The boundary of a parsed boundary.json, checked: anything malformed, non-finite or degenerate is a
        `BoundaryFileError` naming `source`, the key and value, and what was expected."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise BoundaryFileError(f"{source}: not a latent boundary file (format {found!r}, expected {FORMAT!r})")
        lacking = [k for k in ("params", "coef", "intercept", "slope", "offset", "mean", "scale") if k not in data]
        if lacking:
            raise BoundaryFileError(f"{source}: no {', '.join(repr(k) for k in lacking)}; expected a boundary "
                                    "written by `dae-cf fit-boundary`")
        params = data["params"]
        if not isinstance(params, dict):
            raise _bad(source, "'params'", params, "an object of the boundary's settings")
        try:
            obj = cls(**params)
        except TypeError as exc:
            raise _bad(source, "'params'", params, f"the settings of LatentBoundary ({exc})") from None
        obj.coef_ = _vector(source, "coef", data["coef"])
        obj.n_features_in_ = obj.coef_.shape[0]
        if not np.any(obj.coef_):
            raise _bad(source, "'coef'", data["coef"], "a normal vector that is not all zeros (a zero vector has no "
                       "direction to edit along)")
        obj.mean_ = _vector(source, "mean", data["mean"], obj.n_features_in_)
        obj.scale_ = _vector(source, "scale", data["scale"], obj.n_features_in_)
        if np.any(obj.scale_ <= 0):
            i = int(np.flatnonzero(obj.scale_ <= 0)[0])
            raise _bad(source, f"'scale'[{i}]", float(obj.scale_[i]), "a standard deviation > 0")
        obj.intercept_, obj.slope_, obj.offset_ = (_finite(source, k, data[k]) for k in ("intercept", "slope", "offset"))
        r2 = data.get("calibration_r2")
        obj.calibration_ = float("nan") if r2 is None else _finite(source, "calibration_r2", r2)
        diff = data.get("mean_difference")
        obj.mean_difference_ = None if diff is None else _vector(source, "mean_difference", diff, obj.n_features_in_)
        if obj.mean_difference_ is not None and not np.any(obj.mean_difference_):
            raise _bad(source, "'mean_difference'", diff, "a class-mean difference that is not all zeros")
        return obj

    def save(self, path: str | Path) -> Path:
        """Write the boundary as JSON (atomically: a temporary file, then a rename)."""
        path = Path(path)
        write_json(path, self.to_dict())
        return path

    @classmethod
    def load(cls, path: str | Path) -> LatentBoundary:
        path = Path(path)
        if not path.is_file():
            raise BoundaryFileError(f"{path}: no boundary here; run `dae-cf fit-boundary RUN` first")
        try:
            data = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise BoundaryFileError(f"{path}: not valid JSON ({exc}); expected a latent boundary file") from None
        return cls.from_dict(data, str(path))


class BoundaryFileError(CheckpointError, ValueError):
    """boundary.json is missing or malformed; the message names the file, the key and value, and what was
    expected. A CheckpointError (the commands print it without a traceback) and, as before, a ValueError."""


def _bad(source: str, where: str, value: Any, expected: str) -> BoundaryFileError:
    return BoundaryFileError(str(bad_value(source, where, value, expected)))


def _finite(source: str, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise _bad(source, f"'{key}'", value, "a finite number")
    return float(value)


def _vector(source: str, key: str, value: Any, length: int | None = None) -> np.ndarray:
    """A list of finite numbers (of `length` when given) as float64."""
    want = f"a list of {length} finite numbers (one per latent dimension, as 'coef')" if length else \
        "a non-empty list of finite numbers (one per latent dimension)"
    if not isinstance(value, list) or not value or (length is not None and len(value) != length):
        raise _bad(source, f"'{key}'", value, want)
    for i, v in enumerate(value):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
            raise _bad(source, f"'{key}'[{i}]", v, "a finite number")
    return np.asarray(value, dtype=np.float64)
