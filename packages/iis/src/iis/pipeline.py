"""`iis score` and `iis extract-concepts` end to end: data, backbones, cached features, concept libraries,
the sweep, run folders, the comparison table and the ARR figure.

Run folder of `iis score`::

    config.yaml               the resolved config
    metrics.json              per backbone: IIS [95% CI], ARR per ratio, probe, timings; the comparison
    table.md, table.csv       one row per backbone
    figures/arr.png           ARR against the sparsity ratio, every backbone overlaid (95% bands)
    figures/concepts-<i>.png  pictures (or phrases) of the first concepts of each backbone's library
    elements.json             the visual elements (source image, kind, box), shared by the backbones
    text_concepts.json        the text concept filters (text library only)
    backbones/<i>-<label>/    backbone.json, library/, heads/ (checkpoint of every selected head),
                              result.json, correct.safetensors (per test sample, for paired comparisons)
"""

from __future__ import annotations

import csv
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from iis.backbones import LoadedBackbone, load_backbone, parse_backbone_spec
from iis.concepts import ConceptLibrary, Element, ElementDataset, build_visual_library, extract_elements
from iis.train import IISConfig, IISResult, score_representation
from medimg_core.config import ConfigError
from medimg_core.training import show_progress

__all__ = ["backbone_dirs", "extract_concepts", "load_datasets", "run_score"]

log = logging.getLogger("medimg")
SPLITS = ("train", "val", "test")


def load_datasets(cfg: IISConfig) -> dict[str, Any]:
    """Train, val and test datasets (no transform yet: each backbone sets its eval transform)."""
    from medimg_core.data import load_dataset

    if not cfg.data.root:
        raise ConfigError("--root (data.root) is required: the dataset folder or file")
    names = {"train": cfg.data.train_split, "val": cfg.data.val_split, "test": cfg.data.test_split}
    return {k: load_dataset(cfg.data.dataset, cfg.data.root, s, **cfg.data.options) for k, s in names.items()}


def _transform(cfg: IISConfig, loaded: LoadedBackbone) -> Any:
    from medimg_core.data.transforms import TransformConfig, eval_transform

    return eval_transform(TransformConfig(size=loaded.image_size or cfg.data.image_size, channels=loaded.in_chans,
                                          normalize=loaded.input_normalize(cfg.data.normalize)))


def _features(cfg: IISConfig, loaded: LoadedBackbone, datasets: dict[str, Any], transform: Any,
              device: torch.device) -> dict[str, dict[str, Any]]:
    from medimg_core.features import FeatureCache

    cache = FeatureCache()
    out = {}
    for split, ds in datasets.items():
        ds.transform = transform
        out[split] = cache.get_or_extract(loaded.backbone, ds, split=split, device=device,
                                          batch_size=cfg.feature_batch_size, progress=show_progress(cfg.progress))
    return out


def _check_task(card: Any) -> bool:
    """True for multi-label tasks; refuses datasets IIS cannot score."""
    if card.num_classes < 2:
        raise ConfigError(f"{card.name}: IIS needs at least two classes")
    return card.task == "multilabel"


class _Context:
    """What the backbones of one run share: data, visual elements, text teacher scores."""

    def __init__(self, cfg: IISConfig, device: torch.device):
        self.cfg, self.device = cfg, device
        self.datasets = load_datasets(cfg)
        self.card = self.datasets["train"].card
        self.multilabel = _check_task(self.card)
        self.in_chans = cfg.data.channels or self.card.channels
        self.elements: ElementDataset | None = None
        self.text: dict[str, Any] | None = None
        self.timings: dict[str, float] = {}

    def element_set(self) -> ElementDataset:
        if self.elements is None:
            t0 = time.perf_counter()
            self.elements = extract_elements(self.datasets["train"], self.cfg.elements, self.cfg.seed,
                                             progress=show_progress(self.cfg.progress))
            self.timings["elements_s"] = time.perf_counter() - t0
        return self.elements

    def text_scores(self) -> dict[str, Any]:
        from iis.text import find_concept_list, load_concept_list, make_backend

        if self.text is None:
            t0 = time.perf_counter()
            tcfg = self.cfg.text
            concepts = load_concept_list(find_concept_list(tcfg.concept_list or self.card.name))
            backend = make_backend(tcfg, str(self.device))
            concepts = backend.prepare(concepts, self.datasets["train"])
            scores = {s: backend.scores(self.datasets[s], concepts) for s in ("train", "val")}
            self.text = {"concepts": concepts, "scores": scores, "backend": backend.name}
            self.timings["text_scores_s"] = time.perf_counter() - t0
        return self.text


