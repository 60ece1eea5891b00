"""The concept bottleneck: a sparse decomposition of each embedding over the selected concept vectors (OMP),
then a linear classifier whose class logits split exactly into per-concept contributions.

    cbm = ConceptBottleneck(cavs[ranking], n_nonzero=16).fit(h_train, y_train, h_val, y_val)
    cbm.predict(h_test); cbm.contributions(h_test)                # per-concept contributions to a logit
    save_cbm(cbm, folder, latents, sources); load_cbm(folder)     # cbm.safetensors + cbm.json
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from safetensors.numpy import save_file
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, orthogonal_mp_gram
from sklearn.multiclass import OneVsRestClassifier

from medimg_core.checkpoint import CheckpointError, bad_value, read_tensors, write_json
from medimg_core.runs import read_json_object


def task_scores(task: str, logits: np.ndarray) -> np.ndarray:
    """Class scores (N, C) of a linear head's logits (N, C): sigmoid per label (multilabel), else softmax."""
    if task == "multilabel":
        return 1 / (1 + np.exp(-logits))
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def task_targets(task: str, targets: Any) -> np.ndarray:
    """Targets as the metrics and classifiers take them: float (N, L) for multilabel, else int64 (N,)."""
    t = np.asarray(targets)
    return t.astype(np.float32) if task == "multilabel" else t.astype(np.int64)


