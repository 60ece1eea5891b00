"""Pipeline and stage folders, on medimg-core's run folders (`medimg_core.runs`), and the readers of what the
stages leave in them.

A pipeline folder `<out>/<date>-neuron-concepts-<dataset>-<backbone>-seed<S>/` holds config.yaml, pipeline.json
({"stages": {stage: its folder, relative}}), metrics.json (the summary) and one folder per stage: `encode/`,
`sae/`, ... made by `runs.create_run_dir` undated, so a rerun of a stage writes `sae-2/` and never over an
earlier one. The opaque stage is a medimg baseline run folder inside it (or any baseline run elsewhere). Every
stage folder is a run folder (config.yaml, metrics.json, log.txt, figures/) plus stage.json, which names the
stage and its parent folder; `stage_chain` follows those links down to the opaque run.

Everything a stage reads sits in the pipeline: the encode stage keeps its features (`features-<split>.safetensors`),
and no reader re-runs an earlier stage.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import load_file as load_numpy
from safetensors.torch import load_file

from medimg_core.checkpoint import write_json
from medimg_core.config import load_config, save_config
from medimg_core.data import DatasetCard
from medimg_core.runs import (
    Run,
    RunFolderError,
    create_run_dir,
    peak_memory_mb,
    read_json_object,
    setup_logging,
)
from neuron_concepts.config import NeuronConceptsConfig
from neuron_concepts.naming import LatentName

STAGE_FILE = "stage.json"
PIPELINE_FILE = "pipeline.json"
FEATURES_FILE = "features.json"
METHOD = "neuron-concepts"


def now() -> str:
    """The current UTC time as ISO 8601 (the `created` entries of pipeline.json and stage.json)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# --------------------------------------------------------------------------- pipelines and stages


def new_pipeline(cfg: NeuronConceptsConfig, dataset: str | None = None, backbone: str | None = None) -> Path:
    """A new pipeline folder under cfg.out with the resolved config."""
    dataset = dataset or (Path(cfg.data.root).name if cfg.data.dataset == "csv" and cfg.data.root else cfg.data.dataset)
    name = cfg.name or f"{METHOD}-{dataset}-{backbone or cfg.model.backbone}"
    path = create_run_dir(cfg.out, f"{name}-seed{cfg.seed}")
    save_config(cfg, path / "config.yaml")
    write_json(path / PIPELINE_FILE, {"method": METHOD, "stages": {}, "created": now()})
    return path


def recorded_stages(pipeline: str | Path) -> dict[str, str]:
    """{stage: folder relative to the pipeline} as pipeline.json records them (empty without pipeline.json)."""
    path = Path(pipeline) / PIPELINE_FILE
    if not path.is_file():
        return {}
    stages = read_json_object(path, "the pipeline's record of its stage folders").get("stages", {})
    if not isinstance(stages, dict):
        raise RunFolderError(f"{path}: 'stages' should map stage names to folders, found {type(stages).__name__}")
    return stages


def pipeline_of(folder: str | Path) -> Path | None:
    """The pipeline folder a stage or opaque run folder sits in (None when it sits in none)."""
    folder = Path(folder).resolve()
    if (folder / STAGE_FILE).is_file():
        return folder.parent
    return folder.parent if (folder.parent / PIPELINE_FILE).is_file() else None


def new_stage_dir(pipeline: Path, stage: str) -> Path:
    """pipeline/<stage>, or <stage>-2, -3 ... when it exists: a rerun never overwrites an earlier stage."""
    return create_run_dir(pipeline, stage, dated=False)


def record_stage(pipeline: Path, stage: str, folder: str | Path) -> None:
    """Record `folder` as the pipeline's `stage` in pipeline.json."""
    path = pipeline / PIPELINE_FILE
    data = (read_json_object(path, "the pipeline's record of its stage folders") if path.is_file()
            else {"method": METHOD, "stages": {}})
    data.setdefault("stages", {})[stage] = os.path.relpath(Path(folder).resolve(), pipeline.resolve())
    write_json(path, data)


def start_stage(stage: str, parent: Path, cfg: NeuronConceptsConfig, pipeline: Path | None = None) -> Path:
    """A new folder for `stage` reading `parent`, in `pipeline` (default: the parent's pipeline, else a new
    one), with its config, stage.json and log; recorded in pipeline.json."""
    pipeline = pipeline or pipeline_of(parent)
    if pipeline is None:
        pipeline = new_pipeline(cfg)
    folder = new_stage_dir(pipeline, stage)
    save_config(cfg, folder / "config.yaml")
    write_json(folder / STAGE_FILE, {"stage": stage, "parent": os.path.relpath(Path(parent).resolve(), folder),
                                     "created": now()})
    setup_logging(folder)
    record_stage(pipeline, stage, folder)
    return folder