def _library(ctx: _Context, loaded: LoadedBackbone, transform: Any, feats: dict[str, dict[str, Any]]
             ) -> tuple[ConceptLibrary, dict[str, Any], dict[str, float]]:
    cfg = ctx.cfg
    timings: dict[str, float] = {}
    if cfg.library.kind == "text":
        from iis.text import build_text_library

        text = ctx.text_scores()
        t0 = time.perf_counter()
        library, report = build_text_library(feats["train"]["features"], feats["val"]["features"],
                                             text["scores"]["train"], text["scores"]["val"], text["concepts"],
                                             cfg.text, cfg.seed, ctx.device)
        report["backend"] = text["backend"]
        timings["library_s"] = time.perf_counter() - t0
        return library, report, timings
    from medimg_core.features import FeatureCache

    elements = ctx.element_set()
    elements.transform = transform
    t0 = time.perf_counter()
    el = FeatureCache().get_or_extract(loaded.backbone, elements, split=elements.split, device=ctx.device,
                                       batch_size=cfg.feature_batch_size, progress=show_progress(cfg.progress))
    timings["element_features_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    library = build_visual_library(cfg.library, el["features"], elements.ids, cfg.seed)
    timings["library_s"] = time.perf_counter() - t0
    kinds = [e.kind for e in elements.elements]
    report = {"elements": len(kinds), "patches": kinds.count("patch"), "segments": kinds.count("segment"),
              "source_images": len({e.source for e in elements.elements})}
    return library, report, timings


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    import os

    from safetensors.torch import save_file

    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)


def save_heads(folder: Path, result: IISResult, library: ConceptLibrary, num_outputs: int, tau: float) -> Path:
    """Every selected head (keys "<s0.9|probe>/<param>") as one medimg-core checkpoint folder."""
    from medimg_core.checkpoint import save_checkpoint

    flat = {f"{key}/{name}": t for key, state in result.head_states.items() for name, t in state.items()}
    config = {"kind": "iis-heads", "library": library.kind, "num_concepts": library.num_concepts,
              "num_outputs": num_outputs, "ratios": result.ratios, "selected_lr": result.selected_lr,
              "gumbel_tau": tau}
    return save_checkpoint(folder, flat, config)


def head_state(heads_dir: Path, key: str) -> dict[str, torch.Tensor]:
    """The state dict of one saved head ("s0.9" or "probe")."""
    from safetensors.torch import load_file

    from medimg_core.checkpoint import find_checkpoint

    flat = load_file(str(find_checkpoint(heads_dir) / "model.safetensors"))
    state = {k.split("/", 1)[1]: v for k, v in flat.items() if k.split("/", 1)[0] == key}
    if not state:
        keys = sorted({k.split("/", 1)[0] for k in flat})
        raise KeyError(f"{heads_dir}: no head {key!r}; saved heads: {keys}")
    return state


def backbone_dirs(run_dir: Path) -> list[Path]:
    """The per-backbone folders of a run, in the order the backbones were given."""
    folders = [p for p in (Path(run_dir) / "backbones").glob("*") if (p / "backbone.json").is_file()]
    return sorted(folders, key=lambda p: int(p.name.split("-", 1)[0]))


