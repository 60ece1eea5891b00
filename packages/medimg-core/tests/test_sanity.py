"""Adebayo et al.'s sanity checks (medimg_core.sanity): a gradient explainer must change when the model is
randomised, an explainer that ignores the model must not, and the caller's model is left alone."""

import numpy as np
import pytest
import torch
from torch import nn

from medimg_core.sanity import (
    cascading_randomisation,
    default_layer_order,
    explanation_similarity,
    independent_randomisation,
    passes_model_randomisation,
    permuted_labels,
    randomisation_summary,
    randomise_layer,
)

SIZE = 16


def small_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(8 * 16, 3),
    )
    with torch.no_grad():  # as if trained: a fresh BatchNorm equals its re-initialisation
        bn = model[3]
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.2, 0.2)
        bn.running_mean.uniform_(-0.1, 0.1)
        bn.running_var.uniform_(0.5, 2.0)
    return model


def images(n: int = 4, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, SIZE, SIZE, generator=g)
    x[:, :, 4:9, 5:11] += 1.5  # a bright finding, so images are not pure noise
    return x


def input_gradient(model: nn.Module, x: torch.Tensor, classes: torch.Tensor) -> np.ndarray:
    """The plain gradient of the class logit with respect to the input (Simonyan et al. 2014), channel 0."""
    x = x.clone().requires_grad_(True)
    out = model(x)
    out.gather(1, classes[:, None]).sum().backward()
    return x.grad[:, 0].detach().numpy()


def image_intensity(model: nn.Module, x: torch.Tensor, classes: torch.Tensor) -> np.ndarray:
    """An 'explainer' that ignores the model (the paper's edge-detector point): the image itself."""
    return x[:, 0].detach().numpy()


def test_similarity_of_identical_and_negated_maps():
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(3, SIZE, SIZE))
    same = explanation_similarity(maps, maps)
    for key in ("spearman_abs", "spearman", "ssim"):
        np.testing.assert_allclose(same[key], 1.0)
        assert same[f"{key}_mean"] == pytest.approx(1.0)
    neg = explanation_similarity(maps, -maps)
    np.testing.assert_allclose(neg["spearman"], -1.0)
    np.testing.assert_allclose(neg["spearman_abs"], 1.0)  # the same magnitudes
    assert (neg["ssim"] < 0).all()  # min-max normalised, -m is 1 - m: anti-correlated structure
    flat = explanation_similarity(np.zeros((1, SIZE, SIZE)), maps[:1])  # a constant map: rank correlation undefined
    assert np.isnan(flat["spearman"][0]) and np.isnan(flat["spearman_mean"]) and np.isfinite(flat["ssim"][0])
    big = rng.normal(size=(1, 48, 48))
    assert explanation_similarity(big, big, hog=True)["hog"][0] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least 48 x 48"):
        explanation_similarity(maps, maps, hog=True)
    with pytest.raises(ValueError, match="at least 11 x 11"):
        explanation_similarity(maps[:, :8, :8], maps[:, :8, :8])
    with pytest.raises(ValueError, match="same shape"):
        explanation_similarity(maps, maps[:2])


def test_spearman_by_hand():
    a = np.arange(SIZE * SIZE, dtype=float).reshape(1, SIZE, SIZE)
    b = a.copy()
    b[0, 0, 0], b[0, 0, 1] = b[0, 0, 1], b[0, 0, 0]  # swap the two lowest: d = 1 for two of n = 256 ranks
    n = SIZE * SIZE
    expected = 1 - 6 * 2 / (n * (n * n - 1))
    assert explanation_similarity(a, b)["spearman"][0] == pytest.approx(expected)


def test_default_layer_order_is_top_down():
    model = small_cnn()
    assert default_layer_order(model) == ["7", "3", "2", "0"]  # Linear, BatchNorm, Conv, Conv
    wrapped = nn.Sequential()
    wrapped.add_module("features", nn.Sequential(nn.Conv2d(1, 2, 3), nn.Conv2d(2, 2, 3)))
    wrapped.add_module("head", nn.Linear(2, 2))
    assert default_layer_order(wrapped) == ["head", "features.1", "features.0"]