def finish_stage(folder: Path, metrics: dict[str, Any], start: float) -> dict[str, Any]:
    """Write the stage's metrics.json with its wall time (since `start`, a perf_counter) and peak memory."""
    metrics = {**metrics, "wall_time_s": time.perf_counter() - start, "peak_memory_mb": peak_memory_mb()}
    Run(folder).write_metrics(metrics)
    return metrics


def _stage_meta(folder: Path) -> dict[str, Any]:
    meta = read_json_object(folder / STAGE_FILE, "the stage's name and parent folder")
    if "stage" not in meta or "parent" not in meta:
        raise RunFolderError(f"{folder / STAGE_FILE}: expected the keys 'stage' and 'parent', found {sorted(meta)}")
    return meta


def stage_chain(folder: str | Path) -> dict[str, Path]:
    """{stage: folder} of `folder` and its ancestors, following stage.json parents down to the opaque run."""
    folder = Path(folder).resolve()
    chain: dict[str, Path] = {}
    seen = 0
    while True:
        meta_path = folder / STAGE_FILE
        if not meta_path.is_file():
            if not (folder / "checkpoints").is_dir():
                raise FileNotFoundError(f"{folder}: neither a neuron-concepts stage folder ({STAGE_FILE}) nor a "
                                        "baseline run folder (checkpoints/)")
            chain["opaque"] = folder
            return chain
        meta = _stage_meta(folder)
        chain.setdefault(meta["stage"], folder)
        folder = (folder / meta["parent"]).resolve()
        seen += 1
        if seen > 50:
            raise RuntimeError(f"{meta_path}: the stage parents form a loop")


def require_stage(folder: str | Path, stage: str) -> Path:
    """Check `folder` is a `stage` folder; return it resolved."""
    folder = Path(folder)
    if stage == "opaque":
        if not (folder / "checkpoints").is_dir():
            raise FileNotFoundError(f"{folder}: not a trained baseline run folder (no checkpoints/); train one with "
                                    "`neuron-concepts train-opaque` or `medimg train-baseline`")
        return folder.resolve()
    if not (folder / STAGE_FILE).is_file():
        raise FileNotFoundError(f"{folder}: not a neuron-concepts stage folder (no {STAGE_FILE}); expected the "
                                f"output of the `{stage}` stage")
    found = _stage_meta(folder)["stage"]
    if found != stage:
        raise ValueError(f"{folder}: this is a '{found}' stage folder; this command reads a '{stage}' folder")
    return folder.resolve()


def config_for_stage(prev: str | Path, config_path: str | Path | None = None,
                     overrides: dict[str, Any] | None = None) -> NeuronConceptsConfig:
    """The config of a stage run on `prev`: a given file, else prev's config (stage folder), else its
    pipeline's, else the defaults; then the overrides."""
    prev = Path(prev)
    base: Path | None = None
    if config_path is not None:
        base = Path(config_path)
    elif (prev / STAGE_FILE).is_file():
        base = prev / "config.yaml"
    else:
        pipeline = pipeline_of(prev)
        if pipeline is not None and (pipeline / "config.yaml").is_file():
            base = pipeline / "config.yaml"
    return load_config(NeuronConceptsConfig, base, overrides or {})


def finished_child(pipeline: Path, stage: str, parent: Path) -> Path | None:
    """The finished folder (metrics.json written) that pipeline.json records for `stage`, if its parent is `parent`."""
    recorded = recorded_stages(pipeline).get(stage)
    if not recorded:
        return None
    folder = (pipeline / recorded).resolve()
    if not (folder / "metrics.json").is_file() or not (folder / STAGE_FILE).is_file():
        return None
    return folder if (folder / _stage_meta(folder)["parent"]).resolve() == Path(parent).resolve() else None


def find_opaque_run(pipeline: Path) -> Path | None:
    """The opaque run of a pipeline folder: the one pipeline.json records, else the newest baseline run
    folder inside it (a training is recorded only when it ends). None when there is none."""
    recorded = recorded_stages(pipeline).get("opaque")
    if recorded:
        return (pipeline / recorded).resolve()
    runs = sorted(p for p in pipeline.iterdir() if p.is_dir() and "-opaque-" in p.name
                  and (p / "config.yaml").is_file() and not (p / STAGE_FILE).is_file())
    return runs[-1].resolve() if runs else None