def _figure_arr(entries: list[dict[str, Any]], path: Path, title: str) -> Path:
    import matplotlib.pyplot as plt

    from medimg_core.figures import PAPER_RC, save_figure

    with plt.rc_context(PAPER_RC):
        fig, ax = plt.subplots(figsize=(5.2, 3.6))
        for i, e in enumerate(entries):
            rows = e["result"]["per_ratio"]
            s = np.array([r["ratio"] for r in rows])
            arr = np.array([r["arr"] for r in rows])
            lo = np.array([r["arr_ci"][0] for r in rows])
            hi = np.array([r["arr_ci"][1] for r in rows])
            colour = f"C{i}"
            lo_ci, hi_ci = e["result"]["iis_ci"]
            ax.plot(s, arr, "o-", color=colour, ms=3.5,
                    label=f"{e['label']}: IIS {e['result']['iis']:.3f} [{lo_ci:.3f}, {hi_ci:.3f}]")
            ax.fill_between(s, lo, hi, color=colour, alpha=0.15, linewidth=0)
        ax.axhline(1.0, color="0.4", lw=0.8, ls="--")
        ax.set_xlabel("sparsity ratio s (fraction of concepts zeroed per image)")
        ax.set_ylabel("accuracy retention ratio (ARR)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), fontsize=7, frameon=False)
        fig.tight_layout()
        return save_figure(fig, path)


def _figure_concepts(library: ConceptLibrary, elements: ElementDataset | None, path: Path, label: str,
                     count: int = 24) -> Path | None:
    from medimg_core.figures import image_grid

    if library.kind == "text":
        return None
    members = library.members
    if library.kind == "end2end" or elements is None or not members:
        return None
    shown = [(c, m[0]) for c, m in enumerate(members) if m][:count]
    pictures = [elements.picture(i, size=(64, 64)) for _, i in shown]
    captions = [f"{c}: {elements.elements[i].kind}\n{elements.elements[i].source_id}"[:40] for c, i in shown]
    return image_grid(pictures, captions, path=path, ncols=8,
                      title=f"{label}: first {len(shown)} of {library.num_concepts} {library.kind} concepts",
                      cell_inches=1.4)


def _write_table(run_dir: Path, entries: list[dict[str, Any]], comparison: list[dict[str, Any]]) -> None:
    ratios = [r["ratio"] for r in entries[0]["result"]["per_ratio"]]
    header = ["backbone", "probe test acc", *[f"ARR@{s:g}" for s in ratios], "IIS", "IIS 95% CI", "IIS - first [95% CI]"]
    rows = []
    for e, c in zip(entries, comparison, strict=True):
        r = e["result"]
        diff = "" if c["difference"] is None else \
            f"{c['difference']:+.3f} [{c['difference_ci'][0]:+.3f}, {c['difference_ci'][1]:+.3f}]"
        rows.append([e["label"], f"{r['probe']['test_accuracy']:.4f}",
                     *[f"{p['arr']:.3f}" for p in r["per_ratio"]], f"{r['iis']:.4f}",
                     f"[{r['iis_ci'][0]:.4f}, {r['iis_ci'][1]:.4f}]", diff])
    with (run_dir / "table.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    (run_dir / "table.md").write_text("\n".join(lines) + "\n")


def _comparison(entries: list[dict[str, Any]], correct: list[np.ndarray], ratios: list[float], n_boot: int,
                seed: int) -> list[dict[str, Any]]:
    from iis.score import bootstrap_iis_difference

    out = []
    for i, e in enumerate(entries):
        item = {"label": e["label"], "iis": e["result"]["iis"], "difference": None, "difference_ci": None}
        if i > 0:
            d, lo, hi = bootstrap_iis_difference(correct[i], correct[0], ratios, n_boot=n_boot, seed=seed)
            item.update(difference=d, difference_ci=[lo, hi], reference=entries[0]["label"])
        out.append(item)
    return out


def run_score(cfg: IISConfig, resume_dir: str | Path | None = None) -> Path:
    """Score every backbone of `cfg.backbones` on one dataset and concept-library recipe; return the run folder.

    With `resume_dir`, backbones whose result is already in that folder are not scored again.
    """
    from safetensors.torch import load_file

    from medimg_core.baseline import peak_memory_mb
    from medimg_core.checkpoint import write_json
    from medimg_core.distributed import DistInfo, seed_everything, select_device
    from medimg_core.runs import prepare_run, slug

    start = time.perf_counter()
    if not cfg.backbones:
        raise ConfigError("no backbone to score: give --backbone NAME[:weights] (repeatable)")
    specs = [parse_backbone_spec(b) for b in cfg.backbones]
    device = select_device(cfg.device)
    seed_everything(cfg.seed)
    ctx = _Context(cfg, device)
    if cfg.library.kind == "text":
        ctx.text_scores()  # a bad concept list or backend fails before any feature is extracted
    label = "-vs-".join(dict.fromkeys(s.name for s in specs))
    run_dir = prepare_run(cfg, f"iis-{cfg.library.kind}", ctx.card.name, label, DistInfo(), resume_dir)
    write_json(run_dir / "card.json", ctx.card.to_dict())
    entries, correct = [], []
    for i, spec in enumerate(specs):
        folder = run_dir / "backbones" / f"{i}-{slug(spec.label)}"
        if resume_dir is not None and (folder / "result.json").is_file():
            log.info("%s: already scored in %s; kept", spec.label, folder)
            entries.append(json.loads((folder / "result.json").read_text()))
            correct.append(load_file(str(folder / "correct.safetensors"))["correct"].numpy())
            continue
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        loaded = load_backbone(spec, ctx.in_chans, cfg.seed)
        transform = _transform(cfg, loaded)
        timings["load_backbone_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        feats = _features(cfg, loaded, ctx.datasets, transform, device)
        timings["features_s"] = time.perf_counter() - t0
        library, report, lib_times = _library(ctx, loaded, transform, feats)
        timings.update(lib_times)
        log.info("%s: %d concepts (%s); sweeping %d ratios x %d lrs", spec.label, library.num_concepts,
                 library.kind, len(cfg.sweep.ratios), len(cfg.sweep.lrs))
        num_outputs = ctx.card.num_classes
        result = score_representation(feats["train"], feats["val"], feats["test"], library, sweep=cfg.sweep,
                                      multilabel=ctx.multilabel, num_outputs=num_outputs, seed=cfg.seed,
                                      device=device, n_boot=cfg.bootstrap, tau=cfg.library.gumbel_tau,
                                      progress=show_progress(cfg.progress))
        timings["sweep_s"] = result.wall_time_s
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / "backbone.json", {**loaded.to_dict(), "image_size": loaded.image_size or cfg.data.image_size,
                                              "normalize": loaded.input_normalize(cfg.data.normalize),
                                              "seed": cfg.seed})
        library.save(folder / "library")
        save_heads(folder / "heads", result, library, num_outputs, cfg.library.gumbel_tau)
        _save_tensors(folder / "correct.safetensors", {"correct": torch.from_numpy(result.correct.astype(np.float32))})
        _figure_concepts(library, ctx.elements, run_dir / "figures" / f"concepts-{i}.png", spec.label)
        entry = {"label": spec.label, "spec": str(spec), "backbone": loaded.to_dict(), "library": report,
                 "result": result.to_dict(), "timings": {**timings, "total_s": sum(timings.values())},
                 "cached_features": {k: bool(v.get("cached")) for k, v in feats.items()}}
        write_json(folder / "result.json", entry)
        entries.append(entry)
        correct.append(result.correct)
        log.info("%s: IIS %.4f [%.4f, %.4f], probe test accuracy %.4f", spec.label, result.iis, *result.iis_ci,
                 result.probe["test_accuracy"])
    if ctx.elements is not None:
        write_json(run_dir / "elements.json", {"config_digest": cfg.elements.digest(),
                                               "elements": [e.to_dict() for e in ctx.elements.elements]})
    if ctx.text is not None:
        write_json(run_dir / "text_concepts.json", {"backend": ctx.text["backend"],
                                                    "concept_list": ctx.text["concepts"].path,
                                                    "phrases": ctx.text["concepts"].phrases,
                                                    "per_backbone": {e["label"]: e["library"] for e in entries}})
    ratios = [float(s) for s in cfg.sweep.ratios]
    comparison = _comparison(entries, correct, ratios, cfg.bootstrap, cfg.seed)
    title = f"{ctx.card.name}: {cfg.library.kind} concepts (M = {entries[0]['result']['num_concepts']})"
    _figure_arr(entries, run_dir / "figures" / "arr.png", title)
    _write_table(run_dir, entries, comparison)
    metrics = {
        "method": "iis", "dataset": ctx.card.name, "library": cfg.library.kind, "ratios": ratios,
        "lrs": list(cfg.sweep.lrs), "backbones": entries, "comparison": comparison,
        "shared_timings": ctx.timings, "wall_time_s": time.perf_counter() - start,
        "peak_memory_mb": peak_memory_mb(), "device": str(device),
        "sizes": {k: len(v) for k, v in ctx.datasets.items()}, "command": " ".join(sys.argv),
    }
    write_json(run_dir / "metrics.json", metrics)
    return run_dir


def extract_concepts(cfg: IISConfig) -> Path:
    """Build the concept library of one backbone and write it to a new run folder (no scoring)."""
    from medimg_core.baseline import peak_memory_mb
    from medimg_core.checkpoint import write_json
    from medimg_core.distributed import DistInfo, seed_everything, select_device
    from medimg_core.runs import prepare_run

    start = time.perf_counter()
    if len(cfg.backbones) != 1:
        raise ConfigError(f"extract-concepts builds the library of one backbone; got {len(cfg.backbones)}")
    spec = parse_backbone_spec(cfg.backbones[0])
    device = select_device(cfg.device)
    seed_everything(cfg.seed)
    ctx = _Context(cfg, device)
    if cfg.library.kind == "text":
        ctx.text_scores()
    run_dir = prepare_run(cfg, f"iis-concepts-{cfg.library.kind}", ctx.card.name, spec.name, DistInfo())
    loaded = load_backbone(spec, ctx.in_chans, cfg.seed)
    transform = _transform(cfg, loaded)
    needed = ("train", "val") if cfg.library.kind == "text" else ("train",)
    datasets = {k: ctx.datasets[k] for k in needed}
    feats = _features(cfg, loaded, datasets, transform, device)
    library, report, timings = _library(ctx, loaded, transform, feats)
    library.save(run_dir / "library")
    write_json(run_dir / "backbone.json", loaded.to_dict())
    if ctx.elements is not None:
        write_json(run_dir / "elements.json", {"config_digest": cfg.elements.digest(),
                                               "elements": [e.to_dict() for e in ctx.elements.elements]})
    figure = _figure_concepts(library, ctx.elements, run_dir / "figures" / "concepts.png", spec.label)
    write_json(run_dir / "metrics.json", {
        "method": "iis-extract-concepts", "dataset": ctx.card.name, "backbone": loaded.to_dict(),
        "library": {"kind": library.kind, "num_concepts": library.num_concepts, **report},
        "timings": {**ctx.timings, **timings}, "wall_time_s": time.perf_counter() - start,
        "peak_memory_mb": peak_memory_mb(), "figure": str(figure) if figure else None,
        "command": " ".join(sys.argv)})
    return run_dir


def load_elements(run_dir: Path, dataset: Any, cfg: IISConfig) -> ElementDataset:
    """The visual elements of a run (elements.json) over its training `dataset`, to draw them again."""
    meta = json.loads((Path(run_dir) / "elements.json").read_text())
    if meta.get("config_digest") != cfg.elements.digest():
        raise ValueError(f"{run_dir}/elements.json was written with other element settings than config.yaml")
    return ElementDataset(dataset, [Element.from_dict(d) for d in meta["elements"]], cfg.elements)
