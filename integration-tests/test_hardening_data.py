"""Hardening: a corpus of broken datasets. Each case ends in a clear error that names the file, row,
column or value (never a traceback from deep inside pandas, PIL or torch), or in a documented
conversion; the CLI reports the same message with exit status 1; training refuses bad data before
it creates a run folder. `python tools/reliability.py` counts these cases into docs/reliability.md.
"""

from __future__ import annotations

import json
import re
import shutil
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from medimg_core.baseline import DataConfig, build_transforms
from medimg_core.cli import main as medimg
from medimg_core.data import DatasetError, load_dataset
from medimg_core.data.csv_dataset import CSVDataset
from medimg_core.data.images import ImageReadError
from medimg_core.testing import write_decompression_bomb, write_image, write_truncated_image, write_wide_image

N_ROWS = 12


@dataclass
class Case:
    """A broken dataset: `mutate(frame, root)` edits the table (returned) or the files; `options` are loader
    options; `expect` is a regex the error must contain; outcome "error" or "handled" (loads, documented)."""

    name: str
    mutate: Callable[[pd.DataFrame, Path], pd.DataFrame | None]
    expect: str = ""
    options: dict = field(default_factory=dict)
    split: str = "train"
    outcome: str = "error"
    when: str = "load"  # "load": reading the table fails; "read": reading the image fails (names the file)


def _base(root: Path) -> pd.DataFrame:
    rows = []
    for i in range(N_ROWS):
        rel = f"imgs/im{i}.png"
        write_image(root / rel, size=12, seed=i)
        rows.append({"path": rel, "label": "sick" if i % 2 else "healthy", "split": ["train", "val", "test"][i % 3],
                     "spots": str(i % 2), "patient": f"p{i}"})
    return pd.DataFrame(rows)


def _set(column: str, row: int, value: str):
    def mutate(frame, root):
        frame.loc[row, column] = value
        return frame
    return mutate


def _gray_image(frame, root):
    write_image(root / "imgs/im0.png", size=12, channels=1)


def _bigger_image(frame, root):
    write_image(root / "imgs/im0.png", size=40)


def _sixteen_bit(frame, root):
    Image.fromarray((np.arange(144).reshape(12, 12) * 400).astype(np.uint16)).save(root / "imgs/im0.png")


def _rgba(frame, root):
    Image.fromarray(np.full((12, 12, 4), 128, np.uint8)).save(root / "imgs/im0.png")


def _write(path: str, data: bytes):
    def mutate(frame, root):
        (root / path).write_bytes(data)
    return mutate


def _linked_images_folder(frame, root):
    """imgs/ kept elsewhere and linked into the root, as users keep data; one row names the folder in
    another case than the disk (the case-insensitive index must see through the link)."""
    store = root.parent / "store"
    shutil.move(root / "imgs", store)
    (root / "imgs").symlink_to(store, target_is_directory=True)
    frame.loc[3, "path"] = "IMGS/im3.png"
    return frame


def _folder_link_loops(frame, root):
    """Folder links back to the root and to themselves; a case mismatch makes the loader index the tree."""
    (root / "imgs" / "again").symlink_to("..", target_is_directory=True)
    (root / "imgs" / "self").symlink_to(".", target_is_directory=True)
    frame.loc[3, "path"] = "IMGS/im3.png"
    return frame


def _file_link(target: str):
    def mutate(frame, root):
        if target == "outside":
            write_image(root.parent / "elsewhere.png", size=12)
        (root / "imgs/im3.png").unlink()
        (root / "imgs/im3.png").symlink_to(root.parent / "elsewhere.png" if target == "outside" else "im1.png")
    return mutate


def _mask_column(folder: str = "masks", write: bool = True, stem: str = "{i}"):
    """A mask column 'mspots' naming `folder`/<stem>.png for every row (the files written when `write`)."""
    def mutate(frame, root):
        frame["mspots"] = [f"{folder}/{stem.format(i=i)}.png" for i in range(len(frame))]
        if write:
            for i in range(len(frame)):
                write_image(root / folder / f"{stem.format(i=i)}.png", size=12, channels=1, value=255 * (i % 2))
        return frame
    return mutate


def _then(*mutations):
    def mutate(frame, root):
        for m in mutations:
            changed = m(frame, root)
            frame = changed if isinstance(changed, pd.DataFrame) else frame
        return frame
    return mutate


