"""The `iis` command end to end on a tiny synthetic dataset (timm's test_resnet, 32 px, a short sweep)."""

import json

import pytest
import torch
from click.testing import CliRunner

import iis
from iis.cli import main
from medimg_core.synthetic import generate

SMALL = ["--device", "cpu", "--no-progress", "--elements.images_per_class", "2", "--elements.slic_segments", "[10]",
         "--num-concepts", "12", "--sweep.ratios", "[0.0, 0.5, 0.9]", "--sweep.lrs", "[0.01, 0.1]",
         "--sweep.epochs", "3", "--sweep.batch_size", "32", "--bootstrap", "20", "--data.image_size", "32"]


def test_help_and_version():
    runner = CliRunner()
    result = runner.invoke(main, ["--help"])
    assert result.exit_code == 0, result.output
    for command in ("score", "extract-concepts", "explain"):
        assert command in result.output
    assert iis.__version__ in runner.invoke(main, ["--version"]).output
    assert "NAME[:weights]" in runner.invoke(main, ["score", "--help"]).output


def test_depends_on_core():
    import medimg_core

    assert medimg_core.__version__


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A feature cache for the module's shared fixtures (set up before the per-test MEDIMG_HOME)."""
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("medimg-home")
        mp.setenv("MEDIMG_HOME", str(path))
        yield path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return generate("synth-derm", n=60, out=tmp_path_factory.mktemp("iis") / "data", seed=0, size=32)


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    """test_resnet weights from another seed, as a .safetensors file (a second representation)."""
    from safetensors.torch import save_file

    from medimg_core.models import create_backbone

    torch.manual_seed(7)
    path = tmp_path_factory.mktemp("weights") / "other.safetensors"
    save_file(create_backbone("test_resnet").model.state_dict(), str(path))
    return path


