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

import functools
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import numpy as np
import torch
from safetensors.torch import load_file

from medimg_core.checkpoint import CheckpointError, bad_value, read_tensors, write_json
from medimg_core.config import load_config, save_config
from medimg_core.data import DatasetCard
from medimg_core.runs import (
    Run,
    RunFolderError,
    create_run_dir,
    peak_memory_mb,
    read_json_file,
    read_json_object,
    setup_logging,
)
from neuron_concepts.config import NeuronConceptsConfig
from neuron_concepts.naming import LatentName

STAGE_FILE = "stage.json"
PIPELINE_FILE = "pipeline.json"
FEATURES_FILE = "features.json"
METHOD = "neuron-concepts"

log = logging.getLogger(__name__)


class StageFolderError(RunFolderError, ValueError):
    """A folder given for a stage is not one (or not of that stage), or its stage.json links lead out of the
    pipeline's folders; the commands print it without a traceback. A ValueError as well, as before."""

P = ParamSpec("P")
R = TypeVar("R")


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


@dataclass
class _Started:
    """A stage folder being written, and what to undo if its stage fails: the folder, the pipeline's previous
    record of the stage (None: none), and whether the pipeline folder itself was made for it."""

    folder: Path
    pipeline: Path
    stage: str
    previous: str | None
    new_pipeline: bool


#: the stage folders started and not yet finished (`settled_stages` removes those of a failed stage)
_STARTED: list[_Started] = []


def start_stage(stage: str, parent: Path, cfg: NeuronConceptsConfig, pipeline: Path | None = None) -> Path:
    """A new folder for `stage` reading `parent`, in `pipeline` (default: the parent's pipeline, else a new
    one), with its config, stage.json and log; recorded in pipeline.json."""
    pipeline = pipeline or pipeline_of(parent)
    made = pipeline is None
    if pipeline is None:
        pipeline = new_pipeline(cfg)
    previous = recorded_stages(pipeline).get(stage)
    folder = new_stage_dir(pipeline, stage)
    _STARTED.append(_Started(folder, pipeline, stage, previous, made))
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
    _STARTED[:] = [s for s in _STARTED if s.folder != folder]
    return metrics


