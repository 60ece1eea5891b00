"""The ratio mask and the concept head's forward pass, against hand computations."""

import math

import pytest
import torch

from iis import ConceptHead, End2EndHead, LinearProbe, kept_count, ratio_mask

X = torch.tensor([0.5, -2.0, 0.1, 1.5, -0.3, 0.9, 0.0, -1.1, 0.7, 0.2])


def test_ratio_mask_s0_zeroes_only_the_smallest():
    out = ratio_mask(X, 0.0)  # idx 0: tau = 0.0, so only the exact zero goes
    assert out.tolist() == pytest.approx(X.tolist())
    assert int((out != 0).sum()) == 9


def test_ratio_mask_s03():
    # sorted |x|: 0, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.1, 1.5, 2.0
    # idx = floor(10 * 0.3) = 3: tau = 4th smallest |x| = 0.3; |x| <= 0.3 is zeroed, 6 values kept
    assert ratio_mask(X, 0.3).tolist() == pytest.approx([0.5, -2.0, 0, 1.5, 0, 0.9, 0, -1.1, 0.7, 0])
    # idx = 5 at s = 0.5: tau = 6th smallest = 0.7; kept values are not shrunk
    assert ratio_mask(X, 0.5).tolist() == pytest.approx([0, -2.0, 0, 1.5, 0, 0.9, 0, -1.1, 0, 0])


def test_ratio_mask_high_ratios():
    assert ratio_mask(X, 0.7).tolist() == pytest.approx([0, -2.0, 0, 1.5, 0, 0, 0, 0, 0, 0])
    assert ratio_mask(X, 0.98).tolist() == [0.0] * 10  # idx 9: tau is the largest magnitude
    for s in (1.0, 1.5, -0.1, float("nan")):
        with pytest.raises(ValueError, match=r"\[0, 1\)"):
            ratio_mask(X, s)


def test_ratio_mask_ties_are_zeroed_together_and_rows_are_independent():
    tied = torch.tensor([[-0.70701, 1.41403, -0.70701], [3.0, -1.0, 2.0]])
    out = ratio_mask(tied, 0.0)
    assert out[0].tolist() == pytest.approx([0.0, 1.41403, 0.0])  # both tied values are <= tau
    assert out[1].tolist() == pytest.approx([3.0, 0.0, 2.0])
    assert ratio_mask(torch.ones(5), 0.0).tolist() == [0.0] * 5  # all tied: nothing survives


def test_ratio_mask_gradient_flows_through_kept_values_only():
    x = X.clone().requires_grad_(True)
    ratio_mask(x, 0.5).sum().backward()
    assert x.grad.tolist() == [0, 1, 0, 1, 0, 1, 0, 1, 0, 0]


def test_kept_count():
    assert [kept_count(200, s) for s in (0, 0.1, 0.3, 0.5, 0.7, 0.9, 0.95, 0.98)] == [199, 179, 139, 99, 59, 19, 9, 3]
    assert kept_count(10, 0.3) == 6
    assert kept_count(100, 0.29) == 70  # 100 - floor(100 * 0.29) - 1, although 100 * 0.29 is 28.999...


def _head(ratio: float) -> ConceptHead:
    concepts = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 1.0, 0], [1.0, 1.0, 1.0, 1.0]])
    head = ConceptHead(concepts, num_outputs=2, ratio=ratio)
    with torch.no_grad():
        head.linear.weight.copy_(torch.tensor([[1.0, 2.0, 3.0], [-1.0, 0.5, 0.0]]))
        head.linear.bias.copy_(torch.tensor([0.1, -0.2]))
    return head


def test_layernorm_then_mask_forward_by_hand():
    x = torch.tensor([[1.0, 2.0, 0.0, -1.0]])
    head = _head(0.0)
    # projections on the unit concepts: 1, 2/sqrt(2), 2/2 = [1, 1.41421, 1]
    assert (x @ head.concept_matrix().T).tolist()[0] == pytest.approx([1.0, math.sqrt(2), 1.0], abs=1e-5)
    # LayerNorm (gamma 1, beta 0, eps 1e-5): mean 1.138071, variance 0.0381271
    assert head.scores(x).tolist()[0] == pytest.approx([-0.70701, 1.41403, -0.70701], abs=1e-4)
    for s in (0.0, 0.3):
        h = _head(s)
        assert h.sparse_scores(x).tolist()[0] == pytest.approx([0.0, 1.41403, 0.0], abs=1e-4)
        assert h(x).tolist()[0] == pytest.approx([0.1 + 2 * 1.41403, -0.2 + 0.5 * 1.41403], abs=1e-4)
        contrib = h.contributions(x)[0]
        assert (contrib.sum(0) + h.linear.bias).tolist() == pytest.approx(h(x).tolist()[0], abs=1e-6)
    assert _head(0.7)(x).tolist()[0] == pytest.approx([0.1, -0.2])  # idx 2: every concept zeroed


def test_standardised_text_head():
    w = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    head = ConceptHead(w, 3, 0.0, standardize=(torch.tensor([1.0, 0.0]), torch.tensor([2.0, 4.0])))
    x = torch.tensor([[3.0, 1.0]])
    assert head.scores(x).tolist()[0] == pytest.approx([1.0, 0.5])  # rows are not normalised here
    assert head.norm is None
    with pytest.raises(ValueError, match="mean and std of 2"):
        ConceptHead(w, 3, standardize=(torch.zeros(3), torch.ones(3)))


def test_head_init_and_bad_ratio():
    head = ConceptHead(torch.randn(50, 8), 4, 0.5)
    assert head.linear.bias.abs().sum() == 0 and head.linear.weight.std() < 0.05
    assert LinearProbe(8, 3).linear.bias.abs().sum() == 0
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        ConceptHead(torch.randn(5, 8), 2, ratio=1.0)


def test_end2end_assignment():
    torch.manual_seed(0)
    head = End2EndHead(torch.randn(30, 6), num_concepts=4, num_outputs=2, ratio=0.0)
    head.eval()
    a = head.assignment()
    assert a.shape == (30, 4) and torch.equal(a.sum(1), torch.ones(30))
    assert torch.equal(head.concept_matrix(), head.concept_matrix())  # deterministic in eval mode
    norms = head.concept_matrix().norm(dim=1)
    assert all(abs(n - 1) < 1e-5 or n < 1e-6 for n in norms.tolist())  # unit, or empty concept
    head.train()
    head(torch.randn(5, 6)).sum().backward()
    assert head.assignment_logits.grad is not None and head.assignment_logits.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="at least as many elements"):
        End2EndHead(torch.randn(3, 6), num_concepts=4, num_outputs=2)
