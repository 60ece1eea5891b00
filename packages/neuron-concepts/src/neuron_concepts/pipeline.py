"""The whole pipeline in one folder: every stage in order, resumable, and its summary.

    pipeline = run_pipeline(cfg)                                   # the command line's `neuron-concepts run`
    pipeline = run_pipeline(cfg, opaque_run="runs/<baseline run>")  # dissect a trained baseline
    pipeline = run_pipeline(cfg, resume=pipeline)                   # finish an interrupted one
    pipeline = run_pipeline(cfg, datasets={"train": train, "val": val})   # on datasets given in Python
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from medimg_core.checkpoint import write_json
from medimg_core.config import ConfigError
from medimg_core.data import DatasetCard, load_dataset
from medimg_core.pretrained import read_checkpoint_config
from medimg_core.runs import peak_memory_mb
from neuron_concepts.config import NeuronConceptsConfig
from neuron_concepts.folders import (
    METHOD,
    PIPELINE_FILE,
    finished_child,
    new_pipeline,
    record_stage,
    require_stage,
)
from neuron_concepts.naming import check_sources
from neuron_concepts.opaque import resume_opaque, train_opaque
from neuron_concepts.stages import cav_stage, encode_stage, name_stage, select_stage, train_cbm, train_sae

log = logging.getLogger("medimg")

#: the stages after the opaque model, with the function that runs each (the encode and name stages read the data)
STAGE_FUNCTIONS: tuple[tuple[str, Callable[..., Path]], ...] = (
    ("encode", encode_stage), ("sae", train_sae), ("name", name_stage), ("cav", cav_stage), ("select", select_stage),
    ("cbm", train_cbm))
DATA_STAGES = ("encode", "name")


def run_pipeline(cfg: NeuronConceptsConfig, opaque_run: str | Path | None = None,
                 resume: str | Path | None = None, datasets: Mapping[str, Dataset | None] | None = None,
                 command: Sequence[str] | None = None) -> Path:
    """All stages in order (the opaque stage is skipped when `opaque_run` is given); returns the pipeline
    folder, whose metrics.json summarises the stages and their wall times.

    `resume`: an interrupted pipeline folder (`cfg` is then its saved config). Its opaque training is
    finished, every stage that finished is kept, and the stages from the first unfinished one on run again
    in new folders (`cav-2`, ...).
    `datasets` ({"train", "val"[, "test"]}: medimg datasets, never modified) replace cfg.data's dataset folder
    (`ConceptsFromNeurons.fit`); `command` is what the opaque run's metrics.json records as its command."""
    start = time.perf_counter()
    times: dict[str, float] = {}
    if resume is None:  # the naming sources, before anything trains (the name stage would fail after the SAE)
        check_sources(cfg.naming, _card(cfg, opaque_run, datasets).num_concepts)
    if resume is not None:
        if datasets is not None:
            raise ValueError("run_pipeline: resume continues a pipeline on its own data; datasets cannot be given")
        pipeline = Path(resume).resolve()
        if not (pipeline / PIPELINE_FILE).is_file():
            raise FileNotFoundError(f"{pipeline}: not a neuron-concepts pipeline folder (no {PIPELINE_FILE})")
        t = time.perf_counter()
        opaque = resume_opaque(pipeline, cfg.progress)
        times["opaque"] = time.perf_counter() - t
        opaque_run = None if opaque.parent == pipeline else opaque
    elif opaque_run is None:
        pipeline = new_pipeline(cfg, datasets["train"].card.name if datasets else None)
        t = time.perf_counter()
        opaque = train_opaque(cfg, pipeline, datasets, command)
        times["opaque"] = time.perf_counter() - t
    else:
        opaque = require_stage(opaque_run, "opaque")
        _, conf = read_checkpoint_config(opaque)
        pipeline = new_pipeline(cfg, conf["card"]["name"], conf["backbone"])
        record_stage(pipeline, "opaque", opaque)
    folders: dict[str, Path] = {"opaque": opaque}
    prev: Path = opaque
    for stage, fn in STAGE_FUNCTIONS:
        done = finished_child(pipeline, stage, prev) if resume is not None else None
        if done is not None:
            log.info("resume: keeping the finished %s stage %s", stage, done)
            prev = folders[stage] = done
            continue
        resume = None  # every later stage reads this new folder: run them all
        t = time.perf_counter()
        extra = {"datasets": datasets} if datasets is not None and stage in DATA_STAGES else {}
        prev = fn(prev, cfg, pipeline, **extra)
        times[stage] = time.perf_counter() - t
        folders[stage] = prev
    summary = pipeline_summary(folders)
    summary["wall_time_s"] = {**times, "total": time.perf_counter() - start}
    summary["opaque_trained_here"] = opaque_run is None
    write_json(pipeline / "metrics.json", summary)
    return pipeline


