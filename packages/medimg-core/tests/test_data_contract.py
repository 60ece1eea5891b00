import numpy as np
import pytest
import torch

from medimg_core.data import DatasetCard, DatasetError, MedicalImageDataset, SampleTable
from medimg_core.data.errors import Problem, ProblemLog
from medimg_core.data.images import PathResolver, read_image
from medimg_core.data.splits import assign_folds, fold_split_names, holdout_mask, load_or_create_folds
from medimg_core.data.transforms import eval_transform, train_transform
from medimg_core.testing import write_image, write_truncated_image


def _card(**kw):
    base = dict(name="toy", title="Toy", task="binary", class_names=("a", "b"), concept_names=("c1", "c2"))
    base.update(kw)
    return DatasetCard(**base)


def test_card_validates_and_round_trips():
    card = _card(concept_groups={"g": ("c1", "c2")})
    assert DatasetCard.from_dict(card.to_dict()) == card
    assert "Toy" in card.to_markdown()
    with pytest.raises(ValueError, match="task"):
        _card(task="regression")
    with pytest.raises(ValueError, match="2 class names"):
        _card(class_names=("a", "b", "c"))
    with pytest.raises(ValueError, match="unknown field"):
        DatasetCard.from_dict({**card.to_dict(), "colour": "red"})


def test_problem_log_lists_every_problem():
    log = ProblemLog()
    for i in range(25):
        log.add("meta.csv", "bad value", row=i + 2, column="label")
    with pytest.raises(DatasetError) as info:
        log.raise_if_any("cannot read")
    message = str(info.value)
    assert "25 problems" in message and "meta.csv, row 2, column 'label': bad value" in message
    assert "and 5 more" in message
    assert len(info.value.problems) == 25
    assert str(Problem("f.csv", "oops")) == "f.csv: oops"


def test_in_memory_dataset_sample_contract():
    images = np.random.default_rng(0).integers(0, 255, (4, 8, 8, 3), dtype=np.uint8)
    masks = np.zeros((4, 2, 8, 8), dtype=np.uint8)
    masks[:, 0, :4] = 1
    table = SampleTable(ids=list("abcd"), targets=np.array([0, 1, 0, 1]),
                        concepts=np.array([[1, 0], [0, np.nan], [1, 1], [0, 0]], dtype=np.float32),
                        images=images, masks=masks)
    ds = MedicalImageDataset(table, _card(has_masks=True), "train")
    sample = ds[1]
    assert sample["image"].shape == (3, 8, 8) and sample["image"].dtype == torch.float32
    assert float(sample["image"].max()) <= 1.0
    assert sample["target"].dtype == torch.int64 and int(sample["target"]) == 1
    assert torch.isnan(sample["concepts"][1]) and sample["concepts"][0] == 0
    assert sample["masks"].shape == (2, 8, 8) and int(sample["masks"][0].sum()) == 32
    assert sample["id"] == "b" and sample["path"] == ""
    assert ds.class_counts() == {"a": 2, "b": 2}
    sub = ds.subset([3, 0])
    assert sub.ids == ["d", "a"]
    batch = torch.utils.data.default_collate([ds[i] for i in range(4)])
    assert batch["image"].shape == (4, 3, 8, 8) and batch["masks"].shape == (4, 2, 8, 8)


def test_transforms_move_masks_with_the_image():
    images = np.zeros((1, 16, 16), dtype=np.uint8)
    images[0, :, :8] = 255  # left half bright
    masks = (images[:, None] > 0).astype(np.uint8)
    table = SampleTable(ids=["x"], targets=np.array([0]), concepts=np.zeros((1, 1), np.float32),
                        images=images, masks=masks)
    card = _card(concept_names=("left",), channels=1, has_masks=True)
    torch.manual_seed(0)
    flips = train_transform(size=16, channels=1, normalize=None, scale=(1.0, 1.0), hflip=True)
    ds = MedicalImageDataset(table, card, transform=flips)
    for _ in range(6):
        s = ds[0]
        assert torch.equal((s["image"][0] > 0.5), s["masks"][0].bool())
    rgb = MedicalImageDataset(table, card, transform=eval_transform(size=8, channels=3))
    assert rgb[0]["image"].shape == (3, 8, 8) and rgb[0]["masks"].shape == (1, 8, 8)


