"""The benchmark's runs: data, models and seeds (first version: saliency maps on synth-derm's baseline).

    from medimg_benchmark.runner import BenchmarkConfig, run_benchmark
    result = run_benchmark(BenchmarkConfig.quick_budget(), out="runs")     # writes a run folder, returns the numbers
    result["summary"]["gradcam"]["iou"]                              # {"mean", "sd", "values", "n_seeds"}

Per seed s of `seeds`:

1. data: `medimg_core.synthetic.make("synth-derm", n_images, seed=data_seed_offset + s, size=image_size)`.
   The data seeds come from their own family (1000 + s by default) so that they differ from every seed a preset
   was tuned on (the shipped presets train with seeds 0 ... 42): the benchmark reports on data no setting was
   chosen on. The generator's rule is its default, `(irregular_border & blue_white_veil) | streaks`.
2. model: the medimg-core baseline (`BaselineClassifier(preset)`, default `baseline-synth-derm`, a ResNet-18)
   trained on the train split (validation for the epoch choice) with seed s and `epochs`.
3. the images scored: the test images that are malignant and that the model predicts malignant (at most
   `max_eval_images`, in test order). If the model predicts none of them malignant (a `--quick` model may not),
   the malignant test images are scored instead and `selection` in the JSON says so.
   Ground truth of an image's map: the union of the pixel masks of the rule's concepts present in the image
   (`rule_masks`): the evidence the label was drawn from. The class explained is `malignant`.
4. `medimg_benchmark.maps.score_explainers`: every explainer of `medimg_core.posthoc` (the CAMs on
   `medimg_benchmark.maps.cam_layer`: the last stage, or an earlier one where the last is below 2 x 2 pixels, as a
   ResNet's layer4 at 32 px) plus the model-independent `edge_reference`, on every map protocol, with bootstrap intervals over images; the sanity check on the
   first `sanity_images` of them.
5. `medimg_benchmark.concepts.score_tcav`: TCAV of every concept for `malignant` on the same layer, against the
   generator's rule (the rule's concepts should be significant and positive, the others not); and
   `probe_recovery`, the test AUROC of a linear probe per concept on that layer (is the concept encoded at all).
6. CRL (packages/crl, `crl.ConceptRuleLearner(crl_preset)`, default `synthetic-cpu`, the package's CPU preset,
   with its own epochs unless `crl_epochs` is set) trained on the same splits with the same seed and image size
   (`_train_crl`); its concept head scored per concept (`concepts.concept_head_recovery`, test AUROC against what
   the pixels show, next to the probe), its rule set against the generator's rule, with a decision tree and a
   logistic regression fitted on its predicted training concepts as plain baselines (`medimg_benchmark.rules`:
   truth-table agreement, test accuracy, fidelity to CRL's network, complexity).
7. data randomisation (Adebayo et al., section 4; `data_randomisation`): the baseline retrained on permuted
   labels, every explainer's maps of it on the same images compared with the true model's.

Over seeds: mean and sample standard deviation (ddof=1; NaN with one seed) of each protocol's per-seed value,
and the share of seeds whose sanity check passed. Recorded: every per-seed number with its interval, the
config, the versions of the libraries and torch's thread count (`torch.get_num_threads()`: CPU kernels sum in
an order that depends on it, so the last digits of a map may too).
"""

from __future__ import annotations

import json
import logging
import math
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medimg_benchmark.concepts import concept_head_recovery, probe_recovery, score_tcav
from medimg_benchmark.maps import (
    EDGE_REFERENCE,
    PROTOCOLS,
    cam_layer,
    data_randomisation_scores,
    default_explainers,
    score_explainers,
)
from medimg_benchmark.rules import MODELS, TREE_MAX_DEPTH, score_rules

log = logging.getLogger(__name__)