def _card(cfg: NeuronConceptsConfig, opaque_run: str | Path | None,
          datasets: Mapping[str, Dataset | None] | None) -> DatasetCard:
    """The card of the data a new pipeline will name latents on: the given train dataset's, the opaque run's, or
    that of cfg.data's dataset (its train split, read without training anything)."""
    if datasets is not None:
        return datasets["train"].card
    if opaque_run is not None:
        _, conf = read_checkpoint_config(require_stage(opaque_run, "opaque"))
        return DatasetCard.from_dict(conf["card"])
    data = cfg.data
    if not data.root:
        raise ConfigError("data.root is required: the dataset folder (--root)")
    return load_dataset(data.dataset, data.root, data.train_split, **data.options).card


def pipeline_summary(folders: dict[str, Path]) -> dict[str, Any]:
    """The headline numbers of every stage, from their metrics.json."""
    def read(stage: str) -> dict[str, Any]:
        path = folders[stage] / "metrics.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    enc, sae, nm, cv, sel, cbm = (read(s) for s in ("encode", "sae", "name", "cav", "select", "cbm"))
    out: dict[str, Any] = {
        "method": METHOD, "dataset": enc.get("dataset"), "backbone": enc.get("backbone"),
        "stages": {k: str(v) for k, v in folders.items()},
        "opaque_test": cbm.get("opaque_test"), "cbm_test": cbm.get("test"), "accuracy_gap": cbm.get("accuracy_gap"),
        "sae": {k: sae.get("train", {}).get(k) for k in ("r2", "l0", "dead_fraction", "alive")}
        | {"test_r2": sae.get("test", {}).get("r2"), "n_latents": sae.get("n_latents"),
           "fit_time_s": sae.get("fit_time_s"), "resampling": sae.get("resampling")},
        "naming": {k: nm.get(k) for k in ("alive", "named", "unnamed", "min_auroc", "min_z", "floor_from", "sources",
                                          "distinct_names",
                                          "matched_test_auroc_0.8", "matched_test_auroc_0.9",
                                          "concepts_named_confirmed_test", "relevant_named_confirmed_test")},
        "concept_matching": nm.get("concept_matching"), "concept_naming_test": nm.get("concept_naming_test"),
        "cavs": cv.get("cavs"), "selected": sel.get("k"), "select_time_s": sel.get("select_time_s"),
        "cbm": {k: cbm.get(k) for k in ("C", "n_nonzero", "features", "decomposition_r2_test",
                                        "fidelity_to_opaque_test", "opaque_head_on_reconstruction_accuracy_test")},
        "stage_wall_time_s": {s: read(s).get("wall_time_s") for s in folders if s != "opaque"},
        "peak_memory_mb": peak_memory_mb(),
    }
    opaque_metrics = folders["opaque"] / "metrics.json"
    if opaque_metrics.is_file():
        out["stage_wall_time_s"]["opaque"] = json.loads(opaque_metrics.read_text()).get("wall_time_s")
    return out
