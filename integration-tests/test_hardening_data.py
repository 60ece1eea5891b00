"""Hardening: a corpus of broken datasets. Each case ends in a clear error that names the file, row,
column or value (never a traceback from deep inside pandas, PIL or torch), or in a documented
conversion; the CLI reports the same message with exit status 1; training refuses bad data before
it creates a run folder. `python tools/reliability.py` counts these cases into docs/reliability.md.
"""

from __future__ import annotations

import re
import shutil
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
from medimg_core.testing import write_image, write_truncated_image

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
    Case("table-unknown-option", lambda f, r: f, r"unknown option", options={"lable_column": "x"}),
    # files that are not tables
    Case("file-zero-bytes", _write("labels.csv", b""), r"labels.csv: cannot parse as CSV"),
    Case("file-binary-garbage", _write("labels.csv", b"\xff\xfe\x00\x01path,label\n\x00\x00"),
         r"labels.csv: cannot parse as CSV"),
    Case("file-bad-descriptor-json", _write("dataset.json", b"{bad json"), r"dataset.json: not valid JSON"),
    Case("file-descriptor-unknown-key", _write("dataset.json", b'{"format": "csv", "lable_column": "x"}'),
         r"dataset.json: unknown key\(s\) \['lable_column'\]"),
    # paths
    Case("path-escapes-root", _set("path", 3, "../../etc/passwd"), r"row 5, column 'path'.*leaves the dataset root"),
    Case("path-absolute", _set("path", 3, "/etc/passwd"), r"row 5, column 'path'.*is absolute"),
    Case("path-missing-image", lambda f, r: (r / "imgs/im3.png").unlink(), r"row 5, column 'path': image "
         r"'imgs/im3.png' not found"),
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
    error = TypeError if case.name == "table-unknown-option" else DatasetError
    with pytest.raises(error, match=case.expect):
        load_dataset("csv", root, case.split, **options)


CLI_CASES = [c for c in CSV_CASES if c.outcome == "error" and c.name != "table-unknown-option"]


@pytest.mark.parametrize("case", CLI_CASES, ids=[c.name for c in CLI_CASES])
def test_broken_csv_dataset_through_the_cli(tmp_path, case):
    """`medimg datasets verify` lists the same problem and exits 1, with no traceback."""
    root = _make(tmp_path, case)
    args = ["datasets", "verify", str(root), "--format", "csv"]
    for key, value in {**BASE_OPTIONS, **case.options}.items():
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
