"""`iis score` and `iis extract-concepts` end to end: data, backbones, cached features, concept libraries,
the sweep, run folders, the comparison table and the ARR figure.

Run folder of `iis score` (medimg-core's `RUN_LAYOUT` where it applies)::

    config.yaml               the resolved config
    metrics.json              the common keys (method, dataset, backbone, sizes, ...); per backbone: IIS [95% CI],
                              ARR per ratio, probe, timings; the comparison
    table.md, table.csv       one row per backbone
    figures/arr.png           ARR against the sparsity ratio, every backbone overlaid (95% bands)
    figures/concepts-<i>.png  pictures (or phrases) of the first concepts of each backbone's library
    card.json                 the dataset card
    elements.json             the visual elements (source image, kind, box), shared by the backbones
    text_concepts.json        the text concept filters (text library only)
    backbones/<i>-<label>/    backbone.json, result.json, correct.safetensors (per test sample, for paired
                              comparisons) and heads/: the backbone's self-contained checkpoint (`iis.heads`:
                              heads, library, backbone, preprocessing, concept pictures)
    checkpoints/best          the first backbone's heads/ (a link; a copy where links cannot be made): what
                              `InterpretabilityScore.from_pretrained(RUN)` and `load_pretrained(RUN)` load
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from iis.concepts import ConceptLibrary, Element, ElementDataset, build_visual_library, extract_elements
from iis.config import IISConfig
from iis.heads import PICTURE_SIZE, ScoredBackbone, head_state
from iis.score import bootstrap_iis_difference
from iis.sweep import SATURATION_IIS, IISResult, score_representation
from iis.text import build_text_library, find_concept_list, load_concept_list, make_backend
from medimg_core.checkpoint import write_json
from medimg_core.config import ConfigError, config_to_dict
from medimg_core.data.preprocess import DataConfig, Preprocess, load_split
from medimg_core.data.transforms import TransformConfig, eval_transform
from medimg_core.distributed import DistInfo, seed_everything, select_device
from medimg_core.estimator import with_transform
from medimg_core.experiment import Splits
from medimg_core.features import FeatureCache
from medimg_core.figures import PAPER_RC, image_grid, save_figure
from medimg_core.models.specs import LoadedBackbone, load_backbone, parse_backbone_spec
from medimg_core.runs import Run, peak_memory_mb, prepare_run, setup_logging, slug
from medimg_core.training import show_progress

# head_state lives in iis.heads; it stays importable from here, where iis 0.1 had it
__all__ = ["backbone_dirs", "extract_concepts", "head_state", "load_datasets", "load_elements", "load_splits",
           "run_score"]

log = logging.getLogger("medimg")
SPLITS = ("train", "val", "test")
#: what each split does in `iis score`
SPLIT_ROLES = {"train": "concept library and head training", "val": "selection (epoch and learning rate)",
               "test": "scored (IIS, ARR and their intervals)"}


def load_splits(cfg: IISConfig) -> Splits:
    """Train, val and test datasets of `cfg.data` (no transform yet: each backbone sets its eval transform)."""
    if not cfg.data.root:
        raise ConfigError("--root (data.root) is required: the dataset folder or file")
    data = {k: load_split(cfg.data, k) for k in ("train", "val", "test")}
    return Splits(data["train"], data["val"], data["test"], data["train"].card)


def load_datasets(cfg: IISConfig) -> dict[str, Any]:
    """`load_splits` as a {"train", "val", "test"} dict (the name this had before `Splits`)."""
    splits = load_splits(cfg)
    return {"train": splits.train, "val": splits.val, "test": splits.test}


def _transform(cfg: IISConfig, loaded: LoadedBackbone) -> Any:
    return eval_transform(TransformConfig(size=loaded.image_size or cfg.data.image_size, channels=loaded.in_chans,
                                          normalize=loaded.input_normalize(cfg.data.normalize)))


def _preprocess(cfg: IISConfig, loaded: LoadedBackbone, card: Any) -> Preprocess:
    """What the backbone's features were extracted with (`_transform`), as a checkpoint stores it."""
    data = DataConfig(image_size=loaded.image_size or cfg.data.image_size,
                      normalize=loaded.input_normalize(cfg.data.normalize))
    return Preprocess.from_config(data, card, loaded.in_chans)