GENERATOR = "synth-derm"
POSITIVE_CLASS = "malignant"
#: the benchmark's data seeds are this plus the model seed (a family no preset was tuned on)
DATA_SEED_OFFSET = 1000
LIBRARIES = ("medimg-core", "medimg-benchmark", "crl", "torch", "torchvision", "timm", "captum", "grad-cam", "numpy",
             "scipy", "scikit-image", "scikit-learn")


@dataclass
class BenchmarkConfig:
    """The budget. The defaults are the full run; `BenchmarkConfig.quick_budget()` the CI-sized one."""

    seeds: tuple[int, ...] = (0, 1, 2)
    n_images: int = 1000
    #: TCAV (medimg_benchmark.concepts): images per concept and per random set, random sets, class images
    tcav_images: int = 50
    tcav_random_sets: int = 10
    tcav_class_images: int = 100
    #: Adebayo et al.'s data randomisation: a second baseline per seed trained on permuted labels
    data_randomisation: bool = True
    image_size: int = 64
    preset: str = "baseline-synth-derm"
    epochs: int = 10
    #: CRL: its preset and epochs (None: the preset's own), and the depth of the decision-tree baseline
    crl_preset: str = "synthetic-cpu"
    crl_epochs: int | None = None
    tree_max_depth: int = TREE_MAX_DEPTH
    max_eval_images: int = 64
    sanity_images: int = 8
    bootstrap: int = 1000
    data_seed_offset: int = DATA_SEED_OFFSET
    device: str = "cpu"
    progress: bool | None = None
    quick: bool = False
    overrides: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.seeds = tuple(int(s) for s in self.seeds)
        if not self.seeds:
            raise ValueError("seeds: expected at least one seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must not repeat, got {list(self.seeds)}")
        for key, minimum in (("n_images", 20), ("image_size", 32), ("epochs", 1), ("max_eval_images", 1),
                             ("tcav_images", 2), ("tcav_random_sets", 3), ("tcav_class_images", 1),
                             ("sanity_images", 1), ("bootstrap", 10), ("data_seed_offset", 0),
                             ("tree_max_depth", 1)):
            value = getattr(self, key)
            if not isinstance(value, int) or value < minimum:
                raise ValueError(f"{key} must be an integer of at least {minimum}, got {value!r}")
        if self.crl_epochs is not None and (not isinstance(self.crl_epochs, int) or self.crl_epochs < 1):
            raise ValueError(f"crl_epochs must be None (the preset's) or an integer of at least 1, got "
                             f"{self.crl_epochs!r}")

    @classmethod
    def quick_budget(cls, **changes: Any) -> BenchmarkConfig:
        """The CI budget: 2 seeds, 120 images at 32 px, 2 epochs (the baseline's and CRL's), 6 images per
        protocol (2 in the sanity check), 200 bootstrap resamples."""
        base = cls(seeds=(0, 1), n_images=120, image_size=32, epochs=2, crl_epochs=2, max_eval_images=6,
                   sanity_images=2, bootstrap=200, tcav_images=8, tcav_random_sets=3, tcav_class_images=10,
                   quick=True)
        return replace(base, **changes)


def rule_masks(masks: np.ndarray, true_concepts: np.ndarray, concept_names: list[str],
               rule_variables: list[str]) -> np.ndarray:
    """(N, H, W) bool: per image, the union of the masks (N, K, H, W) of the rule's concepts present in it
    (`true_concepts` (N, K) 0/1, what the pixels show)."""
    unknown = sorted(set(rule_variables) - set(concept_names))
    if unknown:
        raise ValueError(f"rule variables {unknown} are not concepts of the data ({concept_names})")
    idx = [concept_names.index(v) for v in rule_variables]
    present = np.asarray(true_concepts)[:, idx].astype(bool)  # (N, R)
    return (np.asarray(masks)[:, idx].astype(bool) & present[:, :, None, None]).any(axis=1)


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def _permuted(dataset: Any, seed: int) -> Any:
    """The dataset with its labels permuted (`medimg_core.sanity.permuted_labels`), images and concepts kept."""
    from dataclasses import replace as replace_field

    from medimg_core.data.base import MedicalImageDataset
    from medimg_core.sanity import permuted_labels

    table = replace_field(dataset.table, targets=permuted_labels(dataset.table.targets, seed))
    return MedicalImageDataset(table, dataset.card, dataset.split, dataset.transform)


