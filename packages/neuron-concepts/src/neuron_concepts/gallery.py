"""The human naming route: a gallery of latents to look at, and a names file to fill in and import.

`build_gallery(pipeline)` writes, inside the pipeline folder,

    gallery/index.html      every selected latent (or, with all_latents, every alive latent) with the thumbnails
                            of its top-activating train images, its current name, source and naming score
    gallery/names.csv       latent,name (prefilled with the current names; empty where unnamed), then the
                            current source and score for reference: edit the names, then import them with
                            `neuron-concepts name SAE_DIR --sources file --names-file gallery/names.csv`
    gallery/thumbs/*.png    the thumbnails, written from the dataset's images
    gallery/crops/*.png     beside each thumbnail (unless crops=False): the latent's activation map over the image
                            (a heat-map overlay) and the crop around the map's maximum

**Where a latent fires (crops).** The SAE reads the pooled features, the mean over the positions of the
backbone's last feature map. `latent_maps` applies the SAE encoder to each position of that map (the same
features before pooling) and keeps the latents' pre-activations: a (h, w) map per image and latent, upsampled
bilinearly to the image (`peak_crop_box`). This applies an SAE trained on pooled features to single positions, an
approximation. It is reasonable because the pooled feature is the mean of the positions and the encoder is affine
before its ReLU (standardisation, pre-bias and W_enc included): the latent's pre-activation on the image is exactly
the mean of the map, so the map shows where that mean comes from. It is only an approximation because a single
position is not a pooled feature (the SAE never saw one, and the ReLU of the mean is not the mean of the ReLUs),
so the map's values are not activations of the image; its peak is where the latent's input is largest. With a
backbone whose pooled feature is not the mean of the map (a class token, max pooling, or a head that changes the
width) this decomposition does not hold, and the page shows no crops and says why.

The page is medimg-core's report page (`medimg_core.report`): self-contained, no script, every string
escaped, and images embedded only from regular files inside the gallery folder (read through `RunFolder`).
"""

from __future__ import annotations

import csv
import html
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from medimg_core.figures import heatmap_overlay
from medimg_core.report import RunFolder, html_figure, html_page, write_page
from neuron_concepts.folders import load_features, recorded_stages, stage_chain

log = logging.getLogger("medimg")

GALLERY = "gallery"
#: the largest |pooled - mean of the map's positions| (relative to the features' scale) for which crops are drawn
POOLING_TOLERANCE = 1e-3


@torch.no_grad()
def latent_maps(backbone: Any, sae: Any, images: torch.Tensor, latents: list[int] | tuple[int, ...]
                ) -> tuple[np.ndarray, float]:
    """Each latent's SAE pre-activation at every position of the backbone's last feature map.

    backbone: a medimg-core `Backbone` (its `forward_both` gives the pooled features and the map); sae: the
    pipeline's `SparseAutoencoder` (trained on the pooled features); images (B, C, H, W), preprocessed as for the
    opaque model; latents: the latent indices. Returns (maps (B, L, h, w) float32, pooling gap): the maps are the
    encoder's affine part (standardisation, pre-bias, W_enc, b_enc) applied to each position, so their mean over
    the positions is the latent's pre-activation on the pooled feature when the backbone pools by the mean; the
    pooling gap, max |pooled - mean of the positions| / max(1, max |pooled|), says whether it does (about 0).
    See the module docstring for why this is an approximation and why it is a reasonable one.
    """
    pooled, fmap = backbone.forward_both(images)
    n, c, h, w = fmap.shape
    if c != sae.d_in:
        raise ValueError(f"latent_maps: the backbone's feature map has {c} channels, the SAE reads {sae.d_in} "
                         "features; the SAE cannot be applied to its positions")
    gap = float((fmap.mean(dim=(2, 3)) - pooled).abs().max() / max(1.0, float(pooled.abs().max()))) \
        if pooled.shape == (n, c) else float("inf")
    positions = fmap.permute(0, 2, 3, 1).reshape(-1, c).float()
    pre = sae.pre_activation(positions)[:, list(latents)]
    return pre.reshape(n, h, w, len(latents)).permute(0, 3, 1, 2).cpu().numpy().astype(np.float32), gap


