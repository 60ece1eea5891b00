"""WBCAtt, MedMNIST, ChestX-ray14 and the generic CSV loader on fixtures in their official layouts."""

import numpy as np
import pandas as pd
import pytest

from medimg_core.data import ChestXray14, CSVDataset, DatasetError, WBCAtt, load_dataset
from medimg_core.data.wbcatt import CONCEPT_NAMES
from medimg_core.testing import (
    write_chestxray14_fixture,
    write_image,
    write_medmnist_fixture,
    write_truncated_image,
    write_wbcatt_fixture,
)

# ---------------------------------------------------------------- WBCAtt


def test_wbcatt_official_layout(tmp_path):
    root = write_wbcatt_fixture(tmp_path / "wbc")
    ds = WBCAtt(root, "val")
    assert len(ds) == 6 and ds.card.num_concepts == 24 and len(CONCEPT_NAMES) == 24
    assert list(ds.targets) == [0, 1, 2, 3, 4, 4]
    names = list(ds.card.concept_names)
    lympho = dict(zip(names, ds.concepts[2], strict=True))
    assert lympho["big cell size"] == 0 and lympho["high nuclear cytoplasmic ratio"] == 1
    assert lympho["unsegmented round nucleus shape"] == 1 and lympho["nil granule type"] == 1
    assert lympho["granularity"] == 0 and lympho["cytoplasm vacuole"] == 0
    assert ds.concepts[3, names.index("cytoplasm vacuole")] == 1
    # one-hot groups sum to one per image
    for group in ("nucleus_shape", "cytoplasm_colour", "granule_type", "granule_colour"):
        cols = [names.index(c) for c in ds.card.concept_groups[group]]
        assert np.all(ds.concepts[:, cols].sum(axis=1) == 1)
    s = ds[0]
    assert s["image"].shape == (3, 24, 24) and s["concepts"].shape == (24,)


def test_wbcatt_renamed_csvs_and_images_folder(tmp_path):
    root = write_wbcatt_fixture(tmp_path / "wbc")
    (root / "pbc_attr_v1_val.csv").rename(root / "valid.csv")
    (root / "PBC_dataset_normal_DIB").rename(root / "images")
    assert len(WBCAtt(root, "valid")) == 6


def test_wbcatt_bad_input_is_named(tmp_path):
    root = write_wbcatt_fixture(tmp_path / "wbc")
    csv = root / "pbc_attr_v1_train.csv"
    frame = pd.read_csv(csv, dtype=str)
    frame.loc[1, "label"] = "Erythrocyte"
    frame.loc[2, "nucleus_shape"] = "star"
    frame.loc[3, "path"] = "PBC_dataset_normal_DIB/monocyte/missing.jpg"
    frame.to_csv(csv, index=False)
    with pytest.raises(DatasetError) as info:
        WBCAtt(root, "train")
    msg = str(info.value)
    assert "row 3, column 'label': unknown value 'Erythrocyte'" in msg
    assert "row 4, column 'nucleus_shape': unexpected value 'star'" in msg
    assert "row 5, column 'path': image 'PBC_dataset_normal_DIB/monocyte/missing.jpg' not found" in msg
    frame.rename(columns={"cell_size": "cellsize"}).to_csv(csv, index=False)
    with pytest.raises(DatasetError, match="'cell_size' is missing; did you mean 'cellsize'"):
        WBCAtt(root, "train")
    frame.iloc[:0].to_csv(csv, index=False)
    with pytest.raises(DatasetError, match="train split is empty"):
        WBCAtt(root, "train")


def test_wbcatt_verify_lists_unreadable_images(tmp_path):
    root = write_wbcatt_fixture(tmp_path / "wbc")
    write_truncated_image(root / "PBC_dataset_normal_DIB/basophil/test_BA_1.jpg")
    (root / "PBC_dataset_normal_DIB/eosinophil/val_EO_1.jpg").write_text("<html>")
    report = WBCAtt.verify(root)
    assert report.num_images == 18 and report.card.num_classes == 5
    assert len(report.problems) == 2
    text = report.to_text()
    assert "test_BA_1.jpg" in text and "val_EO_1.jpg: not an image" in text


# ---------------------------------------------------------------- MedMNIST


def test_medmnist_npz(tmp_path):
    path = write_medmnist_fixture(tmp_path / "retinamnist.npz", channels=3, num_classes=5)
    ds = load_dataset("retinamnist", tmp_path, "test")
    assert len(ds) == 10 and ds.card.task == "ordinal"
    assert ds[3]["image"].shape == (3, 28, 28) and int(ds[3]["target"]) == 3
    assert len(load_dataset("retinamnist", path, "val")) == 10
    gray = write_medmnist_fixture(tmp_path / "breastmnist.npz", channels=1, num_classes=2, flat_labels=True)
    b = load_dataset("breastmnist", gray, "train")
    assert b[1]["image"].shape == (1, 28, 28) and b.card.class_names[0] == "malignant"


