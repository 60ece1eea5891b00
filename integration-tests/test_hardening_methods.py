"""The methods' own estimators given bad arrays: NaN or infinite features, constant features, a single
class, wrong shapes. Each must raise a `ValueError` that names what is wrong (the array, the row or
dimension, what was expected), never a shape error from deep inside torch or scikit-learn, and never
quietly return a result."""

from __future__ import annotations

import numpy as np
import pytest
import torch


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _with_nan(a: np.ndarray, row: int = 3, col: int = 1) -> np.ndarray:
    a = a.copy()
    a[row, col] = np.nan
    return a


# --- neuron-concepts: the sparse autoencoder, facility location, OMP, the concept bottleneck ----------

def _fit_sae(x):
    from neuron_concepts.train import SAEConfig, fit_sae

    return fit_sae(torch.as_tensor(x, dtype=torch.float32), SAEConfig(expansion=2, epochs=1, batch_size=8),
                   progress=False)


def _cbm(**kw):
    from neuron_concepts import ConceptBottleneck

    return ConceptBottleneck(_rng(1).normal(size=(6, 5)), n_nonzero=2, C=1.0, **kw)


X = _rng().normal(size=(20, 5))
Y2 = np.arange(20) % 2

NEURON_CONCEPTS = {
    "sae-nan-features": (lambda: _fit_sae(_with_nan(X)), "NaN"),
    "sae-1d-features": (lambda: _fit_sae(X[:, 0]), "(N, d)"),
    "sae-no-rows": (lambda: _fit_sae(X[:0]), "non-empty"),
    "sae-bad-kind": (lambda: __import__("neuron_concepts").SparseAutoencoder(5, 10, kind="gelu"), "relu, topk"),
    "facility-nan": (lambda: __import__("neuron_concepts").facility_location(_with_nan(X), 3), "NaN"),
    "facility-k-too-large": (lambda: __import__("neuron_concepts").facility_location(X, 50), "k must be in [1, 20]"),
    "omp-dimension-mismatch": (lambda: __import__("neuron_concepts").sparse_decompose(X, X[:, :3], 2), "share d"),
    "cbm-nan-embeddings": (lambda: _cbm().fit(_with_nan(X), Y2), "NaN"),
    "cbm-wrong-width": (lambda: _cbm().fit(X[:, :4], Y2), "(N, 5)"),
    "cbm-target-count": (lambda: _cbm().fit(X, Y2[:10]), "10 targets for 20"),
    "cbm-one-class": (lambda: _cbm().fit(X, np.zeros(20, dtype=int)), "class"),
    "cbm-multilabel-shape": (lambda: _cbm(task="multilabel").fit(X, Y2), "(N, L)"),
}


# --- iis: the score, the ratio mask, the sweep on features --------------------------------------------

def _score(train=None, val=None, test=None, concepts=None):
    from iis import SweepConfig, score_representation

    data = (X.astype(np.float32), Y2)
    sweep = SweepConfig(ratios=[0.0, 0.5], lrs=[0.1], epochs=1, batch_size=8)
    return score_representation(train or data, val or data, test or data, concepts=concepts
                                if concepts is not None else X[:4].astype(np.float32), sweep=sweep,
                                progress=False, n_boot=5)


IIS = {
    "score-nan-train": (lambda: _score(train=(_with_nan(X).astype(np.float32), Y2)), "train: features contain NaN"),
    "score-target-count": (lambda: _score(val=(X.astype(np.float32), Y2[:5])), "val: features (20, 5)"),
    "score-concepts-other-width": (lambda: _score(concepts=X[:4, :3].astype(np.float32)), "3-d but the features"),
    "score-one-class": (lambda: _score(train=(X.astype(np.float32), np.zeros(20, int)),
                                       val=(X.astype(np.float32), np.zeros(20, int)),
                                       test=(X.astype(np.float32), np.zeros(20, int))), "two classes"),
    "iis-accuracy-out-of-range": (lambda: __import__("iis").compute_iis({0.0: 0.9, 0.5: 1.4}, probe_accuracy=0.9),
                                  "fractions in [0, 1]"),
    "iis-ratio-out-of-range": (lambda: __import__("iis").compute_iis({0.0: 0.9, 1.0: 0.5}, probe_accuracy=0.9),
                               "outside [0, 1)"),
    "iis-probe-zero": (lambda: __import__("iis").compute_iis({0.0: 0.9, 0.5: 0.5}, probe_accuracy=0.0),
                       "probe accuracy is 0"),
    "ratio-mask-nan": (lambda: __import__("iis").ratio_mask(torch.tensor([[1.0, float("nan"), 0.5]]), 0.5),
                       "NaN"),
    "ratio-mask-s-one": (lambda: __import__("iis").ratio_mask(torch.ones(2, 4), 1.0), "must be in [0, 1)"),
}


# --- dae-counterfactual: the latent boundary ----------------------------------------------------------

def _boundary():
    from dae_counterfactual import LatentBoundary

    return LatentBoundary()


GRADES = np.arange(20) % 5
DAE = {
    "boundary-nan-latent": (lambda: _boundary().fit(_with_nan(X, 7, 2), GRADES), "row 7, dimension 2"),
    "boundary-1d-latents": (lambda: _boundary().fit(X[:, 0], GRADES), "20 values for 1 latents"),
    "boundary-grade-count": (lambda: _boundary().fit(X, GRADES[:9]), "9 values for 20 latents"),
    "boundary-nan-grade": (lambda: _boundary().fit(X, np.where(np.arange(20) == 4, np.nan, GRADES)), "row 4"),
    "boundary-one-class": (lambda: _boundary().fit(X, np.zeros(20)), "both 0 and 1"),
    "boundary-constant-latents": (lambda: _boundary().fit(np.ones((20, 5)), GRADES), "no direction"),
    "boundary-other-width": (lambda: _boundary().fit(X, GRADES).predict(X[:, :3]), "fitted on 5"),
}


# --- cipl: the label space and the model's input ------------------------------------------------------

def _cipl_forward(x):
    from cipl import CIPL, LabelSpace
    from medimg_core.models import create_backbone

    backbone = create_backbone("test_resnet", pretrained=False, in_chans=3)
    model = CIPL(backbone, LabelSpace.for_task("multilabel", ["a", "b"]), prototypes_per_class=2,
                 prototype_dim=8, reduce_dim=8)
    return model(x)


CIPL = {
    "cipl-unknown-task": (lambda: __import__("cipl").LabelSpace.for_task("regression", ["a"]), "regression"),
    "cipl-no-classes": (lambda: __import__("cipl").LabelSpace.for_task("multilabel", []), "class"),
    "cipl-wrong-channels": (lambda: _cipl_forward(torch.zeros(2, 1, 32, 32)), "channel"),
    "cipl-not-a-batch": (lambda: _cipl_forward(torch.zeros(3, 32, 32)), "(B, C, H, W)"),
}

CASES = {**NEURON_CONCEPTS, **IIS, **DAE, **CIPL}


@pytest.mark.parametrize("case", sorted(CASES))
def test_hardening_methods(case):
    call, message = CASES[case]
    with pytest.raises(ValueError) as info:
        call()
    assert message.lower() in str(info.value).lower(), f"{case}: {info.value}"