def sparse_decompose(embeddings: np.ndarray, dictionary: np.ndarray, n_nonzero: int,
                     fit_intercept: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Orthogonal matching pursuit of every embedding over the dictionary rows, batched through the Gram
    matrix (scikit-learn's `orthogonal_mp_gram`); equal to `OrthogonalMatchingPursuit(n_nonzero_coefs,
    fit_intercept).fit(dictionary.T, h)` run per embedding.

    embeddings: (N, d); dictionary: (K, d) concept vectors. The "samples" of each OMP problem are the d
    feature dimensions: h ~ dictionary.T @ w + b * 1, ||w||_0 <= n_nonzero.
    Returns (coefficients (N, K), intercepts (N,), zero without `fit_intercept`).
    """
    H = np.asarray(embeddings, dtype=np.float64)
    D = np.asarray(dictionary, dtype=np.float64)
    if H.ndim != 2 or D.ndim != 2 or H.shape[1] != D.shape[1]:
        raise ValueError(f"sparse_decompose: embeddings (N, d) and dictionary (K, d) must share d; got "
                         f"{H.shape} and {D.shape}")
    K = D.shape[0]
    if not 1 <= n_nonzero <= K:
        raise ValueError(f"sparse_decompose: n_nonzero must be in [1, {K}] (the dictionary size), got {n_nonzero}")
    if len(H) == 0:
        return np.zeros((0, K)), np.zeros(0)
    X = D.T  # (d, K)
    if fit_intercept:
        x_mean = X.mean(axis=0)
        y_mean = H.mean(axis=1)
        Xc, Yc = X - x_mean, (H - y_mean[:, None]).T  # (d, K), (d, N)
    else:
        x_mean, y_mean = np.zeros(K), np.zeros(len(H))
        Xc, Yc = X, H.T
    gram = Xc.T @ Xc
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ended prematurely.*")  # exact fits before n_nonzero atoms
        coef = orthogonal_mp_gram(gram, Xc.T @ Yc, n_nonzero_coefs=n_nonzero, copy_Gram=False, copy_Xy=False)
    coef = np.asarray(coef).reshape(K, -1).T  # (N, K)
    intercept = y_mean - coef @ x_mean if fit_intercept else np.zeros(len(H))
    return coef, intercept


# --------------------------------------------------------------------------- concept bottleneck


#: the official C search: this grid, then `c_search_steps` log-space bisection steps around the best value
C_GRID: tuple[float, ...] = (1e6, 1e4, 1e2, 1.0, 1e-2, 1e-4, 1e-6)


@dataclass
class Contributions:
    """The decomposition of one class logit per embedding: logit = sum(values) + offset + bias.

    values (N, K): concept k's contribution; offset (N,): the decomposition intercept's term; bias (N,):
    the classifier bias; classes (N,): which class each row explains; logits (N,).
    """

    values: np.ndarray
    offset: np.ndarray
    bias: np.ndarray
    classes: np.ndarray
    logits: np.ndarray

    @property
    def residual(self) -> np.ndarray:
        """What no concept carries: offset + bias (N,)."""
        return self.offset + self.bias


class ConceptBottleneck:
    """Sparse decomposition of an embedding over K concept vectors, then a linear classifier.

    features "reconstruction" (as the official code): the classifier reads D^T w + b 1 (d,), so
    logit_y = sum_k w_k (W_y . c_k) + b (W_y . 1) + beta_y. features "coefficients": it reads w (K,),
    logit_y = sum_k V_yk w_k + beta_y. `C` None: tuned on validation accuracy over `c_grid` and
    `c_search_steps` log-space bisection steps, then the chosen model (fitted on train) is kept.

    Logits: binary -> (N, 2) log-odds of each class (+z, -z pairs); multiclass -> multinomial logits;
    multilabel -> per-label log-odds.
    """

    def __init__(self, concepts: np.ndarray, n_nonzero: int = 160, fit_intercept: bool = True,
                 features: Literal["reconstruction", "coefficients"] = "reconstruction", C: float | None = None,
                 task: Literal["binary", "multiclass", "multilabel", "ordinal"] = "multiclass",
                 c_grid: Sequence[float] = C_GRID, c_search_steps: int = 8, max_iter: int = 1000,
                 concept_names: Sequence[str] | None = None, class_names: Sequence[str] | None = None,
                 naming_scores: Sequence[float | None] | None = None):
        self.concepts = np.asarray(concepts, dtype=np.float64)
        if self.concepts.ndim != 2:
            raise ValueError(f"ConceptBottleneck: concepts must be (K, d), got shape {self.concepts.shape}")
        if features not in ("reconstruction", "coefficients"):
            raise ValueError(f"ConceptBottleneck: features must be reconstruction or coefficients, got {features!r}")
        self.n_nonzero = min(int(n_nonzero), self.concepts.shape[0])
        self.fit_intercept, self.features, self.C, self.task = fit_intercept, features, C, task
        self.c_grid, self.c_search_steps, self.max_iter = tuple(c_grid), int(c_search_steps), int(max_iter)
        self.concept_names = list(concept_names) if concept_names is not None else None
        self.class_names = list(class_names) if class_names is not None else None
        #: (K,) each concept's naming score (train AUROC of an annotation name, a vocabulary z-score...), None unknown
        self.naming_scores = list(naming_scores) if naming_scores is not None else None
        self.search_: list[dict[str, float]] = []

    # -- the bottleneck --------------------------------------------------------------------------
    def _check(self, H: np.ndarray) -> np.ndarray:
        H = np.asarray(H, dtype=np.float64)
        if H.ndim != 2 or H.shape[1] != self.concepts.shape[1]:
            raise ValueError(f"ConceptBottleneck: embeddings must be (N, {self.concepts.shape[1]}), got {H.shape}")
        if not np.isfinite(H).all():
            raise ValueError("ConceptBottleneck: embeddings contain NaN or inf")
        return H

    def decompose(self, H: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, d) -> (coefficients (N, K), intercepts (N,))."""
        return sparse_decompose(self._check(H), self.concepts, self.n_nonzero, self.fit_intercept)

    def _features(self, coef: np.ndarray, intercept: np.ndarray) -> np.ndarray:
        if self.features == "coefficients":
            return coef
        return coef @ self.concepts + intercept[:, None]

    def transform(self, H: np.ndarray) -> np.ndarray:
        """The classifier's input: (N, d) reconstructions or (N, K) coefficients."""
        return self._features(*self.decompose(H))

    # -- the classifier --------------------------------------------------------------------------
    def _classifier(self, C: float):
        lr = LogisticRegression(C=C, max_iter=self.max_iter)
        return OneVsRestClassifier(lr) if self.task == "multilabel" else lr

    def _fit_one(self, F: np.ndarray, y: np.ndarray, C: float):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=ConvergenceWarning)
            return self._classifier(C).fit(F, y)

    def _accuracy(self, clf, F: np.ndarray, y: np.ndarray) -> float:
        pred = clf.predict(F)
        return float((pred == y).mean())

    def fit(self, H: np.ndarray, y: np.ndarray, H_val: np.ndarray | None = None,
            y_val: np.ndarray | None = None) -> ConceptBottleneck:
        """Fit on train embeddings H (N, d) and targets y (N,) class indices or (N, L) multi-hot; with C
        None, tune C on (H_val, y_val) validation accuracy."""
        F = self.transform(H)
        y = self._check_targets(y, len(F))
        if self.C is not None:
            self.C_ = float(self.C)
            self.clf_ = self._fit_one(F, y, self.C_)
            return self._finish()
        if H_val is None or y_val is None:
            raise ValueError("ConceptBottleneck.fit: C=None tunes C on validation data; pass H_val and y_val")
        F_val = self.transform(H_val)
        y_val = self._check_targets(y_val, len(F_val))
        tried: dict[float, tuple[float, object]] = {}

        def score(C: float) -> float:
            key = float(C)
            if key not in tried:
                clf = self._fit_one(F, y, key)
                tried[key] = (self._accuracy(clf, F_val, y_val), clf)
                self.search_.append({"C": key, "val_accuracy": tried[key][0]})
            return tried[key][0]

        grid = sorted(self.c_grid, reverse=True)
        scores = [score(c) for c in grid]
        best_i = int(np.argmax(scores))  # first best = the largest C among ties, as a grid scan from 1e6 does
        best = grid[best_i]
        lo = grid[min(best_i + 1, len(grid) - 1)]
        hi = grid[max(best_i - 1, 0)]
        for _ in range(self.c_search_steps):  # log-space bisection around the best value
            left, right = math.sqrt(lo * best), math.sqrt(best * hi)
            s_left, s_right, s_best = score(left), score(right), score(best)
            if s_left > s_best and s_left >= s_right:
                hi, best = best, left
            elif s_right > s_best:
                lo, best = best, right
            else:
                lo, hi = left, right
        self.C_ = float(best)
        self.clf_ = tried[float(best)][1]
        return self._finish()

    def _check_targets(self, y: np.ndarray, n: int) -> np.ndarray:
        y = np.asarray(y)
        if len(y) != n:
            raise ValueError(f"ConceptBottleneck: {len(y)} targets for {n} embeddings")
        if self.task == "multilabel":
            if y.ndim != 2:
                raise ValueError(f"ConceptBottleneck: multilabel targets must be (N, L) 0/1, got shape {y.shape}")
            return y.astype(np.int64)
        if y.ndim != 1:
            raise ValueError(f"ConceptBottleneck: {self.task} targets must be (N,) class indices, got {y.shape}")
        return y.astype(np.int64)

    def _finish(self) -> ConceptBottleneck:
        """Collect the classifier as class logits W (C, F) and b (C,)."""
        clf = self.clf_
        if self.task == "multilabel":
            W = np.stack([e.coef_[0] for e in clf.estimators_])
            b = np.array([e.intercept_[0] for e in clf.estimators_])
            self.classes_ = np.arange(len(W))
        else:
            self.classes_ = np.asarray(clf.classes_)
            if len(self.classes_) == 2:  # one log-odds z for class 1: class 1 gets +z, class 0 -z
                W = np.stack([-clf.coef_[0], clf.coef_[0]])
                b = np.array([-clf.intercept_[0], clf.intercept_[0]])
            else:
                W, b = clf.coef_, clf.intercept_
        self.W_, self.b_ = np.asarray(W, dtype=np.float64), np.asarray(b, dtype=np.float64)
        return self

    def load_state(self, W: np.ndarray, b: np.ndarray, classes: np.ndarray, C: float) -> ConceptBottleneck:
        """Restore a fitted model from its logits' weights (as `state` returns them)."""
        self.W_, self.b_ = np.asarray(W, dtype=np.float64), np.asarray(b, dtype=np.float64)
        self.classes_, self.C_ = np.asarray(classes), float(C)
        return self

    def state(self) -> dict[str, np.ndarray]:
        return {"concepts": self.concepts, "W": self.W_, "b": self.b_, "classes": self.classes_}

    # -- predictions and explanations ------------------------------------------------------------
    def _fitted(self) -> None:
        if not hasattr(self, "W_"):
            raise RuntimeError("ConceptBottleneck: call fit first")

    def decision_function(self, H: np.ndarray) -> np.ndarray:
        """(N, d) -> class logits (N, C) (log-odds for binary and multilabel)."""
        self._fitted()
        return self.transform(H) @ self.W_.T + self.b_

    def predict_proba(self, H: np.ndarray) -> np.ndarray:
        """(N, C) probabilities: softmax for multiclass, sigmoid of the log-odds for binary/multilabel."""
        logits = self.decision_function(H)
        if self.task == "multilabel":
            return 1 / (1 + np.exp(-logits))
        if len(self.classes_) == 2:
            p1 = 1 / (1 + np.exp(-logits[:, 1]))
            return np.stack([1 - p1, p1], axis=1)
        z = logits - logits.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def predict(self, H: np.ndarray) -> np.ndarray:
        """Class indices (N,), or (N, L) 0/1 for multilabel."""
        proba = self.predict_proba(H)
        if self.task == "multilabel":
            return (proba > 0.5).astype(np.int64)
        return self.classes_[proba.argmax(axis=1)]

    def concept_weights(self) -> np.ndarray:
        """(C, K) what one unit of concept k's coefficient adds to each class logit."""
        self._fitted()
        return self.W_ @ self.concepts.T if self.features == "reconstruction" else self.W_

    def contributions(self, H: np.ndarray, classes: np.ndarray | Sequence[int] | int | None = None) -> Contributions:
        """Per-concept contributions to the logit of `classes` (default: the predicted class; for
        multilabel the label with the highest log-odds). logit = values.sum(1) + offset + bias exactly."""
        self._fitted()
        coef, intercept = self.decompose(H)
        logits = self._features(coef, intercept) @ self.W_.T + self.b_
        n = len(coef)
        if classes is None:
            cls = logits.argmax(axis=1)
        else:
            cls = np.broadcast_to(np.asarray(classes, dtype=np.int64), (n,)).copy()
            if ((cls < 0) | (cls >= self.W_.shape[0])).any():
                raise ValueError(f"ConceptBottleneck.contributions: class index out of [0, {self.W_.shape[0]})")
        weights = self.concept_weights()  # (C, K)
        values = coef * weights[cls]
        offset = intercept * self.W_[cls].sum(axis=1) if self.features == "reconstruction" else np.zeros(n)
        bias = self.b_[cls]
        return Contributions(values=values, offset=offset, bias=bias, classes=cls,
                             logits=logits[np.arange(n), cls])


# --------------------------------------------------------------------------- saved as files


def cbm_meta(cbm: ConceptBottleneck, latents: Sequence[int], sources: Sequence[str]) -> dict[str, Any]:
    """What cbm.json holds: the settings, class and concept names, and each concept's SAE latent and name source."""
    return {"task": cbm.task, "class_names": cbm.class_names, "concept_names": cbm.concept_names,
            "latents": [int(k) for k in latents], "sources": list(sources), "naming_scores": cbm.naming_scores,
            "C": cbm.C_,
            "n_nonzero": cbm.n_nonzero, "fit_intercept": cbm.fit_intercept, "features": cbm.features,
            "c_search": cbm.search_}


def cbm_tensors(cbm: ConceptBottleneck) -> dict[str, np.ndarray]:
    """What cbm.safetensors holds: concepts (K, d), W (C, F), b (C,), classes (C,), contiguous."""
    return {k: np.ascontiguousarray(v) for k, v in cbm.state().items()}


def save_cbm(cbm: ConceptBottleneck, folder: Path, latents: Sequence[int], sources: Sequence[str]) -> None:
    """Write a fitted bottleneck into `folder` as cbm.safetensors + cbm.json."""
    save_file(cbm_tensors(cbm), str(folder / "cbm.safetensors"))
    write_json(folder / "cbm.json", cbm_meta(cbm, latents, sources))


def load_cbm(folder: str | Path, n_latents: int | None = None,
             class_names: Sequence[str] | None = None) -> ConceptBottleneck:
    """The fitted concept bottleneck saved in `folder` (a cbm stage folder or a checkpoint folder); its
    `latents` and `sources` attributes list each concept's SAE latent and where its name came from.

    Both files are checked against each other (and against the SAE's `n_latents` and the model's `class_names`
    when given): a value that does not fit is a CheckpointError naming the file, the key and what was expected."""
    folder = Path(folder)
    path = folder / "cbm.json"
    meta = read_json_object(path, "the concept bottleneck's settings (cbm.json)")
    t = {k: v.numpy() for k, v in read_tensors(folder / "cbm.safetensors", "the concept bottleneck's weights").items()}
    missing = sorted({"concepts", "W", "b", "classes"} - set(t))
    if missing or t["concepts"].ndim != 2 or t["W"].ndim != 2 or t["b"].ndim != 1:
        shapes = {k: list(v.shape) for k, v in t.items()}
        raise CheckpointError(f"{folder / 'cbm.safetensors'}: holds {shapes}; expected concepts (K, d), W (C, F), "
                              "b (C,) and classes")
    n_concepts = len(t["concepts"])
    if t["W"].shape[0] != len(t["b"]) or t["W"].shape[1] not in (n_concepts, t["concepts"].shape[1]):
        raise CheckpointError(f"{folder / 'cbm.safetensors'}: W {list(t['W'].shape)} and b {list(t['b'].shape)} do "
                              f"not fit {n_concepts} concepts of {t['concepts'].shape[1]} dimensions")
    lacking = [k for k in ("task", "class_names", "concept_names", "latents", "C", "n_nonzero", "fit_intercept",
                           "features") if k not in meta]
    if lacking:
        raise CheckpointError(f"{path}: no {', '.join(repr(k) for k in lacking)} (found {sorted(meta)[:10]})")
    if meta["task"] not in ("binary", "multiclass", "multilabel", "ordinal"):
        raise bad_value(path, "'task'", meta["task"], "binary, multiclass, multilabel or ordinal")
    if meta["features"] not in ("reconstruction", "coefficients"):
        raise bad_value(path, "'features'", meta["features"], "reconstruction or coefficients")
    if not isinstance(meta["fit_intercept"], bool):
        raise bad_value(path, "'fit_intercept'", meta["fit_intercept"], "true or false")
    if not _is_count(meta["n_nonzero"]):
        raise bad_value(path, "'n_nonzero'", meta["n_nonzero"], "an integer >= 1")
    if isinstance(meta["C"], bool) or not isinstance(meta["C"], (int, float)) or not np.isfinite(meta["C"]) \
            or meta["C"] <= 0:
        raise bad_value(path, "'C'", meta["C"], "a finite number > 0")
    names = meta["concept_names"]
    if not isinstance(names, list) or len(names) != n_concepts or not all(isinstance(n, str) for n in names):
        raise bad_value(path, "'concept_names'", names, f"{n_concepts} names, one per concept vector of "
                        "cbm.safetensors")
    latents = meta["latents"]
    top = "" if n_latents is None else f" in [0, {n_latents - 1}] (the SAE's latents)"
    if not isinstance(latents, list) or len(latents) != n_concepts or not all(
            isinstance(k, int) and not isinstance(k, bool) and k >= 0 and (n_latents is None or k < n_latents)
            for k in latents):
        raise bad_value(path, "'latents'", latents, f"{n_concepts} latent indices{top or ' >= 0'}, one per concept")
    classes = meta["class_names"]
    n_classes = len(t["classes"])
    if not isinstance(classes, list) or len(classes) != n_classes or not all(isinstance(c, str) for c in classes):
        raise bad_value(path, "'class_names'", classes, f"{n_classes} class names (the classifier's classes in "
                        "cbm.safetensors)")
    if class_names is not None and list(classes) != list(class_names):
        raise bad_value(path, "'class_names'", classes, f"the model's classes {list(class_names)}, in that order")
    scores = meta.get("naming_scores")  # absent before naming scores were kept
    if scores is not None and (not isinstance(scores, list) or len(scores) != n_concepts or not all(
            v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)) for v in scores)):
        raise bad_value(path, "'naming_scores'", scores, f"{n_concepts} finite numbers or nulls, one per concept")
    cbm = ConceptBottleneck(t["concepts"], n_nonzero=meta["n_nonzero"], fit_intercept=meta["fit_intercept"],
                            features=meta["features"], C=meta["C"], task=meta["task"],
                            concept_names=names, class_names=classes, naming_scores=scores)
    cbm.latents, cbm.sources = latents, meta.get("sources") or []
    return cbm.load_state(t["W"], t["b"], t["classes"], meta["C"])


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1
