"""The model's arithmetic and every loss term against values computed by hand (see the research notes, section 7)."""

import math

import numpy as np
import pytest
import torch

from cipl.losses import (
    classification_loss,
    cluster_separation,
    co_attention,
    map_alignment,
    prediction_alignment,
    shared_targets,
)
from cipl.model import CIPL, LabelSpace, class_probabilities, squared_distances
from medimg_core.testing import IdentityBackbone


def hand_model() -> tuple[CIPL, torch.Tensor]:
    """Features z (1, 2, 2, 2) and 4 prototypes (2 classes x 2) with hand-computable distances."""
    labels = LabelSpace(("x", "y"), ("x", "y"), False)
    model = CIPL(IdentityBackbone(2), labels, prototypes_per_class=2, prototype_dim=2, reduce_dim=None,
                 add_on_layers=1, similarity_scale=256.0)
    model.add_on = torch.nn.Identity()  # use the features as given
    with torch.no_grad():
        model.prototypes.copy_(8 * torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [1.0, 1.0]]))
    z = torch.zeros(1, 2, 2, 2)
    z[0, 0] = 8 * torch.tensor([[0.0, 1.0], [1.0, 0.5]])
    z[0, 1] = 8 * torch.tensor([[1.0, 0.0], [0.0, 0.5]])
    return model, z


def test_distance_similarity_logits_by_hand():
    model, z = hand_model()
    out = model(z)
    expected_maps = torch.tensor([[128.0, 0, 0, 32], [0, 128, 128, 32], [32, 32, 32, 0], [64, 64, 64, 32]])
    assert torch.allclose(out["distance_maps"][0].flatten(1), expected_maps)
    assert torch.allclose(out["min_distances"][0], torch.tensor([0.0, 0, 0, 32]))
    assert torch.allclose(out["similarities"][0], torch.tensor([1, 1, 1, math.exp(-32 / 256)]))
    # class-identity last layer: each logit sums its own class's similarities
    assert torch.allclose(out["logits"][0], torch.tensor([2.0, 1 + math.exp(-32 / 256)]))
    assert out["logits"][0, 1].item() == pytest.approx(1.8824969, abs=1e-6)
    maps = model.prototype_activations(z)
    assert maps.shape == (1, 4, 2, 2)
    assert torch.allclose(maps, torch.exp(-out["distance_maps"] / 256))


def test_squared_distances_match_brute_force():
    g = torch.Generator().manual_seed(0)
    z, p = torch.rand(3, 5, 4, 6, generator=g), torch.rand(7, 5, generator=g)
    brute = ((z.unsqueeze(1) - p.view(1, 7, 5, 1, 1)) ** 2).sum(2)
    assert torch.allclose(squared_distances(z, p), brute, atol=1e-5)


def test_last_layer_identity_init_and_projection(tiny_cipl):
    model = tiny_cipl(m=2)
    w = model.last_layer.weight
    assert model.last_layer.bias is None
    assert torch.equal(w, torch.tensor([[1.0, 1, 0, 0, 0, 0, 0, 0], [0, 0, 1, 1, 0, 0, 0, 0],
                                        [0, 0, 0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 0, 0, 1, 1]]))
    with torch.no_grad():
        w.copy_(torch.randn_like(w))
    model.project_last_layer()
    assert (w >= 0).all()
    assert (w * (1 - model.class_mask) == 0).all()


def test_label_space():
    ml = LabelSpace.for_task("multilabel", ["a", "b"])
    assert ml.class_names == ("a", "b", "No Finding") and ml.output_names == ("a", "b")
    assert torch.equal(ml.class_labels(np.array([[1, 0], [0, 0], [1, 1]])),
                       torch.tensor([[1.0, 0, 0], [0, 0, 1], [1, 1, 0]]))
    odir = LabelSpace.for_task("multilabel", ["Normal", "D", "G"], reference="Normal")
    assert odir.class_names == ("D", "G", "Normal") and odir.output_names == ("D", "G")
    assert torch.equal(odir.class_labels(np.array([[1, 0, 0], [0, 1, 1]])), torch.tensor([[0.0, 0, 1], [1, 1, 0]]))
    assert np.array_equal(odir.output_targets(np.array([[1, 0, 0], [0, 1, 1]])), np.array([[0, 0], [1, 1]]))
    single = LabelSpace.for_task("binary", ["neg", "pos"])
    assert not single.multilabel and torch.equal(single.class_labels(np.array([1, 0])), torch.tensor([[0.0, 1], [1, 0]]))
    with pytest.raises(ValueError, match="not one of"):
        LabelSpace.for_task("multilabel", ["a"], reference="Normal")
    with pytest.raises(ValueError, match="only multi-label"):
        LabelSpace.for_task("binary", ["a", "b"], reference="a")


def test_probabilities_are_two_way_softmax_against_no_finding():
    logits = torch.tensor([[2.0, -1.0, 0.5, 1.0]])
    probs = class_probabilities(logits, multilabel=True)
    for c in range(3):
        two_way = torch.softmax(torch.tensor([logits[0, 3], logits[0, c]]), 0)[1]
        assert probs[0, c].item() == pytest.approx(two_way.item())
    assert torch.allclose(class_probabilities(logits, False).sum(1), torch.ones(1))