def test_medmnist_bad_files(tmp_path):
    with pytest.raises(DatasetError, match="download it with"):
        load_dataset("pneumoniamnist", tmp_path)
    rgb = write_medmnist_fixture(tmp_path / "pneumoniamnist.npz", channels=3, num_classes=2)
    with pytest.raises(DatasetError, match="expected \\(N, H, W\\) for this gray subset"):
        load_dataset("pneumoniamnist", rgb)
    labels = write_medmnist_fixture(tmp_path / "x" / "breastmnist.npz", channels=1, num_classes=5)
    with pytest.raises(DatasetError, match="row 2 has value 2; expected 0..1"):
        load_dataset("breastmnist", labels)
    np.savez(tmp_path / "y.npz", train_images=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(DatasetError, match="train_labels"):
        load_dataset("breastmnist", tmp_path / "y.npz")
    (tmp_path / "z.npz").write_text("junk")
    with pytest.raises(DatasetError, match="not a readable MedMNIST"):
        load_dataset("breastmnist", tmp_path / "z.npz")


def test_medmnist_download_from_local_url(tmp_path):
    from medimg_core.data import download_medmnist

    src = write_medmnist_fixture(tmp_path / "src" / "breastmnist.npz", channels=1, num_classes=2)
    out = download_medmnist("breastmnist", tmp_path / "dl", url=src.resolve().as_uri())
    assert out.read_bytes() == src.read_bytes()
    with pytest.raises(DatasetError, match="cannot download"):
        download_medmnist("breastmnist", tmp_path / "dl2", url=(tmp_path / "nope.npz").resolve().as_uri())
    assert not list((tmp_path / "dl2").iterdir())  # nothing half-written


# ---------------------------------------------------------------- ChestX-ray14


def test_chestxray14_official_lists_and_patient_grouped_val(tmp_path):
    root = write_chestxray14_fixture(tmp_path / "nih", n_patients=20)
    test = ChestXray14(root, "test")
    train, val = ChestXray14(root, "train", val_fraction=0.25), ChestXray14(root, "val", val_fraction=0.25)
    assert len(test) == 10 and len(train) + len(val) == 30 and len(val) > 0
    assert not set(train.groups) & set(val.groups)  # a patient never on both sides
    assert not set(test.groups) & set(train.groups + val.groups)
    s = test[0]
    assert s["image"].shape == (1, 32, 32) and s["target"].shape == (14,)
    row = test.ids.index("00000004_000.png")  # (4 + 0) % 6 -> "Mass|Pneumothorax"
    assert test.targets[row].sum() == 2 and test.targets[row][4] == 1 and test.targets[row][7] == 1
    pa = ChestXray14(root, "test", views=["PA"])
    assert len(pa) == 5


def test_chestxray14_bad_input(tmp_path):
    root = write_chestxray14_fixture(tmp_path / "nih", with_lists=False, gzip=False)
    with pytest.raises(DatasetError, match="official_split=False"):
        ChestXray14(root, "train")
    assert len(ChestXray14(root, "test", official_split=False, val_fraction=0.25)) > 0
    table = root / "Data_Entry_2017_v2020.csv"
    frame = pd.read_csv(table)
    frame.loc[0, "Finding Labels"] = "Cardiomegaly|Covid"
    frame.to_csv(table, index=False)
    with pytest.raises(DatasetError, match="row 2, column 'Finding Labels': unknown finding 'Covid'"):
        ChestXray14(root, "test", official_split=False, val_fraction=0.25)


def test_chestxray14_missing_images_dropped_and_counted(tmp_path):
    root = write_chestxray14_fixture(tmp_path / "nih", n_patients=8)
    (root / "images_001/images/00000004_000.png").unlink()
    with pytest.raises(DatasetError, match="00000004_000.png"):
        ChestXray14(root, "test", val_fraction=0.25)
    ds = ChestXray14(root, "test", missing_images="drop", val_fraction=0.25)
    assert len(ds) == 3 and ds.table.extra["dropped_missing_images"] == 1


# ---------------------------------------------------------------- generic CSV


def _csv_root(tmp_path, n=12, **extra_cols):
    rows = []
    for i in range(n):
        rel = f"imgs/im{i}.png"
        write_image(tmp_path / rel, size=12, seed=i)
        rows.append({"path": rel, "label": "sick" if i % 2 else "healthy", "patient": f"p{i // 2}",
                     "split": ["train", "val", "test"][i % 3], "spots": i % 2, "ring": "" if i == 0 else "yes"})
    frame = pd.DataFrame(rows).astype(str)
    frame.to_csv(tmp_path / "labels.csv", index=False)
    return tmp_path, frame


def test_csv_dataset_with_split_column_and_concepts(tmp_path):
    root, _ = _csv_root(tmp_path)
    ds = CSVDataset(root, "train", csv="labels.csv", split_column="split", concept_columns=["spots", "ring"])
    assert ds.card.task == "binary" and ds.card.class_names == ("healthy", "sick")
    assert len(ds) == 4 and np.isnan(ds.concepts[0, 1]) and ds.concepts[1, 1] == 1
    assert ds[0]["concepts"].shape == (2,)


def test_csv_dataset_seeded_grouped_folds(tmp_path):
    root, _ = _csv_root(tmp_path, n=40)
    opts = dict(csv="labels.csv", group_column="patient", n_folds=5, fold=1, seed=3)
    parts = {s: CSVDataset(root, s, **opts) for s in ("train", "val", "test")}
    assert sum(len(p) for p in parts.values()) == 40
    assert not set(parts["train"].groups) & set(parts["test"].groups)
    again = CSVDataset(root, "test", **opts)
    assert again.ids == parts["test"].ids


def test_csv_dataset_descriptor_and_class_folders(tmp_path):
    root, _ = _csv_root(tmp_path / "a")
    (root / "dataset.json").write_text(
        '{"format": "csv", "csv": "labels.csv", "split_column": "split", "class_names": ["healthy", "sick"],'
        ' "card": {"name": "mine", "license": "CC0"}}')
    ds = load_dataset("csv", root, "test")
    assert ds.card.name == "mine" and ds.card.license == "CC0"
    folders = tmp_path / "b"
    for c in ("benign", "malignant", "other"):
        for i in range(5):
            write_image(folders / c / f"{c}{i}.jpg", size=10, seed=i)
    f = CSVDataset(folders, "train", n_folds=5)
    assert f.card.task == "multiclass" and f.card.class_names == ("benign", "malignant", "other")
    assert len(f) == 9


def test_csv_dataset_bad_input(tmp_path):
    root, frame = _csv_root(tmp_path)
    with pytest.raises(DatasetError, match="'labl' is missing; did you mean 'label'"):
        CSVDataset(root, csv="labels.csv", label_column="labl", split_column="split")
    with pytest.raises(DatasetError, match="row 3, column 'label': unknown value 'sick'"):
        CSVDataset(root, csv="labels.csv", split_column="split", class_names=["healthy", "ill"])
    frame.loc[4, "spots"] = "maybe"
    frame.loc[5, "split"] = "holdout"
    frame.to_csv(root / "labels.csv", index=False)
    with pytest.raises(DatasetError) as info:
        CSVDataset(root, csv="labels.csv", split_column="split", concept_columns=["spots"])
    assert "row 6, column 'spots': unexpected concept value 'maybe'" in str(info.value)
    assert "row 7, column 'split': unknown split 'holdout'" in str(info.value)
    one = frame.assign(label="healthy", split="train")
    one.to_csv(root / "one.csv", index=False)
    with pytest.raises(DatasetError, match="exactly 2 classes"):
        CSVDataset(root, csv="one.csv", task="binary")
    frame.assign(split="train").to_csv(root / "nosplit.csv", index=False)
    with pytest.raises(DatasetError, match="'test' split .* is empty"):
        CSVDataset(root, "test", csv="nosplit.csv", split_column="split")
    escaping = [f"../../etc/passwd{i}" for i in range(len(frame))]
    frame.assign(path=escaping, split="train").to_csv(root / "escape.csv", index=False)
    with pytest.raises(DatasetError, match="leaves the dataset root"):
        CSVDataset(root, csv="escape.csv", split_column="split")
    with pytest.raises(TypeError, match="unknown option"):
        CSVDataset(root, csv="labels.csv", lable_column="x")


# ---------------------------------------------------------------- small-data subsets of the training split


def test_stratified_subset_keeps_class_proportions_and_is_seeded():
    from medimg_core.data.splits import stratified_subset

    targets = np.array([0] * 60 + [1] * 30 + [2] * 10)
    index = stratified_subset(targets, 20, seed=4)
    assert len(index) == 20 and len(set(index)) == 20 and list(index) == sorted(index)
    assert np.bincount(targets[index]).tolist() == [12, 6, 2]  # 60/30/10 % of 20
    assert stratified_subset(targets, 20, seed=4).tolist() == index.tolist()
    assert stratified_subset(targets, 20, seed=5).tolist() != index.tolist()
    assert stratified_subset(targets, 100).tolist() == list(range(100))
    with pytest.raises(DatasetError, match="asked for 101 images, the training split has 100"):
        stratified_subset(targets, 101)
    with pytest.raises(DatasetError, match="cannot hold the 3 classes"):
        stratified_subset(targets, 2)


def test_load_split_cuts_only_the_training_split(tmp_path):
    from medimg_core.config import FieldError
    from medimg_core.data.preprocess import DataConfig, load_split

    root, _ = _csv_root(tmp_path, n=40)
    opts = dict(csv="labels.csv", group_column="patient", n_folds=5, fold=1, seed=3)
    full = {s: load_split(DataConfig(dataset="csv", root=str(root), options=opts), s) for s in ("train", "val")}
    cfg = DataConfig(dataset="csv", root=str(root), options=opts, train_subset=10, train_subset_seed=1)
    small = load_split(cfg, "train")
    assert len(small) == 10 and set(small.ids) <= set(full["train"].ids)
    assert load_split(cfg, cfg.train_split).ids == small.ids  # asked by its split name: the same images
    assert load_split(cfg, "val").ids == full["val"].ids
    with pytest.raises(FieldError, match="train_subset"):
        DataConfig(train_subset=0)
