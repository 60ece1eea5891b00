"""The ChestX-ray8 box protocol (medimg_core.localisation) against hand-computed values, and ChestX-ray14's boxes."""

import numpy as np
import pytest

from medimg_core.data import ChestXray14
from medimg_core.data.errors import DatasetError
from medimg_core.localisation import (
    box_accuracies,
    box_mask,
    energy_pointing_game,
    region_boxes,
    rescale_box,
    score_box,
    score_mask,
    threshold_map,
)
from medimg_core.testing import shared_data_dir, write_chestxray14_fixture


def test_rescale_box_by_hand():
    # 1024 px frame -> 512 px input: halved; (x, y, w, h) -> (x0, y0, x1, y1)
    assert rescale_box((100, 200, 300, 50), (1024, 1024), (512, 512)) == (50, 100, 200, 125)
    # a non-square target: x scaled by 64/1024, y by 32/1024
    assert rescale_box((512, 512, 256, 256), (1024, 1024), (32, 64)) == (32, 16, 48, 24)
    # crop (top 100, left 200, 512 x 512) resized to 256: the box is clipped to the crop, then halved
    assert rescale_box((100, 50, 200, 100), (1024, 1024), (256, 256), crop=(100, 200, 512, 512)) == (0, 0, 50, 25)
    assert rescale_box((0, 0, 50, 50), (1024, 1024), (256, 256), crop=(100, 200, 512, 512)) is None
    with pytest.raises(ValueError, match="positive w, h"):
        rescale_box((0, 0, 0, 5), (1024, 1024), (256, 256))


def test_box_mask_counts_pixel_centres():
    mask = box_mask((1.4, 0.5, 3.6, 2.0), (4, 5))  # columns with centres 1.5, 2.5, 3.5; rows 0.5, 1.5
    assert mask.sum() == 6 and mask[0:2, 1:4].all()


def test_iobb_iou_and_pointing_game_by_hand():
    heat = np.zeros((10, 10))
    heat[2:5, 2:6] = 1.0  # one region: rows 2-4, columns 2-5 -> generated box (2, 2, 6, 5), 12 px
    heat[3, 4] = 2.0  # the peak, inside the region
    truth = (3.0, 2.0, 8.0, 6.0)  # columns 3-7, rows 2-5: 20 px; intersection rows 2-4 x columns 3-5 = 9 px
    out = score_box(heat, truth, map_threshold=0.4)
    # energy: 13 units in the map (11 px of 1, the peak 2); in the box 8 px of 1 and the peak
    assert out == {"hit": True, "iobb": pytest.approx(9 / 12), "iou": pytest.approx(9 / (12 + 20 - 9)), "regions": 1,
                   "energy": pytest.approx(10 / 13)}
    # at 0.75 of the range only the peak is left: a 1 px generated box inside the truth -> IoBB 1, IoU 1/20
    out = score_box(heat, truth, map_threshold=0.75)
    assert out["iobb"] == 1.0 and out["iou"] == pytest.approx(1 / 20)
    # the peak moved outside the box: a pointing-game miss; two regions, the best-matching one counts
    heat[8, 0] = 3.0
    out = score_box(heat, truth, map_threshold=0.3)
    assert out["hit"] is False and out["regions"] == 2 and out["iobb"] == pytest.approx(9 / 12)
    assert out["energy"] == pytest.approx(10 / 16)
    accuracy = box_accuracies(np.array([0.75, 1.0, 0.1]), np.array([0.39, 0.05, 0.0]))
    assert accuracy["iobb_acc@0.5"].tolist() == [1, 1, 0] and accuracy["iobb_acc@0.1"].tolist() == [1, 1, 0]
    assert accuracy["iou_acc@0.3"].tolist() == [1, 0, 0] and set(accuracy) >= {"iobb_acc@0.25", "iou_acc@0.7"}


def test_regions_are_eight_connected_and_constant_maps_cover_the_image():
    region = np.zeros((5, 5), dtype=bool)
    region[0, 0] = region[1, 1] = True  # diagonal neighbours: one region
    region[4, 4] = True
    assert sorted(region_boxes(region)) == [(0, 0, 2, 2), (4, 4, 5, 5)]
    out = score_box(np.ones((4, 4)), (0, 0, 2, 2))
    assert out["regions"] == 1 and out["iobb"] == pytest.approx(4 / 16) and out["iou"] == pytest.approx(4 / 16)
    with pytest.raises(ValueError, match="covers no pixel"):
        score_box(np.ones((4, 4)), (0.6, 0.6, 0.9, 0.9))