def test_no_finding_referenced_cross_entropy():
    logits = torch.tensor([[2.0, -1.0, 0.5, 1.0], [0.0, 3.0, -2.0, 0.5]])
    targets = torch.tensor([[1.0, 0, 1], [0, 1, 0]])
    assert classification_loss(logits, targets, True).item() == pytest.approx(0.3410205, abs=1e-6)
    # the same number from the per-finding two-way softmax cross-entropies
    terms = [-torch.log_softmax(torch.stack([logits[b, 3], logits[b, c]]), 0)[int(targets[b, c])]
             for b in range(2) for c in range(3)]
    assert torch.stack(terms).mean().item() == pytest.approx(0.3410205, abs=1e-6)
    single = classification_loss(torch.tensor([[1.0, 2.0]]), torch.tensor([1]), False)
    assert single.item() == pytest.approx(math.log(1 + math.exp(-1)))


def test_cluster_and_separation_costs():
    d = torch.tensor([[0.5, 2, 3, 1, 4, 6, 0.2, 0.3], [1.5, 0.7, 2.5, 2, 0.9, 5, 3, 4]])
    labels = torch.tensor([[1.0, 1, 0, 0], [0, 0, 1, 0]])
    clst, sep = cluster_separation(d, labels, 2)
    # image 0: min over class 0 (0.5) + min over class 1 (1); image 1: min over class 2 (0.9) -> (1.5 + 0.9) / 2
    assert clst.item() == pytest.approx(1.2)
    # image 0: min over classes 2, 3 = 0.2; image 1: min over classes 0, 1, 3 = 0.7 -> 0.45
    assert sep.item() == pytest.approx(0.45)
    assert torch.relu(2.0 - sep).item() == pytest.approx(1.55)


def test_co_attention_by_hand_and_against_naive():
    f1 = torch.tensor([[0.0, 1, 0.5], [1, 0, 0.5]]).view(1, 2, 1, 3)
    f2 = torch.tensor([[1.0, 0], [0, 1]]).view(1, 2, 1, 2)
    a_from_b, b_from_a = co_attention(f1, f2)
    assert torch.allclose(a_from_b.flatten(2), torch.tensor([[[0.119203, 0.880797, 0.5], [0.880797, 0.119203, 0.5]]]),
                          atol=1e-6)
    assert torch.allclose(b_from_a.flatten(2), torch.tensor([[[0.748201, 0.251799], [0.251799, 0.748201]]]), atol=1e-6)
    g = torch.Generator().manual_seed(1)
    fa, fb = torch.rand(2, 6, 3, 4, generator=g), torch.rand(2, 6, 2, 5, generator=g)
    u, v = fa.flatten(2), fb.flatten(2)
    affinity = -((u.unsqueeze(3) - v.unsqueeze(2)) ** 2).sum(1)  # the (B, D, N_a, N_b) way
    naive_a = torch.einsum("bdj,bij->bdi", v, affinity.softmax(2)).view_as(fa)
    naive_b = torch.einsum("bdi,bij->bdj", u, affinity.softmax(1)).view_as(fb)
    a_from_b, b_from_a = co_attention(fa, fb)
    assert torch.allclose(a_from_b, naive_a, atol=1e-5) and torch.allclose(b_from_a, naive_b, atol=1e-5)


def test_shared_targets():
    assert torch.equal(shared_targets(torch.tensor([[1.0, 1, 0]]), torch.tensor([[0.0, 1, 1]]), True),
                       torch.tensor([[0.0, 1, 0]]))
    with pytest.raises(ValueError, match="share their class"):
        shared_targets(torch.tensor([0]), torch.tensor([1]), False)


def test_map_alignment_by_hand():
    s = torch.tensor([[[1.0, 0.5]], [[0.0, 0.5]], [[0.5, 1.0]]]).unsqueeze(0)  # (1, 3, 1, 2)
    t = torch.tensor([[[0.8, 0.5]], [[0.2, 0.5]], [[0.5, 0.0]]]).unsqueeze(0)
    # cell 0: cos((1, 0, .5), (.8, .2, .5)); cell 1: cos((.5, .5, 1), (.5, .5, 0))
    c0 = (0.8 + 0.25) / (math.sqrt(1.25) * math.sqrt(0.93))
    c1 = 0.5 / (math.sqrt(1.5) * math.sqrt(0.5))
    assert map_alignment(s, t).item() == pytest.approx((1 - c0) + (1 - c1), abs=1e-6)
    assert map_alignment(s, t).item() == pytest.approx(0.4487981, abs=1e-6)
    assert map_alignment(s, s).item() == pytest.approx(0.0, abs=1e-6)


