"""Visual elements (patches, SLIC segments) and the Prototype / Cluster / End2End libraries."""

import numpy as np
import pytest
import torch

from iis.concepts import (
    ConceptLibrary,
    Element,
    ElementConfig,
    LibraryConfig,
    build_visual_library,
    cluster_library,
    end2end_library,
    extract_elements,
    patch_boxes,
    prototype_library,
    render_element,
    sample_source_images,
    segment_masks,
)
from medimg_core.synthetic import make


def _image(size: int = 48, seed: int = 0) -> np.ndarray:
    """A blocky test picture: four coloured quadrants with noise (SLIC finds structure in it)."""
    rng = np.random.default_rng(seed)
    img = np.zeros((size, size, 3), dtype=np.uint8)
    h = size // 2
    img[:h, :h] = (200, 40, 40)
    img[:h, h:] = (40, 200, 40)
    img[h:, :h] = (40, 40, 200)
    img[h:, h:] = (220, 220, 60)
    return np.clip(img + rng.integers(-10, 10, img.shape), 0, 255).astype(np.uint8)


def test_patch_boxes_tile_the_image():
    boxes = patch_boxes(50, 64, 4)
    assert len(boxes) == 16 and boxes[0] == (0, 0, 12, 16) and boxes[-1][2:] == (50, 64)
    area = sum((b - t) * (r - left) for t, left, b, r in boxes)
    assert area == 50 * 64


def test_segments_follow_the_ace_rules():
    cfg = ElementConfig()
    image = _image()
    kept, maps = segment_masks(image, cfg)
    assert 0 < len(kept) <= 15 and sorted(maps) == [10, 20, 30]
    per_setting = {n: [m for s, _, m in kept if s == n] for n in cfg.slic_segments}
    assert all(len(v) <= 5 for v in per_setting.values())
    for i, (n, label, mask) in enumerate(kept):
        assert mask.mean() > cfg.min_area
        assert np.array_equal(mask, maps[n] == label)
        for n2, _, other in kept[:i]:
            if n2 != n:  # only masks of earlier segment counts are compared
                assert np.logical_and(mask, other).sum() / np.logical_or(mask, other).sum() <= cfg.max_overlap


def test_render_segment_and_patch():
    image = _image()
    mask = np.zeros((48, 48), dtype=bool)
    mask[4:20, 6:30] = True
    mask[4:8, 6:10] = False
    seg = Element("x/slic10-0", 0, "x", "segment", (4, 6, 20, 30), 10, 0, float(mask.mean()))
    out = render_element(image, seg, 117, mask)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert np.all(out[:3, :3] == 117)  # the unmasked corner of the box is the grey fill
    with pytest.raises(ValueError, match="needs its mask"):
        render_element(image, seg)
    patch = Element("x/patch4-0", 0, "x", "patch", (0, 0, 24, 24), 4, 0, 0.25)
    out = render_element(image, patch, size=(32, 32))
    assert out.shape == (32, 32, 3) and abs(int(out[..., 0].mean()) - 200) < 15  # the red quadrant


def test_source_images_are_a_seeded_per_class_sample():
    targets = np.array([0] * 20 + [1] * 5 + [2] * 30)
    picked = sample_source_images(targets, 4, seed=1)
    assert np.bincount(targets[picked]).tolist() == [4, 4, 4]
    assert np.array_equal(picked, sample_source_images(targets, 4, seed=1))
    assert not np.array_equal(picked, sample_source_images(targets, 4, seed=2))
    assert np.bincount(targets[sample_source_images(targets, 10, 0)]).tolist() == [10, 5, 10]
    multi = np.array([[1, 0], [0, 1], [0, 0], [1, 1], [0, 0]])
    assert len(sample_source_images(multi, 1, 0)) == 3  # label 0, label 1, no label


def test_extract_elements_and_embed(tmp_path):
    from medimg_core.data.transforms import TransformConfig, eval_transform
    from medimg_core.features import FeatureCache
    from medimg_core.models import create_backbone

    data = make("synth-derm", n=24, seed=0, size=32)
    train = data.dataset("train")
    cfg = ElementConfig(images_per_class=2, slic_segments=(10, 20))
    tf = eval_transform(TransformConfig(size=32))
    elements = extract_elements(train, cfg, seed=0, transform=tf, progress=False)
    kinds = [e.kind for e in elements.elements]
    assert kinds.count("patch") == 4 * 16 and 0 < kinds.count("segment") <= 4 * 10
    assert len({e.source for e in elements.elements}) == 4
    sample = elements[0]
    assert sample["image"].shape == (3, 32, 32) and sample["id"].endswith("/patch4-0")
    assert elements.targets[0] == train.targets[elements.elements[0].source]
    seg = kinds.index("segment")
    again = type(elements)(train, elements.elements, cfg, tf)  # masks recomputed from the images
    assert np.array_equal(again.picture(seg), elements.picture(seg))
    backbone = create_backbone("test_resnet")
    cache = FeatureCache(tmp_path / "cache")
    feats = cache.get_or_extract(backbone, elements, split=elements.split, progress=False)
    assert feats["features"].shape == (len(elements), backbone.num_features)
    assert cache.get_or_extract(backbone, elements, split=elements.split, progress=False)["cached"]


