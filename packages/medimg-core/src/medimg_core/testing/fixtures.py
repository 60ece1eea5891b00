"""Helpers for tests, shipped with the library (as captum.testing is): fixtures of real datasets in
their official layouts, written on the fly, and the location of the project's shared real data.

Every writer produces a few tiny images and the metadata files exactly as the dataset's owners
ship them, so the loaders' real code paths run without any download.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = [
    "DERM7PT_CASES",
    "DERM7PT_COLUMNS",
    "DERM7PT_SPLITS",
    "HAM10000_DX",
    "ODIR_COLUMNS",
    "ODIR_KEYWORDS",
    "OIA_ODIR_OFFSITE_KEYWORDS",
    "OIA_ODIR_ONSITE_KEYWORDS",
    "WBCATT_COLUMNS",
    "WBCATT_ROWS",
    "fitzpatrick_fixture_md5",
    "shared_data_dir",
    "write_chestxray14_fixture",
    "write_ddi_fixture",
    "write_decompression_bomb",
    "write_derm7pt_fixture",
    "write_fitzpatrick17k_skincon_fixture",
    "write_fundus_image",
    "write_ham10000_fixture",
    "write_image",
    "write_medmnist_fixture",
    "write_odir_fixture",
    "write_oia_odir_fixture",
    "write_truncated_image",
    "write_wbcatt_fixture",
    "write_wide_image",
]


def shared_data_dir() -> Path | None:
    """The project's read-only real data (`$MEDIMG_SHARED_DATA`, or `../shared/data` from the repo root)."""
    env = os.environ.get("MEDIMG_SHARED_DATA")
    if env:
        return Path(env) if Path(env).is_dir() else None
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent.parent / "shared" / "data"
        if (parent / "packages").is_dir() and candidate.is_dir():
            return candidate
    return None