def _features(cfg: IISConfig, loaded: LoadedBackbone, datasets: dict[str, Any], transform: Any,
              device: torch.device) -> dict[str, dict[str, Any]]:
    """Pooled features of every dataset (copies with `transform`: the given datasets are not changed)."""
    cache = FeatureCache()
    return {split: cache.get_or_extract(loaded.backbone, with_transform(ds, transform), split=split, device=device,
                                        batch_size=cfg.feature_batch_size, progress=show_progress(cfg.progress))
            for split, ds in datasets.items()}


def _check_task(card: Any) -> bool:
    """True for multi-label tasks; refuses datasets IIS cannot score."""
    if card.num_classes < 2:
        raise ConfigError(f"{card.name}: IIS needs at least two classes")
    return card.task == "multilabel"


class _Context:
    """What the backbones of one run share: data, visual elements, text teacher scores."""

    def __init__(self, cfg: IISConfig, splits: Splits, device: torch.device):
        self.cfg, self.device = cfg, device
        self.splits = splits
        self.datasets = {"train": splits.train, "val": splits.val, "test": splits.test}
        self.card = splits.card
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
        text = ctx.text_scores()
        t0 = time.perf_counter()
        library, report = build_text_library(feats["train"]["features"], feats["val"]["features"],
                                             text["scores"]["train"], text["scores"]["val"], text["concepts"],
                                             cfg.text, cfg.seed, ctx.device)
        report["backend"] = text["backend"]
        timings["library_s"] = time.perf_counter() - t0
        return library, report, timings
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


def _prepare(cfg: IISConfig, ctx: _Context, spec: Any, device: torch.device
             ) -> tuple[LoadedBackbone, dict[str, dict[str, Any]], ConceptLibrary, dict[str, Any], dict[str, float]]:
    """One backbone loaded, its features extracted and its concept library built: (loaded, features, library,
    library report, timings)."""
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
    return loaded, feats, library, report, timings


def _common_phrases(prepared: dict[int, tuple], specs: Sequence[Any]) -> list[str]:
    """The phrases every backbone's text library kept, in the first library's order."""
    libraries = [prepared[i][2] for i in range(len(specs))]
    common = [p for p in libraries[0].names if all(p in lib.names for lib in libraries[1:])]
    if not common:
        own = "; ".join(f"{spec.label}: {lib.num_concepts}" for spec, lib in zip(specs, libraries, strict=True))
        raise ConfigError(f"the backbones' text libraries share no phrase ({own} phrases each), so they cannot be "
                          "compared on the same concepts; pass --text.common_phrases false to score each on its own")
    log.info("text libraries cut to the %d phrases all %d backbones kept (own sizes: %s)", len(common), len(specs),
             ", ".join(str(lib.num_concepts) for lib in libraries))
    return common


def backbone_dirs(run_dir: str | Path) -> list[Path]:
    """The per-backbone folders of a run, in the order the backbones were given."""
    folders = [p for p in (Path(run_dir) / "backbones").glob("*") if (p / "backbone.json").is_file()]
    return sorted(folders, key=lambda p: int(p.name.split("-", 1)[0]))


