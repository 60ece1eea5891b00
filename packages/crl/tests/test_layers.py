"""The logical layers against hand-computed values (the published formulas) and the reference code path."""

import pytest
import torch

from crl.layers import (
    LogicalFunction,
    LogicalNodes,
    UnionLayer,
    binarize,
    logical_product,
    reference_conjunction,
    reference_disjunction,
)

X = torch.tensor([[1, 0, 1, 1], [1, 1, 0, 0], [0.2, 0.9, 0.5, 1.0]])
W = torch.tensor([[0.9, 0.1, 0.6], [0.2, 0.7, 0.0], [0.8, 0.3, 0.55], [0.0, 0.95, 0.4]])


def _nodes(conjunction):
    nodes = LogicalNodes(4, 3, conjunction)
    with torch.no_grad():
        nodes.weight.copy_(W)
    return nodes


def test_binarize_straight_through():
    z = torch.tensor([[-1.0, 0.0, 0.3], [2.0, -0.5, 1e-6]], requires_grad=True)
    out = binarize(z)
    assert out.tolist() == [[0, 0, 1, 1, 1, 0], [1, 0, 1, 0, 1, 0]]  # a logit of exactly 0 is 0
    (out * torch.arange(1.0, 7.0)).sum().backward()
    assert torch.equal(z.grad, torch.full_like(z, -3.0))  # w_i - w_{i+K} through the identity STE


def test_logical_product_and_its_gradient():
    v = torch.tensor([[[0.5, 1.0], [0.25, 0.5], [1.0, 1.0]]], requires_grad=True)
    p = logical_product(v, dim=1)
    torch.testing.assert_close(p, torch.tensor([[0.324734, 0.590616]]), atol=1e-6, rtol=0)
    p.sum().backward()
    expected = torch.tensor([[[0.210905, 0.348827], [0.421809, 0.697655], [0.105452, 0.348827]]])
    torch.testing.assert_close(v.grad, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(v.grad, (p.detach() ** 2).unsqueeze(1) / v.detach(), atol=1e-6, rtol=0)


def test_discrete_and_continuous_values_on_fixed_weights():
    conj, disj = _nodes(True), _nodes(False)
    torch.testing.assert_close(conj(X), torch.tensor([[1.0, 0, 1], [0, 0, 0], [0.1, 0.9, 0.1]]))
    torch.testing.assert_close(disj(X), torch.tensor([[1.0, 1, 1], [1, 1, 1], [0.6, 1, 0.6]]))
    torch.testing.assert_close(conj.continuous(X), torch.tensor(
        [[0.817566, 0.453726, 1.0], [0.383224, 0.229758, 0.433025], [0.356634, 0.758454, 0.506198]]),
        atol=1e-6, rtol=0)
    torch.testing.assert_close(disj.continuous(X), torch.tensor(
        [[0.796418, 0.775672, 0.689982], [0.716371, 0.566975, 0.478159], [0.475816, 0.806678, 0.489859]]),
        atol=1e-6, rtol=0)


def test_grafted_gradients_match_the_published_values():
    conj, disj = _nodes(True), _nodes(False)
    x = X.clone().requires_grad_(True)
    (conj(x).sum() + 2 * disj(x).sum()).backward()
    torch.testing.assert_close(x.grad, torch.tensor(
        [[2.267696, 0.734491, 1.756128, 2.635989], [2.556605, 0.981598, 1.380017, 1.702118],
         [1.732660, 0.734390, 1.720951, 2.416172]]), atol=1e-5, rtol=0)
    torch.testing.assert_close(conj.weight.grad, torch.tensor(
        [[-0.363394, -0.500220, -0.394210], [-0.848495, -0.748080, -1.025624],
         [-0.840294, -0.413796, -0.593406], [-0.146861, -1.055774, -0.312518]]), atol=1e-5, rtol=0)
    torch.testing.assert_close(disj.weight.grad, torch.tensor(
        [[2.571858, 0.543774, 1.960440], [0.804265, 1.431891, 1.013076], [0.872405, 0.187748, 0.786116],
         [0.632429, 3.507855, 1.187849]]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("conjunction", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matrix_product_path_equals_the_reference_formulas(conjunction, seed):
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(16, 12, generator=g) > 0.5).float()
    w = torch.rand(12, 7, generator=g)
    w[0, 0], w[3, 2] = 1.0, 0.0  # edges: a weight of exactly 1 (ln 0) and exactly 0
    upstream = torch.randn(16, 7, generator=g)
    ref = reference_conjunction if conjunction else reference_disjunction

    x1, w1 = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    discrete, continuous = ref(x1, w1)
    continuous.backward(upstream)
    x2, w2 = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    fast = LogicalFunction.apply(x2, w2, conjunction)
    fast.backward(upstream)
    assert torch.equal(fast, discrete)
    torch.testing.assert_close(x2.grad, x1.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(w2.grad, w1.grad, atol=1e-5, rtol=1e-4)


def test_clip_init_and_union_layer_shapes():
    torch.manual_seed(0)
    layer = UnionLayer(5, 4, 3, use_not=True)
    assert layer.conj.weight.shape == (10, 4) and layer.disj.weight.shape == (10, 3)
    assert float(layer.conj.weight.detach().max()) < 0.5  # every node starts empty
    x = (torch.rand(6, 5) > 0.5).float()
    out = layer(x)
    assert out.shape == (6, 7)
    assert torch.all(out[:, :4] == 1) and torch.all(out[:, 4:] == 0)  # empty AND is 1, empty OR is 0
    with torch.no_grad():
        layer.conj.weight[0, 0] = 1.7
        layer.disj.weight[1, 1] = -0.3
    layer.clip()
    assert float(layer.conj.weight.detach().max()) == 1.0 and float(layer.disj.weight.detach().min()) == 0.0
