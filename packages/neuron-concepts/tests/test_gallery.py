"""The human naming route (`neuron-concepts gallery`) and the report route from the command line, on a tiny
synth-derm pipeline with reports (timm test model, 32 px, 1 epoch)."""

import csv
import json
import re

import pytest
from click.testing import CliRunner

from medimg_core.synthetic import generate
from neuron_concepts.cli import main
from neuron_concepts.naming import read_names_file, read_vocabulary, vocabulary_concepts

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
