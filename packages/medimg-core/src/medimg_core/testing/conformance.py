"""The contract every method's estimator keeps, as one check that a parametrised test runs per method and task.

    from medimg_core.testing.conformance import check_estimator
    check_estimator(lambda: ConceptRuleLearner("synthetic-cpu", model__backbone="test_resnet", ...),
                    tiny_splits("binary"), tmp_path)

What it checks, in order (each failure says which part of the contract broke):

1. the constructor only stores its settings (no fitted attribute, `get_params` returns them);
2. `fit(train, val)` returns the estimator itself and writes a run folder with the contract's files
   (`medimg_core.runs.RUN_LAYOUT`): config.yaml, metrics.json with the common keys, a best checkpoint whose
   config.json has kind / format / versions / config / card / preprocess, model.safetensors and a README card,
   and at least one PNG figure;
3. `predict_proba` on the test split: shape (N, C), finite, in [0, 1], rows summing to 1 (single-label);
   `predict` agrees with it; a tensor batch and the dataset give the same probabilities;
4. `explain` on one image: an `Explanation` whose `to_text()` and `to_text(top_k=1)` are non-empty text,
   whose `figure(path)` writes a PNG, and whose `to_dict()` survives `json.dumps`; an explicit `target` is kept;
5. `save_pretrained` then `from_pretrained` (and `medimg_core.pretrained.load_pretrained`) give the same type
   and identical probabilities.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from medimg_core.estimator import Estimator
from medimg_core.explain import Explanation
from medimg_core.runs import COMMON_KEYS

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG_MAGIC


def check_run_folder(run: Path, kind: str | tuple[str, ...]) -> dict[str, Any]:
    """The run folder contract; returns metrics.json."""
    run = Path(run)
    assert (run / "config.yaml").is_file(), f"{run}: no config.yaml"
    metrics = json.loads((run / "metrics.json").read_text())
    missing = [k for k in COMMON_KEYS if k not in metrics]
    assert not missing, f"{run}/metrics.json lacks the common keys {missing}"
    best = run / "checkpoints" / "best"
    for name in ("model.safetensors", "config.json", "README.md"):
        assert (best / name).is_file(), f"{best}: no {name}"
    config = json.loads((best / "config.json").read_text())
    lacking = [k for k in ("kind", "format", "versions", "config", "card", "preprocess") if k not in config]
    assert not lacking, f"{best}/config.json lacks {lacking}"
    kinds = (kind,) if isinstance(kind, str) else kind
    assert config["kind"] in kinds, f"{best}: kind {config['kind']!r}, expected {kinds}"
    assert any(_is_png(p) for p in (run / "figures").rglob("*.png")), f"{run}/figures has no PNG"
    return metrics


def _test_batch(estimator: Estimator, dataset: Any, n: int) -> torch.Tensor:
    ds = estimator._with_eval_transform(dataset)
    return next(iter(DataLoader(ds, batch_size=n, shuffle=False)))["image"]


def check_estimator(make: Callable[[], Estimator], splits: dict[str, Any], tmp_path: Path,
                    n_explain_targets: int = 2) -> Estimator:
    """Run the whole contract on a fresh estimator from `make()`; returns the fitted estimator."""
    from medimg_core.pretrained import load_pretrained

    tmp_path = Path(tmp_path)
    estimator = make()
    fitted_attrs = [k for k in vars(estimator) if k.endswith("_") and not k.startswith("_")]
    assert not fitted_attrs, f"the constructor set fitted attributes {fitted_attrs}: it should only store settings"
    params = estimator.get_params()
    assert isinstance(params, dict) and "config" in params

    returned = estimator.fit(splits["train"], splits.get("val"))
    assert returned is estimator, "fit must return the estimator itself"
    assert estimator.run_ is not None, "fit must leave its run folder in run_"
    check_run_folder(Path(estimator.run_), estimator.kind)

    test = splits["test"]
    proba = estimator.predict_proba(test)
    n_classes = len(estimator.classes_)
    assert proba.shape == (len(test), n_classes), f"predict_proba gave {proba.shape}, expected {(len(test), n_classes)}"
    assert np.isfinite(proba).all() and (proba >= 0).all() and (proba <= 1).all(), "probabilities outside [0, 1]"
    multilabel = estimator.card_.task == "multilabel"
    if not multilabel:
        np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-4, err_msg="rows of predict_proba must sum to 1")
        assert (estimator.predict(test) == proba.argmax(axis=1)).all(), "predict disagrees with predict_proba"
    else:
        assert (estimator.predict(test) == (proba >= 0.5)).all(), "predict disagrees with predict_proba"
    batch = _test_batch(estimator, test, min(4, len(test)))
    np.testing.assert_allclose(estimator.predict_proba(batch), proba[:len(batch)], rtol=1e-5, atol=1e-6,
                               err_msg="a tensor batch and the dataset give different probabilities")

    x = batch[0]
    explanation = estimator.explain(x)
    assert isinstance(explanation, Explanation), f"explain returned a {type(explanation).__name__}, not an Explanation"
    text = explanation.to_text()
    assert isinstance(text, str) and text.strip(), "to_text() is empty"
    short = explanation.to_text(top_k=1)
    assert isinstance(short, str) and short.strip(), "to_text(top_k=1) is empty"
    figure = explanation.figure(tmp_path / "explain" / "figure.png")
    assert _is_png(Path(figure)), f"figure() did not write a PNG at {figure}"
    json.dumps(explanation.to_dict())
    for target in range(min(n_explain_targets, n_classes)):
        explained = estimator.explain(x, target=target)
        assert explained.target == target, f"explain(x, target={target}) explained {explained.target}"

    saved = estimator.save_pretrained(tmp_path / "saved")
    loaded = type(estimator).from_pretrained(saved)
    again = load_pretrained(saved)
    assert type(again) is type(estimator), f"load_pretrained gave a {type(again).__name__}"
    for other in (loaded, again):
        np.testing.assert_array_equal(other.predict_proba(batch), estimator.predict_proba(batch),
                                      err_msg="save_pretrained -> from_pretrained changed the predictions")
    return estimator
