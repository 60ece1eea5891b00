"""The map protocols on one model (medimg_benchmark.maps) and the pieces of the run (rule masks, summary, table),
on hand-computed cases and a tiny CNN the test builds."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from medimg_benchmark.maps import (
    EDGE_REFERENCE,
    PROTOCOLS,
    block_layer_order,
    cam_layer,
    edge_reference,
    interval,
    localisation_scores,
    posthoc_explainer,
    score_explainers,
)
from medimg_benchmark.outputs import fmt_mean_sd, markdown_table
from medimg_benchmark.runner import BenchmarkConfig, rule_masks, summarise

SIZE = 16


class Wrapper(nn.Module):
    """Like medimg's Backbone: one parameterised child (the network) and nothing of its own."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.model = net

    def forward(self, x):
        return self.model(x)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.act = nn.ReLU()
        self.layer1 = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        return self.pool(self.layer1(self.act(self.conv1(x)))).flatten(1)


class Classifier(nn.Module):
    """backbone (Wrapper around Net) -> dropout -> head, as medimg's ImageClassifier."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.backbone = Wrapper(Net())
        self.dropout = nn.Dropout(0.0)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.dropout(self.backbone.model(x)))


def test_block_layer_order_follows_the_wrapper_down_to_the_blocks():
    assert block_layer_order(Classifier()) == ["head", "backbone.model.layer1", "backbone.model.conv1"]
    seq = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Linear(2, 2))
    assert block_layer_order(seq) == ["2", "0"]
    with pytest.raises(ValueError, match="no parameterised"):
        block_layer_order(nn.Sequential(nn.ReLU()))


class Staged(nn.Module):
    """A timm-like model: feature_info names its stages; the last one's map is 1 x 1 at any input size."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.stage1 = nn.Conv2d(4, 4, 3, stride=2, padding=1)
        self.stage2 = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1))
        self.feature_info = [{"module": "stage1"}, {"module": "stage2"}]
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.stage2(self.stage1(self.stem(x))).flatten(1))


def test_cam_layer_steps_back_from_a_stage_without_spatial_extent():
    wrapped = Wrapper(Staged())
    assert cam_layer(wrapped, (8, 8)) == "model.stage1"  # stage2 is 1 x 1: a CAM of it is constant
    assert cam_layer(wrapped, (2, 2)) == "model.stage2"  # stage1 is 1 x 1 too: nothing better, the default
    assert cam_layer(Classifier(), (SIZE, SIZE)) == "backbone.model.layer1.0"  # no feature_info: the last conv
    assert wrapped.training  # the mode is restored


def test_rule_masks_are_the_union_of_the_present_rule_concepts():
    masks = np.zeros((2, 3, 4, 4), dtype=np.uint8)
    masks[:, 0, 0, 0] = 1  # concept a at (0, 0)
    masks[:, 1, 1, 1] = 1  # concept b at (1, 1)
    masks[:, 2, 2, 2] = 1  # concept c, not in the rule
    present = np.array([[1, 0, 1], [1, 1, 1]])
    masks[0, 1] = 0  # b absent in image 0: its mask is empty, as the generator's
    out = rule_masks(masks, present, ["a", "b", "c"], ["a", "b"])
    assert out.shape == (2, 4, 4) and out.dtype == bool
    assert out[0].sum() == 1 and out[0, 0, 0]
    assert out[1].sum() == 2 and out[1, 0, 0] and out[1, 1, 1] and not out[1, 2, 2]
    with pytest.raises(ValueError, match=r"\['z'\]"):
        rule_masks(masks, present, ["a", "b", "c"], ["a", "z"])


def test_interval_leaves_undefined_values_out_and_orders_its_bounds():
    result = interval([1.0, 1.0, 0.0, math.nan], n_boot=200, seed=0)
    assert result["value"] == pytest.approx(2 / 3) and result["n"] == 3 and result["undefined"] == 1
    assert 0.0 <= result["low"] <= result["value"] <= result["high"] <= 1.0
    empty = interval([math.nan], n_boot=50, seed=0)
    assert math.isnan(empty["value"]) and empty["n"] == 0 and empty["undefined"] == 1


