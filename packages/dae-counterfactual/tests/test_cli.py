"""The `dae-cf` command end to end on a tiny synth-grade set (a DAE with a handful of channels, 16 px)."""

import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import dae_counterfactual
from dae_counterfactual import CounterfactualExplainer
from dae_counterfactual.boundary import LatentBoundary
from dae_counterfactual.cli import main
from dae_counterfactual.train import load_dae, load_latents
from medimg_core.checkpoint import load_weights
from medimg_core.synthetic import generate


def test_help_and_version():
    runner = CliRunner()
    result = runner.invoke(main, ["--help"])
    assert result.exit_code == 0, result.output
    for command in ("train", "encode", "fit-boundary", "counterfactual", "evaluate"):
        assert command in result.output
    result = runner.invoke(main, ["--version"])
    assert result.exit_code == 0 and dae_counterfactual.__version__ in result.output


def _train(data, out, tiny_args, *extra):
    args = ["train", "--config", "synth-grade-cpu", "--root", str(data), "--out", str(out), "--device", "cpu",
            *tiny_args, "--train.epochs", "2", "--train.batch_size", "8", "--diffusion.encode_steps", "4",
            "--diffusion.render_steps", "4", "--recon_images", "2", "--bootstrap", "20", *extra]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_args):
    tmp = tmp_path_factory.mktemp("dae")
    data = generate("synth-grade", n=60, out=tmp / "data", seed=0, size=32)
    _train(data, tmp / "runs", tiny_args)
    return data, next((tmp / "runs").iterdir()), tmp


