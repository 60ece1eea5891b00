"""The human naming route (`neuron-concepts gallery`) and the report route from the command line, on a tiny
synth-derm pipeline with reports (timm test model, 32 px, 1 epoch)."""

import csv
import json
import re

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from medimg_core.synthetic import generate
from neuron_concepts.cli import main
from neuron_concepts.config import NamingConfig
from neuron_concepts.gallery import latent_maps, peak_crop_box
from neuron_concepts.naming import read_names_file, read_vocabulary, vocabulary_concepts
from neuron_concepts.sae import SparseAutoencoder

TINY = ["--device", "cpu", "--model.backbone", "test_resnet", "--data.image_size", "32", "--train.epochs", "1",
        "--train.batch_size", "16", "--train.num_workers", "0", "--sae.expansion", "2", "--sae.batch_size", "32",
        "--sae.epochs", "10", "--sae.eval_every", "5", "--naming.figures", "3", "--naming.top_n", "6",
        "--cav.top_n", "10", "--cav.n_negative", "20", "--select.k", "12", "--cbm.n_nonzero", "4",
        "--cbm.c_search_steps", "1", "--bootstrap", "20", "--no-progress", "--naming.min_auroc", "0.6"]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gallery")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDIMG_HOME", str(tmp / "medimg-home"))
        data = generate("synth-derm", n=80, out=tmp / "data", seed=0, size=32, reports=True)
        result = CliRunner().invoke(main, ["run", "--config", "synth-derm-cpu", "--root", str(data), "--out",
                                           str(tmp / "runs"), *TINY], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return data, next((tmp / "runs").iterdir())


def _names(folder):
    return {r["latent"]: r for r in json.loads((folder / "names.json").read_text())}


def test_gallery_lists_the_selected_latents_and_its_names_file_round_trips(pipeline, tmp_path):
    _, folder = pipeline
    runner = CliRunner()
    result = runner.invoke(main, ["gallery", str(folder), "--top", "4", "--thumb-size", "24"])
    assert result.exit_code == 0, result.output
    page = (folder / "gallery" / "index.html").read_text()
    selected = [r["latent"] for r in json.loads((folder / "select" / "selection.json").read_text())]
    names = _names(folder / "name")
    for k in selected:
        assert f"id='latent-{k}'" in page
    assert len(re.findall(r"<h2 id='latent-", page)) == len(selected)
    # thumbnails are embedded from the gallery folder only: data URIs, no other source
    assert page.count('src="data:image/png;base64,') >= len(selected)
    assert not re.search(r'src="(?!data:)', page)
    assert len(list((folder / "gallery" / "thumbs").glob("*.png"))) > 0
    with (folder / "gallery" / "names.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["latent"]) for r in rows] == selected
    for r in rows:
        current = names[int(r["latent"])]
        assert r["name"] == ("" if current["source"] == "none" else current["name"])
        assert r["current_source"] == current["source"]
    # an existing (perhaps edited) names file is kept unless asked
    result = runner.invoke(main, ["gallery", str(folder)])
    assert result.exit_code != 0 and "exists" in result.output
    # a person edits a name (with characters HTML must escape) and imports the file through the names-file source
    rows[0]["name"] = "<b>veil</b> & co"
    with (folder / "gallery" / "names.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    edited = {int(r["latent"]): r["name"] for r in rows if r["name"]}
    assert read_names_file(folder / "gallery" / "names.csv") == edited
    result = runner.invoke(main, ["name", str(folder / "sae"), "--sources", "file", "--names-file",
                                  str(folder / "gallery" / "names.csv"), "--no-progress"])
    assert result.exit_code == 0, result.output
    imported = _names(folder / "name-2")
    assert {k: imported[k]["name"] for k in edited} == edited
    assert all(imported[k]["source"] == "external" for k in edited)
    assert all(v["source"] == "none" for k, v in imported.items() if k not in edited)
    # the gallery of the new name stage: its select stage is not built on it, so every alive latent is shown
    result = runner.invoke(main, ["gallery", str(folder), "--overwrite", "--top", "2", "--thumb-size", "16"])
    assert result.exit_code == 0, result.output
    page = (folder / "gallery" / "index.html").read_text()
    assert len(re.findall(r"<h2 id='latent-", page)) == len(imported)
    assert "&lt;b&gt;veil&lt;/b&gt; &amp; co" in page and "<b>veil</b>" not in page
    result = runner.invoke(main, ["gallery", str(tmp_path)])
    assert result.exit_code != 0 and "no name stage" in result.output


def test_report_route_from_the_command_line(pipeline):
    data, folder = pipeline
    result = CliRunner().invoke(main, ["name", str(folder / "sae"), "--sources", "vocabulary", "--vocabulary",
                                       "synth-derm", "--reports", str(data / "reports.csv"), "--naming.top_n", "20",
                                       "--naming.min_z", "0", "--no-progress"])
    assert result.exit_code == 0, result.output
    name_dir = sorted(folder.glob("name-*"), key=lambda p: p.stat().st_mtime)[-1]
    metrics = json.loads((name_dir / "metrics.json").read_text())
    assert metrics["sources_used"] == ["vocabulary"]
    names = _names(name_dir)
    vocabulary, mapping = read_vocabulary("synth-derm"), vocabulary_concepts("synth-derm")
    named = {k: v["name"] for k, v in names.items() if v["source"] != "none"}
    assert named and all(v["source"] in ("vocab-enrichment", "none") for v in names.values())
    assert set(named.values()) <= set(vocabulary)  # the naming gives terms, never the concepts they stand for
    # the held-out naming check reads each term as its concept
    rows = {r["concept"]: r for r in metrics["concept_naming_test"]}
    for concept, row in rows.items():
        assert row["latents_named"] == sum(mapping.get(n) == concept for n in named.values())



def test_name_stage_with_the_floors_chosen_on_validation(pipeline):
    data, folder = pipeline
    runner = CliRunner()
    for sources in (["--sources", "vocabulary", "--vocabulary", "synth-derm", "--reports", str(data / "reports.csv"),
                     "--naming.top_n", "20"], ["--sources", "annotations"]):
        result = runner.invoke(main, ["name", str(folder / "sae"), *sources, "--naming.floor_from", "val",
                                      "--no-progress"])
        assert result.exit_code == 0, result.output
        name_dir = sorted(folder.glob("name-*"), key=lambda p: p.stat().st_mtime)[-1]
        metrics = json.loads((name_dir / "metrics.json").read_text())
        source = sources[1]
        floors = metrics["floors_val"][source]
        key = "min_z" if source == "vocabulary" else "min_auroc"
        assert list(metrics["floors_val"]) == [source] and metrics["floor_from"] == "val"
        assert floors["key"] == f"naming.{key}" and metrics[key] == floors["chosen"]
        grid = NamingConfig().min_z_grid if source == "vocabulary" else NamingConfig().min_auroc_grid
        assert [r["floor"] for r in floors["grid"]] == sorted(grid)
        # the names are those of the chosen floor
        named = [v for v in _names(name_dir).values() if v["source"] != "none"]
        assert all(v["score"] >= floors["chosen"] for v in named)
        assert len(named) == next(r["named"] for r in floors["grid"] if r["floor"] == floors["chosen"])
        assert metrics["named"] == len(named) and metrics["holds_auroc"] == 0.8

class _BlockBackbone(torch.nn.Module):
    """A backbone whose last feature map is the image averaged over 8 x 8 blocks (its channels are the
    features) and whose pooled feature is that map's mean, as a global-average-pooled CNN's."""

    def forward_both(self, x):
        fmap = torch.nn.functional.avg_pool2d(x, 8)
        return fmap.mean(dim=(2, 3)), fmap


def _colour_sae():
    """An SAE over 3 features whose latent 0 reads the red channel and latent 1 the green one."""
    sae = SparseAutoencoder(3, 2)
    with torch.no_grad():
        sae.W_enc.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
        sae.b_enc.zero_()
        sae.b_pre.zero_()
    return sae.eval()


def test_the_crop_lands_where_the_planted_pattern_is():
    """A red square in the top-right corner of one image and the bottom-left of another: latent 0 (red) peaks
    there, and the crop around the map's maximum holds the square."""
    images = torch.zeros(2, 3, 64, 64)
    images[0, 0, 4:12, 48:60] = 1.0  # top right
    images[1, 0, 50:60, 2:14] = 1.0  # bottom left
    images[:, 1] = 0.2  # a uniform green: latent 1's map is flat
    maps, gap = latent_maps(_BlockBackbone(), _colour_sae(), images, [0, 1])
    assert maps.shape == (2, 2, 8, 8) and gap < 1e-6
    # the mean of a map over the positions is the latent's pre-activation on the pooled feature
    pooled = images.mean(dim=(2, 3))
    assert maps[:, 0].mean(axis=(1, 2)) == pytest.approx(_colour_sae().pre_activation(pooled)[:, 0].detach().numpy(),
                                                         abs=1e-6)
    top, left, bottom, right = peak_crop_box(maps[0, 0], 64, 64, 0.25)
    assert (bottom - top, right - left) == (16, 16)
    assert top < 8 < bottom and left < 54 < right  # the square's centre (row 8, column 54) is inside the crop
    assert bottom <= 32 and left >= 32  # in the top-right quadrant
    top, left, bottom, right = peak_crop_box(maps[1, 0], 64, 64, 0.25)
    assert top < 55 < bottom and left < 8 < right and top >= 32 and right <= 32
    # a crop near an edge is moved inside the image; a whole-image crop is the image
    assert peak_crop_box(np.array([[0.0, 0.0], [0.0, 1.0]]), 10, 10, 0.6) == (4, 4, 10, 10)
    assert peak_crop_box(maps[0, 0], 64, 64, 1.0) == (0, 0, 64, 64)
    with pytest.raises(ValueError, match="crop fraction"):
        peak_crop_box(maps[0, 0], 64, 64, 0.0)
    # a backbone whose pooled feature is not the mean of its map: the gap says so
    class MaxPooled(_BlockBackbone):
        def forward_both(self, x):
            fmap = torch.nn.functional.avg_pool2d(x, 8)
            return fmap.amax(dim=(2, 3)), fmap

    assert latent_maps(MaxPooled(), _colour_sae(), images, [0])[1] > 0.1
    with pytest.raises(ValueError, match="channels"):
        latent_maps(_BlockBackbone(), SparseAutoencoder(4, 2), images, [0])


def test_the_gallery_shows_a_map_and_a_crop_beside_every_top_image(pipeline):
    _, folder = pipeline
    runner = CliRunner()
    result = runner.invoke(main, ["gallery", str(folder), "--all", "--overwrite", "--top", "3", "--thumb-size", "24"])
    assert result.exit_code == 0, result.output
    page = (folder / "gallery" / "index.html").read_text()
    thumbs = re.findall(r"<figcaption>([^<]*)</figcaption>", page)
    images = [c for c in thumbs if ":" not in c]
    assert images and [c for c in thumbs if c.endswith(": crop at the peak")] == [f"{c}: crop at the peak"
                                                                                  for c in images]
    assert len([c for c in thumbs if c.endswith(": latent map")]) == len(images)
    assert len(list((folder / "gallery" / "crops").glob("*.png"))) == 2 * len(images)
    assert "an approximation" in page
    result = runner.invoke(main, ["gallery", str(folder), "--all", "--overwrite", "--top", "3", "--no-crops"])
    assert result.exit_code == 0, result.output
    page = (folder / "gallery" / "index.html").read_text()
    assert "crop at the peak" not in page and "Crops not drawn" in page