def _mask_in_image_folder(frame, root):
    """Row 0's mask file sits among the images; the table names it under masks/ (a misplaced file)."""
    (root / "masks/m0.png").rename(root / "imgs/m0.png")
    return frame


def _image_only_in_mask_folder(frame, root):
    """Row 0's image is gone; the mask folder holds a file of the same name (its mask)."""
    (root / "imgs/im0.png").unlink()
    return frame


def _nfd_name(frame, root):
    """A file named on macOS (é decomposed, NFD) and the table typed elsewhere (é composed, NFC): D10."""
    (root / "imgs/im3.png").rename(root / "imgs" / unicodedata.normalize("NFD", "é3.png"))
    frame.loc[3, "path"] = unicodedata.normalize("NFC", "imgs/é3.png")
    return frame


def _wide(mode: str, values):
    def mutate(frame, root):
        (root / "imgs/im0.png").unlink()
        write_wide_image(root / "imgs/im0.tif", np.asarray(values), mode)
        frame.loc[0, "path"] = "imgs/im0.tif"
        return frame
    return mutate


def _labels(values):
    def mutate(frame, root):
        frame["label"] = [values(i) for i in range(len(frame))]
        return frame
    return mutate


GRADIENT = np.arange(144).reshape(12, 12)
MASKS = {"mask_columns": ["mspots"]}

