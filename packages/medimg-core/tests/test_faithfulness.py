"""RISE's deletion and insertion metrics (medimg_core.faithfulness) against hand-computed curves."""

import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import nn

from medimg_core.faithfulness import deletion_insertion, resolve_targets, rise_blur

H = W = 4
FINDING = [(1, 1), (1, 2), (2, 1), (2, 2)]  # the 4 pixels the model looks at (row, column)


class CountingModel(nn.Module):
    """Logits (a * number of FINDING pixels equal to 1, 0): p(class 0) = sigmoid(a * present)."""

    def __init__(self, a: float = 1.0):
        super().__init__()
        weight = torch.zeros(H, W)
        for r, c in FINDING:
            weight[r, c] = a
        self.register_buffer("weight", weight)

    def forward(self, x):
        z = (x[:, 0] * self.weight).sum(dim=(1, 2))
        return torch.stack([z, torch.zeros_like(z)], dim=1)


def sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-z))


def image() -> torch.Tensor:
    x = torch.zeros(1, 1, H, W)
    for r, c in FINDING:
        x[0, 0, r, c] = 1.0
    return x


def perfect_map() -> np.ndarray:
    m = np.zeros((1, H, W))
    for i, (r, c) in enumerate(FINDING):
        m[0, r, c] = 10 - i  # the finding first, in FINDING order
    return m


def trapezoid(values: list[float]) -> float:
    """By hand: points evenly spaced over [0, 1]."""
    n = len(values) - 1
    return sum((values[i] + values[i + 1]) / 2 for i in range(n)) / n


def test_deletion_curve_of_a_perfect_and_an_inverted_map_by_hand():
    model = CountingModel()
    # perfect map, one pixel per step: after k steps 4 - min(k, 4) finding pixels are left
    expected = [sigmoid(4 - min(k, 4)) for k in range(17)]
    out = deletion_insertion(model, image(), perfect_map(), target=0, mode="deletion", step=1)
    assert out["curve"].shape == (1, 17) and out["fraction"].tolist() == [k / 16 for k in range(17)]
    np.testing.assert_allclose(out["curve"][0], expected, rtol=1e-6)
    # (0.98201/2 + 0.95257 + 0.88080 + 0.73106 + 0.5 * 12 + 0.5/2) / 16
    assert out["auc"][0] == pytest.approx(trapezoid(expected), rel=1e-6)
    assert out["auc"][0] == pytest.approx((sigmoid(4) / 2 + sigmoid(3) + sigmoid(2) + sigmoid(1) + 0.5 * 12.5) / 16)
    # inverted map: the 12 background pixels (already 0) go first, the finding last
    inverted = deletion_insertion(model, image(), -perfect_map(), target=0, mode="deletion", step=1)
    expected_inv = [sigmoid(4)] * 13 + [sigmoid(3), sigmoid(2), sigmoid(1), sigmoid(0)]
    np.testing.assert_allclose(inverted["curve"][0], expected_inv, rtol=1e-6)
    assert inverted["auc"][0] == pytest.approx(trapezoid(expected_inv), rel=1e-6)
    assert out["auc"][0] < inverted["auc"][0]


def test_insertion_curve_and_steps_of_several_pixels_by_hand():
    model = CountingModel(a=2.0)
    # insertion into a zero canvas, 2 pixels a step: 8 steps, present = min(2k, 4)
    out = deletion_insertion(model, image(), perfect_map(), target=0, mode="insertion", step=2, substrate=0.0)
    expected = [sigmoid(2.0 * min(2 * k, 4)) for k in range(9)]
    np.testing.assert_allclose(out["curve"][0], expected, rtol=1e-6)
    assert out["auc"][0] == pytest.approx(trapezoid(expected), rel=1e-6)
    # step 5 of 16 pixels: ceil(16 / 5) = 4 steps, the last one changes 1 pixel; x = 0, 1/4, ..., 1 (RISE's)
    out = deletion_insertion(model, image(), perfect_map(), target=0, mode="insertion", step=5, substrate=0.0)
    assert out["fraction"].tolist() == [0, 0.25, 0.5, 0.75, 1.0]
    np.testing.assert_allclose(out["curve"][0], [sigmoid(0), sigmoid(8)] + [sigmoid(8)] * 3, rtol=1e-6)
    # the default step is one row (W pixels): 4 steps; the map puts row 2 then row 1 first
    rows = np.zeros((1, H, W))
    rows[0, 2] = 2.0
    rows[0, 1] = 1.0
    out = deletion_insertion(model, image(), rows, target=0, mode="deletion")
    np.testing.assert_allclose(out["curve"][0], [sigmoid(8), sigmoid(4), sigmoid(0), sigmoid(0), sigmoid(0)],
                               rtol=1e-6)


def test_ties_are_taken_in_raster_order():
    model = CountingModel()
    flat = np.zeros((1, H, W))  # a constant map deletes row by row from the top-left pixel
    out = deletion_insertion(model, image(), flat, target=0, mode="deletion", step=1)
    # pixels 0-4 hold no finding; 5 and 6 are (1, 1), (1, 2); 9 and 10 are (2, 1), (2, 2)
    present = [4, 4, 4, 4, 4, 4, 3, 2, 2, 2, 1, 0, 0, 0, 0, 0, 0]
    np.testing.assert_allclose(out["curve"][0], [sigmoid(p) for p in present], rtol=1e-6)


