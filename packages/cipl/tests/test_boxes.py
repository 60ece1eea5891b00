"""The ChestX-ray8 box protocol through a CIPL: ChestX-ray14 in its official layout (fixture, and the two real
samples of ../shared/data where present), each box's numbers checked against the class map scored by hand."""

import gzip
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from cipl.evaluate import box_localisation_metrics
from cipl.maps import class_maps
from cipl.model import CIPL, LabelSpace
from medimg_core.data import ChestXray14
from medimg_core.data.chestxray14 import FINDINGS
from medimg_core.data.transforms import TransformConfig, eval_transform
from medimg_core.localisation import rescale_box, score_box
from medimg_core.testing import TinyConvBackbone, shared_data_dir, write_chestxray14_fixture

SIZE = 32


def nih_cipl(seed: int = 0) -> CIPL:
    torch.manual_seed(seed)
    labels = LabelSpace.for_task("multilabel", FINDINGS, None)
    return CIPL(TinyConvBackbone(), labels, prototypes_per_class=2, prototype_dim=8, reduce_dim=8,
                add_on_layers=2).eval()


def by_hand(model: CIPL, ds: ChestXray14) -> list[tuple[str, dict]]:
    """Each box of ds scored on the model's weighted class map, one image at a time."""
    out = []
    for i in range(len(ds)):
        boxes = ds.boxes(i, (SIZE, SIZE))
        if boxes:
            maps = class_maps(model, ds[i]["image"][None], kind="weighted")[0].numpy()
            out += [(f, score_box(maps[list(model.labels.class_names).index(f)], b)) for f, b in boxes]
    return out


def check_against_hand(result: dict, scored: list[tuple[str, dict]]) -> None:
    assert result["n_boxes"] == len(scored)
    assert result["pointing_game"] == pytest.approx(np.mean([s["hit"] for _, s in scored]))
    assert result["iobb_mean"] == pytest.approx(np.mean([s["iobb"] for _, s in scored]))
    assert result["iou_mean"] == pytest.approx(np.mean([s["iou"] for _, s in scored]))
    for t in (0.1, 0.25, 0.5, 0.75, 0.9):
        assert result[f"iobb_acc@{t:g}"] == pytest.approx(np.mean([s["iobb"] > t for _, s in scored]))
    for finding in {f for f, _ in scored}:
        part = [s for f, s in scored if f == finding]
        assert result[f"n_boxes/{finding}"] == len(part)
        assert result[f"iou_mean/{finding}"] == pytest.approx(np.mean([s["iou"] for s in part]))


def test_box_protocol_on_the_official_layout(tmp_path):
    boxes = [("00000004_000.png", "Mass", 100, 200, 300, 400), ("00000004_000.png", "Infiltrate", 0, 0, 512, 512),
             ("00000004_001.png", "Effusion", 600, 500, 300, 300), ("00000008_000.png", "Nodule", 700, 100, 80, 60),
             ("00000002_000.png", "Nodule", 10, 10, 20, 20)]  # a training image: not scored on test
    root = write_chestxray14_fixture(tmp_path / "nih", n_patients=8, bboxes=boxes)
    tf = eval_transform(TransformConfig(size=SIZE, channels=1, normalize=None))
    ds = ChestXray14(root, "test", val_fraction=0.25, transform=tf)
    model = nih_cipl()
    result = box_localisation_metrics(model, ds, batch_size=3, n_boot=200, seed=0)
    assert (result["n_boxes"], result["n_images"], result["n_patients"]) == (4, 3, 2)
    assert result["resampled"] == "patients" and result["input_px"] == [SIZE, SIZE]
    assert result["skipped_findings"] == {} and result["n_boxes/Infiltration"] == 1
    check_against_hand(result, by_hand(model, ds))
    low, high = result["iobb_mean_ci"]
    assert low <= result["iobb_mean"] <= high
    assert 0 <= result["detected_fraction"] <= 1
    # the same split without a box table: nothing to score
    (root / "BBox_List_2017.csv").unlink()
    assert box_localisation_metrics(model, ChestXray14(root, "test", val_fraction=0.25, transform=tf)) is None


@pytest.mark.shared_data
def test_box_protocol_on_the_two_real_samples(tmp_path):
    """The two real 512 px samples in the official layout. Neither is in BBox_List_2017 (00000001_000 is a
    Cardiomegaly image without a box, 00027426_000 has no finding), so the first real Cardiomegaly and Effusion
    boxes of the NIH table (other images') are attached to them: real pixels, real box geometry, a path check."""
    shared = shared_data_dir()
    if shared is None or not (shared / "chestxray14" / "samples").is_dir():
        pytest.skip("real data folder ../shared/data/chestxray14 is absent")
    source = shared / "chestxray14"
    names = ["00000001_000.png", "00027426_000.png"]
    root = tmp_path / "nih"
    (root / "images_001" / "images").mkdir(parents=True)
    for name in names:
        shutil.copy(source / "samples" / name, root / "images_001" / "images" / name)
    with gzip.open(source / "Data_Entry_2017_v2020.csv.gz", "rt") as f:
        table = pd.read_csv(f)
    table[table["Image Index"].isin(names)].to_csv(root / "Data_Entry_2017_v2020.csv", index=False)
    (root / "train_val_list.txt").write_text("")
    (root / "test_list.txt").write_text("\n".join(names) + "\n")
    with gzip.open(source / "BBox_List_2017.csv.gz", "rt") as f:
        real = pd.read_csv(f).iloc[:, :6]
    first = {k: real[real["Finding Label"] == k].iloc[0, 2:6].tolist() for k in ("Cardiomegaly", "Effusion")}
    rows = [(names[0], "Cardiomegaly", *first["Cardiomegaly"]), (names[1], "Effusion", *first["Effusion"])]
    (root / "BBox_List_2017.csv").write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
                                             + "\n".join(",".join(map(str, r)) for r in rows) + "\n")
    tf = eval_transform(TransformConfig(size=SIZE, channels=1, normalize=None))
    ds = ChestXray14(root, "test", transform=tf)
    assert ds[0]["image"].shape == (1, SIZE, SIZE)  # a 512 px file, boxes in 1024 px: rescaled to the input
    i = ds.ids.index(names[0])
    assert ds.boxes(i, (SIZE, SIZE)) == [("Cardiomegaly", rescale_box(first["Cardiomegaly"], (1024, 1024),
                                                                      (SIZE, SIZE)))]
    model = nih_cipl(1)
    result = box_localisation_metrics(model, ds, n_boot=50)
    assert (result["n_boxes"], result["n_images"], result["n_patients"]) == (2, 2, 2)
    check_against_hand(result, by_hand(model, ds))