def test_prototype_library_is_a_seeded_sample_of_unit_elements(tmp_path):
    feats = torch.randn(50, 8)
    ids = [f"e{i}" for i in range(50)]
    lib = prototype_library(feats, ids, num_concepts=10, seed=3)
    assert lib.vectors.shape == (10, 8) and torch.allclose(lib.vectors.norm(dim=1), torch.ones(10))
    picked = [m[0] for m in lib.members]
    assert torch.allclose(lib.vectors, torch.nn.functional.normalize(feats[picked], dim=1))
    assert lib.names == [ids[i] for i in picked]
    assert prototype_library(feats, ids, 10, seed=3).names == lib.names
    with pytest.raises(ValueError, match="50 visual elements for 60 concepts"):
        prototype_library(feats, ids, 60)
    loaded = ConceptLibrary.load(lib.save(tmp_path / "lib"))
    assert torch.equal(loaded.vectors, lib.vectors) and loaded.members == lib.members and loaded.kind == "prototype"


def test_cluster_library():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 6)) * 5
    feats = torch.tensor(np.concatenate([c + rng.normal(size=(20, 6)) * 0.1 for c in centres]), dtype=torch.float32)
    lib = cluster_library(feats, num_concepts=3, seed=0)
    assert torch.allclose(lib.vectors.norm(dim=1), torch.ones(3))
    groups = sorted(sorted({i // 20 for i in m}) for m in lib.members)
    assert groups == [[0], [1], [2]]  # each concept's pictures come from one true cluster
    again = cluster_library(feats, num_concepts=3, seed=0)
    assert torch.allclose(again.vectors, lib.vectors)


def test_end2end_library_and_dispatch():
    feats = torch.randn(40, 5)
    lib = end2end_library(feats, num_concepts=6, seed=0, max_elements=30)
    assert lib.vectors.shape == (30, 5) and len(lib.extra["element_rows"]) == 30
    head = lib.make_head(num_outputs=2, ratio=0.5)
    assert head(torch.randn(4, 5)).shape == (4, 2)
    cfg = LibraryConfig(kind="cluster", num_concepts=4)
    assert build_visual_library(cfg, feats, [str(i) for i in range(40)]).kind == "cluster"
    with pytest.raises(ValueError, match="not visual"):
        build_visual_library(LibraryConfig(kind="text"), feats, [])


def test_element_config_validation():
    with pytest.raises(ValueError, match="neither patches"):
        ElementConfig(patch_grid=0, slic_segments=())
    with pytest.raises(ValueError, match="grey level"):
        ElementConfig(fill_value=300)
    assert ElementConfig().digest() != ElementConfig(fill_value=0).digest()


@pytest.mark.shared_data
def test_wbcatt_elements_and_annotation_scores():
    """Real WBCAtt images: elements of one image per class, and the shipped text list scored by annotations."""
    from iis.text import AnnotationBackend, find_concept_list, load_concept_list
    from medimg_core.data import load_dataset
    from medimg_core.testing import shared_data_dir

    shared = shared_data_dir()
    if shared is None or not (shared / "wbcatt").is_dir():
        pytest.skip("needs the real data in ../shared/data/wbcatt (see ../shared/data/README.md)")
    val = load_dataset("wbcatt", shared / "wbcatt", "val")
    elements = extract_elements(val, ElementConfig(images_per_class=1), seed=0, progress=False)
    assert len({e.source for e in elements.elements}) == 5
    assert sum(e.kind == "patch" for e in elements.elements) == 5 * 16
    assert elements.picture(len(elements) - 1).shape == (128, 128, 3)
    backend = AnnotationBackend()
    concepts = backend.prepare(load_concept_list(find_concept_list("wbcatt")), val)
    scores = backend.scores(val, concepts)
    assert scores.shape == (len(val), len(concepts)) and set(np.unique(scores)) <= {0.0, 1.0}
    small, large = concepts.phrases.index("small cell"), concepts.phrases.index("large cell")
    assert np.array_equal(scores[:, small], 1 - scores[:, large])