def test_localisation_scores_on_a_hand_made_map():
    maps = np.zeros((2, 4, 4))
    maps[0, 0, 0] = 1.0  # peak on the mask, all energy inside, thresholded region = the mask
    maps[1, 3, 3] = 1.0  # peak off the mask, no energy inside, region disjoint from it
    masks = np.zeros((2, 4, 4), dtype=bool)
    masks[:, 0, 0] = True
    out = localisation_scores(maps, masks, n_boot=100, seed=0)
    assert out["per_image"]["pointing_game"] == [1.0, 0.0]
    assert out["per_image"]["iou"] == [1.0, 0.0]
    assert out["per_image"]["energy_pointing_game"] == [1.0, 0.0]
    assert out["iou"]["value"] == pytest.approx(0.5)


def test_edge_reference_is_the_gradient_magnitude_and_ignores_the_model():
    x = torch.zeros(1, 3, 8, 8)
    x[..., 4:] = 1.0  # a vertical edge between columns 3 and 4
    maps = edge_reference(None, x, torch.tensor([0]))
    assert maps.shape == (1, 8, 8)
    assert maps[0, :, 3:5].min() > 0 and maps[0, :, :2].max() == 0 and maps[0, :, 6:].max() == 0
    assert np.allclose(maps[0, :, 3], maps[0, 0, 3])  # the same along the edge


def _images(n: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 3, SIZE, SIZE, generator=g)


def test_score_explainers_fills_every_protocol_and_the_reference_fails_the_sanity_check():
    model = Classifier().eval()
    x = _images()
    masks = np.zeros((3, SIZE, SIZE), dtype=bool)
    masks[:, 4:12, 4:12] = True
    explainers = {"saliency": posthoc_explainer("saliency"), EDGE_REFERENCE: edge_reference}
    seen = []
    out = score_explainers(model, x, masks, target=1, explainers=explainers, sanity_images=2, n_boot=50,
                           on_explainer=seen.append)
    assert seen == ["saliency", EDGE_REFERENCE]
    for name, row in out.items():
        for protocol in PROTOCOLS:
            cell = row[protocol]
            assert cell["n"] >= 1, (name, protocol)
            assert cell["low"] <= cell["value"] <= cell["high"], (name, protocol, cell)
        assert row["maps"].shape == (3, SIZE, SIZE)
        assert [s["layer"] for s in row["sanity_steps"]] == block_layer_order(model)
    # the edge detector does not depend on the model: identical maps at every step
    assert out[EDGE_REFERENCE]["sanity_spearman_abs"]["value"] == pytest.approx(1.0)
    assert out[EDGE_REFERENCE]["passes_sanity"] is False
    # the input gradient changes once every block is re-initialised
    assert out["saliency"]["sanity_spearman_abs"]["value"] < 0.5 and out["saliency"]["passes_sanity"] is True
    with pytest.raises(ValueError, match="masks must be"):
        score_explainers(model, x, masks[:2], target=1, explainers=explainers)


def _record(values: dict[str, float], passes: bool) -> dict:
    row = {p: {"value": values.get(p, 0.5), "low": 0.0, "high": 1.0} for p in PROTOCOLS}
    row["passes_sanity"] = passes
    return {"explainers": {"gradcam": row}}


def test_summary_is_mean_and_sample_sd_over_seeds_and_the_table_shows_it():
    records = [_record({"iou": 0.2}, True), _record({"iou": 0.4}, False), _record({"iou": math.nan}, True)]
    summary = summarise(records)
    iou = summary["gradcam"]["iou"]
    assert iou["mean"] == pytest.approx(0.3) and iou["sd"] == pytest.approx(math.sqrt(0.02)) and iou["n_seeds"] == 2
    assert summary["gradcam"]["sanity_passes"] == [True, False, True]
    assert fmt_mean_sd(iou) == "0.300 ± 0.141"
    assert fmt_mean_sd({"mean": 0.5, "sd": math.nan}) == "0.500 ± n/a"
    assert fmt_mean_sd({"mean": None, "sd": None}) == "n/a"
    table = markdown_table({"summary": summary})
    assert table.splitlines()[2].startswith("| gradcam | 0.500 ± 0.000 | 0.300 ± 0.141 |")
    assert table.splitlines()[2].endswith("| 2/3 |")


def test_config_checks_its_budget():
    assert BenchmarkConfig.quick_budget().seeds == (0, 1) and BenchmarkConfig.quick_budget().quick is True
    assert BenchmarkConfig().quick is False
    assert BenchmarkConfig().seeds == (0, 1, 2) and BenchmarkConfig().data_seed_offset == 1000
    with pytest.raises(ValueError, match="repeat"):
        BenchmarkConfig(seeds=(1, 1))
    with pytest.raises(ValueError, match="image_size must be an integer of at least 32, got 16"):
        BenchmarkConfig(image_size=16)
