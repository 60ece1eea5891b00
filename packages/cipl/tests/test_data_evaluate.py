"""Pairs share a label and their two views stay aligned; localisation metrics on maps set by hand."""

import numpy as np
import pytest
import torch

from cipl.data import PairDataset, ViewConfig
from cipl.evaluate import localisation_metrics
from cipl.model import CIPL, LabelSpace
from medimg_core.baseline import DataConfig
from medimg_core.data import DatasetCard, MedicalImageDataset
from medimg_core.data.base import SampleTable
from medimg_core.testing import IdentityBackbone


def multilabel_dataset(n=40, seed=0, size=16, masks=None, targets=None, images=None):
    rng = np.random.default_rng(seed)
    card = DatasetCard(name="toy", title="toy", task="multilabel", class_names=("a", "b", "c"),
                       concept_names=("a", "b", "c"), channels=1, has_masks=masks is not None)
    if targets is None:
        targets = (rng.random((n, 3)) < 0.4).astype(np.float32)
    if images is None:
        images = rng.integers(0, 256, size=(n, size, size), dtype=np.uint8)
    table = SampleTable(ids=[f"i{k}" for k in range(n)], targets=targets, images=images,
                        concepts=np.asarray(targets, np.float32), masks=masks)
    return MedicalImageDataset(table, card, "train")


def test_pairs_share_a_label_and_views_are_aligned():
    ds = multilabel_dataset()
    labels = LabelSpace.for_task("multilabel", ds.card.class_names)
    data = DataConfig(image_size=16, hflip=True, rotation=10, scale_min=0.8)
    pairs = PairDataset(ds, labels, data, ViewConfig(translate=0.1, blur_sigma=(0.1, 0.3)), channels=1)
    torch.manual_seed(0)
    class_labels = labels.class_labels(ds.targets).numpy()
    close, far = [], []
    for i in range(len(ds)):
        item = pairs[i]
        assert set(item) == {"image_a", "image_b", "view_a", "view_b", "target_a", "target_b", "labels_a", "labels_b"}
        assert (item["labels_a"] * item["labels_b"]).sum() >= 1, "a pair must share at least one class"
        assert torch.equal(item["labels_a"], torch.from_numpy(class_labels[i]))
        close.append(torch.corrcoef(torch.stack([item["image_a"].flatten(), item["view_a"].flatten()]))[0, 1])
        far.append(torch.corrcoef(torch.stack([item["image_a"].flatten(), item["image_b"].flatten()]))[0, 1])
    # the two views of one image are nearly pixel-aligned (same crop, flip and rotation); partners are not
    assert float(torch.stack(close).mean()) > 0.6 > float(torch.stack(far).abs().mean())
    pairs.mode = "single"
    assert set(pairs[0]) == {"image_a", "target_a", "labels_a"}


def test_single_label_pairs_are_the_same_class():
    rng = np.random.default_rng(1)
    card = DatasetCard(name="toy2", title="toy2", task="binary", class_names=("neg", "pos"), channels=1)
    targets = rng.integers(0, 2, 30)
    table = SampleTable(ids=[f"i{k}" for k in range(30)], targets=targets, concepts=np.zeros((30, 0), np.float32),
                        images=rng.integers(0, 256, size=(30, 16, 16), dtype=np.uint8))
    ds = MedicalImageDataset(table, card, "train")
    pairs = PairDataset(ds, LabelSpace.for_task("binary", card.class_names), DataConfig(image_size=16), ViewConfig(), 1)
    for i in range(30):
        item = pairs[i]
        assert int(item["target_a"]) == int(item["target_b"]) == int(targets[i])


class FixedMaps(CIPL):
    """A CIPL (features = the input pixels, 1 prototype per class) whose similarity maps and probabilities are
    set by the test: similarity = exp(-d), so d = -log(map)."""

    def __init__(self, maps, probs):
        super().__init__(IdentityBackbone(1), LabelSpace.for_task("multilabel", ("a", "b", "c")),
                         prototypes_per_class=1, prototype_dim=1, reduce_dim=None, add_on_layers=1,
                         similarity_scale=1.0)
        self.maps, self.probs = maps, probs

    def forward(self, x):
        d = -torch.log(self.maps[: len(x)].clamp_min(1e-6))
        d_min = d.flatten(2).min(2).values
        return {"distance_maps": d, "min_distances": d_min, "similarities": torch.exp(-d_min),
                "probabilities": self.probs[: len(x)]}


