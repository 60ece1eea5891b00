"""Derm7pt, Fitzpatrick17k + SkinCon and DDI loaders on tiny fixtures in their official layouts."""

import shutil

import numpy as np
import pandas as pd
import pytest

from medimg_core.data.ddi import DDI
from medimg_core.data.derm7pt import FULL_CONCEPTS, GROUPED_CONCEPTS, Derm7pt
from medimg_core.data.errors import DatasetError
from medimg_core.data.fitzpatrick17k import Fitzpatrick17kSkinCon
from medimg_core.data.registry import load_dataset
from medimg_core.data.skincon import SKINCON_CONCEPTS
from medimg_core.testing import (
    DERM7PT_CASES,
    fitzpatrick_fixture_md5,
    write_ddi_fixture,
    write_derm7pt_fixture,
    write_fitzpatrick17k_skincon_fixture,
)


@pytest.fixture(autouse=True)
def _medimg_home(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDIMG_HOME", str(tmp_path / "medimg-home"))


# ---------------------------------------------------------------- Derm7pt


def test_derm7pt_official_layout_and_case_mismatched_files(tmp_path):
    root = write_derm7pt_fixture(tmp_path / "release_v0")
    sizes = {s: len(Derm7pt(root, s)) for s in ("train", "valid", "test")}
    assert sizes == {"train": 6, "valid": 3, "test": 3}
    ds = Derm7pt(root, "train")
    assert ds.card.task == "binary" and ds.card.class_names == ("not melanoma", "melanoma")
    assert ds.ids == ["1", "2", "3", "4", "5", "6"] and ds.groups is None
    assert list(ds.targets) == [int("melanoma" in c[0]) for c in DERM7PT_CASES[:6]] == [1, 0, 0, 1, 0, 0]
    names = list(GROUPED_CONCEPTS)
    assert ds.card.concept_names == GROUPED_CONCEPTS and len(names) == 12
    on = {names[k] for k in np.flatnonzero(ds.concepts[0])}
    assert on == {"atypical pigment network", "irregular streaks", "irregular pigmentation", "regression structures",
                  "irregular dots and globules", "blue whitish veil", "irregular vascular structures"}
    assert not ds.concepts[1, [names.index(c) for c in ("atypical pigment network", "regular streaks")]].any()
    assert ds.concepts[1, names.index("typical pigment network")] == 1
    # each criterion switches on at most one grouped concept
    for group in ds.card.concept_groups.values():
        assert ds.concepts[:, [names.index(c) for c in group]].sum(axis=1).max() <= 1
    # the CSV says NEL/Nel001.jpg and Fal/Fal001.jpg; the disk has .JPG files and a lower-case fal/ folder
    suffixes = {p.suffix for p in ds.table.paths}
    assert suffixes == {".jpg", ".JPG"} and any(p.parent.name == "fal" for p in ds.table.paths)
    sample = ds[0]
    assert sample["image"].shape == (3, 12, 12) and sample["concepts"].shape == (12,) and sample["target"] == 1


def test_derm7pt_options_task_concepts_image(tmp_path):
    root = write_derm7pt_fixture(tmp_path / "d7")
    ds = Derm7pt(root, "train", task="diagnosis", concept_set="full", image="clinic")
    assert ds.card.task == "multiclass" and ds.card.num_classes == 5 and ds.card.modality == "clinical photography"
    assert [ds.card.class_names[t] for t in ds.targets] == [
        "melanoma", "nevus", "basal cell carcinoma", "melanoma", "seborrheic keratosis", "miscellaneous"]
    assert ds.card.concept_names == FULL_CONCEPTS and len(FULL_CONCEPTS) == 20
    full = list(FULL_CONCEPTS)
    # "combinations" of regression structures = blue and white areas
    assert ds.concepts[3, full.index("blue areas regression structures")] == 1
    assert ds.concepts[3, full.index("white areas regression structures")] == 1
    assert ds.concepts[5, full.index("blue areas regression structures")] == 0
    assert all(int(p.stem[-3:]) % 2 == 0 for p in ds.table.paths)  # clinic images are the even-numbered ones
    assert len(load_dataset("derm7pt", root, "valid")) == 3
    report = Derm7pt.verify(root, task="diagnosis")
    assert report.ok and report.card.num_classes == 5 and report.num_images == 12
    with pytest.raises(ValueError, match="task must be one of"):
        Derm7pt(root, "train", task="nevus")


def test_derm7pt_bad_input_lists_every_problem(tmp_path):
    root = write_derm7pt_fixture(tmp_path / "d7")
    meta = root / "meta" / "meta.csv"
    frame = pd.read_csv(meta, dtype=str, keep_default_na=False)
    frame.loc[1, "diagnosis"] = "melanomma"
    frame.loc[2, "streaks"] = "dashed"
    frame.to_csv(meta, index=False)
    missing = root / "images" / frame.loc[4, "derm"]
    missing.unlink(missing_ok=True)
    missing.with_suffix(".JPG").unlink(missing_ok=True)
    with pytest.raises(DatasetError) as info:
        Derm7pt(root, "train")
    msg = str(info.value)
    assert "3 problems" in msg and str(meta) in msg
    assert "row 3, column 'diagnosis': unknown diagnosis 'melanomma'" in msg
    assert "row 4, column 'streaks': unexpected value 'dashed' for criterion 'streaks'" in msg
    assert f"row 6, column 'derm': image 'images/{frame.loc[4, 'derm']}' not found" in msg
    report = Derm7pt.verify(root)  # the other splits still read; train's problems are listed
    assert report.split_sizes == {"val": 3, "test": 3} and len(report.problems) == 3

    frame.rename(columns={"pigment_network": "pigment_netwrk"}).to_csv(meta, index=False)
    with pytest.raises(DatasetError, match=r"meta.csv, column 'pigment_network': required column "
                       "'pigment_network' is missing; did you mean 'pigment_netwrk'"):
        Derm7pt(root, "train")


def test_derm7pt_index_files_checked(tmp_path):
    root = write_derm7pt_fixture(tmp_path / "d7")
    pd.DataFrame({"indexes": []}).to_csv(root / "meta" / "test_indexes.csv", index=False)
    with pytest.raises(DatasetError, match=r"the test split is empty; .*test_indexes.csv lists no rows"):
        Derm7pt(root, "test")
    pd.DataFrame({"indexes": [9, 40, 7]}).to_csv(root / "meta" / "test_indexes.csv", index=False)
    with pytest.raises(DatasetError) as info:
        Derm7pt(root, "test")
    msg = str(info.value)
    assert "test_indexes.csv, row 3, column 'indexes': row 40 is out of range" in msg
    assert "also in the val split (valid_indexes.csv), e.g. rows [7]" in msg


# ---------------------------------------------------------------- Fitzpatrick17k + SkinCon


def test_fitzpatrick_skincon_join_filters_and_counts(tmp_path):
    root = write_fitzpatrick17k_skincon_fixture(tmp_path / "fitz")
    tables = {s: Fitzpatrick17kSkinCon.read_table(root, s) for s in ("train", "val", "test")}
    extra = tables["train"].extra
    assert extra["eligible"] == 20 and extra["missing_images"] == 2 and extra["skincon_rows"] == 26
    assert (extra["do_not_consider"], extra["non_neoplastic"], extra["not_in_fitzpatrick_csv"]) == (2, 3, 1)
    ids = [i for t in tables.values() for i in t.ids]
    assert len(ids) == len(set(ids)) == 18  # 20 eligible, 2 without an image on disk
    assert sum(t.extra["missing_images_in_split"] for t in tables.values()) == 2
    expected = {fitzpatrick_fixture_md5(f"fitz{i}"): int(i >= 10) for i in range(18)}
    assert all(expected[i] == t for tab in tables.values() for i, t in zip(tab.ids, tab.targets, strict=True))
    assert {len(tables["val"]), len(tables["test"])} <= {3, 4}  # 20 eligible in 5 folds, before dropping
    ds = Fitzpatrick17kSkinCon(root, "train")
    assert ds.card.concept_names == SKINCON_CONCEPTS and len(SKINCON_CONCEPTS) == 48
    n = next(k for k in range(20) if fitzpatrick_fixture_md5(f"fitz{k}") == ds.ids[0])  # the fixture's number of the first image
    assert list(ds.concepts[0]) == [float((n + k) % 3 == 0) for k in range(48)]
    assert ds.table.extra["fitzpatrick_scale"][ds.ids[0]] == 1 + n % 6
    assert ds[0]["concepts"].shape == (48,)
    # the split file is written once, under $MEDIMG_HOME, and reused
    files = list((tmp_path / "medimg-home" / "splits").glob("fitzpatrick17k-skincon-*-k5-seed0.json"))
    assert len(files) == 1
    assert Fitzpatrick17kSkinCon(root, "test").ids == tables["test"].ids
    report = Fitzpatrick17kSkinCon.verify(root)
    assert report.ok and report.num_images == 18
    assert "note: 2 of 20 eligible images are not on disk and were dropped" in report.to_text()
    assert report.to_dict()["notes"]


def test_fitzpatrick_images_found_in_raw_data_or_root(tmp_path):
    root = write_fitzpatrick17k_skincon_fixture(tmp_path / "a", image_dir="raw_data")
    assert len(Fitzpatrick17kSkinCon(root, "train")) > 0
    for image in (root / "raw_data").iterdir():
        shutil.move(image, root / image.name)
    total = sum(len(Fitzpatrick17kSkinCon(root, s)) for s in ("train", "val", "test"))
    assert total == 18


def test_fitzpatrick_bad_input(tmp_path):
    root = write_fitzpatrick17k_skincon_fixture(tmp_path / "fitz")
    fitz_csv, sk_csv = root / "fitzpatrick17k.csv", root / "annotations_fitzpatrick_final_v2.csv"
    fitz = pd.read_csv(fitz_csv, dtype=str, keep_default_na=False)
    sk = pd.read_csv(sk_csv, dtype=str, keep_default_na=False)
    fitz.loc[4, "three_partition_label"] = "malign"
    fitz.to_csv(fitz_csv, index=False)
    sk.loc[2, "Papule"] = "2"
    sk.to_csv(sk_csv, index=False)
    with pytest.raises(DatasetError) as info:
        Fitzpatrick17kSkinCon(root, "train")
    msg = str(info.value)
    assert "fitzpatrick17k.csv, row 6, column 'three_partition_label': unknown value 'malign'" in msg
    assert "annotations_fitzpatrick_final_v2.csv, row 4, column 'Papule': unexpected concept value '2'" in msg

    fitz.loc[4, "three_partition_label"] = "benign"
    fitz.rename(columns={"three_partition_label": "three_partition_lable"}).to_csv(fitz_csv, index=False)
    sk.loc[2, "Papule"] = "1"
    sk.rename(columns={"Vesicle": "Vesicles", "Brown(Hyperpigmentation)": "Brown (Hyperpigmentation)"}
              ).to_csv(sk_csv, index=False)
    with pytest.raises(DatasetError) as info:
        Fitzpatrick17kSkinCon(root, "train")
    msg = str(info.value)
    assert "required column 'three_partition_label' is missing; did you mean 'three_partition_lable'" in msg
    assert "required column 'Vesicle' is missing; did you mean 'Vesicles'" in msg
    assert "Brown(Hyperpigmentation)" not in msg  # spacing differences are accepted


def test_fitzpatrick_empty_split_when_no_image_downloaded(tmp_path):
    root = write_fitzpatrick17k_skincon_fixture(tmp_path / "fitz")
    shutil.rmtree(root / "images")
    with pytest.raises(DatasetError, match=r"the val split is empty \(4 rows .* 4 of them without an image"):
        Fitzpatrick17kSkinCon(root, "val")


# ---------------------------------------------------------------- DDI


def test_ddi_single_test_split_with_skincon(tmp_path):
    root = write_ddi_fixture(tmp_path / "ddi")
    ds = DDI(root)
    assert ds.split == "test" and ds.card.splits == ("test",) and len(ds) == 12 and ds.groups is None
    assert ds.ids[:2] == ["000001", "000002"]
    assert list(ds.targets) == [int(i % 3 == 0) for i in range(1, 13)]
    assert np.isnan(ds.concepts[1]).all()  # image 2: 'Do not consider this image'
    assert np.isnan(ds.concepts[11]).all()  # image 12: not annotated by SkinCon
    assert list(ds.concepts[0]) == [float((1 + k) % 4 == 0) for k in range(48)]
    assert ds.table.extra["skin_tone"]["000003"] == 12 and ds.table.extra["disease"]["000003"] == "melanoma-in-situ"
    assert ds.table.extra["skincon_annotated"] == 10
    report = DDI.verify(root)
    assert report.ok and report.split_sizes == {"test": 12}
    assert "SkinCon concepts for 10 of 12 images" in report.to_text()
    with pytest.raises(ValueError, match="unknown split 'train'"):
        DDI(root, "train")


def test_ddi_skincon_annotated_subset_as_published(tmp_path):
    """subset="skincon-annotated": CRL's official test_ood.py set, the inner join with SkinCon's DDI CSV less the
    rows it flags; the fixture's 12 images lose image 12 (not annotated) and image 2 (flagged)."""
    from medimg_core.data.errors import DatasetOptionError

    root = write_ddi_fixture(tmp_path / "ddi")
    paper = DDI(root, subset="skincon-annotated")
    everything = DDI(root, subset="all")
    assert len(everything) == 12 and everything.ids == DDI(root).ids  # "all" is the default
    assert len(paper) == 10 and paper.ids == [f"{i:06d}" for i in range(1, 12) if i != 2]
    assert not np.isnan(paper.concepts).any()
    assert list(paper.targets) == [int(i % 3 == 0) for i in range(1, 12) if i != 2]
    assert list(paper.concepts[1]) == [float((3 + k) % 4 == 0) for k in range(48)]  # image 3's row
    assert set(paper.table.extra["skin_tone"]) == set(paper.ids) and paper.table.extra["n_all"] == 12
    assert "subset 'skincon-annotated': 10 images" in DDI.verify(root, subset="skincon-annotated").to_text()
    with pytest.raises(DatasetOptionError, match=r"option 'subset': expected one of \['all', 'skincon-annotated'\]"):
        DDI(root, subset="annotated")
    no_skincon = write_ddi_fixture(tmp_path / "bare", skincon=False)
    with pytest.raises(DatasetError, match="subset 'skincon-annotated' needs SkinCon's DDI annotation CSV"):
        DDI(no_skincon, subset="skincon-annotated")


def test_ddi_without_skincon_and_images_folder(tmp_path):
    root = write_ddi_fixture(tmp_path / "ddi", skincon=False)
    (root / "images").mkdir()
    for image in root.glob("*.png"):
        shutil.move(image, root / "images" / image.name)
    ds = DDI(root, "test")
    assert ds.card.num_concepts == 48 and np.isnan(ds.concepts).all() and len(ds) == 12
    assert "all concepts are NaN" in DDI.verify(root, check_images=False).to_text()


def test_ddi_bad_input(tmp_path):
    root = write_ddi_fixture(tmp_path / "ddi")
    meta = root / "ddi_metadata.csv"
    frame = pd.read_csv(meta, dtype=str, keep_default_na=False)
    frame.loc[0, "malignant"] = "maybe"
    frame.loc[1, "skin_tone"] = "78"
    frame.to_csv(meta, index=False)
    (root / "000005.png").unlink()
    with pytest.raises(DatasetError) as info:
        DDI(root)
    msg = str(info.value)
    assert "row 2, column 'malignant': unknown value 'maybe'" in msg
    assert "row 3, column 'skin_tone': unknown value '78'" in msg
    assert "row 6, column 'DDI_file': image '000005.png' not found" in msg
    frame.rename(columns={"DDI_file": "DDI_fle"}).to_csv(meta, index=False)
    with pytest.raises(DatasetError, match=r"ddi_metadata.csv, column 'DDI_file': required column 'DDI_file' is missing; did you mean"):
        DDI(root)
    frame.iloc[:0].to_csv(meta, index=False)
    with pytest.raises(DatasetError, match="the test split is empty"):
        DDI(root)


def test_fitzpatrick_train_folds_protocol_carves_val_from_the_four_training_folds(tmp_path):
    """val_from="train-folds" (CRL's official budget): test = the held-out fold, train + val = the 4 others, val a
    seeded stratified ~10 % of them recorded in its own split file, deterministic across calls."""
    import json

    from medimg_core.data.splits import carved_val_file

    root = write_fitzpatrick17k_skincon_fixture(tmp_path / "fitz", n_benign=25, n_malignant=25, n_missing_images=0)
    folds_file = tmp_path / "folds.json"
    opts = {"split_file": str(folds_file), "fold": 2, "val_from": "train-folds"}
    tables = {s: Fitzpatrick17kSkinCon.read_table(root, s, **opts) for s in ("train", "val", "test")}
    folds = json.loads(folds_file.read_text())["folds"]
    held_out = {i for i, f in folds.items() if f == 2}
    assert len(folds) == 50 and len(held_out) == 10
    train, val, test = (set(tables[s].ids) for s in ("train", "val", "test"))
    assert test == held_out  # the held-out fold, as in the three-folds protocol
    assert train | val == set(folds) - held_out and not train & val  # the 4 other folds, no overlap
    assert len(val) == 4 and len(train) == 36  # fold 0 of 10 stratified folds of 40 images
    assert sorted(tables["val"].targets.tolist()) == [0, 0, 1, 1]  # stratified: 20 benign + 20 malignant in the pool
    val_file = carved_val_file(folds_file, 2, 0.1)
    assert val_file == tmp_path / "folds-fold2-val0.1.json" and val_file.is_file()
    recorded = json.loads(val_file.read_text())
    assert {i for i, f in recorded["folds"].items() if f == 0} == val and set(recorded["folds"]) == train | val
    assert Fitzpatrick17kSkinCon.read_table(root, "val", **opts).ids == tables["val"].ids  # read back
    val_file.unlink()  # derivable from the seed: redrawn identically
    assert Fitzpatrick17kSkinCon.read_table(root, "val", **opts).ids == tables["val"].ids
    other = Fitzpatrick17kSkinCon.read_table(root, "val", **opts, seed=1, val_fraction=0.25)  # same folds file
    assert len(other) == 10 and set(other.ids) <= train | val
    ours = {s: set(Fitzpatrick17kSkinCon.read_table(root, s, split_file=str(folds_file), fold=2).ids)
            for s in ("train", "val", "test")}  # the three-folds protocol on the same folds
    assert ours["test"] == held_out and ours["val"] == {i for i, f in folds.items() if f == 3}
    assert len(ours["train"]) == 30


def test_fitzpatrick_val_from_bad_values(tmp_path):
    from medimg_core.data.errors import DatasetOptionError

    root = write_fitzpatrick17k_skincon_fixture(tmp_path / "fitz")
    with pytest.raises(DatasetOptionError, match=r"option 'val_from': expected one of \['train-folds', 'next-fold'\], "
                                                 r"got 'last-fold'"):
        Fitzpatrick17kSkinCon(root, "train", val_from="last-fold")
    with pytest.raises(DatasetOptionError, match=r"option 'val_fraction': expected a number, got 'ten'"):
        Fitzpatrick17kSkinCon(root, "train", val_from="train-folds", val_fraction="ten")
    with pytest.raises(DatasetOptionError, match=r"option 'val_fraction': expected a fraction in \(0, 1\)"):
        Fitzpatrick17kSkinCon(root, "train", val_from="train-folds", val_fraction=1.5)
    with pytest.raises(DatasetOptionError, match="n_folds must be at least 3 with val_from='next-fold'"):
        Fitzpatrick17kSkinCon(root, "train", n_folds=2)
    assert len(Fitzpatrick17kSkinCon(root, "test", n_folds=2, val_from="train-folds", val_fraction=0.25)) > 0