def _train(cfg: BenchmarkConfig, data: Any, seed: int, models_dir: Path, permuted: bool = False):
    """The baseline on the train split (validation for the epoch choice); `permuted`: on permuted labels (both
    splits, seeded by `seed`), for the data randomisation check."""
    from medimg_core.baseline import BaselineClassifier

    params = {"out": str(models_dir), "name": "baseline-permuted-labels" if permuted else "baseline", "seed": seed,
              "device": cfg.device, "train__epochs": cfg.epochs, "data__image_size": cfg.image_size,
              "bootstrap": cfg.bootstrap, "train__progress": cfg.progress, **cfg.overrides}
    train, val = data.dataset("train"), data.dataset("val")
    if permuted:
        train, val = _permuted(train, seed), _permuted(val, seed + 1)
    return BaselineClassifier(cfg.preset, **params).fit(train, val)


def _train_crl(cfg: BenchmarkConfig, data: Any, seed: int, models_dir: Path):
    """CRL (`crl.ConceptRuleLearner(cfg.crl_preset)`) on the baseline's train split (validation for the epoch
    choice), with its seed and image size; `crl_epochs` overrides the preset's epochs when set."""
    from crl import ConceptRuleLearner

    params: dict[str, Any] = {"out": str(models_dir), "name": "crl", "seed": seed, "device": cfg.device,
                              "data__image_size": cfg.image_size, "bootstrap": cfg.bootstrap,
                              "train__progress": cfg.progress}
    if cfg.crl_epochs is not None:
        params["train__epochs"] = cfg.crl_epochs
    return ConceptRuleLearner(cfg.crl_preset, **params).fit(data.dataset("train"), data.dataset("val"))


def score_crl(cfg: BenchmarkConfig, data: Any, seed: int, models_dir: Path, positive: int) -> dict[str, Any]:
    """CRL trained on the seed's data (`_train_crl`), its concept head's recovery AUROC per concept and its rules
    with the plain baselines on its predicted concepts (`medimg_benchmark.rules.score_rules`) against the
    generator's rule."""
    from crl.api import forward_split
    from medimg_core.synthetic import parse_rule

    estimator = _train_crl(cfg, data, seed, models_dir)
    card = data.card
    names, rule_variables = list(card.concept_names), list(card.extra["rule_variables"])
    eval_tf = estimator.preprocess_.eval_transform()
    passed = {split: forward_split(estimator, data.dataset(split, transform=eval_tf), f"CRL on {split}",
                                   progress=False) for split in ("train", "test")}
    test_idx = data.indices("test")
    network = passed["test"]["scores"].argmax(1)
    return {
        "model_run": str(estimator.run_), "preset": cfg.crl_preset,
        "test_accuracy": float((network == data.targets[test_idx]).mean()),
        "concepts": concept_head_recovery(passed["test"]["probabilities"], data.true_concepts[test_idx], names,
                                          rule_variables, n_boot=cfg.bootstrap, seed=seed),
        "rules": score_rules(estimator.rules_, passed["train"]["probabilities"] > 0.5,
                             data.targets[data.indices("train")], passed["test"]["probabilities"] > 0.5,
                             data.targets[test_idx], network, parse_rule(card.extra["rule"], names), positive,
                             max_depth=cfg.tree_max_depth, n_boot=cfg.bootstrap, seed=seed),
    }


def _model_inputs(estimator: Any, data: Any, split: str = "test") -> torch.Tensor:
    """The model's inputs (N, C, H, W) of a split, with its evaluation transform."""
    from medimg_core.data.preprocess import build_transforms

    _, eval_tf = build_transforms(estimator.resolved_config().data, data.card)
    images = data.dataset(split, transform=eval_tf)
    return torch.stack([images[i]["image"] for i in range(len(images))])


