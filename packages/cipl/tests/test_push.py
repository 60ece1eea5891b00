"""Push: prototypes land on images of their own class, never two on one image, and equal real feature cells."""

import json

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from cipl.push import _greedy_assignment, find_push_dir, load_push, push_prototypes
from medimg_core.data import DatasetCard, MedicalImageDataset
from medimg_core.data.base import SampleTable

CARD = DatasetCard(name="toy", title="toy", task="multilabel", class_names=("a", "b", "c"), channels=1)


def toy_dataset(n=30, seed=0, transform=None, targets=None) -> MedicalImageDataset:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 8, 8), dtype=np.uint8)
    if targets is None:
        targets = (rng.random((n, 3)) < 0.4).astype(np.float32)
    table = SampleTable(ids=[f"img{i:03d}" for i in range(n)], targets=np.asarray(targets, dtype=np.float32),
                        concepts=np.zeros((n, 0), np.float32), images=images)
    return MedicalImageDataset(table, CARD, "train", transform)


def test_push_respects_classes_one_prototype_per_image_and_copies_real_cells(tmp_path, tiny_cipl):
    model = tiny_cipl(m=2).eval()
    ds = toy_dataset()
    loader = DataLoader(ds, batch_size=7, shuffle=False)
    result = push_prototypes(model, loader, out_dir=tmp_path / "push")
    assert len(result.records) == model.num_prototypes == 8
    by_id = {sid: i for i, sid in enumerate(ds.ids)}
    class_labels = model.labels.class_labels(ds.targets).numpy()
    sources = [r.source_id for r in result.records]
    assert len(set(sources)) == len(sources), "an image hosts two prototypes"
    with torch.no_grad():
        for r in result.records:
            i = by_id[r.source_id]
            assert class_labels[i, r.class_index] == 1, "prototype pushed onto an image of another class"
            assert r.class_index == int(model.prototype_class[r.index])
            z = model.features(ds[i]["image"][None])[0]  # (D, h, w)
            h, w = r.cell
            assert torch.allclose(model.prototypes[r.index], z[:, h, w], atol=1e-6)
            # and it is the nearest cell of that image to the prototype (distance 0)
            d = ((z - model.prototypes[r.index].view(-1, 1, 1)) ** 2).sum(0)
            assert float(d.min()) == pytest.approx(0.0, abs=1e-6)
    # the No Finding prototypes sit on images without any finding
    nf = [r for r in result.records if r.class_name == "No Finding"]
    assert nf and all(ds.targets[by_id[r.source_id]].sum() == 0 for r in nf)
    # artefacts: four PNGs per prototype, records and vectors
    for j in range(8):
        for kind in ("original", "overlay", "contour", "patch"):
            assert (tmp_path / "push" / f"{j:04d}_{kind}.png").is_file()
    saved = load_push(tmp_path / "push")
    assert torch.allclose(saved["vectors"], model.prototypes.detach())
    assert saved["activation_maps"].shape == (8, 4, 4)
    assert json.loads((tmp_path / "push" / "prototypes.json").read_text())["grid"] == [4, 4]


def test_push_is_idempotent_and_order_free(tmp_path, tiny_cipl):
    model = tiny_cipl(m=2).eval()
    ds = toy_dataset()
    first = push_prototypes(model, DataLoader(ds, batch_size=5))
    protos = model.prototypes.detach().clone()
    torch.manual_seed(3)
    again = push_prototypes(model, DataLoader(ds, batch_size=4, shuffle=True))  # matched by id, any order
    assert again.stats["mean_distance_moved"] == pytest.approx(0.0, abs=1e-5)  # rounding of the expansion
    assert [r.source_id for r in again.records] == [r.source_id for r in first.records]
    assert torch.allclose(model.prototypes, protos)


def test_find_push_dir_matches_the_model(tmp_path, tiny_cipl):
    model = tiny_cipl(m=2).eval()
    push_prototypes(model, DataLoader(toy_dataset(), batch_size=8), out_dir=tmp_path / "prototypes" / "epoch-001")
    assert find_push_dir(tmp_path, model) == tmp_path / "prototypes" / "epoch-001"
    with torch.no_grad():
        model.prototypes.add_(0.1)
    assert find_push_dir(tmp_path, model) is None


def test_greedy_assignment_is_global():
    # prototype 0: image 10 at 1.0, image 11 at 5.0; prototype 1: image 10 at 0.5, image 12 at 0.6.
    # Taking prototypes in order would give 0 -> 10, 1 -> 12; the global greedy gives 1 -> 10, 0 -> 11.
    dist = torch.tensor([[1.0, 5.0], [0.5, 0.6]])
    img = torch.tensor([[10, 11], [10, 12]])
    assert _greedy_assignment(dist, img, 2) == [1, 0]
    dist = torch.tensor([[1.0, float("inf")], [0.5, float("inf")]])
    assert _greedy_assignment(dist, torch.tensor([[10, 0], [10, 0]]), 2) == [None, 0]


def test_push_refuses_too_few_images_of_a_class(tiny_cipl):
    targets = np.zeros((12, 3), np.float32)
    targets[:2, 0] = 1  # only two images of class "a"
    targets[2:8, 1] = 1
    targets[8:, 2] = 1
    model = tiny_cipl(m=3)
    with pytest.raises(ValueError, match="no free image of their class.*'a'"):
        push_prototypes(model, DataLoader(toy_dataset(12, targets=targets), batch_size=6))


def test_push_refuses_a_random_loader(tiny_cipl):
    from torchvision.transforms import v2

    jitter = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.GaussianNoise(sigma=0.5, clip=False)])
    model = tiny_cipl(m=2)
    with pytest.raises(ValueError, match="deterministic"):
        push_prototypes(model, DataLoader(toy_dataset(transform=jitter), batch_size=8))
