"""The human naming route: a gallery of latents to look at, and a names file to fill in and import.

`build_gallery(pipeline)` writes, inside the pipeline folder,

    gallery/index.html      every selected latent (or, with all_latents, every alive latent) with the thumbnails
                            of its top-activating train images, its current name, source and naming score
    gallery/names.csv       latent,name (prefilled with the current names; empty where unnamed), then the
                            current source and score for reference: edit the names, then import them with
                            `neuron-concepts name SAE_DIR --sources file --names-file gallery/names.csv`
    gallery/thumbs/*.png    the thumbnails, written from the dataset's images

The page is medimg-core's report page (`medimg_core.report`): self-contained, no script, every string
escaped, and images embedded only from regular files inside the gallery folder (read through `RunFolder`).
"""

from __future__ import annotations

import csv
import html
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from medimg_core.report import RunFolder, html_figure, html_page, write_page
from neuron_concepts.folders import load_features, recorded_stages, stage_chain

GALLERY = "gallery"


def _selected_latents(pipeline: Path, stages: dict[str, str], name_dir: Path) -> list[int] | None:
    """Latents of the pipeline's select stage when it was built on `name_dir`, in selection order; else None."""
    if "select" not in stages:
        return None
    select_dir = (pipeline / stages["select"]).resolve()
    if not (select_dir / "selection.json").is_file() or stage_chain(select_dir).get("name") != name_dir.resolve():
        return None
    records = json.loads((select_dir / "selection.json").read_text())
    return [int(r["latent"]) for r in records if r.get("latent") is not None]


def _thumbnail(image: np.ndarray, size: int) -> Image.Image:
    img = Image.fromarray(np.ascontiguousarray(image))
    img.thumbnail((size, size), Image.Resampling.LANCZOS)
    return img


def build_gallery(pipeline: str | Path, all_latents: bool = False, top_n: int = 8, thumb_size: int = 96,
                  overwrite: bool = False, datasets: dict[str, Any] | None = None) -> Path:
    """Write gallery/index.html, gallery/names.csv and gallery/thumbs/ in the pipeline folder; returns the gallery.

    pipeline: a pipeline folder with a finished name stage (the one pipeline.json records). Latents shown: those
    of its select stage (when it was built on that name stage) unless `all_latents`, else every alive latent.
    top_n thumbnails per latent (its top-activating train images, as the name stage recorded them), each at most
    thumb_size pixels. An existing names.csv (perhaps already edited) is kept unless `overwrite`. datasets:
    {"train": dataset} for pipelines encoded from datasets given in Python.
    """
    from neuron_concepts.stages import _split_dataset

    pipeline = Path(pipeline)
    stages = recorded_stages(pipeline)
    if "name" not in stages:
        raise FileNotFoundError(f"{pipeline}: no name stage recorded in pipeline.json (a pipeline folder with a "
                                "finished name stage is expected; run `neuron-concepts name SAE_DIR` first)")
    if top_n < 1 or thumb_size < 8:
        raise ValueError(f"top_n must be at least 1 and thumb_size at least 8, got {top_n} and {thumb_size}")
    name_dir = pipeline / stages["name"]
    records = {int(r["latent"]): r for r in json.loads((name_dir / "names.json").read_text())}
    selected = None if all_latents else _selected_latents(pipeline, stages, name_dir)
    latents = selected if selected is not None else sorted(records)
    missing = [k for k in latents if k not in records]
    if missing:
        raise ValueError(f"{pipeline}: the select stage names latents {missing[:5]} that the name stage did not name")
    out = pipeline / GALLERY
    names_csv = out / "names.csv"
    if names_csv.exists() and not overwrite:
        raise FileExistsError(f"{names_csv} exists (perhaps already edited); import it with `neuron-concepts name "
                              f"SAE_DIR --sources file --names-file {names_csv}`, or pass --overwrite")
    (out / "thumbs").mkdir(parents=True, exist_ok=True)
    feats = load_features(stage_chain(name_dir)["encode"])
    ids = list(feats["train"]["ids"])
    row_of = {i: r for r, i in enumerate(ids)}
    dataset = _split_dataset(feats, "train", datasets)
    written: dict[int, str] = {}
    body = [f"<h1>{html.escape(f'Latents of {pipeline.name}')}</h1>",
            "<p class='meta'>" + html.escape(
                f"{len(latents)} latents ({'the selected concepts' if selected is not None else 'every alive latent'}"
                f"), each with its {top_n} top-activating train images, its current name, the name's source and "
                f"its naming score. Edit {GALLERY}/names.csv and import it with `neuron-concepts name "
                f"{stages.get('sae', 'SAE_DIR')} --sources file --names-file {GALLERY}/names.csv`.") + "</p>",
            "<table><tr><th>latent</th><th>name</th><th>source</th><th>naming score</th><th>active on</th></tr>"
            + "".join(f"<tr><td class='num'>{k}</td><td>{html.escape(str(records[k]['name']))}</td>"
                      f"<td>{html.escape(str(records[k]['source']))}</td><td class='num'>{_score(records[k])}</td>"
                      f"<td class='num'>{_frequency(records[k])}</td></tr>" for k in latents) + "</table>"]
    folder = RunFolder(out)
    for k in latents:
        r = records[k]
        title = f"latent {k}: {r['name']}"
        body.append(f"<h2 id='latent-{k}'>{html.escape(title)}</h2>")
        body.append("<p class='meta'>" + html.escape(f"source {r['source']}, naming score {_score(r)}, active on "
                                                     f"{_frequency(r)} of the train images") + "</p>")
        shown = [i for i in r.get("top_ids", []) if i in row_of][:top_n]
        if not shown:
            body.append("<p>No top-activating image recorded.</p>")
        for image_id in shown:
            row = row_of[image_id]
            if row not in written:
                written[row] = f"thumbs/train_{row:06d}.png"
                _thumbnail(_image(dataset, row), thumb_size).save(out / written[row], format="PNG")
            png = folder.read_bytes(written[row])
            if png is not None:
                body.append(html_figure(png, str(image_id)))
    with names_csv.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["latent", "name", "current_source", "current_score"])
        for k in latents:
            r = records[k]
            writer.writerow([k, "" if r["source"] == "none" else r["name"], r["source"],
                             "" if r.get("score") is None else f"{r['score']:.4f}"])
    write_page(html_page(f"neuron-concepts gallery: {pipeline.name}", body), out / "index.html")
    return out


def _image(dataset: Any, row: int) -> np.ndarray:
    img = dataset.load_image(int(row))
    return np.repeat(img[..., None], 3, axis=-1) if img.ndim == 2 else img


def _score(record: dict[str, Any]) -> str:
    return "n/a" if record.get("score") is None else f"{record['score']:.3f}"


def _frequency(record: dict[str, Any]) -> str:
    return "n/a" if record.get("frequency") is None else f"{100 * record['frequency']:.1f}%"