def test_short_side_center_crop_keeps_the_centre_of_non_square_images():
    """eval_resize="short-side-center-crop" (CRL's official Resize(size) + CenterCrop(size)) on hand-computed pixels."""
    from medimg_core.data.preprocess import DataConfig, Preprocess

    wide = torch.arange(8, dtype=torch.uint8).mul(30).view(1, 1, 8).expand(1, 4, 8).clone()  # column j = 30 j
    crop = eval_transform(size=4, channels=1, normalize=None, eval_resize="short-side-center-crop")
    out = crop(wide)[0] * 255  # short side already 4: no resize, columns 2..5 kept
    assert out.shape == (4, 4) and torch.allclose(out, torch.tensor([60.0, 90, 120, 150]).expand(4, 4))
    tall = wide.transpose(1, 2).contiguous()  # 8 x 4: rows 2..5 kept
    assert torch.allclose(crop(tall)[0] * 255, torch.tensor([60.0, 90, 120, 150]).view(4, 1).expand(4, 4))
    squash = eval_transform(size=4, channels=1, normalize=None)(wide)[0] * 255  # both sides to 4: columns mixed
    assert squash.shape == (4, 4) and not torch.allclose(squash, out)
    # 8 x 24 with columns 6..17 dark (100) and the rest bright (200): short side 8 -> 4 gives 4 x 12, whose centre
    # columns 4..7 read input columns 7..16 (antialiased 2:1), all dark; squashing mixes in the bright ends
    image = torch.full((1, 8, 24), 200, dtype=torch.uint8)
    image[:, :, 6:18] = 100
    cropped = crop(image)[0] * 255
    assert torch.allclose(cropped, torch.full((4, 4), 100.0), atol=1e-3)
    squashed = eval_transform(size=4, channels=1, normalize=None)(image)[0] * 255
    assert squashed[:, 0].min() > 140  # the left quarter of the output is the bright left third of the input
    # a checkpoint's Preprocess carries it (older checkpoints without the key squash)
    config = DataConfig(image_size=8, normalize="none", eval_resize="short-side-center-crop")
    assert Preprocess.from_config(config, channels=1).eval_resize == "short-side-center-crop"
    pre = Preprocess(image_size=4, channels=1, eval_resize="short-side-center-crop")
    assert Preprocess.from_dict(pre.to_dict()) == pre
    assert torch.allclose(pre.eval_transform()(image)[0] * 255, cropped)
    legacy = {k: v for k, v in pre.to_dict().items() if k != "eval_resize"}
    assert Preprocess.from_dict(legacy).eval_resize == "squash"
    with pytest.raises(ValueError, match="eval_resize must be one of"):
        eval_transform(size=4, eval_resize="crop")
    with pytest.raises(ValueError, match="eval_resize: expected one of squash, short-side-center-crop, got 'crop'"):
        DataConfig(eval_resize="crop")


def test_random_resized_then_center_crop_train_transform():
    """train_crop="random-resized-then-center": RandomResizedCrop(round(size * 256 / 224)) ... CenterCrop(size)."""
    tf = train_transform(size=28, channels=3, normalize=None, train_crop="random-resized-then-center", rotation=15,
                         vflip=True)
    kinds = [type(t).__name__ for t in tf.transforms]
    assert kinds[1:6] == ["RandomResizedCrop", "RandomHorizontalFlip", "RandomVerticalFlip", "RandomRotation",
                          "CenterCrop"]
    assert list(tf.transforms[1].size) == [32, 32] and list(tf.transforms[5].size) == [28, 28]
    assert tf(torch.zeros(3, 40, 60, dtype=torch.uint8)).shape == (3, 28, 28)
    assert type(train_transform(size=28).transforms[1]).__name__ == "RandomResizedCrop"
    assert "CenterCrop" not in [type(t).__name__ for t in train_transform(size=28).transforms]