class WithToken(nn.Module):
    """A module that owns a parameter and has a child with parameters (as a ViT's position embedding)."""

    def __init__(self):
        super().__init__()
        self.token = nn.Parameter(torch.randn(1, 1, SIZE, SIZE))
        self.head = nn.Linear(SIZE * SIZE, 2)

    def forward(self, x):
        return self.head((x + self.token).flatten(1))


def test_a_default_entry_randomises_its_own_parameters_a_given_name_the_whole_module():
    torch.manual_seed(0)
    model = WithToken()
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    seen = []

    def recording(m, x, classes):
        seen.append(sorted(k for k, v in m.state_dict().items() if not torch.equal(v, trained[k])))
        return x[:, 0].numpy()

    assert default_layer_order(model) == ["head", ""]
    cascading_randomisation(model, images(2), recording)
    assert seen == [[], ["head.bias", "head.weight"], ["head.bias", "head.weight", "token"]]
    seen.clear()
    independent_randomisation(model, images(2), recording)
    assert seen == [[], ["head.bias", "head.weight"], ["token"]]
    seen.clear()
    independent_randomisation(model, images(2), recording, layers=[""])
    assert seen == [[], ["head.bias", "head.weight", "token"]]


def test_cascading_randomises_from_the_top_and_leaves_the_callers_model_alone():
    model = small_cnn()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trained = {k: v.clone() for k, v in before.items()}
    seen = []

    def recording(m: nn.Module, x: torch.Tensor, classes: torch.Tensor) -> np.ndarray:
        changed = sorted({k.split(".")[0] for k, v in m.state_dict().items()
                          if not torch.equal(v, trained[k])})
        seen.append((changed, m.training))
        return input_gradient(m, x, classes)

    result = cascading_randomisation(model, images(), recording, seed=3)
    assert [s[0] for s in seen] == [[], ["7"], ["3", "7"], ["2", "3", "7"], ["0", "2", "3", "7"]]
    assert not any(s[1] for s in seen)  # explained in eval mode
    assert result["layers"] == ["7", "3", "2", "0"] and result["mode"] == "cascading"
    assert [s["randomised"] for s in result["steps"]] == [["7"], ["7", "3"], ["7", "3", "2"], ["7", "3", "2", "0"]]
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before) and model.training
    seen.clear()
    independent_randomisation(model, images(), recording, layers=["3", "0"], seed=3)
    assert [s[0] for s in seen] == [[], ["3"], ["0"]]
    assert all(torch.equal(before[k], model.state_dict()[k]) for k in before)


def test_a_gradient_explainer_changes_and_a_constant_explainer_fails():
    model = small_cnn()
    x = images(6)
    grad = cascading_randomisation(model, x, input_gradient, seed=0)
    const = cascading_randomisation(model, x, image_intensity, seed=0)
    final = grad["steps"][-1]
    print({k: final[f"{k}_mean"] for k in ("spearman_abs", "spearman", "ssim")})
    assert final["spearman_abs_mean"] < 0.5 and final["ssim_mean"] < 0.5
    for step in const["steps"]:
        for key in ("spearman_abs", "spearman", "ssim"):
            np.testing.assert_allclose(step[key], 1.0)
    assert passes_model_randomisation(grad) is True
    assert passes_model_randomisation(const) is False
    summary = randomisation_summary({"gradient": grad, "image": const})
    assert summary["gradient"]["passes"] and not summary["image"]["passes"]
    assert summary["image"]["final_spearman_abs"] == pytest.approx(1.0) and summary["image"]["threshold"] == 0.5
    # the same seed gives the same random weights: the same numbers again
    again = cascading_randomisation(model, x, input_gradient, seed=0)
    np.testing.assert_allclose(again["steps"][-1]["spearman"], final["spearman"])
    # the target is the trained model's prediction, kept at every step
    assert grad["target"].tolist() == model.eval()(x).argmax(1).tolist()
    with pytest.raises(ValueError, match="takes the result of cascading"):
        passes_model_randomisation(independent_randomisation(model, x, image_intensity, layers=["7"]))