CSV_CASES = [
    # tables: columns, types, values
    Case("table-missing-label-column", lambda f, r: f.rename(columns={"label": "diagnosis"}),
         r"'label' is missing"),
    Case("table-wrong-label-column-option", lambda f, r: f, r"'labl' is missing; did you mean 'label'",
         options={"label_column": "labl"}),
    Case("table-missing-split-column", lambda f, r: f.drop(columns="split"), r"'split' is missing"),
    Case("table-unknown-label", lambda f, r: f, r"row 3, column 'label': unknown value 'sick'",
         options={"class_names": ["healthy", "ill"]}),
    Case("table-empty-label", _set("label", 4, ""), r"column 'label': empty label in 1 row\(s\) \(rows 6\)"),
    Case("table-nan-label", _set("label", 4, "NaN"), r"empty label .*rows 6"),
    Case("table-concept-wrong-type", _set("spots", 5, "maybe"), r"row 7, column 'spots': unexpected concept value 'maybe'"),
    Case("table-concept-number-out-of-range", _set("spots", 5, "7"), r"row 7, column 'spots'"),
    Case("table-ordinal-not-integer", lambda f, r: f.assign(label=["mild", "severe"] * (N_ROWS // 2)),
         r"ordinal labels must be integers", options={"task": "ordinal"}),
    Case("table-binary-with-three-classes", _set("label", 0, "unsure"), r"task 'binary' needs exactly 2 classes",
         options={"task": "binary"}),
    Case("table-single-class", lambda f, r: f.assign(label="healthy"), r"a single class \['healthy'\]"),
    Case("table-unknown-split", _set("split", 5, "holdout"), r"row 7, column 'split': unknown split 'holdout'"),
    Case("table-empty-split", lambda f, r: f.assign(split="train"), r"'val' split of .* is empty", split="val"),
    Case("table-no-rows", lambda f, r: f.iloc[:0], r"the table has no rows"),
    Case("table-duplicate-image", _set("path", 1, "imgs/im0.png"), r"row 3, column 'path': image 'imgs/im0.png' "
         r"is also named in row 2"),
    Case("table-duplicate-id", _set("patient", 3, "p0"), r"row 5, column 'patient': duplicate id 'p0'",
         options={"id_column": "patient"}),
    Case("table-unknown-option", lambda f, r: f, r"unknown option\(s\) \['lable_column'\]", options={"lable_column": "x"}),
    # labels: missing spellings are the empty-label error, two spellings of one class are an error (D35-D36, D47)
    *[Case(f"table-label-spelt-missing-{name}", _set("label", 4, value), r"column 'label': empty label in 1 "
           r"row\(s\) \(rows 6\)") for name, value in (("NA", "NA"), ("None", "None"), ("null", "null"),
                                                        ("N-A", "N/A"), ("dash", "-"), ("na-lower", "na"),
                                                        ("excel-N-A", "#N/A"), ("question-mark", "?"),
                                                        ("pandas-NA", "<NA>"))],
    Case("table-label-number-spellings", _then(_labels(lambda i: str(i % 2)), _set("label", 4, "0.0")),
         r"column 'label': one class spelt 2 ways: '0' \(rows [\d, ]+\); '0\.0' \(rows 6\)"),
    Case("table-label-case-spellings", _set("label", 5, "Sick"),
         r"column 'label': one class spelt 2 ways: 'sick' \(rows [\d, ]+\); 'Sick' \(rows 7\)"),
    Case("table-label-none-declared-as-a-class", _labels(lambda i: "None" if i % 2 else "lesion"), outcome="handled",
         options={"class_names": ["None", "lesion"]}),
    # loader options (-o KEY=VALUE, data.options) of the wrong type or value name the option (D61-D63)
    Case("option-channels-out-of-range", lambda f, r: f, r"option 'channels': expected 1 or 3, got 2",
         options={"channels": 2}),
    Case("option-fold-not-an-integer", lambda f, r: f, r"option 'fold': expected an integer, got 'abc'",
         options={"split_column": None, "fold": "abc"}),
    Case("option-n-folds-too-small", lambda f, r: f, r"option 'n_folds': expected an integer of at least 3, got 1",
         options={"split_column": None, "n_folds": 1}),
    # files that are not tables
    Case("file-zero-bytes", _write("labels.csv", b""), r"labels.csv: cannot parse as CSV"),
    Case("file-binary-garbage", _write("labels.csv", b"\xff\xfe\x00\x01path,label\n\x00\x00"),
         r"labels.csv: cannot parse as CSV"),
    Case("file-bad-descriptor-json", _write("dataset.json", b"{bad json"), r"dataset.json: not valid JSON"),
    Case("file-descriptor-unknown-key", _write("dataset.json", b'{"format": "csv", "lable_column": "x"}'),
         r"dataset.json: unknown key\(s\) \['lable_column'\]"),
    # dataset.json values of the wrong type name the file and the key (D52, D53); its table stays inside (D54)
    Case("file-descriptor-list-is-a-number", _write("dataset.json", b'{"format": "csv", "concept_columns": 5}'),
         r"dataset.json: key 'concept_columns': expected a list of strings .*got 5"),
    Case("file-descriptor-channels-out-of-range", _write("dataset.json", b'{"channels": 4}'),
         r"dataset.json: key 'channels': expected 1 or 3, got 4"),
    Case("file-descriptor-string-is-a-list", _write("dataset.json", b'{"label_column": ["a"]}'),
         r"dataset.json: key 'label_column': expected a string, got \['a'\]"),
    Case("file-descriptor-card-field", _write("dataset.json", b'{"card": {"nmae": "x"}}'),
         r"dataset.json: key 'card': dataset card: unknown field\(s\) \['nmae'\]"),
    Case("file-descriptor-csv-leaves-root", _write("dataset.json", b'{"csv": "../../../../etc/passwd"}'),
         r"dataset.json: key 'csv': path '../../../../etc/passwd' leaves the dataset root"),
    Case("file-descriptor-csv-absolute", _write("dataset.json", b'{"csv": "/etc/passwd"}'),
         r"dataset.json: key 'csv': path '/etc/passwd' is absolute"),
    # paths
    Case("path-escapes-root", _set("path", 3, "../../etc/passwd"), r"row 5, column 'path'.*leaves the dataset root"),
    Case("path-absolute", _set("path", 3, "/etc/passwd"), r"row 5, column 'path'.*is absolute"),
    Case("path-missing-image", lambda f, r: (r / "imgs/im3.png").unlink(), r"row 5, column 'path': image "
         r"'imgs/im3.png' not found"),
    Case("path-nfd-file-name-nfc-table", _nfd_name, outcome="handled"),
    Case("path-found-by-file-name-alone", _set("path", 3, "scans_2019/im3.png"), outcome="handled"),
    # masks: the file-name fallback never lands on another column's file or folder (D57); paths stay inside (D56)
    Case("mask-files-present", _mask_column("masks", stem="m{i}"), outcome="handled", options=MASKS),
    Case("mask-folder-missing-image-taken-as-mask", _mask_column("masks", write=False, stem="im{i}"),
         r"row 2, column 'mspots': mask 'masks/im0.png' was found only by the file name alone, as imgs/im0.png, "
         r"which is the file of column 'path' in row 2; expected a file of its own", options=MASKS),
    Case("mask-misplaced-among-images", _then(_mask_column("masks", stem="m{i}"), _mask_in_image_folder),
         r"row 2, column 'mspots': mask 'masks/m0.png' was found only by the file name alone, as imgs/m0.png, "
         r"which is in the folder of column 'path''s files", options=MASKS),
    Case("mask-image-missing-found-among-masks", _then(_mask_column("masks", stem="im{i}"), _image_only_in_mask_folder),
         r"row 2, column 'path': image 'imgs/im0.png' was found only by the file name alone, as masks/im0.png, "
         r"which is the file of column 'mspots' in row 2", options=MASKS),
    Case("mask-path-leaves-root", _then(_mask_column("masks", stem="m{i}"), _set("mspots", 0, "../../../etc/passwd")),
         r"row 2, column 'mspots': path '../../../etc/passwd' leaves the dataset root", options=MASKS),
    Case("mask-missing-file", _then(_mask_column("masks", stem="m{i}"), lambda f, r: (r / "masks/m0.png").unlink()),
         r"row 2, column 'mspots': mask 'masks/m0.png' not found", options=MASKS),
    # symbolic links: linked folders are followed (each real folder once); a linked file must stay inside
    Case("symlink-images-folder-case-mismatch", _linked_images_folder, outcome="handled"),
    Case("symlink-folder-loops", _folder_link_loops, outcome="handled"),
    Case("symlink-file-inside-root", _file_link("inside"), outcome="handled"),
    Case("symlink-file-outside-root", _file_link("outside"), r"row 5, column 'path': image 'imgs/im3.png' is a "
         r"symbolic link to \S*elsewhere.png, outside the dataset root"),
    # images
    Case("image-truncated", lambda f, r: write_truncated_image(r / "imgs/im0.png"),
         r"im0.png: unreadable or truncated image", when="read"),
    Case("image-not-an-image", _write("imgs/im0.png", b"this is text, not a PNG"), r"im0.png: not an image",
         when="read"),
    Case("image-zero-bytes", _write("imgs/im0.png", b""), r"im0.png: not an image", when="read"),
    Case("image-gray-among-rgb", _gray_image, outcome="handled"),
    Case("image-other-size", _bigger_image, outcome="handled"),
    Case("image-16-bit", _sixteen_bit, outcome="handled"),
    Case("image-rgba", _rgba, outcome="handled"),
    # decompression bombs name the file (D28, D27's size class); high-bit-depth images are rescaled (D21, D22)
    Case("image-decompression-bomb", lambda f, r: write_decompression_bomb(r / "imgs/im0.png"),
         r"im0.png: image too large to decode safely \(Image size \(900000000 pixels\)", when="read"),
    Case("image-decompression-bomb-warning-size", lambda f, r: write_decompression_bomb(r / "imgs/im0.png", 10000, 10000),
         r"im0.png: image too large to decode safely", when="read"),
    Case("image-float-nan", _wide("F", np.where(GRADIENT == 5, np.nan, GRADIENT)),
         r"im0.tif: 1 pixel value\(s\) are NaN or infinite", when="read"),
    *[Case(f"image-{mode.replace(';', '-')}", _wide(mode, GRADIENT * 300 if mode != "F" else GRADIENT / 144),
           outcome="handled") for mode in ("I;16", "I;16B", "I", "F")],
]

BASE_OPTIONS = {"csv": "labels.csv", "split_column": "split", "concept_columns": ["spots"]}


def _make(tmp_path: Path, case: Case) -> Path:
    root = tmp_path / "data"
    frame = _base(root)
    frame.to_csv(root / "labels.csv", index=False)
    changed = case.mutate(frame.copy(), root)
    if isinstance(changed, pd.DataFrame):
        changed.to_csv(root / "labels.csv", index=False)
    return root


@pytest.mark.parametrize("case", CSV_CASES, ids=[c.name for c in CSV_CASES])
def test_broken_csv_dataset(tmp_path, case):
    root = _make(tmp_path, case)
    options = {**BASE_OPTIONS, **case.options}
    if case.outcome == "handled":  # converted to the card's channels, resized by the training transform
        card = load_dataset("csv", root, case.split, **options).card
        _, eval_tf = build_transforms(DataConfig(image_size=16), card)
        ds = load_dataset("csv", root, case.split, transform=eval_tf, **options)
        assert ds[0]["image"].shape == ds[1]["image"].shape == (3, 16, 16)
        assert torch.isfinite(ds[0]["image"]).all()
        return
    if case.when == "read":
        ds = load_dataset("csv", root, case.split, **options)
        with pytest.raises(ImageReadError, match=case.expect):
            ds[0]
        return
    with pytest.raises(DatasetError, match=case.expect):  # unknown options: a DatasetError and a TypeError
        load_dataset("csv", root, case.split, **options)


def test_path_options_take_path_objects(tmp_path):
    """`csv` and `split_file` are paths: Python callers (crl split, scripts) pass pathlib.Path, not only str."""
    root = _make(tmp_path, Case("clean", lambda f, r: f, outcome="handled"))
    options = {**BASE_OPTIONS, "split_column": None, "csv": Path("labels.csv"), "split_file": tmp_path / "folds.json"}
    assert len(load_dataset("csv", root, "train", **options)) > 0
    assert (tmp_path / "folds.json").is_file()


CLI_CASES = [c for c in CSV_CASES if c.outcome == "error"]


@pytest.mark.parametrize("case", CLI_CASES, ids=[c.name for c in CLI_CASES])
def test_broken_csv_dataset_through_the_cli(tmp_path, case):
    """`medimg datasets verify` lists the same problem and exits 1, with no traceback."""
    root = _make(tmp_path, case)
    args = ["datasets", "verify", str(root), "--format", "csv"]
    for key, value in {**BASE_OPTIONS, **case.options}.items():
        if value is not None:
            args += ["-o", f"{key}={','.join(value) if isinstance(value, list) else value}"]
    result = CliRunner().invoke(medimg, args)
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    flat = re.sub(r"\s+", " ", result.output)
    assert re.search(case.expect, flat), flat[-1500:]


@pytest.mark.parametrize("case", [c for c in CSV_CASES if c.name in ("table-empty-label", "path-missing-image")],
                         ids=lambda c: c.name)
def test_training_refuses_bad_data_before_creating_a_run_folder(tmp_path, case):
    root = _make(tmp_path, case)
    out = tmp_path / "runs"
    args = ["train-baseline", "--dataset", "csv", "--root", str(root), "--out", str(out), "--backbone",
            "test_resnet", "--epochs", "1", "--device", "cpu", "--data.options.csv", "labels.csv",
            "--data.options.split_column", "split"]
    result = CliRunner().invoke(medimg, args)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and re.search(case.expect, re.sub(r"\s+", " ", result.output))
    assert not out.exists() or not any(out.iterdir())


def test_symlinked_images_folder_loads_every_row_and_loops_are_reported(tmp_path, caplog):
    """The linked folder's images all load, the mismatched row included (the probe's D14); folder loops
    are walked once and named in a warning, never followed forever."""
    root = tmp_path / "data"
    frame = _linked_images_folder(_base(root), root)
    frame.to_csv(root / "labels.csv", index=False)
    (tmp_path / "store" / "again").symlink_to(tmp_path / "store", target_is_directory=True)  # loops in the
    (tmp_path / "store" / "self").symlink_to(".", target_is_directory=True)  # linked folder itself
    rows = {split: sum(1 for i in range(N_ROWS) if ["train", "val", "test"][i % 3] == split)
            for split in ("train", "val", "test")}
    with caplog.at_level("WARNING", logger="medimg"):
        for split, n in rows.items():
            ds = load_dataset("csv", root, split, **BASE_OPTIONS)
            assert len(ds) == n
    assert any(p.resolve().is_relative_to((tmp_path / "store").resolve()) for p in ds.table.paths)
    assert "skipped 2 folder link(s)" in caplog.text and "imgs/again" in caplog.text
    result = CliRunner().invoke(medimg, ["datasets", "verify", str(root), "--format", "csv",
                                         *[a for k, v in BASE_OPTIONS.items()
                                           for a in ("-o", f"{k}={','.join(v) if isinstance(v, list) else v}")]])
    assert result.exit_code == 0, result.output


# ---------------------------------------------------------------- MedMNIST .npz files


def _npz(path: Path, **overrides) -> Path:
    arrays = {f"{s}_images": np.zeros((3, 28, 28), np.uint8) for s in ("train", "val", "test")}
    arrays |= {f"{s}_labels": np.zeros((3, 1), np.uint8) for s in ("train", "val", "test")}
    arrays |= overrides
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


NPZ_CASES = {
    "npz-missing-key": (dict(train_labels=None), r"keys \['train_labels'\] missing"),
    "npz-count-mismatch": (dict(train_labels=np.zeros((4, 1))), r"3 train images but 4 labels"),
    "npz-label-out-of-range": (dict(train_labels=np.full((3, 1), 7)), r"train_labels row 0 has value 7; expected 0..1"),
    "npz-wrong-image-shape": (dict(train_images=np.zeros((3, 28), np.uint8)), r"train_images has shape \(3, 28\)"),
    "npz-empty-split": (dict(train_images=np.zeros((0, 28, 28), np.uint8), train_labels=np.zeros((0, 1))),
                        r"the train split is empty"),
}


@pytest.mark.parametrize("name", sorted(NPZ_CASES))
def test_broken_medmnist_file(tmp_path, name):
    overrides, expect = NPZ_CASES[name]
    path = _npz(tmp_path / "breastmnist.npz", **overrides)
    with pytest.raises(DatasetError, match=expect) as info:
        load_dataset("breastmnist", path, "train")
    assert str(path) in str(info.value)


def test_npz_holding_a_pickle_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "marker"

    class Payload:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    np.savez(tmp_path / "breastmnist.npz", train_images=np.array([Payload()], dtype=object))
    with pytest.raises(DatasetError, match="not a readable MedMNIST .npz"):
        load_dataset("breastmnist", tmp_path / "breastmnist.npz", "train")
    assert not marker.exists()


def test_not_an_npz_at_all(tmp_path):
    (tmp_path / "breastmnist.npz").write_text("hello")
    with pytest.raises(DatasetError, match="breastmnist.npz"):
        load_dataset("breastmnist", tmp_path / "breastmnist.npz", "train")


# ---------------------------------------------------------------- property-based: any table either loads or
# raises DatasetError; never another exception


@pytest.fixture(scope="module")
def image_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    for i in range(8):
        write_image(root / f"imgs/im{i}.png", size=8, seed=i)
    return root


LABELS = st.sampled_from(["healthy", "sick", "", "NaN", "3", " sick ", "Sick", "é"])
SPLITS = st.sampled_from(["train", "val", "test", "", "TRAIN", "validation", "holdout"])
CONCEPTS = st.sampled_from(["0", "1", "yes", "no", "", "maybe", "2", "-1", "1.0", "nan"])
PATHS = st.sampled_from([f"imgs/im{i}.png" for i in range(8)] + ["imgs/missing.png", "../x.png", "/abs.png", ""])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(PATHS, LABELS, SPLITS, CONCEPTS), min_size=0, max_size=10),
       split=st.sampled_from(["train", "val", "test"]))
