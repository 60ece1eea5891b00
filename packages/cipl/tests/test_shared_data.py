"""CIPL's data path on the real files in ../shared/data (skipped where the folder is absent)."""

import numpy as np
import pytest
import torch

from medimg_core.testing import shared_data_dir

pytestmark = pytest.mark.shared_data


def _shared(sub: str):
    root = shared_data_dir()
    if root is None or not (root / sub).exists():
        pytest.skip(f"shared data folder ../shared/data/{sub} not found")
    return root / sub


def test_chestxray14_label_table_and_two_samples_through_cipl():
    from cipl.cli import CONFIGS
    from cipl.evaluate import localisation_metrics, predict
    from cipl.model import LabelSpace
    from cipl.train import CIPLConfig, build_model, load_split
    from medimg_core.cli import resolve_config_path
    from medimg_core.config import load_config

    root = _shared("chestxray14")
    cfg = load_config(CIPLConfig, resolve_config_path("chestxray14", CONFIGS), {
        "data.root": str(root), "data.image_size": "64", "model.backbone": "test_resnet", "model.pretrained": "false",
        "data.options.official_split": "false", "data.options.missing_images": "drop",
        "model.prototypes_per_class": "2", "model.prototype_dim": "16", "model.reduce_dim": "16"})
    found = {split: load_split(cfg, split) for split in ("train", "test")}  # the two sample images
    assert sum(len(ds) for ds in found.values()) == 2
    card = found["train"].card
    labels = LabelSpace.for_task(card.task, card.class_names, cfg.model.reference_class)
    assert labels.class_names[-1] == "No Finding" and labels.num_classes == 15
    model = build_model(cfg, labels, cfg.data.channels).student.eval()
    for ds in found.values():
        out = predict(model, ds, batch_size=2)
        assert out["scores"].shape == (1, 14) and np.isfinite(out["scores"]).all()
        assert out["target"].shape == (1, 14)
        with torch.no_grad():
            assert model.prototype_activations(ds[0]["image"][None]).shape[:2] == (1, 30)
        assert localisation_metrics(model, ds) is None  # no masks in ChestX-ray14
    # 00000001_000.png is Cardiomegaly; 00027426_000.png is No Finding (the reference class)
    by_id = {ds.ids[0]: ds.targets[0] for ds in found.values()}
    assert labels.class_labels(np.stack([by_id["00000001_000.png"], by_id["00027426_000.png"]]))[:, [1, 14]].tolist() \
        == [[1.0, 0.0], [0.0, 1.0]]


@pytest.mark.parametrize("name", ["pneumoniamnist", "breastmnist"])
def test_medmnist_single_label_pairs(name):
    from cipl.data import PairDataset, ViewConfig
    from cipl.model import LabelSpace
    from medimg_core.baseline import DataConfig
    from medimg_core.data import load_dataset

    path = _shared(f"medmnist/{name}.npz")
    ds = load_dataset(name, path, "train")
    labels = LabelSpace.for_task(ds.card.task, ds.card.class_names)
    pairs = PairDataset(ds, labels, DataConfig(image_size=64), ViewConfig(), ds.card.channels)
    torch.manual_seed(0)
    for i in range(0, len(ds), max(1, len(ds) // 20)):
        item = pairs[i]
        assert item["image_a"].shape == (ds.card.channels, 64, 64)
        assert int(item["target_a"]) == int(item["target_b"])
