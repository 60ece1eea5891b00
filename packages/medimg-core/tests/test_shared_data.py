"""The loaders on the project's real data in ../shared/data; skipped cleanly where it is absent."""

import pytest

from medimg_core.data import ChestXray14, WBCAtt, load_dataset
from medimg_core.testing import shared_data_dir

SHARED = shared_data_dir()
pytestmark = [
    pytest.mark.shared_data,
    pytest.mark.skipif(SHARED is None, reason="real data folder ../shared/data (or $MEDIMG_SHARED_DATA) is absent"),
]


def test_wbcatt_official_split_and_concepts():
    sizes = {s: len(WBCAtt(SHARED / "wbcatt", s)) for s in ("train", "val", "test")}
    assert sizes == {"train": 6169, "val": 1030, "test": 3099}
    ds = WBCAtt(SHARED / "wbcatt", "val")
    assert ds.card.num_concepts == 24 and ds.concepts.shape == (1030, 24)
    assert ds[0]["image"].shape == (3, 128, 128)


def test_wbcatt_verify_reports_no_errors():
    report = WBCAtt.verify(SHARED / "wbcatt")
    assert report.num_images == 10298 and report.card.num_classes == 5 and report.card.num_concepts == 24
    assert report.ok, report.to_text()


@pytest.mark.parametrize(
    ("name", "sizes", "shape"),
    [
        ("retinamnist", (1080, 120, 400), (3, 28, 28)),
        ("breastmnist", (546, 78, 156), (1, 28, 28)),
        ("pneumoniamnist", (3882, 524, 624), (1, 28, 28)),
    ],
)
def test_medmnist_files(name, sizes, shape):
    for split, size in zip(("train", "val", "test"), sizes, strict=True):
        ds = load_dataset(name, SHARED / "medmnist", split)
        assert len(ds) == size
    assert ds[0]["image"].shape == shape


def test_chestxray14_label_table_with_the_two_samples():
    root = SHARED / "chestxray14"
    found = []
    for split in ("train", "val", "test"):
        try:
            ds = ChestXray14(root, split, official_split=False, missing_images="drop")
        except Exception as exc:  # an empty split: both samples may sit elsewhere
            assert "is empty" in str(exc)
            continue
        found += ds.ids
        assert ds.table.extra["dropped_missing_images"] > 0
        assert ds[0]["image"].shape == (1, 512, 512) and ds[0]["target"].shape == (14,)
    assert sorted(found) == ["00000001_000.png", "00027426_000.png"]