def test_any_table_loads_or_fails_clearly(image_root, rows, split):
    frame = pd.DataFrame(rows, columns=["path", "label", "split", "spots"])
    name = f"t{abs(hash((tuple(rows), split))) % 10**12}.csv"
    frame.to_csv(image_root / name, index=False)
    try:
        ds = CSVDataset(image_root, split, csv=name, split_column="split", concept_columns=["spots"])
    except DatasetError as exc:
        assert str(exc).strip()
        return
    finally:
        (image_root / name).unlink()
        shutil.rmtree(image_root / ".medimg", ignore_errors=True)
    assert len(ds) > 0 and len(ds.ids) == len(set(ds.ids))
    assert ds.concepts.shape == (len(ds), 1)
    assert np.isin(ds.concepts[~np.isnan(ds.concepts)], [0, 1]).all()


# ---------------------------------------------------------------- the new-user probe's classes (issue 19)


WIDE_MODES = {  # mode: values of a 12 x 12 gradient in that mode's range
    "I;16": GRADIENT * 450, "I;16B": GRADIENT * 450, "I;16L": GRADIENT * 450, "I;16N": GRADIENT * 450,
    "I": GRADIENT * 10_000 - 700_000, "F": GRADIENT * 1000.0 / 143,
}


#: the modes PIL writes to a TIFF file (it reads 16-bit files back as I;16 or I;16B; I;16L and I;16N exist in memory)
TIFF_MODES = ("I;16", "I;16B", "I", "F")


