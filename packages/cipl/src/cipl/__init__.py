"""Cross- and Intra-image Prototypical Learning for multi-label diagnosis (Wang et al., IEEE TMI 2025).

    from cipl import CIPLClassifier
    model = CIPLClassifier("synth-cxr-cpu", train__epochs=2).fit(train, val)   # the estimator (cipl.api)
    model.predict_proba(test); model.explain("image.png").to_text()

The building blocks:

    from cipl import CIPL, LabelSpace, push_prototypes
    model = CIPL(backbone, LabelSpace.for_task("multilabel", findings))   # findings + a "No Finding" block
    maps = model.prototype_activations(images)                             # (B, K * M, h, w) similarity maps
    push_prototypes(model, train_loader)                                   # one prototype per training image

The estimator, the training entry point and the run-folder functions are imported on first use (they pull in the
datasets, timm and the training loop), so that `cipl --help` stays quick.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from cipl.model import CIPL, CIPLWithTeacher, LabelSpace, class_probabilities
from cipl.push import PushIndex, PushResult, push_prototypes

if TYPE_CHECKING:
    from cipl.api import CIPLClassifier, evaluate_run, push_run, reason_image
    from cipl.config import CIPLConfig
    from cipl.explain import Reasoning
    from cipl.train import train_cipl

#: names imported on first use, and their modules
_LAZY = {"CIPLClassifier": "cipl.api", "evaluate_run": "cipl.api", "push_run": "cipl.api",
         "reason_image": "cipl.api", "CIPLConfig": "cipl.config", "Reasoning": "cipl.explain",
         "train_cipl": "cipl.train"}

try:
    __version__ = version("cipl")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

__all__ = ["CIPL", "CIPLClassifier", "CIPLConfig", "CIPLWithTeacher", "LabelSpace", "PushIndex", "PushResult",
           "Reasoning", "__version__", "class_probabilities", "evaluate_run", "push_prototypes", "push_run",
           "reason_image", "train_cipl"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'cipl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
