"""Stages 2-7 of the pipeline, one function each: every stage reads the previous stage's folder and writes a new
folder beside it (see neuron_concepts.folders); stage 1, the opaque model, is neuron_concepts.opaque.

    encode_stage   pooled penultimate features (the linear head's input) of each split, kept in the folder
    train_sae      a sparse autoencoder on the train features
    name_stage     a name for every alive latent, with its source; top-activating image figures
    cav_stage      one concept activation vector per named latent (unit normal of a linear probe)
    select_stage   greedy facility location over the CAVs (squared cosine similarity)
    train_cbm      OMP decomposition over the selected CAVs + logistic regression (C tuned on validation), and
                   the pipeline's model checkpoint (cbm/checkpoints/best: everything to predict from an image)

Each is `stage(previous folder, cfg, pipeline=None) -> its folder`; `pipeline` None writes into the previous
folder's pipeline. The encode and name stages also take `datasets` ({"train", "val"[, "test"]}), the datasets
of a fit in Python, in place of the opaque run's dataset folder.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import save_file
from torch.utils.data import Dataset

from medimg_core.checkpoint import write_json
from medimg_core.config import ConfigError, config_to_dict
from medimg_core.data import DatasetError
from medimg_core.data.preprocess import DataConfig, load_split
from medimg_core.distributed import seed_everything, select_device
from medimg_core.features import FeatureCache
from medimg_core.figures import concept_bar_chart, confusion_matrix_figure, training_curves
from medimg_core.metrics import metrics_with_ci
from medimg_core.training import show_progress
from neuron_concepts.bottleneck import ConceptBottleneck, save_cbm, task_scores, task_targets
from neuron_concepts.cav import concept_matching, concept_vectors
from neuron_concepts.checkpoint import write_checkpoint
from neuron_concepts.config import SPLITS, NeuronConceptsConfig
from neuron_concepts.figures import (
    ImageRows,
    activation_figure,
    latent_mosaics,
    marginal_gains_figure,
    top_images_figure,
    write_names_csv,
)
from neuron_concepts.folders import (
    FEATURES_FILE,
    METHOD,
    features_file,
    finish_stage,
    load_cavs,
    load_features,
    load_names,
    load_selection,
    new_pipeline,
    pipeline_of,
    require_stage,
    settled_stages,
    stage_chain,
    start_stage,
)
from neuron_concepts.naming import (
    auroc_matrix,
    check_sources,
    concept_naming,
    concept_of,
    floor_sweep,
    floors_from_validation,
    holds_threshold,
    make_backend,
    name_latents,
    read_names_file,
    read_reports,
    read_vocabulary,
    top_activating,
    vocabulary_concepts,
)
from neuron_concepts.opaque import eval_datasets, opaque_data, opaque_preprocess, with_eval_transform
from neuron_concepts.sae import encode_all, fit_sae, load_sae, sae_metrics, save_sae
from neuron_concepts.selection import (
    discriminative_scores,
    facility_location,
    facility_value,
    squared_cosine_similarity,
)

log = logging.getLogger("medimg")

Datasets = Mapping[str, Dataset | None]


def _device(cfg: NeuronConceptsConfig) -> torch.device:
    return select_device(cfg.device)


def _progress(cfg: NeuronConceptsConfig) -> bool:
    return show_progress(cfg.progress)


# --------------------------------------------------------------------------- 2. encode


@settled_stages
def encode_stage(opaque_run: str | Path, cfg: NeuronConceptsConfig, pipeline: Path | None = None,
                 datasets: Datasets | None = None) -> Path:
    """Pooled penultimate features (exactly the opaque model's head input) of each split, extracted through the
    medimg-core feature cache and kept in the stage folder; checks head(features) == the model's logits; the
    opaque model's metrics."""
    start = time.perf_counter()
    opaque_run = require_stage(opaque_run, "opaque")
    seed_everything(cfg.seed)
    device = _device(cfg)
    model, mconfig, bcfg, card = opaque_data(opaque_run)
    data = bcfg.data
    if datasets is None and not Path(data.root).expanduser().exists() and cfg.data.root \
            and Path(cfg.data.root).expanduser().exists():
        data.root = str(Path(cfg.data.root).expanduser().resolve())  # the data moved: --data.root says where
    cfg = copy.deepcopy(cfg)  # later stages read the data and model of the opaque run, whatever cfg said
    cfg.data, cfg.model = data, bcfg.model
    # before any folder is made: a missing dataset fails cleanly
    encoded = eval_datasets(data, card) if datasets is None else with_eval_transform(datasets, data, card)
    if pipeline is None and pipeline_of(opaque_run) is None:
        pipeline = new_pipeline(cfg, card.name, mconfig["backbone"])
    folder = start_stage("encode", opaque_run, cfg, pipeline)
    cache = FeatureCache()
    splits: dict[str, Any] = {}
    feats: dict[str, Any] = {}
    for split, ds in encoded.items():
        out = cache.get_or_extract(model.backbone, ds, split=split, device=device, batch_size=cfg.encode.batch_size,
                                   progress=_progress(cfg))
        cached_path, _ = cache.paths(card.name, out["key"])
        feats[split] = out
        save_file({k: out[k].contiguous() for k in ("features", "targets", "concepts")},
                  str(folder / features_file(split)))
        splits[split] = {"key": out["key"], "file": features_file(split), "n": len(out["ids"]),
                         "cached": out["cached"], "dataset_split": getattr(ds, "split", split),
                         "cache_entry": str(cached_path), "ids": [str(i) for i in out["ids"]]}
    head = model.head
    # the features are exactly the head's input: the model's logits on a few images equal head(features)
    check = next(s for s in ("test", "val", "train") if s in encoded)
    model = model.to(device).eval()
    n_check = min(16, len(encoded[check]))
    with torch.no_grad():
        images = torch.stack([encoded[check][i]["image"] for i in range(n_check)]).to(device)
        direct = model(images).float().cpu()
        via = head(feats[check]["features"][:n_check].to(device)).float().cpu()
    head_diff = float((direct - via).abs().max()) if n_check else 0.0
    if head_diff > 1e-3 * max(1.0, float(direct.abs().max())):
        raise RuntimeError(f"encode: head(features) differs from the model's logits by {head_diff:.3g}; the cached "
                           "features are not the head's input")
    save_file({"weight": head.weight.detach().cpu().contiguous(), "bias": head.bias.detach().cpu().contiguous()},
              str(folder / "head.safetensors"))
    write_json(folder / FEATURES_FILE, {
        "opaque_run": os.path.relpath(opaque_run, folder), "data": config_to_dict(data), "card": card.to_dict(),
        "num_features": int(head.in_features), "in_chans": mconfig["in_chans"], "backbone": mconfig["backbone"],
        "splits": splits,
    })
    opaque: dict[str, Any] = {}
    for split in ("val", "test"):
        if split not in feats:
            continue
        with torch.no_grad():
            logits = head(feats[split]["features"].to(device)).float().cpu().numpy()
        opaque[split] = metrics_with_ci(card.task, task_targets(card.task, feats[split]["targets"]),
                                        task_scores(card.task, logits), list(card.class_names), n_boot=cfg.bootstrap,
                                        seed=cfg.seed)
    metrics = {"stage": "encode", "dataset": card.name, "task": card.task, "backbone": mconfig["backbone"],
               "feature_dim": int(head.in_features), "sizes": {k: v["n"] for k, v in splits.items()},
               "cached": {k: v["cached"] for k, v in splits.items()}, "head_check_max_abs_diff": head_diff,
               "opaque": opaque}
    baseline_metrics = opaque_run / "metrics.json"
    if baseline_metrics.is_file() and "test" in (baseline := json.loads(baseline_metrics.read_text())):
        metrics["opaque_run_test_accuracy"] = baseline["test"].get("accuracy")
    finish_stage(folder, metrics, start)
    log.info("encode: %s features of width %d; opaque %s accuracy %.4f", metrics["sizes"], metrics["feature_dim"],
             check, opaque[check]["accuracy"] if check in opaque else float("nan"))
    return folder


# --------------------------------------------------------------------------- 3. sparse autoencoder


@settled_stages
def train_sae(encode_dir: str | Path, cfg: NeuronConceptsConfig, pipeline: Path | None = None) -> Path:
    """Train the sparse autoencoder on the encoded train features; report R^2, L0 and dead latents per split."""
    start = time.perf_counter()
    encode_dir = require_stage(encode_dir, "encode")
    feats = load_features(encode_dir)
    folder = start_stage("sae", encode_dir, cfg, pipeline)
    splits = [s for s in SPLITS if s in feats]
    t0 = time.perf_counter()
    sae, history, info = fit_sae(feats["train"]["features"], cfg.sae, cfg.seed, _device(cfg),
                                 feats["val"]["features"] if "val" in feats else None, _progress(cfg))
    fit_s = time.perf_counter() - t0
    save_sae(sae, folder)
    write_json(folder / "history.json", history)
    per_split = {s: sae_metrics(sae, feats[s]["features"]) for s in splits}
    training_curves(history, folder / "figures" / "sae_training.png")
    activation_figure(sae, feats["train"]["features"], folder / "figures" / "latent_frequency.png")
    metrics = finish_stage(folder, {"stage": "sae", "kind": cfg.sae.kind, "n_latents": sae.n_latents,
                                    "d_in": sae.d_in, **per_split, "fit_time_s": fit_s, **info}, start)
    log.info("SAE: train R^2 %.3f, L0 %.1f, dead %.1f%%; fitted in %.1f s", metrics["train"]["r2"],
             metrics["train"]["l0"], 100 * metrics["train"]["dead_fraction"], fit_s)
    return folder


# --------------------------------------------------------------------------- 4. naming


def _split_dataset(feats: dict[str, Any], split: str, datasets: Datasets | None) -> Dataset:
    """The dataset behind one encoded split (given, or from the encode stage's data config), checked by its ids."""
    if datasets is not None and datasets.get(split) is not None:
        ds, where = datasets[split], f"the given {split} dataset"
    else:
        data = DataConfig(**dict(feats["meta"]["data"]))
        if not data.root:
            raise DatasetError(f"the {split} features were encoded from a dataset given in Python (no data.root); "
                               "pass the same datasets to this stage (datasets=...)")
        ds = load_split(data, split)
        where = f"the {split} split of {data.root}"
    if [str(i) for i in ds.ids] != feats[split]["ids"]:
        raise RuntimeError(f"{where} no longer matches the encoded features (ids differ)")
    return ds


@settled_stages
def name_stage(sae_dir: str | Path, cfg: NeuronConceptsConfig, pipeline: Path | None = None,
               datasets: Datasets | None = None) -> Path:
    """Name every alive latent from the configured sources; per-latent top-image figures; with concept
    annotations, how well the latents match each annotated concept (AUROC; best latent chosen on train,
    scored on test)."""
    start = time.perf_counter()
    sae_dir = require_stage(sae_dir, "sae")
    chain = stage_chain(sae_dir)
    feats = load_features(chain["encode"])
    card = feats["card"]
    sae = load_sae(sae_dir)
    nc = cfg.naming
    sources = check_sources(nc, card.num_concepts)
    skipped = [s for s in nc.sources if s not in sources]
    if skipped:
        log.info("naming: skipping sources %s (not configured or no annotations)", skipped)
    dataset = _split_dataset(feats, "train", datasets)
    folder = start_stage("name", sae_dir, cfg, pipeline)
    A = encode_all(sae, feats["train"]["features"]).numpy()
    alive = (A > 0).any(axis=0)
    images = ImageRows(dataset)
    reports = None
    if nc.reports:
        by_id = read_reports(nc.reports, nc.report_id_column, nc.report_column)
        reports = [by_id.get(i) for i in feats["train"]["ids"]]
        log.info("naming: reports for %d of %d train images", sum(r is not None for r in reports), len(reports))
    concepts = feats["train"]["concepts"].numpy()
    vocabulary = read_vocabulary(nc.vocabulary) if nc.vocabulary else None
    # a vocabulary's `term => concept` lines (for scoring only: the naming reads the terms alone)
    term_concepts = vocabulary_concepts(nc.vocabulary) if nc.vocabulary else None
    holds = holds_threshold(nc)
    min_auroc, min_z, floors_val = nc.min_auroc, nc.min_z, None
    if nc.floor_from == "val":  # the floors chosen on validation; its annotations serve that choice only
        if "val" not in feats:
            raise ConfigError("naming.floor_from val: this pipeline encoded no val split to choose the naming floors "
                              "on; set naming.floor_from given")
        floors_val = floors_from_validation(
            A, encode_all(sae, feats["val"]["features"]).numpy(), feats["val"]["concepts"].numpy(),
            list(card.concept_names), sources, alive=alive, concepts=concepts, negations=nc.negations,
            vocabulary=vocabulary, reports=reports, term_concepts=term_concepts, top_n=nc.top_n, holds=holds,
            auroc_floors=nc.min_auroc_grid, z_floors=nc.min_z_grid)
        min_auroc = floors_val.get("annotations", {}).get("chosen", min_auroc)
        min_z = floors_val.get("vocabulary", {}).get("chosen", min_z)
        for chosen in floors_val.values():
            log.info("naming: %s %s chosen on validation (F1 of named-and-holds %.3f)", chosen["key"],
                     chosen["chosen"], next(r["f1"] for r in chosen["grid"] if r["floor"] == chosen["chosen"]))
    names = name_latents(
        A, sources, alive=alive,
        concepts=concepts if card.num_concepts else None, concept_names=list(card.concept_names),
        negations=nc.negations, vocabulary=vocabulary,
        reports=reports, min_z=min_z, names=read_names_file(nc.names_file) if nc.names_file else None,
        min_auroc=min_auroc,
        backend=make_backend(nc.backend, str(_device(cfg))) if nc.backend else None, images=images,
        top_n=nc.top_n, seed=cfg.seed, progress=_progress(cfg))
    top = top_activating(A, nc.top_n)
    records = []
    for k, v in names.items():
        rec = v.to_dict()
        rec["frequency"] = float((A[:, k] > 0).mean())
        rec["top_ids"] = [feats["train"]["ids"][i] for i in top[k] if A[i, k] > 0]
        records.append(rec)
    write_json(folder / "names.json", records)
    write_names_csv(folder / "names.csv", records)
    counts: dict[str, int] = {}
    for v in names.values():
        counts[v.source] = counts.get(v.source, 0) + 1
    named = [v for v in names.values() if v.source != "none"]
    metrics: dict[str, Any] = {"stage": "name", "n_latents": int(A.shape[1]), "alive": int(alive.sum()),
                               "sources_used": sources, "sources": counts, "named": len(named),
                               "unnamed": len(names) - len(named), "min_auroc": min_auroc, "min_z": min_z,
                               "floor_from": nc.floor_from, "holds_auroc": holds,
                               "distinct_names": len({v.name for v in named})}
    if floors_val is not None:
        metrics["floors_val"] = floors_val
    if card.num_concepts:
        concept_names = list(card.concept_names)
        auroc_train = auroc_matrix(A, concepts)
        if "val" in feats:  # what each floor would do: names chosen on train, checked on validation
            A_val = encode_all(sae, feats["val"]["features"]).numpy()
            auroc_val = auroc_matrix(A_val, feats["val"]["concepts"].numpy())
            live = np.flatnonzero(alive)
            metrics["floor_sweep_val"] = floor_sweep(auroc_train[live], auroc_val[live], nc.negations)
        if "test" in feats:  # chosen on train, scored on test (a fit in Python may have no test split)
            A_test = encode_all(sae, feats["test"]["features"]).numpy()
            auroc_test = auroc_matrix(A_test, feats["test"]["concepts"].numpy())
            matching = concept_matching(A, concepts, A_test, feats["test"]["concepts"].numpy(), concept_names, names)
            metrics["concept_matching"] = matching
            metrics["matched_test_auroc_0.8"] = sum(1 for r in matching if (r["test_auroc"] or 0) >= 0.8)
            metrics["matched_test_auroc_0.9"] = sum(1 for r in matching if (r["test_auroc"] or 0) >= 0.9)
            unknown = sorted({c for t, c in (term_concepts or {}).items()
                              if concept_of(t, concept_names, term_concepts) is None})
            if unknown:
                log.warning("naming: the vocabulary maps terms to %s, which are not annotated concepts of this "
                            "dataset (%s); those terms count as no concept", unknown, concept_names)
            rows = concept_naming(names, concept_names, auroc_train, auroc_test, holds, term_concepts)
            metrics["concept_naming_test"] = rows
            metrics["concepts_named_confirmed_test"] = sum(r["confirmed"] for r in rows)
            relevant = (card.extra or {}).get("rule_variables")  # a synthetic set's label rule: what the label needs
            if isinstance(relevant, list) and relevant:
                metrics["label_relevant"] = list(relevant)
                metrics["relevant_named_confirmed_test"] = sum(r["confirmed"] for r in rows if r["concept"] in relevant)
    order = sorted(names, key=lambda k: -(names[k].score or 0.0))
    limit = len(order) if nc.figures is None else max(0, nc.figures)
    latent_mosaics(order[:limit], names, A, top, images, folder / "latents", nc.thumb_size)
    highlight = [r["best_latent"] for r in metrics.get("concept_matching", [])] or order[:6]
    top_images_figure(highlight[:8], names, A, top, images, folder / "figures" / "top_latents.png")
    finish_stage(folder, metrics, start)
    log.info("naming: %d of %d alive latents named (%s)", metrics["named"], metrics["alive"], counts)
    return folder


# --------------------------------------------------------------------------- 5. CAVs


@settled_stages
def cav_stage(name_dir: str | Path, cfg: NeuronConceptsConfig, pipeline: Path | None = None) -> Path:
    """A concept activation vector for every named latent."""
    start = time.perf_counter()
    name_dir = require_stage(name_dir, "name")
    chain = stage_chain(name_dir)
    feats = load_features(chain["encode"])
    sae = load_sae(chain["sae"])
    names = load_names(name_dir, sae.n_latents)
    folder = start_stage("cav", name_dir, cfg, pipeline)
    H = feats["train"]["features"]
    A = encode_all(sae, H).numpy()
    latents = [k for k, v in names.items() if v.source != "none" or not cfg.cav.named_only]
    if not latents:
        best = max((v.score for v in names.values() if v.score is not None), default=None)
        raise ConfigError(f"cav: no latent of {name_dir} has a name, so there is nothing to build named concepts from"
                          + (f" (the best annotation score, {best:.3f}, is below the name stage's naming.min_auroc)"
                             if best is not None else "")
                          + "; rerun `neuron-concepts name` with another source or a lower --naming.min_auroc, or "
                          "set cav.named_only false to build concepts from unnamed latents")
    vectors, kept, records = concept_vectors(H.numpy().astype(np.float64), A, latents, cfg.cav, cfg.seed,
                                             _progress(cfg))
    if not kept:
        raise ConfigError(f"cav.min_positives {cfg.cav.min_positives}: no latent has that many active train images "
                          "and a name; nothing to build concepts from (lower cav.min_positives or check the SAE)")
    save_numpy({"cavs": vectors.astype(np.float32), "latents": np.asarray(kept, dtype=np.int64)},
               str(folder / "cavs.safetensors"))
    for r in records:
        r.update(name=names[r["latent"]].name, source=names[r["latent"]].source, score=names[r["latent"]].score)
    write_json(folder / "cavs.json", records)
    acc = [r["probe_accuracy"] for r in records]
    finish_stage(folder, {"stage": "cav", "candidates": len(latents), "cavs": len(kept),
                          "skipped": len(latents) - len(kept), "mean_probe_accuracy": float(np.mean(acc))}, start)
    log.info("cav: %d concept activation vectors (%d latents skipped)", len(kept), len(latents) - len(kept))
    return folder


# --------------------------------------------------------------------------- 6. selection


@settled_stages
def select_stage(cav_dir: str | Path, cfg: NeuronConceptsConfig, pipeline: Path | None = None) -> Path:
    """Greedy facility-location selection of K concepts over the CAVs (squared cosine similarity),
    optionally mixed with a class-discriminative term; the ranking and the marginal gains."""
    start = time.perf_counter()
    cav_dir = require_stage(cav_dir, "cav")
    cavs, latents, records = load_cavs(cav_dir)
    folder = start_stage("select", cav_dir, cfg, pipeline)
    k = min(cfg.select.k, len(cavs))
    if k < cfg.select.k:
        log.warning("select: %d concepts requested, only %d CAVs exist; selecting all", cfg.select.k, len(cavs))
    modular = None
    if cfg.select.discriminative_weight > 0:
        feats = load_features(stage_chain(cav_dir)["encode"])
        task = feats["card"].task
        d = discriminative_scores(feats["train"]["features"].numpy().astype(np.float64),
                                  task_targets(task, feats["train"]["targets"]), cavs, task)
        modular = cfg.select.discriminative_weight * len(cavs) * d  # on the scale of a facility-location gain
    t0 = time.perf_counter()
    ranking, gains = facility_location(cavs, k, modular=modular)
    select_s = time.perf_counter() - t0
    value = facility_value(squared_cosine_similarity(cavs), ranking, modular)
    selection = [{"rank": i, "cav_index": int(j), "latent": int(latents[j]), "name": records[j]["name"],
                  "source": records[j]["source"], "score": records[j].get("score"), "gain": float(g)}
                 for i, (j, g) in enumerate(zip(ranking, gains, strict=True))]
    write_json(folder / "selection.json", selection)
    marginal_gains_figure(gains, folder / "figures" / "marginal_gains.png")
    finish_stage(folder, {"stage": "select", "candidates": len(cavs), "k": k, "objective": value,
                          "distinct_names": len({s["name"] for s in selection}), "select_time_s": select_s,
                          "discriminative_weight": cfg.select.discriminative_weight}, start)
    log.info("select: %d of %d concepts, F(S) = %.2f, %d distinct names", k, len(cavs), value,
             len({s["name"] for s in selection}))
    return folder


# --------------------------------------------------------------------------- 7. concept bottleneck


@settled_stages
def train_cbm(select_dir: str | Path, cfg: NeuronConceptsConfig, pipeline: Path | None = None) -> Path:
    """OMP decomposition of every embedding over the selected CAVs, then logistic regression with C tuned on
    validation; test metrics of the CBM and of the opaque model with 95% bootstrap intervals. Writes the
    pipeline's model as checkpoints/best: the opaque classifier, the SAE, the selected concept vectors and the
    bottleneck, with the preprocessing (what `ConceptsFromNeurons.from_pretrained` and `explain` read)."""
    start = time.perf_counter()
    select_dir = require_stage(select_dir, "select")
    chain = stage_chain(select_dir)
    feats = load_features(chain["encode"])
    card = feats["card"]
    cavs, _latents, _ = load_cavs(chain["cav"])
    selection = load_selection(select_dir, len(cavs))
    splits = [s for s in SPLITS if s in feats]
    held_out = [s for s in ("val", "test") if s in feats]
    if cfg.cbm.C is None and "val" not in feats:
        raise ConfigError("cbm.C is None (tuned on validation), but this pipeline encoded no val split; set cbm.C")
    folder = start_stage("cbm", select_dir, cfg, pipeline)
    index = [s["cav_index"] for s in selection]
    D = cavs[index]
    concept_names = [s["name"] for s in selection]
    cc = cfg.cbm
    H = {s: feats[s]["features"].numpy().astype(np.float64) for s in splits}
    y = {s: task_targets(card.task, feats[s]["targets"]) for s in splits}
    t0 = time.perf_counter()
    cbm = ConceptBottleneck(D, n_nonzero=cc.n_nonzero, fit_intercept=cc.fit_intercept, features=cc.features, C=cc.C,
                            task=card.task, c_search_steps=cc.c_search_steps, max_iter=cc.max_iter,
                            concept_names=concept_names, class_names=list(card.class_names),
                            naming_scores=[s.get("score") for s in selection])
    cbm.fit(H["train"], y["train"], H.get("val"), y.get("val"))
    fit_s = time.perf_counter() - t0
    latents, sources = [s["latent"] for s in selection], [s["source"] for s in selection]
    save_cbm(cbm, folder, latents, sources)
    W, b = feats["head"]["weight"].double().numpy(), feats["head"]["bias"].double().numpy()
    results: dict[str, Any] = {}
    for split in held_out:
        proba = cbm.predict_proba(H[split])
        opaque_scores = task_scores(card.task, H[split] @ W.T + b)
        results[split] = {
            "cbm": metrics_with_ci(card.task, y[split], proba, list(card.class_names), n_boot=cfg.bootstrap,
                                   seed=cfg.seed),
            "opaque": metrics_with_ci(card.task, y[split], opaque_scores, list(card.class_names),
                                      n_boot=cfg.bootstrap, seed=cfg.seed),
        }
        coef, intercept = cbm.decompose(H[split])
        recon = coef @ D + intercept[:, None]
        sst = ((H[split] - H[split].mean(0)) ** 2).sum()
        results[split]["decomposition_r2"] = float(1 - ((H[split] - recon) ** 2).sum() / sst)
        results[split]["mean_nonzero"] = float((coef != 0).sum(1).mean())
        head_recon = task_scores(card.task, recon @ W.T + b)
        if card.task == "multilabel":
            agree = float(((proba > 0.5) == (opaque_scores > 0.5)).mean())
            head_acc = float(((head_recon > 0.5) == y[split]).mean())
        else:
            agree = float((proba.argmax(1) == opaque_scores.argmax(1)).mean())
            head_acc = float((head_recon.argmax(1) == y[split]).mean())
        results[split]["fidelity_to_opaque"] = agree
        results[split]["opaque_head_on_reconstruction_accuracy"] = head_acc
    shown = held_out[-1] if held_out else "train"  # test, where there is one
    contrib = cbm.contributions(H[shown])
    importance = np.abs(contrib.values).mean(0)
    top = np.argsort(-importance)[:20]
    scores = [s.get("score") for s in selection]
    concept_bar_chart([f"{concept_names[i]} (#{selection[i]['latent']}; {_score_text(scores[i], sources[i])})"
                       for i in top], importance[top], folder / "figures" / "concept_importance.png",
                      title=f"mean |contribution| to the predicted class logit ({shown})", xlabel="mean |contribution|")
    coef_shown, _ = cbm.decompose(H[shown])
    write_concepts_table(folder / "concepts.md", selection, importance, coef_shown, shown)
    if card.task != "multilabel":
        confusion_matrix_figure(y[shown], cbm.predict(H[shown]), list(card.class_names),
                                folder / "figures" / f"confusion_{shown}.png")
    metrics: dict[str, Any] = {
        "method": METHOD, "stage": "cbm", "dataset": card.name, "backbone": feats["meta"]["backbone"],
        "task": card.task, "k": len(selection), "C": cbm.C_, "n_nonzero": cbm.n_nonzero, "features": cc.features,
        "fit_time_s": fit_s,
    }
    for split in ("test", "val"):
        if split in results:
            metrics.update({split: results[split]["cbm"], f"opaque_{split}": results[split]["opaque"]})
    if "test" in results:
        test = results["test"]
        metrics["accuracy_gap"] = test["opaque"]["accuracy"] - test["cbm"]["accuracy"]
        metrics.update({f"{k}_test": test[k] for k in ("decomposition_r2", "mean_nonzero", "fidelity_to_opaque",
                                                        "opaque_head_on_reconstruction_accuracy")})
    metrics["top_concepts"] = [{"name": concept_names[i], "latent": selection[i]["latent"],
                                "source": sources[i], "naming_score": scores[i],
                                "mean_abs_contribution": float(importance[i])} for i in top]
    metrics.update(sizes={s: len(H[s]) for s in splits}, device=str(_device(cfg)))
    write_model_checkpoint(folder, chain, cfg, cbm, latents, sources)
    metrics = finish_stage(folder, metrics, start)
    if "test" in metrics:
        log.info("CBM: test accuracy %.4f (opaque %.4f); C %.3g", metrics["test"]["accuracy"],
                 metrics["opaque_test"]["accuracy"], cbm.C_)
    return folder


def _score_text(score: float | None, source: str) -> str:
    """A concept's naming score as shown beside its name: "gt-attribute 0.912", "external" (no score)."""
    return source if score is None else f"{source} {score:.3f}"


def write_concepts_table(path: Path, selection: list[dict[str, Any]], importance: np.ndarray, coef: np.ndarray,
                         split: str) -> None:
    """concepts.md of a cbm stage (shown by `medimg report`): every selected concept with its latent, name, the
    name's source and score, its mean |contribution| on `split`, and how often its coefficient is positive or
    negative there (a negative coefficient means the image lies on the concept's opposite side).

    importance (K,); coef (N, K) the decomposition coefficients of the split's images."""
    lines = [f"# Selected concepts ({len(selection)})", "",
             f"Naming score: the name's score from its source (gt-attribute: train AUROC of the latent for the named "
             f"concept; vocab-enrichment: z-score). Coefficients on {split} ({len(coef)} images): a positive one adds "
             "the concept's direction to the image's decomposition, a negative one its opposite.", "",
             "| rank | latent | name | source | naming score | mean abs contribution | coef > 0 | coef < 0 |",
             "|---|---|---|---|---|---|---|---|"]
    for i, s in enumerate(selection):
        score = "" if s.get("score") is None else f"{s['score']:.3f}"
        lines.append(f"| {i + 1} | {s['latent']} | {s['name']} | {s['source']} | {score} | {importance[i]:.4g} | "
                     f"{int((coef[:, i] > 0).sum())} | {int((coef[:, i] < 0).sum())} |")
    path.write_text("\n".join(lines) + "\n")


def write_model_checkpoint(cbm_dir: Path, chain: dict[str, Path], cfg: NeuronConceptsConfig, cbm: ConceptBottleneck,
                           latents: list[int], sources: list[str]) -> Path:
    """cbm_dir/checkpoints/best: everything that predicts and explains from an image (see neuron_concepts.checkpoint),
    gathered from the pipeline's opaque run and SAE stage."""
    model, config, bcfg, card = opaque_data(chain["opaque"])
    sae = load_sae(chain["sae"])
    stages = {stage: os.path.relpath(folder, cbm_dir) for stage, folder in chain.items()}
    return write_checkpoint(cbm_dir / "checkpoints" / "best", cfg, card, opaque_preprocess(config, bcfg, card),
                            model, config, sae, cbm, latents, sources, source_stages=stages)