def test_score_mask_by_hand():
    heat = np.zeros((6, 6))
    heat[1:3, 1:4] = 1.0  # 6 px
    heat[2, 2] = 4.0  # the peak
    heat[5, 5] = -3.0  # negative: no energy, but it sets the minimum of the range
    mask = np.zeros((6, 6), dtype=np.uint8)
    mask[2:4, 2:4] = 1  # 4 px: (2, 2), (2, 3), (3, 2), (3, 3)
    # range [-3, 4]: threshold 0.5 -> values >= 0.5 -> the 6 px block; inside the mask (2, 2), (2, 3)
    out = score_mask(heat, mask)
    assert out == {"hit": True, "iou": pytest.approx(2 / (6 + 4 - 2)), "energy": pytest.approx((4 + 1) / (5 + 4)),
                   "peak_pixels": 1}
    # threshold 0.9 keeps only the peak (>= 3.3): 1 px inside a 4 px mask
    assert score_mask(heat, mask.astype(bool), map_threshold=0.9)["iou"] == pytest.approx(1 / 4)
    assert threshold_map(heat, 0.9).sum() == 1 and threshold_map(np.ones((3, 3)), 0.9).all()
    # the peak elsewhere: a miss; energy counts the positive part only
    heat[0, 5] = 9.0
    out = score_mask(heat, mask)
    assert out["hit"] is False and out["energy"] == pytest.approx(5 / 18)
    # ties: the first maximum in raster order; a flat map points at (0, 0)
    flat = np.ones((6, 6))
    corner = np.zeros((6, 6), dtype=bool)
    corner[0, 0] = True
    assert score_mask(flat, corner)["hit"] is True and score_mask(flat, mask)["hit"] is False
    assert score_mask(flat, mask)["peak_pixels"] == 36 and score_mask(flat, mask)["energy"] == pytest.approx(4 / 36)
    assert score_mask(flat, mask)["iou"] == pytest.approx(4 / 36)  # a constant map is one region, the whole image
    # a box is a mask: score_box's energy is energy_pointing_game on box_mask
    box = (2.0, 2.0, 4.0, 4.0)
    assert score_box(heat, box)["energy"] == pytest.approx(energy_pointing_game(heat, box_mask(box, heat.shape)))
    assert np.isnan(energy_pointing_game(-np.ones((6, 6)), mask))


def test_score_mask_names_bad_input():
    with pytest.raises(ValueError, match=r"binary \(bool or 0/1\), got values \[0, 255\]"):
        score_mask(np.ones((4, 4)), np.full((4, 4), 255, dtype=np.uint8) * np.eye(4, dtype=np.uint8))
    with pytest.raises(ValueError, match=r"the mask must have the heat-map's shape \(4, 4\), got \(5, 5\)"):
        score_mask(np.ones((4, 4)), np.ones((5, 5)))
    with pytest.raises(ValueError, match="the mask is empty"):
        score_mask(np.ones((4, 4)), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="finite"):
        score_mask(np.full((4, 4), np.nan), np.ones((4, 4)))
    with pytest.raises(ValueError, match="map_threshold is a fraction"):
        score_mask(np.ones((4, 4)), np.ones((4, 4)), map_threshold=50)


BOXES = [("00000004_000.png", "Mass", 100, 200, 300, 400), ("00000004_000.png", "Infiltrate", 0, 0, 512, 512),
         ("00000002_000.png", "Nodule", 10, 10, 20, 20)]


def test_chestxray14_boxes_in_the_official_layout(tmp_path):
    root = write_chestxray14_fixture(tmp_path / "nih", n_patients=8, bboxes=BOXES)
    test = ChestXray14(root, "test", val_fraction=0.25)
    i = test.ids.index("00000004_000.png")
    # 1024 -> 32 px: x / 32; Infiltrate is the label table's Infiltration
    assert test.boxes(i, (32, 32)) == [("Mass", (3.125, 6.25, 12.5, 18.75)), ("Infiltration", (0.0, 0.0, 16.0, 16.0))]
    assert test.boxes(i)[0] == ("Mass", (100.0, 200.0, 400.0, 600.0))
    assert test.boxes(test.ids.index("00000004_001.png"), (32, 32)) == []
    assert set(test.table.extra["bboxes"]) == {"00000004_000.png"}  # the train image's box stays with train


@pytest.mark.parametrize(("row", "message"), [
    (("00000004_000.png", "Covid", 1, 1, 5, 5), "row 2, column 'Finding Label': unknown finding 'Covid'"),
    (("00000004_000.png", "Mass", 1, 1, -5, 5), "row 2, column 'Bbox"),
    (("00000004_000.png", "Mass", 1000, 1, 100, 5), "inside the 1024 x 1024 image"),
])
def test_chestxray14_bad_boxes_are_named(tmp_path, row, message):
    root = write_chestxray14_fixture(tmp_path / "nih", n_patients=8, bboxes=[row])
    with pytest.raises(DatasetError, match=message):
        ChestXray14(root, "test", val_fraction=0.25)


@pytest.mark.shared_data
def test_the_real_box_table():
    shared = shared_data_dir()
    if shared is None or not (shared / "chestxray14").is_dir():
        pytest.skip("real data folder ../shared/data/chestxray14 is absent")
    from medimg_core.data.chestxray14 import read_bboxes

    boxes = read_bboxes(shared / "chestxray14")
    findings = [b[0] for rows in boxes.values() for b in rows]
    assert len(boxes) == 880 and len(findings) == 984
    assert sorted(set(findings)) == ["Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule",
                                     "Pneumonia", "Pneumothorax"]
    assert findings.count("Infiltration") == 123
