"""What tests need, shipped with the library (as captum.testing is): tiny models and datasets, fixtures of the
real datasets in their official layouts, and the conformance suite every method's estimator passes.

- `medimg_core.testing.fixtures`: writers of tiny copies of the real datasets' files (WBCAtt, MedMNIST,
  ChestX-ray14, Derm7pt, ...) and `shared_data_dir()`;
- `medimg_core.testing.tiny`: `tiny_backbone`, `tiny_splits` / `tiny_dataset` (synthetic, with concepts and
  masks, for every task type), and feature-only stand-in backbones;
- `medimg_core.testing.conformance`: `check_estimator`, the fit / predict / explain / save / load contract.
"""

from medimg_core.testing.fixtures import *  # noqa: F403
from medimg_core.testing.fixtures import __all__ as _fixtures
from medimg_core.testing.tiny import (
    TASKS,
    IdentityBackbone,
    TinyConvBackbone,
    tiny_backbone,
    tiny_dataset,
    tiny_splits,
)

__all__ = [*_fixtures, "TASKS", "IdentityBackbone", "TinyConvBackbone", "tiny_backbone", "tiny_dataset",
           "tiny_splits"]