def _figure_arr(entries: list[dict[str, Any]], path: Path, title: str) -> Path:
    import matplotlib.pyplot as plt

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
            bias = e["result"].get("bias_only", {}).get("arr")
            if bias is not None:
                ax.axhline(bias, color=colour, lw=0.8, ls=":")
        ax.axhline(1.0, color="0.4", lw=0.8, ls="--")
        ax.plot([], [], color="0.4", lw=0.8, ls=":", label="bias-only (majority class) ARR")
        ax.set_xlabel("sparsity ratio s (fraction of concepts zeroed per image)")
        ax.set_ylabel("accuracy retention ratio (ARR)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), fontsize=7, frameon=False)
        fig.tight_layout()
        return save_figure(fig, path)


def _figure_concepts(library: ConceptLibrary, elements: ElementDataset | None, path: Path, label: str,
                     count: int = 24) -> Path | None:
    if library.kind == "text":
        return None
    members = library.members
    if library.kind == "end2end" or elements is None or not members:
        return None
    shown = [(c, m[0]) for c, m in enumerate(members) if m][:count]
    pictures = [elements.picture(i, size=PICTURE_SIZE) for _, i in shown]
    captions = [f"{c}: {elements.elements[i].kind}\n{elements.elements[i].source_id}"[:40] for c, i in shown]
    return image_grid(pictures, captions, path=path, ncols=8,
                      title=f"{label}: first {len(shown)} of {library.num_concepts} {library.kind} concepts",
                      cell_inches=1.4)


def _write_table(run_dir: Path, entries: list[dict[str, Any]], comparison: list[dict[str, Any]]) -> None:
    ratios = [r["ratio"] for r in entries[0]["result"]["per_ratio"]]
    header = ["backbone", "M", "probe test acc", "bias-only ARR", *[f"ARR@{s:g}" for s in ratios], "IIS",
              "IIS 95% CI", "IIS - first [95% CI]"]
    rows = []
    for e, c in zip(entries, comparison, strict=True):
        r = e["result"]
        diff = "" if c["difference"] is None else \
            f"{c['difference']:+.3f} [{c['difference_ci'][0]:+.3f}, {c['difference_ci'][1]:+.3f}]"
        bias = r.get("bias_only", {}).get("arr")  # results written before the floor was recorded have none
        saturated = " (saturated)" if r.get("saturated") else ""
        rows.append([e["label"], str(r["num_concepts"]), f"{r['probe']['test_accuracy']:.4f}",
                     "n/a" if bias is None else f"{bias:.3f}",
                     *[f"{p['arr']:.3f}" for p in r["per_ratio"]], f"{r['iis']:.4f}{saturated}",
                     f"[{r['iis_ci'][0]:.4f}, {r['iis_ci'][1]:.4f}]", diff])
    with (run_dir / "table.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines += ["", "bias-only ARR: the test accuracy of always predicting the training split's majority class, over "
              f"the probe's. (saturated): IIS >= {SATURATION_IIS}, where the score no longer separates representations."]
    (run_dir / "table.md").write_text("\n".join(lines) + "\n")


def _comparison(entries: list[dict[str, Any]], correct: list[np.ndarray], ratios: list[float], n_boot: int,
                seed: int) -> list[dict[str, Any]]:
    out = []
    for i, e in enumerate(entries):
        item = {"label": e["label"], "iis": e["result"]["iis"], "difference": None, "difference_ci": None}
        if i > 0:
            d, lo, hi = bootstrap_iis_difference(correct[i], correct[0], ratios, n_boot=n_boot, seed=seed)
            item.update(difference=d, difference_ci=[lo, hi], reference=entries[0]["label"])
        out.append(item)
    return out


def _scored(cfg: IISConfig, ctx: _Context, loaded: LoadedBackbone, library: ConceptLibrary, result: IISResult
            ) -> ScoredBackbone:
    """The fitted state of one backbone, with the pictures of the elements that show its concepts."""
    scored = ScoredBackbone(
        loaded=loaded, library=library, heads=result.head_states, ratios=result.ratios,
        selected_lr=result.selected_lr, num_outputs=ctx.card.num_classes, tau=cfg.library.gumbel_tau,
        multilabel=ctx.multilabel, preprocess=_preprocess(cfg, loaded, ctx.card), card=ctx.card,
        config=config_to_dict(cfg), score=result.to_dict())
    if ctx.elements is not None:
        scored.pictures = {e: ctx.elements.picture(e, size=PICTURE_SIZE) for e in scored.picture_elements()}
    return scored


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """A .safetensors file written atomically (a resumed run never reads half a file)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)


def _link_best(run: Run, heads: Path) -> None:
    """checkpoints/best -> the first backbone's heads/ (relative link; a copy where links cannot be made)."""
    best = run.checkpoints_dir / "best"
    run.checkpoints_dir.mkdir(exist_ok=True)
    if best.is_symlink() or best.exists():
        return
    try:
        os.symlink(os.path.relpath(heads, run.checkpoints_dir), best, target_is_directory=True)
    except OSError:
        shutil.copytree(heads, best)


def _settle_failed_score(run: Run, exc: BaseException, resumed: bool) -> None:
    """What a scoring that failed leaves behind: nothing, when it was a new run that scored no backbone yet (its
    config, card and log alone would look like a run); else the folder, kept for `iis score --resume`."""
    first = (f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__).splitlines()[0]
    if not resumed and not any((d / "result.json").is_file() for d in backbone_dirs(run.path)):
        setup_logging(None)  # close log.txt before the folder goes
        shutil.rmtree(run.path, ignore_errors=True)
        log.error("the scoring failed before any backbone was scored; its folder %s was removed (%s)", run.path,
                  first)
        return
    log.error("the scoring failed (%s); its folder %s is kept and can be continued with --resume", first, run.path)


def run_score(cfg: IISConfig, resume_dir: str | Path | None = None, splits: Splits | None = None,
              command: Sequence[str] | None = None, split_roles: dict[str, str] | None = None) -> Run:
    """Score every backbone of `cfg.backbones` on one dataset and concept-library recipe; return the run folder.

    `splits` replaces the datasets of `cfg.data` (an estimator's fit on given datasets): the concept library and
    the heads come from `splits.train`, the selection from `splits.val`, and the score from `splits.test`.
    With `resume_dir`, backbones whose result is already in that folder are not scored again.
    """
    start = time.perf_counter()
    if not cfg.backbones:
        raise ConfigError("no backbone to score: give --backbone NAME[:weights] (repeatable)")
    specs = [parse_backbone_spec(b) for b in cfg.backbones]
    device = select_device(cfg.device)
    seed_everything(cfg.seed)
    ctx = _Context(cfg, splits if splits is not None else load_splits(cfg), device)
    if cfg.library.kind == "text":
        ctx.text_scores()  # a bad concept list or backend fails before any feature is extracted
    label = "-vs-".join(dict.fromkeys(s.name for s in specs))
    run = prepare_run(cfg, f"iis-{cfg.library.kind}", ctx.card.name, label, DistInfo(), resume_dir)
    try:
        write_json(run / "card.json", ctx.card.to_dict())
        entries, correct = [], []
        with run.lock():
            common = None
            if cfg.library.kind == "text" and cfg.text.common_phrases and len(specs) > 1:
                # every backbone's text library first, then all of them cut to the phrases they all kept
                prepared = {i: _prepare(cfg, ctx, spec, device) for i, spec in enumerate(specs)}
                common = _common_phrases(prepared, specs)
            for i, spec in enumerate(specs):
                folder = run / "backbones" / f"{i}-{slug(spec.label)}"
                if resume_dir is not None and (folder / "result.json").is_file():
                    kept = json.loads((folder / "result.json").read_text())
                    if common is None or kept["library"].get("common_phrases") == common:
                        log.info("%s: already scored in %s; kept", spec.label, folder)
                        entries.append(kept)
                        correct.append(load_file(str(folder / "correct.safetensors"))["correct"].numpy())
                        continue
                    log.info("%s: scored before on other common phrases; scoring again", spec.label)
                loaded, feats, library, report, timings = (prepared[i] if common is not None
                                                            else _prepare(cfg, ctx, spec, device))
                if common is not None:
                    library = library.subset([library.names.index(p) for p in common])
                    report = {**report, "own_final": report["final"], "final": len(common), "common_phrases": common}
                log.info("%s: %d concepts (%s); sweeping %d ratios x %d lrs", spec.label, library.num_concepts,
                         library.kind, len(cfg.sweep.ratios), len(cfg.sweep.lrs))
                result = score_representation(feats["train"], feats["val"], feats["test"], library, sweep=cfg.sweep,
                                              multilabel=ctx.multilabel, num_outputs=ctx.card.num_classes, seed=cfg.seed,
                                              device=device, n_boot=cfg.bootstrap, tau=cfg.library.gumbel_tau,
                                              progress=show_progress(cfg.progress))
                timings["sweep_s"] = result.wall_time_s
                folder.mkdir(parents=True, exist_ok=True)
                write_json(folder / "backbone.json", {**loaded.to_dict(), "image_size": loaded.image_size or cfg.data.image_size,
                                                      "normalize": loaded.input_normalize(cfg.data.normalize),
                                                      "seed": cfg.seed})
                _scored(cfg, ctx, loaded, library, result).save(folder / "heads")
                _save_tensors(folder / "correct.safetensors",
                              {"correct": torch.from_numpy(result.correct.astype(np.float32))})
                _figure_concepts(library, ctx.elements, run.figures_dir / f"concepts-{i}.png", spec.label)
                entry = {"label": spec.label, "spec": str(spec), "backbone": loaded.to_dict(), "library": report,
                         "result": result.to_dict(), "timings": {**timings, "total_s": sum(timings.values())},
                         "cached_features": {k: bool(v.get("cached")) for k, v in feats.items()}}
                write_json(folder / "result.json", entry)
                entries.append(entry)
                correct.append(result.correct)
                log.info("%s: IIS %.4f [%.4f, %.4f], probe test accuracy %.4f", spec.label, result.iis, *result.iis_ci,
                         result.probe["test_accuracy"])
            _link_best(run, backbone_dirs(run)[0] / "heads")
            if ctx.elements is not None:
                write_json(run / "elements.json", {"config_digest": cfg.elements.digest(),
                                                   "elements": [e.to_dict() for e in ctx.elements.elements]})
            if ctx.text is not None:
                write_json(run / "text_concepts.json", {"backend": ctx.text["backend"],
                                                        "concept_list": ctx.text["concepts"].path,
                                                        "phrases": ctx.text["concepts"].phrases,
                                                        "per_backbone": {e["label"]: e["library"] for e in entries}})
            ratios = [float(s) for s in cfg.sweep.ratios]
            comparison = _comparison(entries, correct, ratios, cfg.bootstrap, cfg.seed)
            title = f"{ctx.card.name}: {cfg.library.kind} concepts (M = {entries[0]['result']['num_concepts']})"
            _figure_arr(entries, run.figures_dir / "arr.png", title)
            _write_table(run.path, entries, comparison)
            run.write_metrics({
                "method": "iis", "dataset": ctx.card.name, "backbone": " vs ".join(e["label"] for e in entries),
                "library": cfg.library.kind, "ratios": ratios,
                "lrs": list(cfg.sweep.lrs), "backbones": entries, "comparison": comparison,
                "shared_timings": ctx.timings, "wall_time_s": time.perf_counter() - start,
                "peak_memory_mb": peak_memory_mb(), "device": str(device),
                "sizes": {k: len(v) for k, v in ctx.datasets.items()}, "split_roles": split_roles or SPLIT_ROLES,
                "command": " ".join(command if command is not None else sys.argv),
            })
    except BaseException as exc:
        _settle_failed_score(run, exc, resumed=resume_dir is not None)
        raise
    return run


def extract_concepts(cfg: IISConfig) -> Run:
    """Build the concept library of one backbone and write it to a new run folder (no scoring)."""
    start = time.perf_counter()
    if len(cfg.backbones) != 1:
        raise ConfigError(f"extract-concepts builds the library of one backbone; got {len(cfg.backbones)}")
    spec = parse_backbone_spec(cfg.backbones[0])
    device = select_device(cfg.device)
    seed_everything(cfg.seed)
    ctx = _Context(cfg, load_splits(cfg), device)
    if cfg.library.kind == "text":
        ctx.text_scores()
    loaded = load_backbone(spec, ctx.in_chans, cfg.seed)  # refused or missing weights: before any folder
    run = prepare_run(cfg, f"iis-concepts-{cfg.library.kind}", ctx.card.name, spec.name, DistInfo())
    try:
        transform = _transform(cfg, loaded)
        needed = ("train", "val") if cfg.library.kind == "text" else ("train",)
        datasets = {k: ctx.datasets[k] for k in needed}
        feats = _features(cfg, loaded, datasets, transform, device)
        library, report, timings = _library(ctx, loaded, transform, feats)
        library.save(run / "library")
        write_json(run / "backbone.json", loaded.to_dict())
        if ctx.elements is not None:
            write_json(run / "elements.json", {"config_digest": cfg.elements.digest(),
                                               "elements": [e.to_dict() for e in ctx.elements.elements]})
        figure = _figure_concepts(library, ctx.elements, run.figures_dir / "concepts.png", spec.label)
        run.write_metrics({
            "method": "iis-extract-concepts", "dataset": ctx.card.name, "backbone": loaded.to_dict(),
            "library": {"kind": library.kind, "num_concepts": library.num_concepts, **report},
            "timings": {**ctx.timings, **timings}, "wall_time_s": time.perf_counter() - start,
            "peak_memory_mb": peak_memory_mb(), "device": str(device), "sizes": {k: len(v) for k, v in datasets.items()},
            "figure": str(figure) if figure else None, "command": " ".join(sys.argv)})
    except BaseException as exc:
        _settle_failed_score(run, exc, resumed=False)  # no backbone scored here: the folder goes
        raise
    return run


def load_elements(run_dir: str | Path, dataset: Any, cfg: IISConfig) -> ElementDataset:
    """The visual elements of a run (elements.json) over its training `dataset`, to draw them again."""
    meta = json.loads((Path(run_dir) / "elements.json").read_text())
    if meta.get("config_digest") != cfg.elements.digest():
        raise ValueError(f"{run_dir}/elements.json was written with other element settings than config.yaml")
    return ElementDataset(dataset, [Element.from_dict(d) for d in meta["elements"]], cfg.elements)
