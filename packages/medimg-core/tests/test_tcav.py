"""TCAV (Kim et al., ICML 2018) on models whose answer is known by hand."""

import numpy as np
import pytest
import torch
from torch import nn

from medimg_core.tcav import cav, directional_derivatives, layer_activations, tcav


class Linear(nn.Module):
    """logits = W a with a = features(x) = x: the gradient of logit k with respect to the layer is W[k]."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.features = nn.Identity()
        self.head = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        with torch.no_grad():
            self.head.weight.copy_(weight)

    def forward(self, x):
        return self.head(self.features(x))


D = 8
W = torch.zeros(2, D)
W[1, 0] = 1.0  # class 1's logit grows with feature 0 and ignores the others


def _gauss(n, seed, shift=None, by=3.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, D, generator=g, dtype=torch.float64).float()
    if shift is not None:
        x[:, shift] += by
    return x


def test_directional_derivative_of_a_linear_model_is_the_weight_row():
    model = Linear(W)
    x = _gauss(5, 0)
    vectors = np.eye(D)[:3]
    s = directional_derivatives(model, "features", x, target=1, vectors=vectors)
    assert s.shape == (3, 5)
    np.testing.assert_allclose(s, np.outer(W[1, :3].numpy(), np.ones(5)))  # grad . e_j = W[1, j] for every image


def test_cav_points_towards_the_concept():
    v = cav(_gauss(60, 1, shift=0).numpy(), _gauss(60, 2).numpy())
    assert np.isclose(np.linalg.norm(v), 1.0) and v[0] > 0.9  # the shifted axis dominates


@pytest.mark.filterwarnings("ignore:Precision loss occurred")  # scipy, on the constant sample of all 1.0
def test_tcav_scores_and_significance_by_hand():
    model = Linear(W)
    class_images = _gauss(20, 3)
    concepts = {"feature 0": _gauss(40, 4, shift=0), "feature 5": _gauss(40, 5, shift=5)}
    # random set 0 is the random "concept"; sets 1-5 sit 1 above or below it on feature 0, so the random CAV
    # (set 0 against set i) has a positive component on feature 0 exactly when set i sits below
    offsets = [0.0, 1.0, -1.0, 1.0, -1.0, 1.0]
    randoms = [_gauss(40, 10 + i, shift=0, by=o) for i, o in enumerate(offsets)]
    results = tcav(model, "features", class_images, target=1, concepts=concepts, random_sets=randoms)
    zero, five = results
    # grad . v = v[0] for every image: the score of each CAV is 1 where its component on feature 0 is > 0, else 0
    acts = {k: layer_activations(model, "features", x) for k, x in concepts.items()}
    rand = [layer_activations(model, "features", r) for r in randoms]
    expected_zero = [float(cav(acts["feature 0"], r)[0] > 0) for r in rand]
    expected_random = [float(cav(rand[0], r)[0] > 0) for r in rand[1:]]
    assert zero.scores == expected_zero == [1.0] * 6
    assert zero.random_scores == expected_random == [0.0, 1.0, 0.0, 1.0, 0.0]
    assert zero.mean == 1.0 and zero.significant
    # feature 5 is irrelevant to class 1: its CAVs' small component on feature 0 decides, as for random ones
    assert five.scores == [float(cav(acts["feature 5"], r)[0] > 0) for r in rand]
    from scipy.stats import ttest_ind

    assert zero.p_value == pytest.approx(ttest_ind(expected_zero, expected_random).pvalue)
    d = zero.to_dict()
    assert d["bonferroni_tests"] == 2 and d["significant"] and len(d["cav_accuracy"]) == 6


def test_tcav_on_a_cnn_layer_and_bad_input():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                          nn.Linear(16, 3))
    x = torch.rand(6, 3, 8, 8)
    assert layer_activations(model, "0", x).shape == (6, 4 * 8 * 8)
    out = tcav(model, "2", x, target=2, concepts={"bright": x + 1.0}, random_sets=[torch.rand(6, 3, 8, 8)
                                                                                   for _ in range(3)])
    assert 0.0 <= out[0].mean <= 1.0 and len(out[0].scores) == 3 and len(out[0].random_scores) == 2
    with pytest.raises(ValueError, match="layer 'nope' is not a module"):
        layer_activations(model, "nope", x)
    with pytest.raises(ValueError, match="at least 3 random sets"):
        tcav(model, "2", x, 0, {"c": x}, [x, x])
    with pytest.raises(ValueError, match="target 7"):
        directional_derivatives(model, "2", x, 7, np.ones((1, 16)))