@pytest.mark.parametrize("mode", sorted(WIDE_MODES))
def test_high_bit_depth_images_are_rescaled_never_clipped(tmp_path, mode):
    """16-bit images of every byte order, 32-bit integers and 32-bit floats (0-1000, as the probe's D21 float
    TIFF) come out as the full 0-255 range with every level of the gradient kept, in the gradient's order: the
    probe found 75 % of a float TIFF's pixels at 255 and 6 grey levels left of a big-endian 16-bit one."""
    from PIL import Image as PILImage

    from medimg_core.data.images import read_image, to_8bit

    values = WIDE_MODES[mode]
    if mode in ("I", "F"):
        img = PILImage.fromarray(values.astype(np.int32 if mode == "I" else np.float32), mode=mode)
    else:
        dtype = {"I;16": "<u2", "I;16L": "<u2", "I;16B": ">u2", "I;16N": "=u2"}[mode]
        img = PILImage.frombytes(mode, (12, 12), values.astype(dtype).tobytes())
    assert img.mode == mode
    decoded = [np.asarray(to_8bit(img).convert("L"))]
    if mode in TIFF_MODES:
        path = write_wide_image(tmp_path / "wide.tif", values, mode)
        decoded += [read_image(path, 1), read_image(path, 3)[..., 0]]
    for arr in decoded:
        assert arr.dtype == np.uint8 and arr.min() == 0 and arr.max() == 255, (arr.min(), arr.max())
        assert len(np.unique(arr)) == 144  # one level per gradient value
        assert (np.diff(arr.ravel().astype(int)) > 0).all()  # in the gradient's order