def test_fold_split_names_train_folds_are_grouped(tmp_path):
    """val_from="train-folds" carves val by group: a group is never on both sides of train / val / test."""
    ids = [f"s{i}" for i in range(100)]
    labels = np.array([i % 2 for i in range(100)])
    groups = [f"p{i // 2}" for i in range(100)]
    names = fold_split_names("toy", ids, labels, 5, 1, 0, tmp_path / "f.json", groups, "patient",
                             val_from="train-folds", val_fraction=0.2)
    again = fold_split_names("toy", ids, labels, 5, 1, 0, tmp_path / "f.json", groups, "patient",
                             val_from="train-folds", val_fraction=0.2)
    assert list(names) == list(again) and (tmp_path / "f-fold1-val0.2.json").is_file()
    assert (names == "test").sum() == 20 and (names == "val").sum() + (names == "train").sum() == 80
    assert 8 <= (names == "val").sum() <= 24
    for g in set(groups):
        assert len({names[i] for i in range(100) if groups[i] == g}) == 1


def test_read_image_errors_name_the_file(tmp_path):
    good = write_image(tmp_path / "a.png", size=8, channels=1)
    assert read_image(good, 3).shape == (8, 8, 3)
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    with pytest.raises(DatasetError, match="notes.png: not an image"):
        read_image(bad, 3)
    with pytest.raises(DatasetError, match="truncated"):
        read_image(write_truncated_image(tmp_path / "cut.jpg"), 3)
    with pytest.raises(DatasetError, match="not found"):
        read_image(tmp_path / "missing.png", 3)


def test_path_resolver_cases(tmp_path):
    write_image(tmp_path / "Images" / "NEL" / "Nel026.JPG")
    write_image(tmp_path / "images" / "neutrophil" / "BNE_1.jpg")
    r = PathResolver(tmp_path)
    assert r.resolve("images/nel/nel026.jpg").name == "Nel026.JPG"
    assert r.resolve("PBC_dataset_normal_DIB/neutrophil/BNE_1.jpg").name == "BNE_1.jpg"  # dropped prefix
    assert r.resolve("elsewhere/BNE_1.jpg").name == "BNE_1.jpg"  # unique file name
    assert r.resolve("nothing.png") is None
    assert r.resolve("../outside.png") is None and "leaves" in r.check_inside("../outside.png")
    assert "absolute" in r.check_inside("/etc/passwd")


def test_folds_are_stratified_grouped_and_reused(tmp_path):
    ids = [f"s{i}" for i in range(60)]
    labels = np.array([i % 3 for i in range(60)])
    groups = [f"p{i // 2}" for i in range(60)]
    folds = assign_folds(labels, 5, seed=0, groups=groups)
    for g in set(groups):
        assert len({folds[i] for i in range(60) if groups[i] == g}) == 1
    path = tmp_path / "split.json"
    first = load_or_create_folds(path, ids, labels, 5, 0, groups)
    again = load_or_create_folds(path, ids, labels, 5, seed=123, groups=groups)  # file wins over a new seed
    assert np.array_equal(first, again)
    with pytest.raises(DatasetError, match=r"no longer matches the data: 1 image\(s\) added since it was drawn"):
        load_or_create_folds(path, [*ids, "new"], [*labels, 0], 5, 0)
    with pytest.raises(DatasetError, match="5 folds, asked for 3"):
        load_or_create_folds(path, ids, labels, 3, 0)
    mask = holdout_mask(ids, labels, 0.2, 0, groups, tmp_path / "h.json")
    assert 6 <= mask.sum() <= 18