def write_image(path: Path, size: int = 16, channels: int = 3, seed: int = 0, value: int | None = None) -> Path:
    """A small random (or constant) PNG/JPEG at `path`; the suffix picks the format."""
    rng = np.random.default_rng(seed)
    shape = (size, size) if channels == 1 else (size, size, 3)
    arr = np.full(shape, value, dtype=np.uint8) if value is not None else rng.integers(0, 256, shape, dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def write_truncated_image(path: Path) -> Path:
    """A JPEG cut in half: it opens but cannot be decoded."""
    write_image(path.with_suffix(".jpg"), size=64)
    data = path.with_suffix(".jpg").read_bytes()
    path.with_suffix(".jpg").unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data[: len(data) // 2])
    return path


def write_decompression_bomb(path: Path, width: int = 30000, height: int = 30000) -> Path:
    """A PNG that claims `width` x `height` grayscale pixels in a few dozen bytes (a decompression bomb as
    the probe's D28 made it: 30000 x 30000 is 900 megapixels, twice PIL's limit; 10000 x 10000 is between
    the limit and twice it, where PIL only warns). Its pixel data are one zero row: nothing large is ever
    allocated to write it, and a reader must refuse it from the header."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    data = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * (width + 1)))
            + chunk(b"IEND", b""))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def write_wide_image(path: Path, values: np.ndarray, mode: str) -> Path:
    """A grayscale TIFF (or PNG) of `values` in a high-bit-depth PIL mode: 'I;16', 'I;16B', 'I;16L', 'I;16N'
    (16-bit, in each byte order), 'I' (32-bit integer) or 'F' (32-bit float)."""
    arr = np.asarray(values)
    h, w = arr.shape
    if mode == "F":
        img = Image.fromarray(arr.astype(np.float32), mode="F")
    elif mode == "I":
        img = Image.fromarray(arr.astype(np.int32), mode="I")
    else:
        dtype = {"I;16": "<u2", "I;16L": "<u2", "I;16B": ">u2", "I;16N": "=u2"}[mode]
        img = Image.frombytes(mode, (w, h), arr.astype(dtype).tobytes())
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


WBCATT_ROWS = [
    # img_name, label, folder, 11 attributes
    ("BA_1.jpg", "Basophil", "basophil",
     ["big", "round", "segmented-bilobed", "low", "densely", "no", "frosted", "purple blue", "coarse", "purple", "yes"]),
    ("EO_1.jpg", "Eosinophil", "eosinophil",
     ["big", "round", "segmented-bilobed", "low", "densely", "no", "frosted", "light blue", "round", "red", "yes"]),
    ("LY_1.jpg", "Lymphocyte", "lymphocyte",
     ["small", "round", "unsegmented-round", "high", "densely", "no", "clear", "blue", "nil", "nil", "no"]),
    ("MO_1.jpg", "Monocyte", "monocyte",
     ["big", "irregular", "unsegmented-indented", "low", "loosely", "yes", "frosted", "blue", "small", "pink", "yes"]),
    ("BNE_1.jpg", "Neutrophil", "neutrophil",
     ["big", "round", "unsegmented-band", "low", "densely", "no", "clear", "light blue", "small", "pink", "yes"]),
    ("SNE_1.jpg", "Neutrophil", "neutrophil",
     ["big", "round", "segmented-multilobed", "low", "densely", "no", "clear", "light blue", "small", "pink", "yes"]),
]
WBCATT_COLUMNS = ["img_name", "label", "cell_size", "cell_shape", "nucleus_shape", "nuclear_cytoplasmic_ratio",
                  "chromatin_density", "cytoplasm_vacuole", "cytoplasm_texture", "cytoplasm_colour", "granule_type",
                  "granule_colour", "granularity", "path"]


def write_wbcatt_fixture(root: Path, rows: Sequence = WBCATT_ROWS) -> Path:
    """WBCAtt as released: `pbc_attr_v1_{train,val,test}.csv` + `PBC_dataset_normal_DIB/<class>/<img>`.

    Each split holds all `rows` with the split name prefixed to the file names.
    """
    import pandas as pd

    root.mkdir(parents=True, exist_ok=True)
    for s, split in enumerate(("train", "val", "test")):
        records = []
        for i, (name, label, folder, attrs) in enumerate(rows):
            img_name = f"{split}_{name}"
            rel = f"PBC_dataset_normal_DIB/{folder}/{img_name}"
            write_image(root / rel, size=24, seed=100 * s + i)
            records.append([img_name, label, *attrs, rel])
        pd.DataFrame(records, columns=WBCATT_COLUMNS).to_csv(root / f"pbc_attr_v1_{split}.csv", index=False)
    return root


def write_medmnist_fixture(path: Path, channels: int = 3, num_classes: int = 5, n: int = 10,
                           flat_labels: bool = False, size: int = 28) -> Path:
    """A MedMNIST-style `.npz` with train/val/test images and labels ((N, 1), or (N,) if flat_labels)."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split in ("train", "val", "test"):
        shape = (n, size, size) if channels == 1 else (n, size, size, 3)
        arrays[f"{split}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
        labels = np.arange(n, dtype=np.uint8) % num_classes
        arrays[f"{split}_labels"] = labels if flat_labels else labels[:, None]
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return path


def write_chestxray14_fixture(root: Path, n_patients: int = 12, with_lists: bool = True,
                              gzip: bool = True, bboxes: Sequence[tuple] | None = None) -> Path:
    """ChestX-ray14 as released: Data_Entry_2017_v2020.csv[.gz], the two lists, `images_001/images/*.png`;
    with `bboxes` [(image, finding, x, y, w, h)] (1024-pixel coordinates, findings spelt as the NIH file spells
    them, e.g. "Infiltrate") also BBox_List_2017.csv, with the official header."""
    import pandas as pd

    findings = ["No Finding", "Cardiomegaly", "Effusion|Infiltration", "Nodule", "Mass|Pneumothorax", "No Finding"]
    rows, train_val, test = [], [], []
    for p in range(1, n_patients + 1):
        for follow_up in range(2):
            name = f"{p:08d}_{follow_up:03d}.png"
            label = findings[(p + follow_up) % len(findings)]
            rows.append([name, label, follow_up, p, 50, "M", "PA" if follow_up == 0 else "AP", 64, 64, 0.14, 0.14])
            (test if p % 4 == 0 else train_val).append(name)
            write_image(root / "images_001" / "images" / name, size=32, channels=1, seed=p * 10 + follow_up)
    columns = ["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender",
               "View Position", "OriginalImage[Width", "Height]", "OriginalImagePixelSpacing[x", "y]"]
    frame = pd.DataFrame(rows, columns=columns)
    name = "Data_Entry_2017_v2020.csv" + (".gz" if gzip else "")
    frame.to_csv(root / name, index=False)
    if with_lists:
        (root / "train_val_list.txt").write_text("\n".join(train_val) + "\n")
        (root / "test_list.txt").write_text("\n".join(test) + "\n")
    if bboxes is not None:
        lines = ["Image Index,Finding Label,Bbox [x,y,w,h],,,"]  # the released header: three empty columns
        lines += [",".join(str(v) for v in row) for row in bboxes]
        (root / "BBox_List_2017.csv").write_text("\n".join(lines) + "\n")
    return root


# ---------------------------------------------------------------- Derm7pt, Fitzpatrick17k + SkinCon, DDI,
# HAM10000, ODIR-5K (official layouts)

DERM7PT_COLUMNS = ["case_num", "diagnosis", "seven_point_score", "pigment_network", "streaks", "pigmentation",
                   "regression_structures", "dots_and_globules", "blue_whitish_veil", "vascular_structures",
                   "level_of_diagnostic_difficulty", "elevation", "location", "sex", "clinic", "derm",
                   "management", "notes"]
#: (diagnosis, pigment_network, streaks, pigmentation, regression_structures, dots_and_globules,
#:  blue_whitish_veil, vascular_structures) of each fixture case, as meta.csv spells them
DERM7PT_CASES = [
    ("melanoma (in situ)", "atypical", "irregular", "diffuse irregular", "blue areas", "irregular", "present", "dotted"),
    ("clark nevus", "typical", "absent", "absent", "absent", "regular", "absent", "absent"),
    ("basal cell carcinoma", "absent", "absent", "absent", "absent", "absent", "absent", "arborizing"),
    ("melanoma (less than 0.76 mm)", "atypical", "regular", "localized irregular", "combinations", "irregular",
     "absent", "linear irregular"),
    ("seborrheic keratosis", "absent", "absent", "diffuse regular", "absent", "absent", "absent", "hairpin"),
    ("dermatofibroma", "typical", "absent", "localized regular", "white areas", "absent", "absent", "absent"),
    ("melanoma", "atypical", "irregular", "absent", "white areas", "regular", "present", "absent"),
    ("blue nevus", "absent", "absent", "diffuse regular", "absent", "absent", "present", "absent"),
    ("lentigo", "typical", "absent", "absent", "absent", "absent", "absent", "absent"),
    ("melanoma metastasis", "absent", "absent", "diffuse irregular", "absent", "absent", "present", "comma"),
    ("reed or spitz nevus", "typical", "regular", "absent", "absent", "regular", "absent", "dotted"),
    ("vascular lesion", "absent", "absent", "absent", "absent", "absent", "absent", "wreath"),
]
DERM7PT_SPLITS = {"train": [0, 1, 2, 3, 4, 5], "valid": [6, 7, 8], "test": [9, 10, 11]}


def write_derm7pt_fixture(root: Path, cases: Sequence = DERM7PT_CASES, splits: dict | None = None) -> Path:
    """Derm7pt as released (release_v0): `meta/meta.csv`, `meta/{train,valid,test}_indexes.csv`, `images/`.

    The CSV names `NEL/Nel0NN.jpg` while the disk holds a mix of `.JPG` files and a lower-case `nel/`
    folder, as the real download does.
    """
    import pandas as pd

    splits = DERM7PT_SPLITS if splits is None else splits
    (root / "meta").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, case in enumerate(cases):
        folder = "NEL" if i % 3 else "Fal"
        clinic, derm = f"{folder}/{folder.title()}{2 * i:03d}.jpg", f"{folder}/{folder.title()}{2 * i + 1:03d}.jpg"
        for k, rel in enumerate((clinic, derm)):
            disk = rel
            if k == 1 and i % 2 == 0:
                disk = rel[:-4] + ".JPG"  # extension case differs from the CSV
            if folder == "Fal":
                disk = "fal" + disk[3:]  # folder case differs from the CSV
            write_image(root / "images" / disk, size=12, seed=10 * i + k)
        diagnosis, *criteria = case
        rows.append([i + 1, diagnosis, 1, *criteria, "low", "palpable", "back", "female", clinic, derm,
                     "excision", ""])
    pd.DataFrame(rows, columns=DERM7PT_COLUMNS).to_csv(root / "meta" / "meta.csv", index=False)
    for split, indexes in splits.items():
        pd.DataFrame({"indexes": list(indexes)}).to_csv(root / "meta" / f"{split}_indexes.csv", index=False)
    return root


def fitzpatrick_fixture_md5(text: str) -> str:
    """The md5hash the Fitzpatrick17k fixture gives image `text` (`"fitz0"`, `"fitz1"`, ...)."""
    import hashlib

    return hashlib.md5(text.encode()).hexdigest()


def write_fitzpatrick17k_skincon_fixture(root: Path, n_benign: int = 10, n_malignant: int = 10,
                                         n_missing_images: int = 2, image_dir: str = "images") -> Path:
    """Fitzpatrick17k + SkinCon as released: `fitzpatrick17k.csv`, `annotations_fitzpatrick_final_v2.csv`
    (unnamed index, ImageID, 48 concepts, 'Do not consider this image') and `<image_dir>/<md5hash>.jpg`.

    Beyond the `n_benign + n_malignant` eligible images, SkinCon also annotates 3 non-neoplastic images,
    2 flagged 'Do not consider this image' and 1 absent from the Fitzpatrick CSV; 4 Fitzpatrick rows
    have no SkinCon annotation. The last `n_missing_images` eligible images are not written to disk.
    Image md5s are `fitzpatrick_fixture_md5(f"fitz{i}")`, eligible ones first (benign, then malignant).
    """
    import pandas as pd

    from medimg_core.data.skincon import DO_NOT_CONSIDER, SKINCON_CONCEPTS

    root.mkdir(parents=True, exist_ok=True)
    n_eligible = n_benign + n_malignant
    kinds = (["benign"] * n_benign + ["malignant"] * n_malignant + ["non-neoplastic"] * 3
             + ["benign", "malignant"] + ["benign"] * 4)  # then 2 flagged, then 4 without SkinCon
    fitz_rows, skincon_rows = [], []
    for i, kind in enumerate(kinds):
        md5 = fitzpatrick_fixture_md5(f"fitz{i}")
        nine = {"benign": "benign epidermal", "malignant": "malignant melanoma", "non-neoplastic": "inflammatory"}
        fitz_rows.append([md5, 1 + i % 6, 1 + (i + 1) % 6, f"condition {i % 4}", nine[kind], kind, "",
                          f"https://example.org/{md5}.jpg", f"httpsexampleorg{md5}jpg"])
        if i < n_eligible + 5:
            flagged = int(n_eligible + 3 <= i < n_eligible + 5)
            concepts = [int((i + k) % 3 == 0) for k in range(len(SKINCON_CONCEPTS))]
            skincon_rows.append([f"{md5}.jpg", *concepts, flagged])
        if i < n_eligible - n_missing_images or i >= n_eligible:
            write_image(root / image_dir / f"{md5}.jpg", size=10, seed=i)
    skincon_rows.append([f"{fitzpatrick_fixture_md5('not-in-fitzpatrick')}.jpg", *([0] * len(SKINCON_CONCEPTS)), 0])
    pd.DataFrame(fitz_rows, columns=["md5hash", "fitzpatrick_scale", "fitzpatrick_centaur", "label",
                                     "nine_partition_label", "three_partition_label", "qc", "url", "url_alphanum"]
                 ).to_csv(root / "fitzpatrick17k.csv", index=False)
    pd.DataFrame(skincon_rows, columns=["ImageID", *SKINCON_CONCEPTS, DO_NOT_CONSIDER]).to_csv(
        root / "annotations_fitzpatrick_final_v2.csv")  # the unnamed index column, as released
    return root


def write_ddi_fixture(root: Path, n: int = 12, skincon: bool = True) -> Path:
    """DDI as released: `ddi_metadata.csv` (unnamed index, DDI_ID, DDI_file, skin_tone, malignant, disease)
    and the PNGs `000001.png`... in the root; optionally SkinCon's `annotations_ddi_final.csv`, which
    annotates all images but the last, and flags image 2 'Do not consider this image'.
    Image i (1-based) is malignant when i % 3 == 0; skin tones cycle 12, 34, 56.
    """
    import pandas as pd

    from medimg_core.data.skincon import DO_NOT_CONSIDER, SKINCON_CONCEPTS

    root.mkdir(parents=True, exist_ok=True)
    rows, annotations = [], []
    for i in range(1, n + 1):
        file = f"{i:06d}.png"
        malignant = i % 3 == 0
        rows.append([i, file, (12, 34, 56)[i % 3], malignant,
                     "melanoma-in-situ" if malignant else "seborrheic-keratosis"])
        write_image(root / file, size=10, seed=i)
        if i < n:
            annotations.append([file, *[int((i + k) % 4 == 0) for k in range(len(SKINCON_CONCEPTS))], int(i == 2)])
    pd.DataFrame(rows, columns=["DDI_ID", "DDI_file", "skin_tone", "malignant", "disease"]).to_csv(
        root / "ddi_metadata.csv")
    if skincon:
        pd.DataFrame(annotations, columns=["ImageID", *SKINCON_CONCEPTS, DO_NOT_CONSIDER]).to_csv(
            root / "annotations_ddi_final.csv")
    return root


HAM10000_DX = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")


def write_ham10000_fixture(root: Path, n_lesions: int = 21) -> Path:
    """HAM10000 as released: `HAM10000_metadata.csv` and `HAM10000_images_part_{1,2}/<image_id>.jpg`.

    Lesion j has dx `HAM10000_DX[j % 7]` and two images when j % 3 == 0, one otherwise.
    """
    import pandas as pd

    root.mkdir(parents=True, exist_ok=True)
    rows, image = [], 24306
    for j in range(n_lesions):
        for _ in range(2 if j % 3 == 0 else 1):
            image_id = f"ISIC_{image:07d}"
            part = 1 if image % 2 else 2
            write_image(root / f"HAM10000_images_part_{part}" / f"{image_id}.jpg", size=10, seed=image)
            rows.append([f"HAM_{j:07d}", image_id, HAM10000_DX[j % 7], "histo", f"{30 + j}.0",
                         "male" if j % 2 else "female", "back", "vidir_modern"])
            image += 1
    pd.DataFrame(rows, columns=["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization", "dataset"]
                 ).to_csv(root / "HAM10000_metadata.csv", index=False)
    return root


#: (left keywords, right keywords) of the fixture's patients; "，" is the sheet's full-width comma
ODIR_KEYWORDS = [
    ("normal fundus", "normal fundus"),
    ("moderate non proliferative retinopathy", "mild nonproliferative retinopathy"),
    ("glaucoma", "normal fundus"),
    ("cataract", "lens dust，normal fundus"),
    ("dry age-related macular degeneration", "wet age-related macular degeneration"),
    ("hypertensive retinopathy，moderate non proliferative retinopathy", "hypertensive retinopathy"),
    ("pathological myopia", "pathological myopia"),
    ("drusen", "epiretinal membrane"),
    ("low image quality", "normal fundus"),
    ("laser spot，moderate non proliferative retinopathy", "normal fundus"),
    ("no fundus image", "cataract"),
    ("normal fundus", "suspected glaucoma"),
    ("severe proliferative diabetic retinopathy", "normal fundus"),
    ("normal fundus", "cataract,lens dust"),
    ("mild nonproliferative retinopathy", "normal fundus"),
]
ODIR_COLUMNS = ["ID", "Patient Age", "Patient Sex", "Left-Fundus", "Right-Fundus", "Left-Diagnostic Keywords",
                "Right-Diagnostic Keywords", "N", "D", "G", "C", "A", "H", "M", "O"]


def _odir_sheet(keywords: Sequence, first_id: int, image_dir: Path, fundus: bool = False):
    """The rows of an ODIR annotation sheet for `keywords` (one (left, right) pair per patient), writing each
    eye's image into `image_dir`; N..O are the patient-level labels derived from both eyes (released map)."""
    import pandas as pd

    from medimg_core.data.odir import eye_labels

    rows = []
    for p, (left, right) in enumerate(keywords):
        pid = first_id + 3 * p  # real IDs skip numbers too
        labels = [lab for lab in (eye_labels(k)[0] for k in (left, right)) if lab.any()]
        union = np.max(labels, axis=0) if labels else np.zeros(8)
        union[0] = float(bool(labels) and all(lab[0] == 1 for lab in labels))  # N only when every eye is normal
        for eye in ("left", "right"):
            path = image_dir / f"{pid}_{eye}.jpg"
            if fundus:
                write_fundus_image(path, seed=pid + len(eye))
            else:
                write_image(path, size=12, seed=10 * p + len(eye) + first_id)
        rows.append([pid, 40 + p, "Female" if p % 2 else "Male", f"{pid}_left.jpg", f"{pid}_right.jpg", left, right,
                     *[int(v) for v in union]])
    return pd.DataFrame(rows, columns=ODIR_COLUMNS)


def write_odir_fixture(root: Path, keywords: Sequence = ODIR_KEYWORDS, xlsx: bool = False) -> Path:
    """ODIR-5K as released for the 2019 challenge: the training annotation sheet and
    `ODIR-5K_Training_Dataset/<ID>_{left,right}.jpg` (no test labels: read with protocol="medimg-folds").

    The sheet is written as `ODIR-5K_Training_Annotations(Updated)_V2.csv` (the .xlsx saved as CSV), or as
    the official `.xlsx` when `xlsx` (needs openpyxl). Patient IDs skip numbers, as the real ones do;
    N..O are the patient-level labels derived from both eyes.
    """
    root.mkdir(parents=True, exist_ok=True)
    frame = _odir_sheet(keywords, 0, root / "ODIR-5K_Training_Dataset")
    if xlsx:
        frame.to_excel(root / "ODIR-5K_Training_Annotations(Updated)_V2.xlsx", index=False)
    else:
        frame.to_csv(root / "ODIR-5K_Training_Annotations(Updated)_V2.csv", index=False)
    return root


#: (left, right) keywords of the on-site and off-site test patients of the OIA-ODIR fixture
OIA_ODIR_ONSITE_KEYWORDS = [
    ("normal fundus", "mild hypertension"),
    ("sever hypertension，moderate non proliferative retinopathy", "normal fundus"),
    ("cataract", "anterior segment image"),
    ("suspected glaucoma", "myopic maculopathy"),
    ("dry age-related macular degeneration", "normal fundus"),
]
OIA_ODIR_OFFSITE_KEYWORDS = [
    ("normal fundus", "normal fundus"),
    ("hypertensive retinopathy", "pathological myopia"),
    ("drusen", "lens dust"),
]


def write_fundus_image(path: Path, height: int = 18, width: int = 26, seed: int = 0) -> Path:
    """A fundus-like JPEG: a bright disc of radius 8 centred in a black frame with faint noise (values <= 6)."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 7, (height, width, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:height, :width]
    disc = (yy - height // 2) ** 2 + (xx - width // 2) ** 2 <= 64
    arr[disc] = rng.integers(90, 200, (int(disc.sum()), 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, quality=95)
    return path


def write_oia_odir_fixture(root: Path, train: Sequence = ODIR_KEYWORDS, onsite: Sequence = OIA_ODIR_ONSITE_KEYWORDS,
                           offsite: Sequence = OIA_ODIR_OFFSITE_KEYWORDS, xlsx: bool = False) -> Path:
    """OIA-ODIR as released (github.com/nkicsl/OIA-ODIR) and read by the released CIPL code: `Training Set`,
    `On-site Test Set` and `Off-site Test Set`, each with `Annotation/<part> annotation (English).csv` (the
    .xlsx saved as CSV; the official `.xlsx` when `xlsx`, needs openpyxl), a Chinese sheet beside it that the
    loader must ignore, and `Images/<ID>_{left,right}.jpg` (fundus-like: a bright disc on black). Patient IDs
    differ between the parts (training from 0, on-site from 1000, off-site from 2000).
    """
    parts = [("Training Set", "training", train, 0), ("On-site Test Set", "on-site test", onsite, 1000),
             ("Off-site Test Set", "off-site test", offsite, 2000)]
    for folder, stem, keywords, first in parts:
        frame = _odir_sheet(keywords, first, root / folder / "Images", fundus=True)
        sheet = root / folder / "Annotation" / f"{stem} annotation (English)"
        sheet.parent.mkdir(parents=True, exist_ok=True)
        if xlsx:
            frame.to_excel(sheet.with_suffix(".xlsx"), index=False)
        else:
            frame.to_csv(sheet.with_suffix(".csv"), index=False)
        chinese = frame.assign(**{"Left-Diagnostic Keywords": "正常眼底", "Right-Diagnostic Keywords": "正常眼底"})
        chinese.to_csv(root / folder / "Annotation" / f"{stem} annotation (Chinese).csv", index=False)
    return root
