"""Fixtures of CIPL's tests (the tiny backbones come from medimg_core.testing)."""

from collections.abc import Callable, Sequence

import pytest
import torch

from cipl.model import CIPL, LabelSpace
from medimg_core.testing import TinyConvBackbone


@pytest.fixture
def tiny_cipl() -> Callable[..., CIPL]:
    """make(classes, task, m, d, seed) -> a CIPL on TinyConvBackbone (1 channel, stride 2) with m prototypes of d
    channels per class."""

    def make(classes: Sequence[str] = ("a", "b", "c"), task: str = "multilabel", m: int = 2, d: int = 8,
             seed: int = 0) -> CIPL:
        torch.manual_seed(seed)
        return CIPL(TinyConvBackbone(), LabelSpace.for_task(task, classes), prototypes_per_class=m, prototype_dim=d,
                    reduce_dim=8, add_on_layers=2)

    return make


#: the tiny settings of the tests that train (test_resnet at 32 px, two epochs, two 16-channel prototypes per
#: class); test_cli.py passes the same ones as command-line options
TINY_SETTINGS = {"model__backbone": "test_resnet", "model__output_stride": 8, "data__image_size": 32,
                 "train__epochs": 2, "train__batch_size": 8, "model__prototypes_per_class": 2,
                 "model__prototype_dim": 16, "model__reduce_dim": 16, "schedule__warm_epochs": 1,
                 "schedule__push_epochs": [1, 2], "schedule__last_layer_epochs": 1, "bootstrap": 20, "device": "cpu",
                 "train__progress": False}


@pytest.fixture(scope="session")
def tiny_settings() -> dict:
    """CIPLClassifier keyword arguments for a training of seconds (a copy: tests may change it)."""
    return dict(TINY_SETTINGS)