def test_prediction_alignment_by_hand():
    student = torch.tensor([[1.0, 0, 2], [0, 1, -1], [2, 2, 0]])
    teacher = torch.tensor([[0.5, 0, 1], [0, 2, 0], [1, 1, 1]])
    assert prediction_alignment(student, teacher, True).item() == pytest.approx(0.0404553, abs=1e-6)
    # by hand: per finding, Gram matrices of the batch's two-way probabilities
    total = 0.0
    for c in range(2):
        q_s = torch.softmax(torch.stack([student[:, 2], student[:, c]], 1), 1)
        q_t = torch.softmax(torch.stack([teacher[:, 2], teacher[:, c]], 1), 1)
        total += ((q_t @ q_t.T - q_s @ q_s.T) ** 2).sum().item()
    assert prediction_alignment(student, teacher, True).item() == pytest.approx(total / (2 * 9), abs=1e-7)
    q_s, q_t = torch.softmax(student, 1), torch.softmax(teacher, 1)
    single = ((q_t @ q_t.T - q_s @ q_s.T) ** 2).sum().item() / 9
    assert prediction_alignment(student, teacher, False).item() == pytest.approx(single, abs=1e-7)


def test_teacher_is_an_exponential_moving_average(tiny_cipl):
    from cipl.model import CIPLWithTeacher

    wrapper = CIPLWithTeacher(tiny_cipl(seed=0), tiny_cipl(seed=1), momentum=0.9)
    before = wrapper.teacher.prototypes.clone()
    wrapper.update_teacher()  # not started yet: unchanged
    assert torch.equal(wrapper.teacher.prototypes, before)
    wrapper.init_teacher()
    assert torch.equal(wrapper.teacher.prototypes, wrapper.student.prototypes)
    old = wrapper.teacher.prototypes.clone()
    with torch.no_grad():
        wrapper.student.prototypes.add_(1.0)
    wrapper.update_teacher()
    assert torch.allclose(wrapper.teacher.prototypes, 0.9 * old + 0.1 * wrapper.student.prototypes)
    assert not any(p.requires_grad for p in wrapper.teacher.parameters())


def test_pair_forward_shapes_and_frozen_mode(tiny_cipl):
    from cipl.model import CIPLWithTeacher

    wrapper = CIPLWithTeacher(tiny_cipl(seed=0), tiny_cipl(seed=1))
    wrapper.init_teacher()
    x, v = torch.rand(4, 1, 8, 8), torch.rand(4, 1, 8, 8)
    out = wrapper(x, v, pairs=True)
    assert out["logits"].shape == (4, 4) and out["co_logits"].shape == (4, 4)
    assert out["maps"].shape == out["teacher_maps"].shape == (4, 8, 4, 4)
    assert not out["teacher_maps"].requires_grad
    frozen = wrapper(x, v, pairs=True, frozen=True)
    assert not frozen["min_distances"].requires_grad and frozen["logits"].requires_grad
    assert torch.allclose(frozen["logits"], out["logits"])


def test_stage_backbone_cuts_after_a_stage():
    from cipl.model import StageBackbone
    from medimg_core.models import create_backbone

    backbone = StageBackbone(create_backbone("test_resnet", in_chans=1), 2)
    assert backbone.stride == 8 and backbone.feature_channels == 48
    assert backbone.forward_features(torch.rand(2, 1, 32, 32)).shape == (2, 48, 4, 4)
    model = CIPL(backbone, LabelSpace.for_task("multilabel", ["a", "b"]), prototypes_per_class=2, prototype_dim=8,
                 reduce_dim=8)
    assert model.prototype_activations(torch.rand(2, 1, 32, 32)).shape == (2, 6, 4, 4)
    # the pruned stages are gone from the parameters (nothing unused for DistributedDataParallel)
    model(torch.rand(2, 1, 32, 32))["logits"].sum().backward()
    assert all(p.grad is not None for p in backbone.parameters())
    with pytest.raises(ValueError, match="out of range"):
        StageBackbone(create_backbone("test_resnet", in_chans=1), 7)


def test_output_stride_4_layer3_grid():
    """resnet18's layer3 at output stride 4 (layer2 dilated too): a 16 x 16 grid at 64 px, cell i on pixel 4i."""
    from cipl.maps import feature_grid
    from cipl.model import StageBackbone
    from cipl.train import CIPLModelConfig
    from medimg_core.models import create_backbone

    assert CIPLModelConfig(output_stride=4).output_stride == 4
    with pytest.raises(ValueError, match="output_stride must be 4"):
        CIPLModelConfig(output_stride=2)
    torch.manual_seed(0)
    backbone = StageBackbone(create_backbone("resnet18", in_chans=1, output_stride=4), 3)
    assert backbone.stride == 4
    model = CIPL(backbone, LabelSpace.for_task("multilabel", ["a"]), prototypes_per_class=1, prototype_dim=8,
                 reduce_dim=8).eval()
    grid = feature_grid(model, (64, 64), 1)
    assert grid.shape == (16, 16) and grid.step == (4.0, 4.0)
    assert abs(grid.origin[0]) < 0.75 and abs(grid.origin[1]) < 0.75
