"""HAM10000 and ODIR-5K loaders on tiny fixtures in their official layouts."""

import importlib.util
import sys

import numpy as np
import pandas as pd
import pytest

from medimg_core.data.errors import DatasetError, DatasetOptionError
from medimg_core.data.ham10000 import DX_CODES, HAM10000
from medimg_core.data.images import read_image
from medimg_core.data.odir import ODIR, crop_fundus, eye_labels, fundus_box, keyword_label
from medimg_core.data.registry import load_dataset
from medimg_core.testing import write_ham10000_fixture, write_odir_fixture, write_oia_odir_fixture

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


# ---------------------------------------------------------------- ODIR-5K / OIA-ODIR

FOLDS = {"protocol": "medimg-folds"}


def test_odir_released_keyword_lists():
    codes = "NDGCAHMO"

    def code(keyword, keywords="released"):
        label = keyword_label(keyword, keywords)
        return None if label is None else codes[label]

    assert code("moderate non proliferative retinopathy") == "D"
    assert code("proliferative diabetic retinopathy") == "D"
    assert code("suspected moderate nonproliferative retinopathy") == "D"
    assert code("wet age-related macular degeneration") == "A"
    assert code("suspected glaucoma") == "G" and code("suspected cataract") == "C"
    assert code("pathological myopia") == "M" and code("myopic maculopathy") == "M"
    assert code("epiretinal membrane") == "O" and code("normal fundus") == "N"
    assert code("lens dust") is None and code("optic disk photographically invisible") is None
    # hypertension: the released lists have three keywords, spelled as in the sheet
    assert code("hypertensive retinopathy") == "H"
    assert code("mild hypertension") == "H" and code("sever hypertension") == "H"
    assert code("severe hypertension") == "O"  # not a listed spelling: verbatim, as the released code
    # how ours differs: hypertension keywords to O, substrings outside the lists to the disease, case ignored
    assert code("mild hypertension", "medimg-substring") == "O"
    assert code("sever hypertension", "medimg-substring") == "O"
    assert code("hypertensive retinopathy", "medimg-substring") == "H"
    assert code("glaucoma suspect") == "O" and code("glaucoma suspect", "medimg-substring") == "G"
    assert code("Cataract") == "O" and code("Cataract", "medimg-substring") == "C"
    assert code("optic disc photographically invisible") == "O"
    assert code("optic disc photographically invisible", "medimg-substring") is None
    labels, other = eye_labels("normal fundus，lens dust")
    assert labels.tolist() == [1, 0, 0, 0, 0, 0, 0, 0] and other == []
    labels, other = eye_labels("laser spot，moderate non proliferative retinopathy")
    assert labels.tolist() == [0, 1, 0, 0, 0, 0, 0, 1] and other == ["laser spot"]
    assert eye_labels("sever hypertension，moderate non proliferative retinopathy")[0].tolist() == \
        [0, 1, 0, 0, 0, 1, 0, 0]
    assert eye_labels("cataract，normal fundus")[0].tolist() == [0, 0, 0, 1, 0, 0, 0, 0]  # N cleared
    # the released code splits at the full-width comma only
    assert eye_labels("cataract,lens dust")[0].tolist() == [0, 0, 0, 0, 0, 0, 0, 1]
    assert eye_labels("cataract,lens dust", "medimg-substring")[0].tolist() == [0, 0, 0, 1, 0, 0, 0, 0]
    assert not eye_labels("low image quality，image offset")[0].any()
    assert not eye_labels("low image quality,image offset", "medimg-substring")[0].any()
    assert not eye_labels("")[0].any()
    with pytest.raises(DatasetOptionError, match="unknown keywords 'paper'"):
        keyword_label("glaucoma", "paper")


def _sheet_eyes(root, folder, stem):
    """The eyes of one OIA-ODIR sheet with a label, computed from the sheet, not the loader."""
    frame = pd.read_csv(root / folder / "Annotation" / f"{stem} annotation (English).csv", dtype=str)
    quality = {"lens dust", "low image quality", "no fundus image", "anterior segment image"}
    return {f"{row.ID}_{eye.lower()}" for row in frame.itertuples()
            for eye, cell in (("Left", row[6]), ("Right", row[7])) if cell not in quality}