@pytest.mark.parametrize("size", [(30000, 30000), (10000, 10000)], ids=["over-twice-the-limit", "over-the-limit"])
def test_decompression_bomb_is_an_image_read_error_everywhere(tmp_path, size):
    """verify, training (the dataset's __getitem__) and every explain command (medimg_core.data.preprocess
    .load_image, which they read through) report the file, not a raw PIL error (D28, D69, E6)."""
    from medimg_core.data.images import read_image
    from medimg_core.data.preprocess import Preprocess, load_image

    bomb = write_decompression_bomb(tmp_path / "bomb.png", *size)
    assert bomb.stat().st_size < 5_000
    for read in (lambda: read_image(bomb, 3), lambda: load_image(bomb, Preprocess(32, 3))):
        with pytest.raises(ImageReadError, match=rf"{re.escape(str(bomb))}: image too large to decode safely"):
            read()


@pytest.mark.parametrize("shape,expect", [
    ((1, 1), r"1 x 1 pixels, smaller than 8 on a side; it is stretched to 32 x 32 pixels"),
    ((20, 400), r"400 x 20 pixels, an aspect ratio above 10:1; it is stretched to 32 x 32 pixels"),
    ((24, 24), None),
], ids=["tiny", "extreme-aspect", "ordinary"])
def test_explain_notes_tiny_or_extreme_images(tmp_path, caplog, shape, expect):
    """The explain commands read one image through load_image: a 1 x 1 image was explained with no word (E5);
    now a warning names the file and says what the model saw, and the explanation still comes."""
    from medimg_core.data.preprocess import Preprocess, load_image

    path = tmp_path / "odd.png"
    Image.fromarray(np.full(shape, 128, np.uint8)).save(path)
    with caplog.at_level("WARNING", logger="medimg"):
        x, _ = load_image(path, Preprocess(32, 3))
    assert tuple(x.shape) == (1, 3, 32, 32)
    if expect is None:
        assert "stretched" not in caplog.text, caplog.text
    else:
        assert re.search(rf"{re.escape(str(path))}: {expect}", caplog.text), caplog.text


