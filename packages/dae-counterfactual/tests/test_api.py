"""The estimator on folders: runs written before the boundary moved into the checkpoint (format 1: in_channels,
no stored preprocessing, RUN/boundary.json) still load; a checkpoint folder alone rebuilds the explainer."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from dae_counterfactual import CounterfactualExplainer, DAEConfig, load_dae
from dae_counterfactual.boundary import LatentBoundary
from dae_counterfactual.model import DiffusionAutoencoder
from dae_counterfactual.run import model_card, save_dae
from medimg_core.checkpoint import save_checkpoint
from medimg_core.config import config_to_dict, save_config
from medimg_core.data import DatasetCard
from medimg_core.estimator import NotFittedError
from medimg_core.pretrained import load_pretrained

CARD = DatasetCard(name="toy", title="toy grades", task="ordinal", class_names=("0", "1", "2", "3"), channels=3)


@pytest.fixture
def parts(tiny, randomise):
    cfg = DAEConfig(model=tiny)
    cfg.data.image_size = 16
    cfg.diffusion.encode_steps, cfg.diffusion.render_steps = 3, 3  # explanations in seconds
    model = randomise(DiffusionAutoencoder(tiny, 3, 16, cfg.diffusion)).eval()
    g = np.random.default_rng(0)
    boundary = LatentBoundary.from_hyperplane(g.normal(size=tiny.z_dim), 0.1, slope=1.5, offset=1.5,
                                              mean_difference=g.normal(size=tiny.z_dim))
    return cfg, model, boundary


def old_layout_run(folder, cfg, model, boundary):
    """A run folder as dae-counterfactual wrote it before this change (checkpoint format 1)."""
    save_config(cfg, folder / "config.yaml")
    (folder / "metrics.json").write_text(json.dumps({"method": "dae-counterfactual"}))
    old_config = {"kind": "dae-counterfactual", "config": config_to_dict(cfg), "card": CARD.to_dict(),
                  "in_channels": 3, "image_size": 16}
    for name in ("best", "last"):
        save_checkpoint(folder / "checkpoints" / name, model, old_config, card=model_card(cfg, CARD, 3))
    boundary.save(folder / "boundary.json")
    return folder


def test_a_run_of_the_old_layout_loads(tmp_path, parts):
    cfg, model, boundary = parts
    run = old_layout_run(tmp_path / "old-run", cfg, model, boundary)
    explainer = CounterfactualExplainer.from_pretrained(run)
    assert explainer.run_ == run and explainer.boundary_ is not None
    assert explainer.preprocess_.channels == 3 and explainer.preprocess_.image_size == 16
    assert explainer.preprocess_.mean is None  # [0, 1] images, no normalisation
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    d = boundary.distance(model.encode(x).numpy())
    np.testing.assert_allclose(explainer.predict_proba(x)[:, 1], 1 / (1 + np.exp(-d)), rtol=1e-6)
    assert type(load_pretrained(run)) is CounterfactualExplainer
    assert load_dae(run).in_channels == 3  # the module-level loader reads in_channels too
    # an image file goes through the preprocessing rebuilt from the saved config
    path = tmp_path / "image.png"
    Image.fromarray((np.random.default_rng(0).random((24, 24, 3)) * 255).astype(np.uint8)).save(path)
    series = explainer.explain(path)
    assert series.id == "image" and series.target in (0, 1) and series.to_text()
    # saving converts it: the new folder holds the boundary and loads on its own
    saved = explainer.save_pretrained(tmp_path / "converted")
    assert (saved / "boundary.json").is_file()
    again = CounterfactualExplainer.from_pretrained(saved)
    assert again.run_ is None
    np.testing.assert_array_equal(again.predict_proba(x), explainer.predict_proba(x))


def test_a_checkpoint_folder_alone_rebuilds_the_explainer(tmp_path, parts):
    cfg, model, boundary = parts
    cfg.counterfactual.edit = "grade"
    folder = save_dae(model, cfg, CARD, tmp_path / "ckpt", boundary=boundary)
    config = json.loads((folder / "config.json").read_text())
    assert config["in_chans"] == 3 and "in_channels" not in config
    assert {"kind", "format", "versions", "config", "card", "preprocess"} <= set(config)
    moved = tmp_path / "elsewhere" / "model"
    shutil.copytree(folder, moved)
    explainer = CounterfactualExplainer.from_pretrained(moved)
    assert explainer.classes_ == ["grade < 1", "grade >= 1"]
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    np.testing.assert_allclose(explainer.predict_proba(x).sum(axis=1), 1.0)
    series = explainer.explain(x[0], target="grade >= 1")
    assert series.target == 1 and series.targets.tolist() == [1, 2, 3]
    assert json.loads(json.dumps(series.to_dict()))["target"] == 1
    png = series.figure(tmp_path / "fig" / "series.png", top_k=2)
    assert png.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="out of range"):
        explainer.explain(x[0], target=2)


def test_without_a_boundary_the_model_loads_but_cannot_predict(tmp_path, parts):
    cfg, model, _ = parts
    folder = save_dae(model, cfg, CARD, tmp_path / "ckpt")
    explainer = CounterfactualExplainer.from_pretrained(folder)
    assert explainer.boundary_ is None
    with pytest.raises(NotFittedError, match="dae-cf fit-boundary"):
        explainer.predict_proba(torch.rand(1, 3, 16, 16))
    with pytest.raises(NotFittedError, match="not fitted yet"):
        CounterfactualExplainer().explain(torch.rand(3, 16, 16))


def test_explain_with_the_notebooks_fixed_steps(tmp_path, parts):
    cfg, model, boundary = parts
    cfg.counterfactual.edit, cfg.counterfactual.steps, cfg.counterfactual.along = "step", [300.0, 100.0], "normal"
    explainer = CounterfactualExplainer.from_pretrained(save_dae(model, cfg, CARD, tmp_path / "ckpt",
                                                                 boundary=boundary))
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    up = explainer.explain(x[0], target=1)
    down = explainer.explain(x[0], target=0)
    assert up.mode == "step" and up.targets.tolist() == [100.0, 300.0]
    # towards the pathology the edited latents' distance rises with the step, towards health it falls
    assert up.edited_distances[1] > up.edited_distances[0] > up.distance
    assert down.edited_distances[1] < down.edited_distances[0] < down.distance
    # the notebooks' unit: a step s moves the signed distance by s / sqrt(D)
    assert up.edited_distances[0] - up.distance == pytest.approx(100 / np.sqrt(boundary.n_features_in_), rel=1e-4)


def test_a_bad_edit_config_is_refused():
    from dae_counterfactual.config import check_config
    from medimg_core.config import ConfigError

    cfg = DAEConfig()
    cfg.counterfactual.steps = [100.0, -5.0]
    with pytest.raises(ConfigError, match="counterfactual.steps"):
        check_config(cfg)
    cfg = DAEConfig()
    cfg.counterfactual.edit = "nudge"
    with pytest.raises(ConfigError, match="counterfactual.edit"):
        check_config(cfg)
    cfg = DAEConfig()
    cfg.counterfactual.edit, cfg.counterfactual.along = "grade", "mean-difference"
    with pytest.raises(ConfigError, match="needs counterfactual.edit: step"):
        check_config(cfg)