def test_oia_odir_official_protocol(tmp_path):
    root = write_oia_odir_fixture(tmp_path / "OIA-ODIR")
    parts = {s: ODIR(root, s) for s in ("train", "val", "test", "offsite")}
    assert ODIR(root).split == "train" and ODIR(root, "off-site").ids == parts["offsite"].ids
    assert ODIR(root, "on-site").ids == parts["test"].ids
    sizes = {s: len(ds) for s, ds in parts.items()}
    assert sizes["train"] + sizes["val"] == 28 and sizes["val"] > 0 and sizes["train"] > sizes["val"]
    assert sizes["test"] == 9 and sizes["offsite"] == 5  # 10 and 6 eyes less one quality-only eye each
    assert set(parts["test"].ids) == _sheet_eyes(root, "On-site Test Set", "on-site test")
    assert set(parts["offsite"].ids) == _sheet_eyes(root, "Off-site Test Set", "off-site test")
    assert set(parts["train"].ids) | set(parts["val"].ids) == _sheet_eyes(root, "Training Set", "training")
    groups = {s: set(ds.groups) for s, ds in parts.items()}
    for a in groups:
        for b in groups:
            assert a == b or not groups[a] & groups[b], (a, b)
    assert ODIR(root, "val").ids == parts["val"].ids  # the holdout is written once and reused
    assert parts["test"].table.extra["annotations"].endswith("on-site test annotation (English).csv")
    assert parts["test"].table.extra["patients_also_in_training"] == []
    targets = dict(zip(parts["test"].ids, parts["test"].targets, strict=True))
    assert targets["1000_right"].tolist() == [0, 0, 0, 0, 0, 1, 0, 0]  # mild hypertension -> H
    assert targets["1003_left"].tolist() == [0, 1, 0, 0, 0, 1, 0, 0]
    ours = ODIR(root, "test", keywords="medimg-substring")
    assert dict(zip(ours.ids, ours.targets, strict=True))["1000_right"].tolist() == [0, 0, 0, 0, 0, 0, 0, 1]
    report = ODIR.verify(root)
    assert report.ok, report.to_text()
    assert report.split_sizes == sizes and report.num_images == 42
    assert "protocol official, keyword map released, fundus crop on" in report.to_text()


def test_oia_odir_medimg_folds_and_bad_layouts(tmp_path):
    root = write_oia_odir_fixture(tmp_path / "OIA-ODIR")
    folds = {s: ODIR(root, s, **FOLDS) for s in SPLITS}
    assert folds["test"].table.extra["annotations"].endswith("training annotation (English).csv")
    assert sum(len(ds) for ds in folds.values()) == 28 and folds["test"].card.splits == SPLITS
    with pytest.raises(DatasetError, match="offsite split exists under protocol 'official' only"):
        ODIR(root, "offsite", **FOLDS)
    assert ODIR.verify(root, **FOLDS).ok
    with pytest.raises(DatasetOptionError, match="unknown protocol 'paper'"):
        ODIR(root, "test", protocol="paper")
    with pytest.raises(DatasetOptionError, match="annotations= is an option of protocol 'medimg-folds'"):
        ODIR(root, "test", annotations="x.csv")
    with pytest.raises(DatasetError, match="Images_crop: image folder not found.*option images="):
        ODIR(root, "test", images="Images_crop")
    (root / "Off-site Test Set" / "Annotation" / "off-site test annotation (English).csv").unlink()
    with pytest.raises(DatasetError, match=r"Annotation: no English annotation sheet .*off-site test annotation "
                       r"\(Chinese\)\.csv"):
        ODIR(root, "offsite")
    challenge = write_odir_fixture(tmp_path / "odir")
    with pytest.raises(DatasetError, match="no test labels: use protocol='medimg-folds'"):
        ODIR(challenge, "test")