def test_train_writes_run_folder_and_ema_checkpoints(trained):
    _, run, _ = trained
    for name in ("config.yaml", "metrics.json", "metrics.jsonl", "checkpoints/best/model.safetensors",
                 "checkpoints/last/raw_model.safetensors", "figures/training_curves.png",
                 "figures/reconstructions.png"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["method"] == "dae-counterfactual" and metrics["train"]["epochs_run"] == 2
    assert metrics["train"]["steps"] == 2 * (42 // 8)  # 70% of 60 images in batches of 8, last one dropped
    assert {"mse", "l1", "ssim"} <= set(metrics["reconstruction"])
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert "val/mse" in history[-1]


def test_save_load_round_trip(trained):
    _, run, _ = trained
    loaded = load_dae(run)
    assert loaded.card.name == "synth-grade" and loaded.image_size == 16
    # the inference model holds the EMA weights, which differ from the raw weights of the last step
    raw = load_dae(run).model
    load_weights(raw, run / "checkpoints" / "last", "raw_model.safetensors")
    diffs = [float((a - b).detach().abs().max()) for a, b in zip(loaded.model.parameters(), raw.parameters(), strict=True)]
    assert max(diffs) > 0
    again = load_dae(run)
    x = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(again.model.encode(x), loaded.model.encode(x), rtol=0, atol=0)
    z = loaded.model.encode(x)
    x_T = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(again.model.render(x_T, z, 3), loaded.model.render(x_T, z, 3), rtol=0, atol=0)


@pytest.fixture(scope="module")
def fitted(trained):
    data, run, tmp = trained
    runner = CliRunner()
    result = runner.invoke(main, ["encode", str(run)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["fit-boundary", str(run), "--bootstrap", "20"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "grade Spearman" in result.output
    return data, run, tmp


def test_encode_and_fit_boundary(fitted):
    _, run, _ = fitted
    latents = load_latents(run, "train")
    assert latents["z"].shape == (42, 16) and len(latents["ids"]) == 42
    boundary = LatentBoundary.load(run / "checkpoints" / "best" / "boundary.json")
    metrics = json.loads((run / "metrics.json").read_text())
    assert "train" in metrics and "boundary" in metrics  # the sections are merged, not replaced
    for split in ("train", "val", "test"):
        assert "auroc" in metrics["boundary"][split]["binary"]
        assert "spearman" in metrics["boundary"][split]["grade"]
    assert metrics["boundary"]["calibration"]["slope"] == pytest.approx(boundary.slope_)
    assert (run / "figures" / "calibration.png").is_file()
    train_acc = metrics["boundary"]["train"]["binary"]["accuracy"]
    assert train_acc == pytest.approx(float((boundary.predict(latents["z"]) == (latents["targets"] >= 1)).mean()))


def test_the_best_checkpoint_alone_rebuilds_the_explainer(fitted, tmp_path):
    _, run, _ = fitted
    assert not (run / "boundary.json").exists()  # the boundary lives in the checkpoint it was fitted for
    copy = tmp_path / "model"
    shutil.copytree(run / "checkpoints" / "best", copy)
    from_run, alone = CounterfactualExplainer.from_pretrained(run), CounterfactualExplainer.from_pretrained(copy)
    assert from_run.run_ == run and alone.run_ is None
    assert alone.boundary_.to_dict() == from_run.boundary_.to_dict()
    metrics = json.loads((run / "metrics.json").read_text())
    assert alone.boundary_.slope_ == pytest.approx(metrics["boundary"]["calibration"]["slope"])
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    np.testing.assert_array_equal(alone.predict_proba(x), from_run.predict_proba(x))


def test_counterfactual_command(fitted, tmp_path):
    data, run, _ = fitted
    images = sorted((data / "images").iterdir())[:2]
    result = CliRunner().invoke(main, ["counterfactual", str(run), *map(str, images), "--grades", "0", "2", "4",
                                       "--out", str(tmp_path), "--encode-steps", "3", "--render-steps", "3"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    folder = next(tmp_path.iterdir())
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["targets"] == [0.0, 2.0, 4.0] and len(metrics["series"]) == 2
    boundary = LatentBoundary.load(run / "checkpoints" / "best" / "boundary.json")
    np.testing.assert_allclose(metrics["series"][0]["edited_grades"], [0, 2, 4], atol=1e-6)
    for name in (f"images/{images[0].stem}_grade4.png", f"figures/{images[1].stem}.png", "config.yaml"):
        assert (folder / name).is_file(), name
    assert boundary.slope_ != 0
    # the command is the API: the same series from CounterfactualExplainer
    series = CounterfactualExplainer.from_pretrained(run).counterfactuals(images, [0, 2, 4], encode_steps=3,
                                                                          render_steps=3)
    assert [s.id for s in series] == [p.stem for p in images]
    for s, saved in zip(series, metrics["series"], strict=True):
        np.testing.assert_array_equal(s.reencoded_grades, saved["reencoded_grades"])
    # the notebooks' fixed steps
    result = CliRunner().invoke(main, ["counterfactual", str(run), str(images[0]), "--steps", "100", "300",
                                       "--direction", "up", "--out", str(tmp_path / "s"), "--encode-steps", "2",
                                       "--render-steps", "2"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "step -> re-encoded: 100->" in result.output
    result = CliRunner().invoke(main, ["counterfactual", str(run), str(images[0])])
    assert result.exit_code != 0 and "--grades" in result.output


def test_evaluate_with_an_image_classifier(fitted, tmp_path):
    data, run, tmp = fitted
    from medimg_core.baseline import BaselineConfig, train_baseline
    from medimg_core.config import load_config

    cfg = load_config(BaselineConfig, None, {"data.dataset": "csv", "data.root": str(data), "data.image_size": 16,
                                             "model.backbone": "test_resnet", "train.epochs": 1,
                                             "train.batch_size": 8, "device": "cpu", "out": str(tmp / "base"),
                                             "bootstrap": 10})
    oracle = train_baseline(cfg)
    result = CliRunner().invoke(main, ["evaluate", str(run), "--n", "4", "--grades", "0", "4", "--oracle",
                                       str(oracle), "--encode-steps", "3", "--render-steps", "3", "--out",
                                       str(tmp_path), "--figures", "2"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    folder = next(tmp_path.iterdir())
    m = json.loads((folder / "metrics.json").read_text())
    assert m["n_images"] == 4 and m["n_pairs"] == 8 and len(m["per_target"]) == 2
    assert 0 <= m["latent"]["target_side_agreement"] <= 1
    assert {"flip_rate", "positive_rate_per_target"} <= set(m["image_classifier"])
    assert {"spearman_target_vs_measure", "monotone_fraction", "effect_ratio"} <= set(m["measure"])  # synth-grade
    assert set(m["latent_swap"]["response_by_scale"]) == {"0", "1", "2", "5"}
    assert set(m["latent_swap"]["pixel"]["response_by_scale"]) == {"0", "1", "2", "5"}
    assert m["edit"] == "grade" and m["towards_lowest"]["grade"] == 0.0
    assert (folder / "figures" / "counterfactuals.png").is_file()
    assert "measured structure" in result.output and "removal ratio" in result.output
    # the notebooks' fixed steps, signed, under the same metrics; without a measure the swap probe reads the
    # image classifier's expected grade
    result = CliRunner().invoke(main, ["evaluate", str(run), "--n", "4", "--edit", "step", "--steps", "300", "100",
                                       "--oracle", str(oracle), "--encode-steps", "2", "--render-steps", "2",
                                       "--measure", "none", "--out", str(tmp_path / "step"), "--figures", "0"],
                               catch_exceptions=False)
    assert result.exit_code == 0, result.output
    m = json.loads((next((tmp_path / "step").iterdir()) / "metrics.json").read_text())
    assert m["edit"] == "step" and m["targets"] == [-300.0, -100.0, 100.0, 300.0] and "target_grades" not in m
    assert m["settings"]["edit"] == "step" and "measure" not in m
    assert m["latent_swap"]["measure"] == "image classifier's expected grade"
    edited = m["latent"]["mean_edited_grade_per_target"]
    assert edited == sorted(edited)  # a larger signed step, a higher calibrated grade
    result = CliRunner().invoke(main, ["evaluate", str(run), "--edit", "step", "--grades", "0"])
    assert result.exit_code != 0 and "--grades go with --edit grade" in result.output
    # the same steps along the class-mean difference of the training latents
    result = CliRunner().invoke(main, ["evaluate", str(run), "--n", "2", "--edit", "step", "--steps", "100",
                                       "--along", "mean-difference", "--encode-steps", "2", "--render-steps", "2",
                                       "--measure", "none", "--out", str(tmp_path / "mean"), "--figures", "0"],
                               catch_exceptions=False)
    assert result.exit_code == 0, result.output
    m = json.loads((next((tmp_path / "mean").iterdir()) / "metrics.json").read_text())
    assert m["settings"]["along"] == "mean-difference" and m["series"][0]["along"] == "mean-difference"


def test_resume_restores_ema_and_raw_weights(tmp_path, tiny_args):
    data = generate("synth-grade", n=30, out=tmp_path / "data", seed=1, size=32)
    _train(data, tmp_path / "full", tiny_args, "--train.checkpoint_every", "1", "--recon_images", "0")
    _train(data, tmp_path / "part", tiny_args, "--train.epochs", "1", "--recon_images", "0")
    full, part = next((tmp_path / "full").iterdir()), next((tmp_path / "part").iterdir())
    # the interrupted run was meant to run 2 epochs: continue it
    config = (part / "config.yaml").read_text().replace("epochs: 1\n", "epochs: 2\n", 1)
    (part / "config.yaml").write_text(config)
    result = CliRunner().invoke(main, ["train", "--resume", str(part)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    a, b = load_dae(full).model, load_dae(part).model
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, msg=name)
    shutil.rmtree(tmp_path / "full")


def test_bad_config_is_refused(tmp_path, tiny_args):
    data = generate("synth-grade", n=20, out=tmp_path / "data", seed=0, size=32)
    result = CliRunner().invoke(main, ["train", "--config", "synth-grade-cpu", "--root", str(data), "--out",
                                       str(tmp_path / "runs"), *tiny_args, "--data.normalize", "imagenet"])
    assert result.exit_code != 0 and "data.normalize" in result.output
    result = CliRunner().invoke(main, ["train", "--config", "synth-grade-cpu", "--out", str(tmp_path / "runs")])
    assert result.exit_code != 0 and "--root" in result.output


def test_every_shipped_config_loads_and_short_presets_predict_v():
    from dae_counterfactual.cli import CONFIGS
    from dae_counterfactual.train import DAEConfig
    from medimg_core.config import load_config

    predictions = {p.stem: load_config(DAEConfig, p).diffusion.prediction for p in sorted(CONFIGS.glob("*.yaml"))}
    assert predictions == {"dae-128": "epsilon", "dae-32": "epsilon", "dae-64": "epsilon",
                           "retinamnist-64-gpu": "v", "retinamnist-cpu": "v", "synth-grade-cpu": "v"}