def stage_folder(pipeline: str | Path, stage: str) -> Path:
    """The folder pipeline.json records for `stage`; a clear error when the pipeline has none."""
    pipeline = Path(pipeline)
    if not (pipeline / PIPELINE_FILE).is_file():
        raise RunFolderError(f"{pipeline}: not a neuron-concepts pipeline folder (no {PIPELINE_FILE})")
    recorded = recorded_stages(pipeline).get(stage)
    if not recorded:
        raise RunFolderError(f"{pipeline}: the pipeline has no {stage} stage yet; run the stages up to it "
                             f"(`neuron-concepts run --resume {pipeline}`)")
    return (pipeline / recorded).resolve()


# --------------------------------------------------------------------------- what the stages leave


def features_file(split: str) -> str:
    """The encode folder's file of one split's features (N, D), targets and concepts (N, K)."""
    return f"features-{split}.safetensors"


def load_features(encode_dir: str | Path) -> dict[str, Any]:
    """{split: {features (N, D) float32, targets, concepts (N, K), ids}, "card", "meta", "head": {weight, bias}}
    of an encode folder, for each split it encoded.

    The features are read from the encode folder itself. Encode folders written before the folder kept them
    point into the feature cache ($MEDIMG_HOME/features); those entries are read where they still exist, and a
    vanished one is an error saying how to encode again (nothing is re-extracted behind the user's back)."""
    encode_dir = Path(encode_dir)
    meta = read_json_object(encode_dir / FEATURES_FILE, "the encode stage's record of its features")
    card = DatasetCard.from_dict(meta["card"])
    out: dict[str, Any] = {"card": card, "meta": meta}
    for split, info in meta["splits"].items():
        if "file" in info:
            path = encode_dir / info["file"]
            if not path.is_file():
                raise RunFolderError(f"{path}: the {split} features of this encode stage are missing; run "
                                     "`neuron-concepts encode` on its opaque run again")
            tensors = load_file(str(path))
            ids = [str(i) for i in info["ids"]]
        else:
            tensors, ids = _cached_features(encode_dir, split, info, meta)
        out[split] = {"features": tensors["features"].float(), "targets": tensors["targets"],
                      "concepts": tensors["concepts"].float(), "ids": ids}
    head = encode_dir / "head.safetensors"
    if not head.is_file():
        raise RunFolderError(f"{head}: not found (the opaque model's linear head, written by the encode stage)")
    out["head"] = load_file(str(head))
    return out


def _cached_features(encode_dir: Path, split: str, info: dict[str, Any],
                     meta: dict[str, Any]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """One split of an encode folder of the older layout, from the feature cache entry it names."""
    path = Path(info["path"])
    try:
        tensors = load_file(str(path))
        side = json.loads(path.with_suffix(".json").read_text())
        if side.get("key") != info["key"] or tensors["features"].shape[0] != info["n"]:
            raise ValueError("stale entry")
        return tensors, [str(i) for i in side["ids"]]
    except (OSError, ValueError, KeyError, json.JSONDecodeError):
        opaque = (encode_dir / meta["opaque_run"]).resolve()
        raise RunFolderError(
            f"{encode_dir}: this encode folder (written before encode stages kept their features) reads its {split} "
            f"features from the feature cache entry {path}, which is gone or changed. Encode again into a folder "
            f"that keeps them: `neuron-concepts encode {opaque}`, then rerun the later stages on the new folder "
            f"(or all of them: `neuron-concepts run --opaque-run {opaque}`)"
        ) from None


def load_names(name_dir: str | Path) -> dict[int, LatentName]:
    """{latent: LatentName} of a name stage folder (names.json)."""
    path = Path(name_dir) / "names.json"
    if not path.is_file():
        raise RunFolderError(f"{path}: not found (the latent names of a name stage)")
    records = json.loads(path.read_text())
    return {int(r["latent"]): LatentName(int(r["latent"]), r["name"], r["source"], r["score"], r.get("details", {}))
            for r in records}


def load_cavs(cav_dir: str | Path) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """(cavs (n, d) float64, their latents (n,), per-CAV records) of a cav stage folder."""
    cav_dir = Path(cav_dir)
    path = cav_dir / "cavs.safetensors"
    if not path.is_file():
        raise RunFolderError(f"{path}: not found (the concept activation vectors of a cav stage)")
    t = load_numpy(str(path))
    return t["cavs"].astype(np.float64), t["latents"], json.loads((cav_dir / "cavs.json").read_text())