def test_perfect_map_beats_random_and_inverted_maps_on_several_images():
    torch.manual_seed(0)
    n, size = 6, 8
    x = torch.rand(n, 1, size, size)
    weight = torch.zeros(size, size)
    weight[2:5, 3:6] = 1.0
    model = nn.Sequential(nn.Flatten(), nn.Linear(size * size, 2))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.zero_()
        model[1].weight[0] = weight.flatten()
    good = (x[:, 0] * weight).numpy()  # the finding's pixels, weighted by how much each adds to the logit
    rng = np.random.default_rng(0)
    rand = rng.random((n, size, size))
    scores = {}
    for name, maps in {"perfect": good, "random": rand, "inverted": -good}.items():
        scores[name] = {mode: deletion_insertion(model, x, maps, target=0, mode=mode, step=4, substrate=0.0,
                                                 batch_size=7)["auc"] for mode in ("deletion", "insertion")}
    assert (scores["perfect"]["deletion"] < scores["random"]["deletion"]).all()
    assert (scores["random"]["deletion"] <= scores["inverted"]["deletion"] + 1e-9).all()
    assert (scores["perfect"]["insertion"] > scores["random"]["insertion"]).all()
    assert (scores["random"]["insertion"] >= scores["inverted"]["insertion"] - 1e-9).all()
    # the batching does not change the numbers
    one = deletion_insertion(model, x, rand, target=0, step=4, batch_size=1)["curve"]
    np.testing.assert_allclose(one, deletion_insertion(model, x, rand, target=0, step=4, batch_size=500)["curve"],
                               rtol=1e-6)


def test_the_default_substrates_are_rises():
    torch.manual_seed(1)
    x = torch.rand(2, 3, 16, 16)
    blurred = rise_blur(x)
    delta = np.zeros((11, 11))
    delta[5, 5] = 1.0
    kernel = ndimage.gaussian_filter(delta, 5.0)
    assert kernel.sum() == pytest.approx(1.0)
    for i in range(2):
        for c in range(3):  # zero padding: scipy's correlate with mode="constant"
            expected = ndimage.correlate(x[i, c].double().numpy(), kernel, mode="constant", cval=0.0)
            np.testing.assert_allclose(blurred[i, c].numpy(), expected, atol=1e-5)
    # insertion ends at the image and starts at the blur; deletion ends at zeros
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 3))
    maps = np.random.default_rng(0).random((2, 16, 16))
    with torch.no_grad():
        p_image = model(x).softmax(1)
        p_blur = model(blurred).softmax(1)
        p_zero = model(torch.zeros_like(x)).softmax(1)
    target = p_image.argmax(1)
    ins = deletion_insertion(model, x, maps, mode="insertion")
    dele = deletion_insertion(model, x, maps, mode="deletion")
    assert ins["target"].tolist() == target.tolist() == dele["target"].tolist()  # None: the predicted class
    rows = torch.arange(2)
    np.testing.assert_allclose(ins["curve"][:, 0], p_blur[rows, target].numpy(), rtol=1e-5)
    np.testing.assert_allclose(ins["curve"][:, -1], p_image[rows, target].numpy(), rtol=1e-5)
    np.testing.assert_allclose(dele["curve"][:, 0], p_image[rows, target].numpy(), rtol=1e-5)
    np.testing.assert_allclose(dele["curve"][:, -1], p_zero[rows, target].numpy(), rtol=1e-5)
    # a sigmoid model (multi-label) scores its own probability
    sig = deletion_insertion(model, x, maps, target=[1, 2], activation="sigmoid")
    np.testing.assert_allclose(sig["curve"][:, 0], model(x).sigmoid()[rows, torch.tensor([1, 2])].detach().numpy(),
                               rtol=1e-5)


def test_the_model_mode_is_restored_and_bad_input_is_named():
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2), nn.Dropout(0.5))
    model.train()
    x, maps = torch.rand(1, 1, 4, 4), np.zeros((1, 4, 4))
    a = deletion_insertion(model, x, maps, step=1)["curve"]
    b = deletion_insertion(model, x, maps, step=1)["curve"]
    np.testing.assert_array_equal(a, b)  # eval mode: dropout off
    assert model.training
    with pytest.raises(ValueError, match=r"maps must be \(N, H, W\) = \(1, 4, 4\).*got \(1, 2, 2\)"):
        deletion_insertion(model, x, np.zeros((1, 2, 2)))
    with pytest.raises(ValueError, match="mode must be one of"):
        deletion_insertion(model, x, maps, mode="erase")
    with pytest.raises(ValueError, match="step must be an int in"):
        deletion_insertion(model, x, maps, step=0)
    with pytest.raises(ValueError, match="out of range for a model with 2 outputs"):
        deletion_insertion(model, x, maps, target=5)
    with pytest.raises(ValueError, match="NaN"):
        deletion_insertion(model, x, np.full((1, 4, 4), np.nan))
    with pytest.raises(ValueError, match="images must be a float tensor"):
        deletion_insertion(model, np.zeros((1, 1, 4, 4)), maps)
    with pytest.raises(ValueError, match="substrate must be"):
        deletion_insertion(model, x, maps, substrate=torch.zeros(1, 1, 2, 2))
    assert resolve_targets(model.eval(), x, [1]).tolist() == [1]
    xs = torch.rand(5, 1, 4, 4)
    assert resolve_targets(model, xs, None, batch_size=2).tolist() == model(xs).argmax(1).tolist()