def _verify(root: Path, *options: str) -> tuple[int, str]:
    result = CliRunner().invoke(medimg, ["datasets", "verify", str(root), "--format", "csv", *options])
    assert "Traceback" not in result.output and (result.exception is None or isinstance(result.exception, SystemExit))
    return result.exit_code, re.sub(r"\s+", " ", result.output)


CSV_OPTIONS = ["-o", "csv=labels.csv", "-o", "split_column=split", "-o", "concept_columns=spots"]

#: verify notes what loads but deserves a look (D25, D26, D40, D58): (name, mutation, the note)
NOTE_CASES = {
    "tiny-image": (lambda f, r: write_image(r / "imgs/im0.png", size=1),
                   r"note: 1 image\(s\) tiny or of an extreme aspect ratio.*im0.png \(1 x 1 pixels, smaller than 8"),
    "extreme-aspect": (lambda f, r: Image.fromarray(np.zeros((20, 400), np.uint8)).save(r / "imgs/im0.png"),
                       r"im0.png \(400 x 20 pixels, an aspect ratio above 10:1\)"),
    "class-only-in-train": (_set("label", 0, "rare"),
                            r"note: class 'rare' has no image in val or test \(images: train 1\); its per-class "
                            r"metrics on val and test are undefined"),
    "file-name-fallback": (_set("path", 3, "scans_2019/im3.png"),
                           r"note: column 'path': 1 path\(s\) found only by the file name alone, not where the "
                           r"table says \(e.g. row 5: 'scans_2019/im3.png' -> imgs/im3.png\)"),
}