def settled_stages(stage_fn: Callable[P, R]) -> Callable[P, R]:
    """A stage function whose failure leaves no half stage folder (config.yaml, stage.json, a log and no results
    would look like a finished stage to later commands): every stage folder it started and did not finish is
    removed, pipeline.json again records the stage's previous folder, and a pipeline folder made for it goes
    too. The error is raised on, so the command still says what went wrong."""

    @functools.wraps(stage_fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        mark = len(_STARTED)
        try:
            return stage_fn(*args, **kwargs)
        except BaseException as exc:
            _undo(_STARTED[mark:], exc)
            del _STARTED[mark:]
            raise

    return run


def _undo(started: list[_Started], exc: BaseException) -> None:
    first = (f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__).splitlines()[0]
    for s in reversed(started):
        setup_logging(None)  # close the stage's log.txt before its folder goes
        shutil.rmtree(s.folder, ignore_errors=True)
        if s.new_pipeline:
            shutil.rmtree(s.pipeline, ignore_errors=True)
        elif (s.pipeline / PIPELINE_FILE).is_file():
            data = read_json_object(s.pipeline / PIPELINE_FILE, "the pipeline's record of its stage folders")
            stages = data.setdefault("stages", {})
            if s.previous is None:
                stages.pop(s.stage, None)
            else:
                stages[s.stage] = s.previous
            write_json(s.pipeline / PIPELINE_FILE, data)
        log.error("the %s stage failed (%s); its unfinished folder %s was removed", s.stage, first, s.folder)


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
    meta_path_of = ""  # the link followed last, named when it leads nowhere
    while True:
        meta_path = folder / STAGE_FILE
        if not meta_path.is_file():
            if not (folder / "checkpoints").is_dir():
                raise StageFolderError(f"{folder}: neither a neuron-concepts stage folder ({STAGE_FILE}) nor a "
                                       "baseline run folder (checkpoints/)" + (f", reached from {meta_path_of}"
                                                                              if chain else ""))
            chain["opaque"] = folder
            return chain
        meta = _stage_meta(folder)
        if not isinstance(meta["stage"], str) or not isinstance(meta["parent"], str):
            raise bad_value(meta_path, "'parent' and 'stage'", [meta["parent"], meta["stage"]], "two strings")
        chain.setdefault(meta["stage"], folder)
        meta_path_of = f"'parent' {meta['parent']!r} of {meta_path}"
        folder = (folder / meta["parent"]).resolve()
        seen += 1
        if seen > 50:
            raise StageFolderError(f"{meta_path}: the stage parents form a loop")


def require_stage(folder: str | Path, stage: str) -> Path:
    """Check `folder` is a `stage` folder; return it resolved."""
    folder = Path(folder)
    if stage == "opaque":
        if not (folder / "checkpoints").is_dir():
            raise StageFolderError(f"{folder}: not a trained baseline run folder (no checkpoints/); train one with "
                                   "`neuron-concepts train-opaque` or `medimg train-baseline`")
        return folder.resolve()
    if not (folder / STAGE_FILE).is_file():
        raise StageFolderError(f"{folder}: not a neuron-concepts stage folder (no {STAGE_FILE}); expected the "
                               f"output of the `{stage}` stage")
    found = _stage_meta(folder)["stage"]
    if found != stage:
        raise StageFolderError(f"{folder}: this is a '{found}' stage folder; this command reads a '{stage}' folder")
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
    out["head"] = read_tensors(head, "the opaque model's linear head")
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


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and bool(np.isfinite(value))


def read_json_list(path: Path, what: str) -> list[dict[str, Any]]:
    """A JSON file holding a list of objects (names.json, cavs.json, selection.json); anything else is a
    CheckpointError naming the file."""
    data = read_json_file(path, what, invalid=CheckpointError)
    if not isinstance(data, list):
        raise bad_value(path, "the file", data, f"a list of records ({what})")
    for i, record in enumerate(data):
        if not isinstance(record, dict):
            raise bad_value(path, f"entry {i}", record, "an object")
    return data


def _field(path: Path, i: int, record: dict[str, Any], key: str, ok: Callable[[Any], bool], expected: str) -> Any:
    if key not in record:
        raise CheckpointError(f"{path}: entry {i} has no {key!r} (found {sorted(record)[:8]}); expected {expected}")
    if not ok(record[key]):
        raise bad_value(path, f"entry {i} {key!r}", record[key], expected)
    return record[key]


def load_names(name_dir: str | Path, n_latents: int | None = None) -> dict[int, LatentName]:
    """{latent: LatentName} of a name stage folder (names.json), checked: each entry an object with an integer
    'latent' (in [0, n_latents) when given, each once), a 'name' and a 'source', a finite 'score' or null."""
    path = Path(name_dir) / "names.json"
    records = read_json_list(path, "the latent names of a name stage")
    names: dict[int, LatentName] = {}
    top = "" if n_latents is None else f" in [0, {n_latents - 1}] (the SAE has {n_latents} latents)"
    for i, r in enumerate(records):
        k = _field(path, i, r, "latent", lambda v: _is_int(v) and v >= 0 and (n_latents is None or v < n_latents),
                   f"a latent index{top or ' >= 0'}")
        if k in names:
            raise bad_value(path, f"entry {i} 'latent'", k, "each latent named once")
        name = _field(path, i, r, "name", lambda v: isinstance(v, str) and bool(v), "a non-empty name")
        source = _field(path, i, r, "source", lambda v: isinstance(v, str), "the name's source (a string)")
        score = r.get("score")
        if score is not None and not _is_number(score):
            raise bad_value(path, f"entry {i} 'score'", score, "a finite number or null")
        details = r.get("details", {})
        if not isinstance(details, dict):
            raise bad_value(path, f"entry {i} 'details'", details, "an object")
        names[k] = LatentName(k, name, source, score, details)
    return names


def load_cavs(cav_dir: str | Path, n_latents: int | None = None) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """(cavs (n, d) float64, their latents (n,), per-CAV records) of a cav stage folder, checked: finite vectors,
    one record per vector naming the same latent."""
    cav_dir = Path(cav_dir)
    path = cav_dir / "cavs.safetensors"
    if not path.is_file():
        raise RunFolderError(f"{path}: not found (the concept activation vectors of a cav stage)")
    t = {k: v.numpy() for k, v in read_tensors(path, "the concept activation vectors of a cav stage").items()}
    if set(t) != {"cavs", "latents"} or t["cavs"].ndim != 2 or t["latents"].shape != (len(t["cavs"]),):
        shapes = {k: list(v.shape) for k, v in t.items()}
        raise CheckpointError(f"{path}: holds {shapes}; expected 'cavs' (n, d) and 'latents' (n,)")
    cavs, latents = t["cavs"].astype(np.float64), t["latents"]
    json_path = cav_dir / "cavs.json"
    records = read_json_list(json_path, "one record per concept activation vector")
    if len(records) != len(cavs):
        raise CheckpointError(f"{json_path}: {len(records)} entries; expected one per vector of {path.name} "
                              f"({len(cavs)})")
    for i, r in enumerate(records):
        _field(json_path, i, r, "latent", lambda v, i=i: _is_int(v) and v == int(latents[i]),
               f"latent {int(latents[i])}, as in {path.name}")
        _field(json_path, i, r, "name", lambda v: isinstance(v, str) and bool(v), "a non-empty name")
        _field(json_path, i, r, "source", lambda v: isinstance(v, str), "the name's source (a string)")
        if r.get("score") is not None and not _is_number(r["score"]):
            raise bad_value(json_path, f"entry {i} 'score'", r["score"], "the naming score: a finite number or null")
    if n_latents is not None and len(latents) and not (latents.min() >= 0 and latents.max() < n_latents):
        raise CheckpointError(f"{path}: latents {latents.min()}..{latents.max()}; expected indices in "
                              f"[0, {n_latents - 1}]")
    return cavs, latents, records


def load_selection(select_dir: str | Path, n_cavs: int) -> list[dict[str, Any]]:
    """selection.json of a select stage folder, checked: each entry a 'cav_index' in [0, n_cavs) and a name."""
    path = Path(select_dir) / "selection.json"
    records = read_json_list(path, "the selected concepts of a select stage")
    if not records:
        raise bad_value(path, "the file", records, "at least one selected concept")
    for i, r in enumerate(records):
        _field(path, i, r, "cav_index", lambda v: _is_int(v) and 0 <= v < n_cavs,
               f"an index into the cav stage's {n_cavs} vectors")
        _field(path, i, r, "name", lambda v: isinstance(v, str) and bool(v), "a non-empty name")
        if r.get("score") is not None and not _is_number(r["score"]):
            raise bad_value(path, f"entry {i} 'score'", r["score"], "the naming score: a finite number or null")
    return records