def test_crop_fundus_hand_computed_box():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 16, (60, 80, 3), dtype=np.uint8)  # border noise up to the threshold (15)
    yy, xx = np.mgrid[:60, :80]
    image[(yy - 30) ** 2 + (xx - 40) ** 2 <= 400] = 200  # disc of radius 20 at row 30, column 40
    image[2, 2] = 255  # one bright pixel in the border (text, dust)
    # rows 10 and 50 (columns 20 and 60) hold one disc pixel, fewer than ceil(0.02 * 80) = 2 (ceil(0.02 * 60) = 2)
    assert fundus_box(image) == (11, 50, 21, 60)
    cropped = crop_fundus(image)
    assert cropped.shape == (39, 39, 3) and cropped[19, 19].tolist() == [200, 200, 200]
    assert fundus_box(image, min_fraction=0) == (2, 51, 2, 61)  # every bright pixel counts
    assert fundus_box(image, threshold=0) == (0, 60, 0, 80)  # the noise is fundus too
    assert fundus_box(image[..., 0]) == (11, 50, 21, 60)  # grey images alike
    black = np.zeros((8, 8, 3), dtype=np.uint8)
    assert fundus_box(black) is None and crop_fundus(black) is black


def test_oia_odir_crop_on_load(tmp_path):
    root = write_oia_odir_fixture(tmp_path / "OIA-ODIR")
    ds = ODIR(root, "test")
    raw = read_image(ds.table.paths[0], 3)
    assert raw.shape == (18, 26, 3) and ODIR(root, "test", crop=False).load_image(0).shape == (18, 26, 3)
    assert np.array_equal(ds.load_image(0), crop_fundus(raw))
    top, bottom, left, right = fundus_box(raw)
    assert abs(top - 1) <= 1 and abs(bottom - 18) <= 1 and abs(left - 5) <= 1 and abs(right - 22) <= 1
    assert ds.subset([0]).load_image(0).shape == ds.load_image(0).shape  # subsets crop too
    assert ds[0]["image"].shape == (3, bottom - top, right - left)
    with pytest.raises(DatasetOptionError, match="crop must be true or false"):
        ODIR(root, "test", crop="yes")


def test_odir_per_eye_multilabel_grouped_by_patient(tmp_path):
    root = write_odir_fixture(tmp_path / "odir")
    parts = {s: ODIR(root, s, **FOLDS) for s in SPLITS}
    targets = {i: t for ds in parts.values() for i, t in zip(ds.ids, ds.targets, strict=True)}
    assert len(targets) == 28  # 15 patients x 2 eyes, less 2 eyes with only quality keywords
    assert "24_left" not in targets and "30_left" not in targets
    row = dict(zip("NDGCAHMO", range(8), strict=True))

    def on(eye):
        return {c for c, k in row.items() if targets[eye][k]}

    assert on("0_left") == {"N"} and on("3_left") == on("3_right") == {"D"}
    assert on("9_left") == {"C"} and on("9_right") == {"N"}  # "lens dust，normal fundus"
    assert on("15_left") == {"D", "H"} and on("27_left") == {"D", "O"}
    assert on("39_right") == {"O"}  # ASCII comma: "cataract,lens dust" is one unlisted keyword
    assert on("33_right") == {"G"}
    patients = {s: set(ds.groups) for s, ds in parts.items()}
    assert not (patients["train"] & patients["val"]) and not (patients["train"] & patients["test"])
    assert not (patients["val"] & patients["test"])
    ds = parts["train"]
    assert ds.card.task == "multilabel" and ds.card.class_names[4] == "AMD" and ds.targets.dtype == np.float32
    assert ds.targets.shape == (len(ds), 8) and ds.concepts.shape == (len(ds), 0)
    assert not ds.card.official_splits and ds.card.splits == SPLITS
    sample = ds[0]
    assert sample["target"].dtype.is_floating_point and sample["target"].shape == (8,)
    extra = ds.table.extra
    assert extra["eyes_without_label"] == 2 and extra["patient_label_mismatches"] == 0
    assert extra["other_keywords"] == {"cataract,lens dust": 1, "drusen": 1, "epiretinal membrane": 1,
                                       "laser spot": 1}
    ours = {s: ODIR(root, s, keywords="medimg-substring", **FOLDS) for s in SPLITS}
    ours_targets = {i: t for d in ours.values() for i, t in zip(d.ids, d.targets, strict=True)}
    assert ours_targets["39_right"].tolist() == [0, 0, 0, 1, 0, 0, 0, 0]
    report = ODIR.verify(root, **FOLDS)
    assert report.ok and report.num_images == 28
    assert "2 eyes have only image-quality keywords and were dropped" in report.to_text()