def test_pointing_game_and_iou_by_hand():
    size = 8
    masks = np.zeros((2, 3, size, size), np.uint8)
    masks[0, 0, 0:4, 0:4] = 1  # image 0, finding a: top-left quadrant
    masks[0, 1, 4:8, 4:8] = 1  # image 0, finding b: bottom-right quadrant
    masks[1, 2, 0:8, 0:2] = 1  # image 1, finding c: left columns
    targets = np.array([[1, 1, 0], [0, 0, 1]], np.float32)
    ds = multilabel_dataset(2, masks=masks, targets=targets, images=np.zeros((2, size, size), np.uint8))
    maps = torch.full((2, 4, size, size), 0.1)  # 4 classes x 1 prototype, maps at the input size
    maps[0, 0, 1, 1] = 1.0  # a: peak inside its mask
    maps[0, 1, 0, 7] = 1.0  # b: peak outside its mask (top-right)
    maps[1, 2, 3, 0] = 1.0  # c: peak inside
    probs = torch.tensor([[0.9, 0.8, 0.1], [0.2, 0.1, 0.3]])  # c is present but not detected
    ds.transform = None
    result = localisation_metrics(FixedMaps(maps, probs), ds, n_boot=50)
    assert result["n"] == 2 and result["pointing_game"] == pytest.approx(0.5)
    assert result["pointing_game/a"] == 1.0 and result["pointing_game/b"] == 0.0
    assert result["all_present/n"] == 3 and result["all_present/pointing_game"] == pytest.approx(2 / 3)
    # IoU: the thresholded region of a one-peak map is its peak pixel (the features are the pixels: the measured
    # grid is the pixel grid and the upsampling the identity): a 1 / 16, b 0 / 17
    assert result["grid_origin_px"] == pytest.approx([0.0, 0.0], abs=1e-6)
    assert result["grid_step_px"] == [1.0, 1.0]
    assert result["iou/a"] == pytest.approx(1 / 16) and result["iou/b"] == pytest.approx(0.0)
    assert result["iou_mean"] == pytest.approx(1 / 32)
    # on the pixel grid the cell pointing game is the pointing game
    assert result["cell_pointing_game"] == result["pointing_game"]
    assert result["cell_pointing_game/a"] == 1.0 and result["cell_pointing_game/b"] == 0.0
    # with one prototype per class, the three kinds of class map are the same map
    assert result["map"] == "weighted"  # the default headline map
    assert result["max/pointing_game"] == result["top/pointing_game"] == result["pointing_game"]


def test_feature_grid_and_upsampling(tiny_cipl):
    from cipl.maps import FeatureGrid, feature_grid, naive_grid, upsample

    # TinyConvBackbone: a 3x3 convolution, stride 2, padding 1: cell i is centred on pixel 2i
    grid = feature_grid(tiny_cipl(), (16, 16), 1)
    assert grid.step == (2.0, 2.0) and grid.shape == (8, 8)
    assert grid.origin == pytest.approx((0.0, 0.0), abs=0.3)
    maps = torch.zeros(1, 4, 4)
    maps[0, 1, 2] = 1.0
    # on a grid with cells at pixels 0, 4, 8, 12 the peak of cell (1, 2) is pixel (4, 8)
    up = upsample(maps, (16, 16), FeatureGrid((0.0, 0.0), (4.0, 4.0), (4, 4)))
    assert divmod(int(up.argmax()), 16) == (4, 8)
    # the naive grid is what align_corners=False resizing does
    naive = torch.nn.functional.interpolate(maps[None], size=(16, 16), mode="bicubic", align_corners=False)[0]
    assert torch.allclose(upsample(maps, (16, 16), naive_grid((4, 4), (16, 16))), naive, atol=1e-5)


def test_cell_pointing_game_by_hand():
    from cipl.evaluate import cell_hit, cell_of_pixels
    from cipl.maps import FeatureGrid

    # cells every 4 px with cell 0 centred on pixel 0: cell 1 owns pixels 2..5, cell 3 owns 10..15 (clamped)
    grid = FeatureGrid((0.0, 0.0), (4.0, 4.0), (4, 4))
    rows, cols = cell_of_pixels(grid, (16, 16))
    assert rows.tolist() == [0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3] and torch.equal(rows, cols)
    mask = torch.zeros(16, 16, dtype=torch.bool)
    mask[6:8, 6:8] = True  # a small finding in cell (2, 2), beside cell (1, 1)'s border
    assert cell_hit((6, 7), mask, grid)  # peak inside: hit
    assert not cell_hit((5, 5), mask, grid)  # cell (1, 1) holds pixels 2..5: no overlap
    assert cell_hit((9, 9), mask, grid)  # peak outside the mask but in its cell (2, 2): a cell hit
    assert not cell_hit((12, 6), mask, grid)  # cell (3, 2)