@pytest.mark.parametrize("name", sorted(NOTE_CASES))
def test_verify_notes_what_loads_but_deserves_a_look(tmp_path, name):
    mutate, note = NOTE_CASES[name]
    root = _make(tmp_path, Case(name, mutate))
    code, out = _verify(root, *CSV_OPTIONS)
    assert code == 0, out
    assert re.search(note, out), out


def test_verify_lists_each_problem_once(tmp_path):
    """A problem of the whole table (a duplicate id, an unknown split) is found by every split's reading; it is
    listed once (D31)."""
    root = _make(tmp_path, Case("dup", _then(_set("patient", 3, "p0"), _set("split", 5, "holdout"))))
    code, out = _verify(root, *CSV_OPTIONS, "-o", "id_column=patient")
    assert code == 1
    assert out.count("duplicate id 'p0'") == 1 and out.count("unknown split 'holdout'") == 1, out
    assert "errors: 2" in out


def _no_split_column(root: Path, n: int) -> Path:
    rows = []
    for i in range(n):
        write_image(root / f"imgs/im{i:02d}.png", size=12, seed=i)
        rows.append({"path": f"imgs/im{i:02d}.png", "label": "sick" if i % 2 else "healthy"})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    return root


@pytest.mark.parametrize("change", ["add-one-image", "remove-one-image"])
def test_a_split_file_that_no_longer_matches_the_data_is_an_error(tmp_path, change):
    """Without a split column the folds are drawn once; adding or removing an image afterwards never redraws
    them silently (D65: 8 of 12 test images had moved to train): loading says what changed and how to redraw,
    and verify reports it the same way."""
    root = _no_split_column(tmp_path / "data", 40)
    test_before = set(load_dataset("csv", root, "test", csv="labels.csv").ids)
    frame = pd.read_csv(root / "labels.csv")
    if change == "add-one-image":
        write_image(root / "imgs/new.png", size=12, seed=99)
        frame = pd.concat([frame, pd.DataFrame([{"path": "imgs/new.png", "label": "sick"}])])
        expect = r"1 image\(s\) added since it was drawn \(e.g. \['new'\]\)\. Its folds"
    else:
        frame = frame.iloc[1:]
        expect = r"1 image\(s\) removed since it was drawn \(e.g. \['im00'\]\)\. Its folds"
    frame.to_csv(root / "labels.csv", index=False)
    for split in ("train", "test"):
        with pytest.raises(DatasetError, match=expect) as info:
            load_dataset("csv", root, split, csv="labels.csv")
    assert "never redrawn silently" in str(info.value) and "split_file=NEW.json" in str(info.value)
    code, out = _verify(root, "-o", "csv=labels.csv")
    assert code == 1 and re.search(expect, out) and out.count("no longer matches") == 1, out
    # a new split file, named on purpose, draws new folds; the old file still holds the old ones
    fresh = load_dataset("csv", root, "test", csv="labels.csv", split_file=str(tmp_path / "new.json"))
    assert len(fresh) > 0
    shutil.copy(root / "labels.csv", tmp_path / "edited.csv")
    frame_back = pd.read_csv(tmp_path / "edited.csv")
    if change == "add-one-image":
        frame_back = frame_back[frame_back["path"] != "imgs/new.png"]
    else:
        frame_back = pd.concat([pd.DataFrame([{"path": "imgs/im00.png", "label": "healthy"}]), frame_back])
    frame_back.to_csv(root / "labels.csv", index=False)
    assert set(load_dataset("csv", root, "test", csv="labels.csv").ids) == test_before


def test_a_split_file_of_the_earlier_ids_keyed_scheme_is_adopted(tmp_path):
    """Split files written before the files were keyed by where the data live keep their folds."""
    from medimg_core.data.splits import split_file_path

    root = _no_split_column(tmp_path / "data", 30)
    ids = [f"im{i:02d}" for i in range(30)]
    legacy = split_file_path(None, "data", ids, 5, 0)
    folds = np.array([(i * 7) % 5 for i in range(30)])  # folds no seeded draw would give
    legacy.parent.mkdir(parents=True, exist_ok=True)
    legacy.write_text(json.dumps({"n_folds": 5, "seed": 0, "folds": dict(zip(ids, folds.tolist(), strict=True))}))
    test = load_dataset("csv", root, "test", csv="labels.csv")
    assert set(test.ids) == {i for i, f in zip(ids, folds, strict=True) if f == 0}