def test_odir_annotations_xlsx_needs_openpyxl(tmp_path, monkeypatch):
    root = write_odir_fixture(tmp_path / "odir")
    csv = root / "ODIR-5K_Training_Annotations(Updated)_V2.csv"
    xlsx = csv.with_suffix(".xlsx")
    xlsx.write_bytes(b"PK\x03\x04 not really a workbook")
    if importlib.util.find_spec("openpyxl") is None:  # without openpyxl the CSV copy is read instead
        assert ODIR.read_table(root, "train", **FOLDS).extra["annotations"] == str(csv)
    csv.unlink()
    monkeypatch.setitem(sys.modules, "openpyxl", None)  # as if openpyxl were not installed
    with pytest.raises(DatasetError, match=r"needs openpyxl; run `pip install openpyxl`, or save the sheet as CSV"):
        ODIR(root, "train", **FOLDS)


def test_odir_reads_the_official_xlsx(tmp_path):
    pytest.importorskip("openpyxl")
    root = write_odir_fixture(tmp_path / "odir", xlsx=True)
    assert sum(len(ODIR(root, s, **FOLDS)) for s in SPLITS) == 28
    oia = write_oia_odir_fixture(tmp_path / "OIA-ODIR", xlsx=True)
    assert len(ODIR(oia, "test")) == 9 and ODIR(oia, "test").table.extra["annotations"].endswith(".xlsx")


def test_odir_derivative_with_repeated_patients(tmp_path):
    root = write_odir_fixture(tmp_path / "odir")
    frame = pd.read_csv(root / "ODIR-5K_Training_Annotations(Updated)_V2.csv", dtype=str, keep_default_na=False)
    pd.concat([frame, frame]).to_csv(root / "full_df.csv", index=False)  # one row per eye, as on Kaggle
    (root / "ODIR-5K_Training_Annotations(Updated)_V2.csv").unlink()
    table = ODIR.read_table(root, "train", annotations="full_df.csv", **FOLDS)
    assert table.extra["eyes"] == 28 and table.extra["duplicate_patient_rows"] == 15


def test_odir_bad_input(tmp_path):
    root = write_odir_fixture(tmp_path / "odir")
    sheet = root / "ODIR-5K_Training_Annotations(Updated)_V2.csv"
    frame = pd.read_csv(sheet, dtype=str, keep_default_na=False)
    test = ODIR(root, "test", **FOLDS)
    eye = test.ids[0]
    (root / "ODIR-5K_Training_Dataset" / f"{eye}.jpg").unlink()
    side = "Left" if eye.endswith("left") else "Right"
    line = frame.index[frame["ID"] == eye.split("_")[0]][0] + 2
    with pytest.raises(DatasetError, match=rf"row {line}, column '{side}-Fundus': image '{eye}.jpg' not found"):
        ODIR(root, "test", **FOLDS)
    frame.rename(columns={"Left-Diagnostic Keywords": "Left-Diagnostic Keyword"}).to_csv(sheet, index=False)
    with pytest.raises(DatasetError, match="'Left-Diagnostic Keywords' is missing; did you mean "
                       "'Left-Diagnostic Keyword'"):
        ODIR(root, "train", **FOLDS)
    frame.iloc[:0].to_csv(sheet, index=False)
    with pytest.raises(DatasetError, match="the train split is empty"):
        ODIR(root, "train", **FOLDS)
    frame.assign(**{"Left-Diagnostic Keywords": "lens dust", "Right-Diagnostic Keywords": "low image quality"}
                 ).to_csv(sheet, index=False)
    with pytest.raises(DatasetError, match="no eye has a diagnostic label"):
        ODIR(root, "train", **FOLDS)