class Subsampling(torch.nn.Module):
    """A 'model' of stride 4 whose distance map is the input image read at every 4th pixel."""

    def forward(self, x):
        return {"distance_maps": x[:, :1, ::4, ::4]}


def test_dense_maps_interleave_the_shifted_maps():
    """Shift-and-stitch of a stride-4 model that reads pixels (4i, 4j): at step 1 the dense map is the image
    itself, at step 2 every other pixel; step 4 is the model's own map; a step not dividing 4 is refused."""
    from cipl.maps import FeatureGrid, dense_distance_maps

    grid = FeatureGrid((0.0, 0.0), (4.0, 4.0), (4, 4))
    x = torch.arange(2 * 16 * 16, dtype=torch.float32).view(2, 1, 16, 16)
    dense, dense_grid = dense_distance_maps(Subsampling(), x, 1, grid)
    assert torch.equal(dense, x) and dense_grid == FeatureGrid((0.0, 0.0), (1.0, 1.0), (16, 16))
    dense, dense_grid = dense_distance_maps(Subsampling(), x, 2, grid)
    assert torch.equal(dense, x[:, :, ::2, ::2]) and dense_grid.step == (2.0, 2.0)
    assert torch.equal(dense_distance_maps(Subsampling(), x, 4, grid)[0], x[:, :, ::4, ::4])
    with pytest.raises(ValueError, match="divide the backbone stride 4"):
        dense_distance_maps(Subsampling(), x, 3, grid)


def test_dense_maps_of_a_real_cipl_match_its_own_cells(tiny_cipl):
    """On a CIPL (stride 2), the step-1 map holds the model's own distance map at the even pixels."""
    from cipl.maps import dense_distance_maps

    model = tiny_cipl().eval()
    x = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        dense, grid = dense_distance_maps(model, x, 1)
        own = model(x)["distance_maps"]
    assert dense.shape == (2, model.num_prototypes, 16, 16) and grid.step == (1.0, 1.0)
    torch.testing.assert_close(dense[:, :, ::2, ::2], own)


def test_sampled_maps_reuse_the_unshifted_pass():
    """sampled_distance_maps: the model's own maps without a step; with one, the dense maps, computed with the
    caller's unshifted maps in place of that pass (here a marker, which must land on the even pixels)."""
    from cipl.maps import FeatureGrid, sampled_distance_maps

    grid = FeatureGrid((0.0, 0.0), (4.0, 4.0), (4, 4))
    x = torch.arange(16 * 16, dtype=torch.float32).view(1, 1, 16, 16)
    own = Subsampling()(x)["distance_maps"]
    maps, same_grid = sampled_distance_maps(Subsampling(), x, own, None, grid)
    assert maps is own and same_grid == grid
    dense, dense_grid = sampled_distance_maps(Subsampling(), x, own, 2, grid)
    assert torch.equal(dense, x[:, :, ::2, ::2]) and dense_grid.step == (2.0, 2.0)
    marker = torch.full_like(own, -1.0)
    dense, _ = sampled_distance_maps(Subsampling(), x, marker, 2, grid)
    assert torch.equal(dense[:, :, ::2, ::2], marker) and torch.equal(dense[:, :, 1::2, 1::2], x[:, :, 2::4, 2::4])


