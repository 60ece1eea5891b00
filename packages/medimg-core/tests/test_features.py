"""Feature extraction and the safetensors + JSON feature cache, on a tiny in-memory dataset."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from medimg_core.data.base import MedicalImageDataset, SampleTable
from medimg_core.data.card import DatasetCard
from medimg_core.features import FeatureCache, default_features_dir, extract_features
from medimg_core.models import Backbone, create_backbone

N, SIZE = 6, 32


def make_dataset(n: int = N, split: str = "train", seed: int = 0) -> MedicalImageDataset:
    rng = np.random.default_rng(seed)
    card = DatasetCard(name="toy", title="Toy", task="binary", class_names=("neg", "pos"),
                       concept_names=("round", "dark"), splits=("train", "test"))
    concepts = rng.integers(0, 2, (n, 2)).astype(np.float32)
    concepts[0, 1] = np.nan
    table = SampleTable(ids=[f"s{i}" for i in range(n)], targets=np.arange(n) % 2, concepts=concepts,
                        images=rng.integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8))
    return MedicalImageDataset(table, card, split)


class CountingBackbone:
    """Counts the batches a backbone runs (a forward hook on its first convolution)."""

    def __init__(self, backbone: Backbone):
        self.calls = 0
        conv = next(m for m in backbone.modules() if isinstance(m, torch.nn.Conv2d))
        conv.register_forward_hook(lambda *_: self._count())

    def _count(self) -> None:
        self.calls += 1


@pytest.fixture
def backbone() -> Backbone:
    torch.manual_seed(0)
    return create_backbone("test_resnet")


def test_extract_features_shapes(backbone):
    ds = make_dataset()
    out = extract_features(backbone, ds, batch_size=4, progress=False)
    assert out["features"].shape == (N, backbone.num_features) and out["features"].dtype == torch.float32
    assert out["targets"].tolist() == [i % 2 for i in range(N)]
    assert out["concepts"].shape == (N, 2) and torch.isnan(out["concepts"][0, 1])
    assert out["ids"] == ds.ids and "spatial" not in out
    both = extract_features(backbone, ds, batch_size=4, spatial=True, progress=False)
    assert both["spatial"].dtype == torch.float16
    assert both["spatial"].shape[:2] == (N, backbone.feature_channels) and both["spatial"].ndim == 4
    torch.testing.assert_close(both["features"], out["features"])
    assert backbone.training  # train/eval mode restored


def test_extracted_features_can_train_a_probe(backbone):
    out = extract_features(backbone, make_dataset(), progress=False)
    head = torch.nn.Linear(backbone.num_features, 2)
    torch.nn.functional.cross_entropy(head(out["features"]), out["targets"]).backward()
    assert head.weight.grad is not None


def test_vit_spatial_features():
    vit = create_backbone("test_vit")
    out = extract_features(vit, make_dataset(), spatial=True, progress=False)
    assert out["spatial"].shape == (N, vit.feature_channels, SIZE // 16, SIZE // 16)


def test_cache_is_reused(backbone):
    cache = FeatureCache()
    assert cache.root == default_features_dir() and "medimg-home" in str(cache.root)
    counter = CountingBackbone(backbone)
    ds = make_dataset()
    first = cache.get_or_extract(backbone, ds, split="train", batch_size=4, spatial=True, progress=False)
    assert not first["cached"] and counter.calls == 2
    second = cache.get_or_extract(backbone, ds, split="train", batch_size=4, spatial=True, progress=False)
    assert second["cached"] and counter.calls == 2  # the backbone did not run again
    assert second["key"] == first["key"] == cache.key(ds, "train", backbone, spatial=True)
    for name in ("features", "spatial", "targets", "concepts"):
        torch.testing.assert_close(second[name], first[name], equal_nan=True)
    assert second["ids"] == ds.ids
    tensors, meta = cache.paths("toy", first["key"])
    sidecar = json.loads(meta.read_text())
    assert sidecar["ids"] == ds.ids and sidecar["components"]["backbone"] == "test_resnet"
    assert {"created", "versions", "components"} <= set(sidecar)
    assert set(load_file(str(tensors))) == {"features", "spatial", "targets", "concepts"}
    assert not list(tensors.parent.glob(".*tmp*"))  # no temporary files left behind


def test_key_changes_with_weights_split_spatial_and_transform(backbone):
    cache = FeatureCache()
    ds = make_dataset()
    key = cache.key(ds, "train", backbone)
    assert cache.key(ds, "train", backbone) == key
    assert cache.key(ds, "test", backbone) != key
    assert cache.key(ds, "train", backbone, spatial=True) != key
    assert cache.key(ds, "train", backbone, transform_repr="Resize(64)") != key
    assert cache.key(make_dataset(n=N - 1), "train", backbone) != key
    counter = CountingBackbone(backbone)
    cache.get_or_extract(backbone, ds, progress=False)
    with torch.no_grad():
        backbone.model.conv1[0].weight.mul_(1.01)
    assert cache.key(ds, "train", backbone) != key
    again = cache.get_or_extract(backbone, ds, progress=False)
    assert not again["cached"] and counter.calls == 2


def test_reordered_dataset_reuses_the_entry_in_its_own_order(backbone):
    cache = FeatureCache()
    ds = make_dataset()
    first = cache.get_or_extract(backbone, ds, progress=False)
    order = [3, 1, 5, 0, 2, 4]
    shuffled = ds.subset(order)
    counter = CountingBackbone(backbone)
    second = cache.get_or_extract(backbone, shuffled, progress=False)
    assert second["cached"] and counter.calls == 0
    assert second["ids"] == shuffled.ids
    torch.testing.assert_close(second["features"], first["features"][order])
    torch.testing.assert_close(second["targets"], first["targets"][order])


def test_corrupt_entry_is_extracted_again(backbone, caplog):
    cache = FeatureCache()
    ds = make_dataset()
    first = cache.get_or_extract(backbone, ds, progress=False)
    tensors, _ = cache.paths("toy", first["key"])
    tensors.write_bytes(tensors.read_bytes()[: tensors.stat().st_size // 2])
    counter = CountingBackbone(backbone)
    with caplog.at_level(logging.WARNING):
        second = cache.get_or_extract(backbone, ds, progress=False)
    assert not second["cached"] and counter.calls == 1 and "unreadable" in caplog.text
    torch.testing.assert_close(second["features"], first["features"])
    assert cache.get_or_extract(backbone, ds, progress=False)["cached"]
