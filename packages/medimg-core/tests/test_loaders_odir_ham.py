"""HAM10000 and ODIR-5K loaders on tiny fixtures in their official layouts."""

import importlib.util
import sys

import numpy as np
import pandas as pd
import pytest

from medimg_core.data.errors import DatasetError
from medimg_core.data.ham10000 import DX_CODES, HAM10000
from medimg_core.data.odir import ODIR, eye_labels, keyword_label
from medimg_core.data.registry import load_dataset
from medimg_core.testing import write_ham10000_fixture, write_odir_fixture

SPLITS = ("train", "val", "test")


@pytest.fixture(autouse=True)
def _medimg_home(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDIMG_HOME", str(tmp_path / "medimg-home"))


# ---------------------------------------------------------------- HAM10000


def test_ham10000_folds_grouped_by_lesion(tmp_path):
    root = write_ham10000_fixture(tmp_path / "ham")
    parts = {s: HAM10000(root, s) for s in SPLITS}
    ids = [i for ds in parts.values() for i in ds.ids]
    assert len(ids) == len(set(ids)) == 28  # 21 lesions, 7 of them with two images
    lesions = {s: set(ds.groups) for s, ds in parts.items()}
    assert not (lesions["train"] & lesions["val"]) and not (lesions["train"] & lesions["test"])
    assert not (lesions["val"] & lesions["test"])
    meta = pd.read_csv(root / "HAM10000_metadata.csv").set_index("image_id")
    for ds in parts.values():
        assert [DX_CODES[t] for t in ds.targets] == meta.loc[ds.ids, "dx"].tolist()
        assert ds.groups == meta.loc[ds.ids, "lesion_id"].tolist()
        assert ds.concepts.shape == (len(ds), 0)
    ds = parts["train"]
    assert ds.card.num_classes == 7 and ds.card.class_names[4] == "melanoma (mel)" and ds.card.num_concepts == 0
    assert {p.parent.name for p in ds.table.paths} == {"HAM10000_images_part_1", "HAM10000_images_part_2"}
    assert ds[0]["image"].shape == (3, 10, 10) and ds[0]["concepts"].shape == (0,)
    assert ds.table.extra["dx_type"][ds.ids[0]] == "histo"
    # another fold moves the test set; the same fold reads the same split file again
    assert set(HAM10000(root, "test", fold=1).ids) == set(parts["val"].ids)
    assert load_dataset("ham10000", root, "test").ids == parts["test"].ids
    assert len(list((tmp_path / "medimg-home" / "splits").glob("ham10000-*.json"))) == 1
    other = tmp_path / "my-split.json"
    HAM10000(root, "train", seed=3, split_file=other)
    assert other.is_file()
    report = HAM10000.verify(root)
    assert report.ok and report.num_images == 28
    with pytest.raises(ValueError, match="fold 5 is out of range"):
        HAM10000(root, "train", fold=5)


def test_ham10000_dataverse_tab_metadata(tmp_path):
    root = write_ham10000_fixture(tmp_path / "ham")
    frame = pd.read_csv(root / "HAM10000_metadata.csv", dtype=str)
    (root / "HAM10000_metadata.csv").unlink()
    frame.to_csv(root / "HAM10000_metadata.tab", sep="\t", index=False)
    assert sum(len(HAM10000(root, s)) for s in SPLITS) == 28


def test_ham10000_bad_input(tmp_path):
    root = write_ham10000_fixture(tmp_path / "ham")
    meta = root / "HAM10000_metadata.csv"
    frame = pd.read_csv(meta, dtype=str, keep_default_na=False)
    frame.loc[3, "dx"] = "melanoma"
    frame.to_csv(meta, index=False)
    with pytest.raises(DatasetError, match=r"row 5, column 'dx': unknown value 'melanoma'; expected one of "
                       r"\['akiec', 'bcc'"):
        HAM10000(root, "train")
    frame.loc[3, "dx"] = "mel"
    frame.to_csv(meta, index=False)
    test_ids = HAM10000(root, "test").ids
    for part in ("HAM10000_images_part_1", "HAM10000_images_part_2"):
        (root / part / f"{test_ids[0]}.jpg").unlink(missing_ok=True)
    row = frame.index[frame["image_id"] == test_ids[0]][0] + 2
    with pytest.raises(DatasetError, match=rf"row {row}, column 'image_id': image '{test_ids[0]}.jpg' not found"):
        HAM10000(root, "test")
    frame.rename(columns={"lesion_id": "lesionid"}).to_csv(meta, index=False)
    with pytest.raises(DatasetError, match="required column 'lesion_id' is missing; did you mean 'lesionid'"):
        HAM10000(root, "train")
    frame.iloc[:0].to_csv(meta, index=False)
    with pytest.raises(DatasetError, match="the train split is empty"):
        HAM10000(root, "train")


# ---------------------------------------------------------------- ODIR-5K


def test_odir_keywords_to_labels():
    codes = "NDGCAHMO"
    assert codes[keyword_label("moderate non proliferative retinopathy")] == "D"
    assert codes[keyword_label("proliferative diabetic retinopathy")] == "D"
    assert codes[keyword_label("hypertensive retinopathy")] == "H"
    assert codes[keyword_label("wet age-related macular degeneration")] == "A"
    assert codes[keyword_label("suspected glaucoma")] == "G"
    assert codes[keyword_label("pathological myopia")] == "M"
    assert codes[keyword_label("epiretinal membrane")] == "O"
    assert keyword_label("lens dust") is None and keyword_label("optic disk photographically invisible") is None
    labels, other = eye_labels("normal fundus，lens dust")
    assert labels.tolist() == [1, 0, 0, 0, 0, 0, 0, 0] and other == []
    labels, other = eye_labels("laser spot，moderate non proliferative retinopathy")
    assert labels.tolist() == [0, 1, 0, 0, 0, 0, 0, 1] and other == ["laser spot"]
    assert eye_labels("cataract，normal fundus")[0].tolist() == [0, 0, 0, 1, 0, 0, 0, 0]  # N cleared
    assert not eye_labels("low image quality,image offset")[0].any()


def test_odir_per_eye_multilabel_grouped_by_patient(tmp_path):
    root = write_odir_fixture(tmp_path / "odir")
    parts = {s: ODIR(root, s) for s in SPLITS}
    targets = {i: t for ds in parts.values() for i, t in zip(ds.ids, ds.targets, strict=True)}
    assert len(targets) == 28  # 15 patients x 2 eyes, less 2 eyes with only quality keywords
    assert "24_left" not in targets and "30_left" not in targets
    row = dict(zip("NDGCAHMO", range(8), strict=True))

    def on(eye):
        return {c for c, k in row.items() if targets[eye][k]}

    assert on("0_left") == {"N"} and on("3_left") == on("3_right") == {"D"}
    assert on("9_left") == {"C"} and on("9_right") == {"N"}  # "lens dust，normal fundus"
    assert on("15_left") == {"D", "H"} and on("27_left") == {"D", "O"}
    assert on("39_right") == {"C"}  # ASCII comma: "cataract,lens dust"
    assert on("33_right") == {"G"}
    patients = {s: set(ds.groups) for s, ds in parts.items()}
    assert not (patients["train"] & patients["val"]) and not (patients["train"] & patients["test"])
    assert not (patients["val"] & patients["test"])
    ds = parts["train"]
    assert ds.card.task == "multilabel" and ds.card.class_names[4] == "AMD" and ds.targets.dtype == np.float32
    assert ds.targets.shape == (len(ds), 8) and ds.concepts.shape == (len(ds), 0)
    sample = ds[0]
    assert sample["target"].dtype.is_floating_point and sample["target"].shape == (8,)
    extra = ds.table.extra
    assert extra["eyes_without_label"] == 2 and extra["patient_label_mismatches"] == 0
    assert extra["other_keywords"] == {"drusen": 1, "epiretinal membrane": 1, "laser spot": 1}
    report = ODIR.verify(root)
    assert report.ok and report.num_images == 28
    assert "2 eyes have only image-quality keywords and were dropped" in report.to_text()


def test_odir_annotations_xlsx_needs_openpyxl(tmp_path, monkeypatch):
    root = write_odir_fixture(tmp_path / "odir")
    csv = root / "ODIR-5K_Training_Annotations(Updated)_V2.csv"
    xlsx = csv.with_suffix(".xlsx")
    xlsx.write_bytes(b"PK\x03\x04 not really a workbook")
    if importlib.util.find_spec("openpyxl") is None:  # without openpyxl the CSV copy is read instead
        assert ODIR.read_table(root, "train").extra["annotations"] == str(csv)
    csv.unlink()
    monkeypatch.setitem(sys.modules, "openpyxl", None)  # as if openpyxl were not installed
    with pytest.raises(DatasetError, match=r"needs openpyxl; run `pip install openpyxl`, or save the sheet as CSV"):
        ODIR(root, "train")


def test_odir_reads_the_official_xlsx(tmp_path):
    pytest.importorskip("openpyxl")
    root = write_odir_fixture(tmp_path / "odir", xlsx=True)
    assert sum(len(ODIR(root, s)) for s in SPLITS) == 28


def test_odir_derivative_with_repeated_patients(tmp_path):
    root = write_odir_fixture(tmp_path / "odir")
    frame = pd.read_csv(root / "ODIR-5K_Training_Annotations(Updated)_V2.csv", dtype=str, keep_default_na=False)
    pd.concat([frame, frame]).to_csv(root / "full_df.csv", index=False)  # one row per eye, as on Kaggle
    (root / "ODIR-5K_Training_Annotations(Updated)_V2.csv").unlink()
    table = ODIR.read_table(root, "train", annotations="full_df.csv")
    assert table.extra["eyes"] == 28 and table.extra["duplicate_patient_rows"] == 15


def test_odir_bad_input(tmp_path):
    root = write_odir_fixture(tmp_path / "odir")
    sheet = root / "ODIR-5K_Training_Annotations(Updated)_V2.csv"
    frame = pd.read_csv(sheet, dtype=str, keep_default_na=False)
    test = ODIR(root, "test")
    eye = test.ids[0]
    (root / "ODIR-5K_Training_Dataset" / f"{eye}.jpg").unlink()
    side = "Left" if eye.endswith("left") else "Right"
    line = frame.index[frame["ID"] == eye.split("_")[0]][0] + 2
    with pytest.raises(DatasetError, match=rf"row {line}, column '{side}-Fundus': image '{eye}.jpg' not found"):
        ODIR(root, "test")
    frame.rename(columns={"Left-Diagnostic Keywords": "Left-Diagnostic Keyword"}).to_csv(sheet, index=False)
    with pytest.raises(DatasetError, match="'Left-Diagnostic Keywords' is missing; did you mean "
                       "'Left-Diagnostic Keyword'"):
        ODIR(root, "train")
    frame.iloc[:0].to_csv(sheet, index=False)
    with pytest.raises(DatasetError, match="the train split is empty"):
        ODIR(root, "train")
    frame.assign(**{"Left-Diagnostic Keywords": "lens dust", "Right-Diagnostic Keywords": "low image quality"}
                 ).to_csv(sheet, index=False)
    with pytest.raises(DatasetError, match="no eye has a diagnostic label"):
        ODIR(root, "train")