@pytest.fixture(scope="module")
def scored(home, data, weights_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    result = CliRunner().invoke(main, ["score", "--config", "synth-derm-cpu", "--root", str(data), "--out", str(out),
                                       "--backbone", "test_resnet:random", "--backbone", f"test_resnet:{weights_file}",
                                       *SMALL], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return next(out.iterdir())


def test_score_writes_table_figure_and_per_backbone_results(scored):
    for name in ("config.yaml", "metrics.json", "table.md", "table.csv", "figures/arr.png", "figures/concepts-0.png",
                 "elements.json", "card.json", "backbones/0-test_resnet-random/heads/library.safetensors",
                 "backbones/1-test_resnet-other.safetensors/heads/model.safetensors",
                 "backbones/1-test_resnet-other.safetensors/heads/backbone.safetensors", "checkpoints/best/config.json"):
        assert (scored / name).is_file(), name
    metrics = json.loads((scored / "metrics.json").read_text())
    assert [b["label"] for b in metrics["backbones"]] == ["test_resnet:random", "test_resnet:other.safetensors"]
    first = metrics["backbones"][0]
    assert len(first["result"]["per_ratio"]) == 3 and first["result"]["per_ratio"][2]["kept_concepts"] == 1
    assert first["library"]["patches"] == 4 * 16 and first["timings"]["sweep_s"] > 0
    assert metrics["comparison"][1]["difference_ci"] is not None and metrics["comparison"][0]["difference"] is None
    assert not first["cached_features"]["train"]
    table = (scored / "table.md").read_text()
    assert "test_resnet:random" in table and "ARR@0.5" in table
    # the two backbones share the elements but not the features
    assert metrics["backbones"][0]["backbone"]["weights_fingerprint"] != metrics["backbones"][1]["backbone"][
        "weights_fingerprint"]


def test_explain_one_image(scored, data, tmp_path):
    image = next((data / "images").iterdir())
    out = tmp_path / "explain.png"
    result = CliRunner().invoke(main, ["explain", str(scored), str(image), "--out", str(out), "--top-k", "4"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "prediction:" in result.output and "sparsity 0.5" in result.output and "(bias)" in result.output
    assert out.stat().st_size > 1000
    result = CliRunner().invoke(main, ["explain", str(scored), str(image), "--out", str(out), "--backbone", "1",
                                       "--ratio", "0.9"])
    assert result.exit_code == 0 and "1 of 12" in result.output
    result = CliRunner().invoke(main, ["explain", str(scored), str(image), "--ratio", "0.3"])
    assert result.exit_code != 0 and "was not swept" in result.output


def test_resume_keeps_finished_backbones(scored):
    result = CliRunner().invoke(main, ["score", "--resume", str(scored), "--no-progress"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    log = (scored / "log.txt").read_text()
    assert log.count("already scored") == 2


def test_text_library_with_annotations_and_extract_concepts(data, tmp_path):
    runner = CliRunner()
    args = ["--config", "synth-derm-cpu", "--root", str(data), "--out", str(tmp_path), "--backbone",
            "test_resnet:random", "--library", "text", "--text-backend", "annotations",
            "--text.interpretability_cutoff", "-1", *SMALL]
    result = runner.invoke(main, ["score", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    run = next(p for p in tmp_path.iterdir() if "iis-text" in p.name)
    text = json.loads((run / "text_concepts.json").read_text())
    assert text["backend"] == "annotations" and len(text["phrases"]) == 8
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["library"] == "text" and metrics["backbones"][0]["result"]["num_concepts"] >= 1
    image = next((data / "images").iterdir())
    result = runner.invoke(main, ["explain", str(run), str(image), "--out", str(tmp_path / "e.png")])
    assert result.exit_code == 0, result.output
    assert "lesion" in result.output  # the surviving concepts are phrases
    result = runner.invoke(main, ["extract-concepts", "--config", "synth-derm-cpu", "--root", str(data), "--out",
                                  str(tmp_path / "lib"), "--backbone", "test_resnet:random", "--library", "cluster",
                                  *SMALL], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    lib = next((tmp_path / "lib").iterdir())
    assert (lib / "library" / "library.json").is_file() and (lib / "figures" / "concepts.png").is_file()


def test_text_libraries_compared_on_common_phrases(data, weights_file, tmp_path):
    """Two backbones' text libraries are cut to the phrases both kept; the floor and saturation are reported."""
    args = ["score", "--config", "synth-derm-cpu", "--root", str(data), "--out", str(tmp_path), "--backbone",
            "test_resnet:random", "--backbone", f"test_resnet:{weights_file}", "--library", "text",
            "--text-backend", "annotations", "--text.interpretability_cutoff", "0.2", *SMALL]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    run = next(tmp_path.iterdir())
    metrics = json.loads((run / "metrics.json").read_text())
    first, second = (b["library"] for b in metrics["backbones"])
    assert first["common_phrases"] == second["common_phrases"] and first["final"] == len(first["common_phrases"])
    assert all(b["result"]["num_concepts"] == first["final"] for b in metrics["backbones"])
    assert first["final"] <= min(first["own_final"], second["own_final"])
    assert first["duplicate_filter"]["dropped"]  # the synth-derm list holds negation pairs of one annotation
    for b in metrics["backbones"]:
        floor = b["result"]["bias_only"]
        assert 0 < floor["test_accuracy"] < 1 and floor["arr"] == pytest.approx(
            floor["test_accuracy"] / b["result"]["probe"]["test_accuracy"])
    assert "bias-only ARR" in (run / "table.md").read_text()
    result = CliRunner().invoke(main, ["score", "--resume", str(run), "--no-progress"], catch_exceptions=False)
    assert result.exit_code == 0 and (run / "log.txt").read_text().count("already scored") == 2


def test_baseline_run_folder_as_weights(data, tmp_path):
    from medimg_core.baseline import BaselineConfig, train_baseline
    from medimg_core.config import load_config

    cfg = load_config(BaselineConfig, None, {"data.dataset": "csv", "data.root": str(data), "data.image_size": 24,
                                              "model.backbone": "test_resnet", "train.epochs": 1, "train.batch_size": 16, "device": "cpu",
                                              "out": str(tmp_path / "base"), "bootstrap": 10,
                                              "train.progress": False})
    run = train_baseline(cfg)
    result = CliRunner().invoke(main, ["score", "--config", "synth-derm-cpu", "--root", str(data), "--out",
                                       str(tmp_path / "runs"), "--backbone", f"test_resnet:{run}", *SMALL,
                                       "--library", "end2end"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    scored = next((tmp_path / "runs").iterdir())
    info = json.loads(next((scored / "backbones").iterdir()).joinpath("backbone.json").read_text())
    assert info["kind"] == "run" and info["image_size"] == 24  # the run's input size, not the config's 32
    image = next((data / "images").iterdir())
    result = CliRunner().invoke(main, ["explain", str(scored), str(image), "--out", str(tmp_path / "e.png")])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, ["score", "--root", str(data), "--dataset", "csv", "--out", str(tmp_path),
                                       "--backbone", f"resnet18:{run}"])
    assert result.exit_code != 0 and "trained 'test_resnet'" in result.output


@pytest.mark.parametrize(("backbone", "message"), [
    ("test_resnet:pretrained", "pretrained weights"),
    ("test_resnet:/no/such/file.safetensors", "not found"),
    ("no_such_net:random", "unknown backbone"),
])
def test_clear_errors(data, tmp_path, backbone, message):
    result = CliRunner().invoke(main, ["score", "--config", "synth-derm-cpu", "--root", str(data), "--out",
                                       str(tmp_path), "--backbone", backbone, *SMALL])
    assert result.exit_code != 0 and message in result.output, result.output
    assert "Traceback" not in result.output


def test_library_larger_than_the_elements_is_refused(data, tmp_path):
    result = CliRunner().invoke(main, ["score", "--config", "synth-derm-cpu", "--root", str(data), "--out",
                                       str(tmp_path), "--backbone", "test_resnet:random", *SMALL,
                                       "--num-concepts", "5000"])
    assert result.exit_code != 0 and "lower --library.num_concepts" in result.output
    result = CliRunner().invoke(main, ["score", "--config", "synth-derm-cpu", "--root", str(data)])
    assert result.exit_code != 0 and "no backbone" in result.output