def run_seed(cfg: BenchmarkConfig, seed: int, models_dir: Path,
             say: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """One seed: data, model, selection and every protocol (see the module docstring). Returns the seed's
    record for benchmark.json plus "maps" and "display" (the scored images (n, H, W, 3) uint8, the masks) for the
    figure."""
    from medimg_core.synthetic import make

    data_seed = cfg.data_seed_offset + seed
    t0 = time.perf_counter()
    say(f"seed {seed}: generating {cfg.n_images} {GENERATOR} images at {cfg.image_size} px (data seed {data_seed})")
    data = make(GENERATOR, cfg.n_images, seed=data_seed, size=cfg.image_size, progress=False)
    card = data.card
    positive = list(card.class_names).index(POSITIVE_CLASS)
    say(f"seed {seed}: training the baseline ({cfg.preset}, {cfg.epochs} epochs)")
    estimator = _train(cfg, data, seed, models_dir)
    model = estimator.model_.eval()
    device = next(model.parameters()).device
    x = _model_inputs(estimator, data).to(device)
    test_idx = data.indices("test")
    with torch.no_grad():
        predicted = torch.cat([model(x[i:i + 64]).argmax(1) for i in range(0, len(x), 64)]).cpu().numpy()
    truth = data.clean_targets[test_idx]
    accuracy = float((predicted == data.targets[test_idx]).mean())
    malignant = np.flatnonzero(truth == positive)
    chosen = malignant[predicted[malignant] == positive]
    selection = "malignant, predicted malignant"
    if len(chosen) == 0:
        chosen, selection = malignant, "malignant (the model predicted none of them malignant)"
    if len(chosen) == 0:
        raise RuntimeError(f"seed {seed}: the test split of {cfg.n_images} images has no malignant image; "
                           "raise n_images")
    chosen = chosen[:cfg.max_eval_images]
    rows = test_idx[chosen]
    masks = rule_masks(data.masks[rows], data.true_concepts[rows], list(card.concept_names),
                       list(card.extra["rule_variables"]))
    layer = cam_layer(model, tuple(x.shape[-2:]))
    scores = score_explainers(model, x[chosen], masks, target=positive, explainers=default_explainers(layer),
                              sanity_images=cfg.sanity_images,
                              n_boot=cfg.bootstrap, seed=seed,
                              on_explainer=lambda name: say(f"seed {seed}: scoring {name}"))
    maps = {name: row.pop("maps") for name, row in scores.items()}
    say(f"seed {seed}: TCAV of every concept for {POSITIVE_CLASS}")
    train_idx = data.indices("train")
    train_x = _model_inputs(estimator, data, "train").to(device)
    names, rule_variables = list(card.concept_names), list(card.extra["rule_variables"])
    concepts = score_tcav(model, layer, train_x, data.true_concepts[train_idx], names, rule_variables,
                          x[malignant[:cfg.tcav_class_images]], positive, n_concept=cfg.tcav_images,
                          n_random=cfg.tcav_random_sets, seed=seed)
    concepts["probe"] = probe_recovery(model, layer, train_x, data.true_concepts[train_idx], x,
                                       data.true_concepts[test_idx], names, rule_variables)
    say(f"seed {seed}: training CRL ({cfg.crl_preset}) and scoring its concepts and rules")
    crl = score_crl(cfg, data, seed, models_dir, positive)
    data_randomisation = None
    if cfg.data_randomisation:
        say(f"seed {seed}: training the baseline on permuted labels (data randomisation)")
        permuted = _train(cfg, data, seed, models_dir, permuted=True).model_.eval()
        with torch.no_grad():
            permuted_predicted = torch.cat([permuted(x[i:i + 64]).argmax(1) for i in range(0, len(x), 64)]).cpu()
        data_randomisation = {
            "test_accuracy_of_permuted_model": float((permuted_predicted.numpy() == data.targets[test_idx]).mean()),
            "explainers": data_randomisation_scores(maps, permuted, x[chosen], default_explainers(layer), positive,
                                                    cfg.bootstrap, seed)}
    return {
        "seed": seed, "data_seed": data_seed, "model_run": str(estimator.run_),
        "test_images": len(test_idx), "test_accuracy": accuracy, "selection": selection,
        "scored_images": int(len(chosen)), "scored_ids": [data.ids[i] for i in rows],
        "rule": card.extra["rule"], "cam_layer": layer, "explained_class": POSITIVE_CLASS, "seconds": time.perf_counter() - t0,
        "explainers": scores, "concepts": concepts, "crl": crl, "data_randomisation": data_randomisation, "maps": maps, "display": data.images[rows], "masks": masks,
    }


def summarise(per_seed: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """{explainer: {protocol: {"mean", "sd", "values", "n_seeds"}, "sanity_passes": [bool per seed],
    "sanity_pass_rate"}} over the seeds' records (sd: sample standard deviation, NaN with one seed)."""
    out: dict[str, dict[str, Any]] = {}
    for name in per_seed[0]["explainers"]:
        row: dict[str, Any] = {}
        for protocol in PROTOCOLS:
            values = [float(r["explainers"][name][protocol]["value"]) for r in per_seed]
            finite = [v for v in values if math.isfinite(v)]
            mean = float(np.mean(finite)) if finite else float("nan")
            sd = float(np.std(finite, ddof=1)) if len(finite) > 1 else float("nan")
            row[protocol] = {"mean": mean, "sd": sd, "values": values, "n_seeds": len(finite)}
        passes = [bool(r["explainers"][name]["passes_sanity"]) for r in per_seed]
        row["sanity_passes"] = passes
        row["sanity_pass_rate"] = sum(passes) / len(passes)
        out[name] = row
    return out


def summarise_concepts(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """Over seeds: rule concepts found and other concepts flagged (per seed and mean), and per concept the mean
    TCAV score, its sd over seeds and how many seeds found it significant."""
    names = list(per_seed[0]["concepts"]["concepts"])
    per_concept = {}
    for name in names:
        rows = [r["concepts"]["concepts"][name] for r in per_seed if name in r["concepts"]["concepts"]]
        means = [row["tcav_mean"] for row in rows]
        probes = [r["concepts"]["probe"][name]["auroc"] for r in per_seed]
        probes = [v for v in probes if v is not None]
        heads = [r["crl"]["concepts"][name]["auroc"] for r in per_seed]
        heads = [v for v in heads if v is not None]
        per_concept[name] = {"in_rule": rows[0]["in_rule"], "tcav_mean": float(np.mean(means)),
                             "tcav_sd": float(np.std(means, ddof=1)) if len(means) > 1 else float("nan"),
                             "significant_seeds": sum(row["significant"] for row in rows), "n_seeds": len(rows),
                             "probe_auroc_mean": float(np.mean(probes)) if probes else float("nan"),
                             "probe_auroc_sd": float(np.std(probes, ddof=1)) if len(probes) > 1 else float("nan"),
                             "crl_auroc_mean": float(np.mean(heads)) if heads else float("nan"),
                             "crl_auroc_sd": float(np.std(heads, ddof=1)) if len(heads) > 1 else float("nan")}
    first = per_seed[0]["concepts"]
    return {"rule_found": [r["concepts"]["rule_found"] for r in per_seed], "rule_total": first["rule_total"],
            "others_flagged": [r["concepts"]["others_flagged"] for r in per_seed],
            "others_tested": first["others_tested"], "per_concept": per_concept}


def _over_seeds(values: list[float]) -> dict[str, Any]:
    finite = [v for v in values if math.isfinite(v)]
    return {"mean": float(np.mean(finite)) if finite else float("nan"),
            "sd": float(np.std(finite, ddof=1)) if len(finite) > 1 else float("nan"), "values": values,
            "n_seeds": len(finite)}


def summarise_rules(per_seed: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """{model: {"truth_table", "test_accuracy", "fidelity", "size", "literals": {"mean", "sd", "values", "n_seeds"},
    "size_unit"}} over the seeds' rules tables (models in `medimg_benchmark.rules.MODELS` order; one missing in a
    seed, as CRL's compact rule can be, is summarised over the seeds that have it)."""
    out: dict[str, dict[str, Any]] = {}
    for name in MODELS:
        rows = [r["crl"]["rules"][name] for r in per_seed if name in r["crl"]["rules"]]
        if not rows:
            continue
        row: dict[str, Any] = {key: _over_seeds([float(x[key]["value"]) for x in rows])
                               for key in ("truth_table", "test_accuracy", "fidelity")}
        row.update(size=_over_seeds([float(x["size"]) for x in rows]),
                   literals=_over_seeds([float(x["literals"]) for x in rows]), size_unit=rows[0]["size_unit"])
        out[name] = row
    return out


def summarise_data_randomisation(per_seed: list[dict[str, Any]]) -> dict[str, Any] | None:
    """{explainer: {"spearman_abs", "ssim": {"mean", "sd", "values"}, "passes": [bool per seed]}} over seeds, or
    None when the check was not run."""
    records = [r["data_randomisation"] for r in per_seed]
    if any(r is None for r in records):
        return None
    out: dict[str, Any] = {}
    for name in records[0]["explainers"]:
        row: dict[str, Any] = {}
        for key in ("spearman_abs", "ssim"):
            values = [float(r["explainers"][name][key]["value"]) for r in records]
            finite = [v for v in values if math.isfinite(v)]
            row[key] = {"mean": float(np.mean(finite)) if finite else float("nan"),
                        "sd": float(np.std(finite, ddof=1)) if len(finite) > 1 else float("nan"), "values": values}
        row["passes"] = [bool(r["explainers"][name]["passes"]) for r in records]
        out[name] = row
    return {"explainers": out,
            "permuted_model_test_accuracy": [r["test_accuracy_of_permuted_model"] for r in records]}


def run_benchmark(cfg: BenchmarkConfig, out: str | Path = "runs",
                  say: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Run every seed, write the run folder under `out` (`medimg_benchmark.outputs.write_outputs`: benchmark.json,
    benchmark.md, index.html, figures/example_maps.png) and return the record with "run_dir"."""
    from medimg_benchmark.outputs import write_outputs
    from medimg_core.runs import create_run_dir

    run_dir = create_run_dir(out, f"benchmark-{GENERATOR}{'-quick' if cfg.quick else ''}")
    t0 = time.perf_counter()
    per_seed = [run_seed(cfg, seed, run_dir / "models", say) for seed in cfg.seeds]
    first = per_seed[0]
    figure = {"maps": first.pop("maps"), "display": first.pop("display"), "masks": first.pop("masks"),
              "seed": first["seed"], "id": first["scored_ids"][0]}
    for record in per_seed[1:]:
        for key in ("maps", "display", "masks"):
            record.pop(key)
    result = {
        "benchmark": f"saliency maps on {GENERATOR} (medimg-benchmark first version)",
        "config": {**asdict(cfg), "seeds": list(cfg.seeds)},
        "generator": GENERATOR, "explainers": list(first["explainers"]), "protocols": dict(PROTOCOLS),
        "reference_explainer": EDGE_REFERENCE,
        "torch_threads": torch.get_num_threads(), "versions": versions(),
        "seeds": per_seed, "summary": summarise(per_seed), "concept_summary": summarise_concepts(per_seed),
        "rules_summary": summarise_rules(per_seed), "rules_models": dict(MODELS),
        "data_randomisation_summary": summarise_data_randomisation(per_seed),
        "seconds": time.perf_counter() - t0,
    }
    write_outputs(result, run_dir, figure)
    result["run_dir"] = str(run_dir)
    log.info("benchmark written to %s", run_dir)
    return result


def load_result(run_dir: str | Path) -> dict[str, Any]:
    """benchmark.json of a run folder."""
    return json.loads((Path(run_dir) / "benchmark.json").read_text())