def peak_crop_box(pre_map: np.ndarray, height: int, width: int, fraction: float = 0.5) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) of the crop around a latent map's maximum, in an image of (height, width).

    pre_map (h, w): one latent's map (`latent_maps`), upsampled bilinearly (half-pixel centres) to the image; the
    crop is `fraction` of each side, centred on the upsampled map's maximum (the first in raster order) and moved
    inside the image where it would overhang; a flat map (no peak, e.g. from a 1 x 1 feature map) gives the centred
    crop."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"crop fraction must be in (0, 1], got {fraction}")
    up = torch.as_tensor(_upsample(pre_map, height, width))
    if float(up.max()) == float(up.min()):  # a flat map (e.g. a 1 x 1 feature map) has no peak: the centre
        row, col = height // 2, width // 2
    else:
        row, col = np.unravel_index(int(torch.argmax(up)), (height, width))
    ch, cw = max(1, round(fraction * height)), max(1, round(fraction * width))
    top = min(max(0, int(row) - ch // 2), height - ch)
    left = min(max(0, int(col) - cw // 2), width - cw)
    return top, left, top + ch, left + cw


def _upsample(pre_map: np.ndarray, height: int, width: int) -> np.ndarray:
    """A latent map (h, w) resized bilinearly (half-pixel centres) to (height, width)."""
    m = torch.as_tensor(np.asarray(pre_map, dtype=np.float32))[None, None]
    return torch.nn.functional.interpolate(m, size=(height, width), mode="bilinear",
                                           align_corners=False)[0, 0].numpy()


def _input_region(height: int, width: int, eval_resize: str) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) of the part of a (height, width) image the opaque model sees: all of it when
    the eval transform squashes, the central square when it resizes the short side and crops the centre."""
    if eval_resize == "short-side-center-crop":
        side = min(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        return top, left, top + side, left + side
    return 0, 0, height, width


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
                  overwrite: bool = False, datasets: dict[str, Any] | None = None, crops: bool = True,
                  crop_fraction: float = 0.5, device: str | torch.device = "cpu") -> Path:
    """Write gallery/index.html, gallery/names.csv, gallery/thumbs/ and gallery/crops/ in the pipeline folder;
    returns the gallery.

    pipeline: a pipeline folder with a finished name stage (the one pipeline.json records). Latents shown: those
    of its select stage (when it was built on that name stage) unless `all_latents`, else every alive latent.
    top_n thumbnails per latent (its top-activating train images, as the name stage recorded them), each at most
    thumb_size pixels. With `crops`, beside each thumbnail the latent's map over that image (a heat-map overlay of
    `latent_maps`, over the part of the image the opaque model sees) and the crop around the map's maximum,
    `crop_fraction` of each side (`peak_crop_box`); see the module docstring for what the map is. An existing
    names.csv (perhaps already edited) is kept unless `overwrite`. datasets: {"train": dataset} for pipelines
    encoded from datasets given in Python. device: where the opaque backbone and the SAE run for the maps.
    """
    from neuron_concepts.stages import _split_dataset

    pipeline = Path(pipeline)
    stages = recorded_stages(pipeline)
    if "name" not in stages:
        raise FileNotFoundError(f"{pipeline}: no name stage recorded in pipeline.json (a pipeline folder with a "
                                "finished name stage is expected; run `neuron-concepts name SAE_DIR` first)")
    if top_n < 1 or thumb_size < 8:
        raise ValueError(f"top_n must be at least 1 and thumb_size at least 8, got {top_n} and {thumb_size}")
    if not 0.0 < crop_fraction <= 1.0:
        raise ValueError(f"crop_fraction must be in (0, 1], got {crop_fraction}")
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
    for stale in (out / "crops").glob("latent_*.png"):  # the maps and crops of an earlier gallery
        stale.unlink()
    feats = load_features(stage_chain(name_dir)["encode"])
    ids = list(feats["train"]["ids"])
    row_of = {i: r for r, i in enumerate(ids)}
    dataset = _split_dataset(feats, "train", datasets)
    shown = {k: [i for i in records[k].get("top_ids", []) if i in row_of][:top_n] for k in latents}
    maps: dict[tuple[int, int], np.ndarray] = {}
    crop_note = "Crops not drawn (crops=False)."
    if crops:
        maps, crop_note = _maps_of(name_dir, feats, dataset, {k: [row_of[i] for i in v] for k, v in shown.items()},
                                   torch.device(device))
    written: dict[int, str] = {}
    body = [f"<h1>{html.escape(f'Latents of {pipeline.name}')}</h1>",
            "<p class='meta'>" + html.escape(
                f"{len(latents)} latents ({'the selected concepts' if selected is not None else 'every alive latent'}"
                f"), each with its {top_n} top-activating train images, its current name, the name's source and "
                f"its naming score. Edit {GALLERY}/names.csv and import it with `neuron-concepts name "
                f"{stages.get('sae', 'SAE_DIR')} --sources file --names-file {GALLERY}/names.csv`.") + "</p>",
            "<p class='meta'>" + html.escape(crop_note) + "</p>",
            "<table><tr><th>latent</th><th>name</th><th>source</th><th>naming score</th><th>active on</th></tr>"
            + "".join(f"<tr><td class='num'>{k}</td><td>{html.escape(str(records[k]['name']))}</td>"
                      f"<td>{html.escape(str(records[k]['source']))}</td><td class='num'>{_score(records[k])}</td>"
                      f"<td class='num'>{_frequency(records[k])}</td></tr>" for k in latents) + "</table>"]
    folder = RunFolder(out)
    eval_resize = str(feats["meta"]["data"].get("eval_resize", "squash"))
    for k in latents:
        r = records[k]
        title = f"latent {k}: {r['name']}"
        body.append(f"<h2 id='latent-{k}'>{html.escape(title)}</h2>")
        body.append("<p class='meta'>" + html.escape(f"source {r['source']}, naming score {_score(r)}, active on "
                                                     f"{_frequency(r)} of the train images") + "</p>")
        if not shown[k]:
            body.append("<p>No top-activating image recorded.</p>")
        for image_id in shown[k]:
            row = row_of[image_id]
            image = None
            if row not in written:
                written[row] = f"thumbs/train_{row:06d}.png"
                image = _image(dataset, row)
                _thumbnail(image, thumb_size).save(out / written[row], format="PNG")
            figures = [(written[row], str(image_id))]
            if (k, row) in maps:
                image = _image(dataset, row) if image is None else image
                figures += _write_crop(out, k, row, image, maps[(k, row)], eval_resize, crop_fraction, thumb_size,
                                       str(image_id))
            for rel, caption in figures:
                png = folder.read_bytes(rel)
                if png is not None:
                    body.append(html_figure(png, caption))
    with names_csv.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["latent", "name", "current_source", "current_score"])
        for k in latents:
            r = records[k]
            writer.writerow([k, "" if r["source"] == "none" else r["name"], r["source"],
                             "" if r.get("score") is None else f"{r['score']:.4f}"])
    write_page(html_page(f"neuron-concepts gallery: {pipeline.name}", body), out / "index.html")
    return out


def _maps_of(name_dir: Path, feats: dict[str, Any], dataset: Any, rows: dict[int, list[int]], device: torch.device,
             batch_size: int = 32) -> tuple[dict[tuple[int, int], np.ndarray], str]:
    """{(latent, row): its (h, w) map over that train image} for the given {latent: rows}, through the pipeline's
    opaque backbone (eval transform) and SAE; and the sentence the page shows about them. No maps when the
    backbone's pooled feature is not the mean of its map's positions."""
    from medimg_core.data.preprocess import DataConfig
    from neuron_concepts.opaque import opaque_data, with_eval_transform
    from neuron_concepts.sae import load_sae

    chain = stage_chain(name_dir)
    model = opaque_data(chain["opaque"])[0].to(device).eval()
    sae = load_sae(chain["sae"]).to(device).eval()
    data = DataConfig(**dict(feats["meta"]["data"]))
    encoded = with_eval_transform({"train": dataset}, data, feats["card"])["train"]
    needed = sorted({r for rs in rows.values() for r in rs})
    latents = sorted(rows)
    column = {k: j for j, k in enumerate(latents)}
    per_row: dict[int, np.ndarray] = {}
    gap = 0.0
    for start in range(0, len(needed), batch_size):
        chunk = needed[start:start + batch_size]
        images = torch.stack([encoded[r]["image"] for r in chunk]).to(device)
        try:
            out, g = latent_maps(model.backbone, sae, images, latents)
        except ValueError as exc:
            log.warning("gallery: no crops: %s", exc)
            return {}, f"No crops: {exc}."
        gap = max(gap, g)
        per_row.update(zip(chunk, out, strict=True))
    if gap > POOLING_TOLERANCE:
        log.warning("gallery: no crops: the pooled features differ from the mean of the feature map by %.3g", gap)
        return {}, (f"No crops: this backbone's pooled feature is not the mean of its last feature map's positions "
                    f"(relative difference {gap:.3g}), so the SAE's pre-activation does not decompose over them.")
    maps = {(k, r): per_row[r][column[k]] for k, rs in rows.items() for r in rs}
    h, w = next(iter(per_row.values())).shape[-2:] if per_row else (0, 0)
    return maps, (f"Beside each image: the latent's map (its SAE pre-activation at each of the {h} x {w} positions "
                  "of the backbone's last feature map, upsampled; red is high) and the crop around the map's "
                  "maximum. The SAE was trained on the mean of these positions; applied to single positions it "
                  "shows where the latent's input comes from (an approximation, see the package README)."
                  + (" This backbone's map has a single position, so it has no peak: the crops are centred."
                     if h * w == 1 else ""))


def _write_crop(out: Path, latent: int, row: int, image: np.ndarray, pre_map: np.ndarray, eval_resize: str,
                fraction: float, size: int, image_id: str) -> list[tuple[str, str]]:
    """Write the map overlay and the peak crop of one latent on one image; [(relative path, caption)]."""
    top, left, bottom, right = _input_region(image.shape[0], image.shape[1], eval_resize)
    view = image[top:bottom, left:right]
    (out / "crops").mkdir(parents=True, exist_ok=True)
    heat = _upsample(pre_map, view.shape[0], view.shape[1])  # (also a 1 x 1 map, which the overlay cannot resize)
    overlay = (heatmap_overlay(view, heat, alpha=0.45) * 255).round().astype(np.uint8)
    y0, x0, y1, x1 = peak_crop_box(pre_map, view.shape[0], view.shape[1], fraction)
    crop = Image.fromarray(np.ascontiguousarray(view[y0:y1, x0:x1]))
    scale = size / max(crop.size)
    crop = crop.resize((max(1, round(crop.size[0] * scale)), max(1, round(crop.size[1] * scale))),
                       Image.Resampling.LANCZOS)
    map_rel, crop_rel = f"crops/latent_{latent}_train_{row:06d}_map.png", f"crops/latent_{latent}_train_{row:06d}.png"
    _thumbnail(overlay, size).save(out / map_rel, format="PNG")
    crop.save(out / crop_rel, format="PNG")
    return [(map_rel, f"{image_id}: latent map"), (crop_rel, f"{image_id}: crop at the peak")]


def _image(dataset: Any, row: int) -> np.ndarray:
    img = dataset.load_image(int(row))
    return np.repeat(img[..., None], 3, axis=-1) if img.ndim == 2 else img


def _score(record: dict[str, Any]) -> str:
    return "n/a" if record.get("score") is None else f"{record['score']:.3f}"


def _frequency(record: dict[str, Any]) -> str:
    return "n/a" if record.get("frequency") is None else f"{100 * record['frequency']:.1f}%"