def test_explanations_that_are_vectors_get_the_rank_correlations():
    model = small_cnn()
    x = images(6)

    def penultimate(m, x, classes):  # a concept-score-like explanation: the features the head reads
        return m[:7](x).detach().numpy()

    def fixed(m, x, classes):  # scores that ignore the model
        return np.tile(np.arange(5.0), (len(x), 1))

    changes = cascading_randomisation(model, x, penultimate, layers=["3", "2", "0"])
    same = cascading_randomisation(model, x, fixed)
    assert set(changes["steps"][0]) >= {"spearman_abs", "spearman"} and "ssim" not in changes["steps"][0]
    assert changes["steps"][-1]["spearman_abs_mean"] < 0.5 and passes_model_randomisation(changes)
    assert all(step["spearman_mean"] == pytest.approx(1.0) for step in same["steps"])
    assert not passes_model_randomisation(same)
    with pytest.raises(ValueError, match="ssim and hog are computed for maps only"):
        passes_model_randomisation(same, measure="ssim")
    with pytest.raises(ValueError, match=r"one score vector per image, \(N = 6, D\)"):
        cascading_randomisation(model, x, lambda m, x, c: np.zeros((2, 5)), layers=["7"])
    # by hand: (1, 2, 3) against (1, 3, 2): 1 - 6 * (0 + 1 + 1) / (3 * 8) = 0.5
    out = explanation_similarity(np.array([[1.0, 2.0, 3.0]]), np.array([[1.0, 3.0, 2.0]]))
    assert out["spearman"][0] == pytest.approx(0.5) and set(out) == {"spearman_abs", "spearman_abs_mean",
                                                                     "spearman", "spearman_mean"}


def test_randomise_layer_reinitialises_and_bad_input_is_named():
    model = small_cnn()
    bn = model[3]
    with torch.no_grad():
        bn.weight.fill_(2.0)
        bn.running_mean.fill_(5.0)
    randomise_layer(bn, seed=0)
    assert torch.equal(bn.weight, torch.ones(8)) and torch.equal(bn.running_mean, torch.zeros(8))

    class Scale(nn.Module):  # a parameter without reset_parameters: a truncated normal with its own std
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.linspace(-1, 1, 1000))

    s = Scale()
    std = float(s.scale.detach().std())
    randomise_layer(s, seed=0)
    assert float(s.scale.detach().abs().max()) <= 2 * std + 1e-6 and 0.6 * std < float(s.scale.detach().std()) < std
    with pytest.raises(ValueError, match="unknown layer 'head'.*'7', '3', '2', '0'"):
        cascading_randomisation(model, images(), image_intensity, layers=["head"])
    with pytest.raises(ValueError, match="'1' has no parameters"):
        cascading_randomisation(model, images(), image_intensity, layers=["1"])
    with pytest.raises(ValueError, match=r"maps \(N, H, W\) = \(4, 16, 16\)"):
        cascading_randomisation(model, images(), lambda m, x, c: np.zeros((4, 8, 8)), layers=["7"])


def test_permuted_labels():
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 3])
    out = permuted_labels(labels, seed=0)
    assert sorted(out.tolist()) == sorted(labels.tolist()) and not np.array_equal(out, labels)
    assert np.array_equal(out, permuted_labels(labels, seed=0))
    assert not np.array_equal(out, permuted_labels(labels, seed=1))
    multi = torch.tensor([[1, 0], [0, 1], [1, 1], [0, 0]])
    pm = permuted_labels(multi, seed=0)
    assert isinstance(pm, torch.Tensor) and sorted(map(tuple, pm.tolist())) == sorted(map(tuple, multi.tolist()))
    assert isinstance(permuted_labels([1, 2, 3], seed=0), list)
    with pytest.raises(ValueError, match="at least 2 entries"):
        permuted_labels(np.array(3))