def test_prototype_placement_by_hand():
    from cipl.evaluate import prototype_placement

    size = 16
    masks = np.zeros((3, 3, size, size), np.uint8)
    masks[0, 0, 0:4, 0:4] = 1  # image i0, finding a: top-left corner
    masks[1, 1, 12:16, 12:16] = 1  # image i1, finding b: bottom-right corner
    masks[2, 1, 0:2, 14:16] = 1  # image i2, finding b: top-right corner
    targets = np.array([[1, 0, 0], [0, 1, 0], [0, 1, 0]], np.float32)
    ds = multilabel_dataset(3, size=size, masks=masks, targets=targets, images=np.zeros((3, size, size), np.uint8))

    def record(index, name, source, cell):
        return {"index": index, "class_name": name, "source_id": source, "cell": list(cell)}

    # a 4x4 grid, cells every 4 px, cell 0 centred on pixel 0 (cell 1 owns pixels 2..5, cell 3 owns 10..15)
    push = {"grid": [4, 4], "image_size": [size, size],
            "stats": {"grid_origin_px": [0.0, 0.0], "grid_step_px": [4.0, 4.0]},
            "prototypes": [record(0, "a", "i0", (0, 0)),  # cell (0, 0) holds pixels 0..1: on a's mask
                           record(1, "a", "i0", (1, 1)),  # pixels 2..5: overlaps a's mask (0..3)
                           record(2, "a", "i0", (2, 2)),  # pixels 6..9: off
                           record(3, "b", "i1", (3, 3)),  # pixels 10..15: on b's mask
                           record(4, "b", "i2", (3, 3)),  # rows 10..15: image i2's b mask is rows 0..1: off
                           record(5, "No Finding", "i0", (0, 0))]}  # a class without masks: not counted
    out = prototype_placement(push, ds)
    assert out["on_finding/a"] == pytest.approx(2 / 3) and out["n/a"] == 3
    assert out["on_finding/b"] == pytest.approx(1 / 2) and out["n/b"] == 2
    assert out["on_finding"] == pytest.approx(3 / 5)
    push["prototypes"].append(record(6, "a", "elsewhere", (0, 0)))
    with pytest.raises(ValueError, match="'elsewhere' is not in"):
        prototype_placement(push, ds)


def test_localisation_as_swaps_the_headline_kind():
    from cipl.evaluate import localisation_as

    result = {"n": 4, "pointing_game": 0.5, "pointing_game/a": 0.25, "all_present/pointing_game": 0.4,
              "max/n": 4, "max/pointing_game": 0.3, "weighted/n": 4, "weighted/pointing_game": 0.9,
              "weighted/pointing_game/a": 1.0, "map": "top", "map_step": None, "iou_threshold": 0.5}
    out = localisation_as(result, "weighted")
    assert out["map"] == "weighted" and out["pointing_game"] == 0.9 and out["pointing_game/a"] == 1.0
    assert out["top/pointing_game"] == 0.5 and out["top/pointing_game/a"] == 0.25 and out["top/n"] == 4
    assert out["max/pointing_game"] == 0.3 and out["iou_threshold"] == 0.5
    assert not any(k.startswith(("weighted/", "all_present/")) for k in out)
    assert localisation_as(out, "top")["pointing_game"] == 0.5
    assert localisation_as(result, "top") == result
    with pytest.raises(ValueError, match="map kind"):
        localisation_as(result, "mean")


def test_weighted_class_maps_by_hand():
    from cipl.evaluate import weighted_class_maps

    model = CIPL(IdentityBackbone(1), LabelSpace.for_task("multilabel", ("a", "b", "c")), prototypes_per_class=2,
                 prototype_dim=1, reduce_dim=None, add_on_layers=1)
    with torch.no_grad():
        model.last_layer.weight.copy_(torch.arange(32, dtype=torch.float32).view(4, 8) / 10)
    maps = torch.rand(2, 8, 3, 3, generator=torch.Generator().manual_seed(0))
    out = weighted_class_maps(model, maps)
    assert out.shape == (2, 4, 3, 3)
    # class b (index 1) owns prototypes 2 and 3; its weights on them are row 1, columns 2 and 3: 1.0 and 1.1
    assert torch.allclose(out[:, 1], 1.0 * maps[:, 2] + 1.1 * maps[:, 3])
    # off-block weights (class a's on b's prototypes, 0.2 and 0.3) play no part
    assert torch.allclose(out[:, 0], 0.0 * maps[:, 0] + 0.1 * maps[:, 1])


def test_localisation_intervals_are_the_core_bootstrap_with_the_former_numbers():
    """The intervals come from medimg_core.metrics.bootstrap_ci now; they equal those of the former private
    bootstrap (one (n_boot, n) draw of resample indices), also where the core draws its indices in chunks."""
    from cipl.evaluate import _bootstrap_mean

    def former(values, n_boot, seed):
        rng = np.random.default_rng(seed)
        means = values[rng.integers(0, len(values), size=(n_boot, len(values)))].mean(axis=1)
        return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]

    rng = np.random.default_rng(0)
    for n in (2, 43, 1500):  # 1500 x 1000 resamples: several chunks in the core
        for values in ((rng.random(n) < 0.3).astype(np.float64), rng.random(n)):
            assert _bootstrap_mean(values, 1000, 0) == former(values, 1000, 0)
    assert _bootstrap_mean(np.ones(1), 1000, 0) is None and _bootstrap_mean(np.ones(5), 0, 0) is None
