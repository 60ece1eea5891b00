"""CRL on run and checkpoint folders: the estimator, the loader, and the entry points the CLI calls.

    from crl import ConceptRuleLearner
    model = ConceptRuleLearner("synthetic-cpu", train__epochs=5).fit(train, val)   # writes a run folder
    model.predict_proba(images); model.rules_.to_text(); model.explain("image.png").to_text()
    ConceptRuleLearner.from_pretrained("runs/<run folder>")                        # or a checkpoint folder

A CRL checkpoint folder holds, besides the contract's files (`medimg_core.pretrained`), the learned rules
(`rules.json`, `rules.txt`; in `checkpoints/best` and what `save_pretrained` writes) and, in features mode, the
frozen backbone (`frozen_backbone.safetensors`). Run folders written before both moved into the checkpoint
folder (the frozen backbone and the rules in the run folder only, no preprocessing in config.json) load as
they are; `ConceptRuleLearner.from_pretrained(old_run).save_pretrained(folder)` writes them out as one
self-contained checkpoint folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from crl.config import CRLConfig
from crl.explain import Explanation, explain_concepts
from crl.model import CRL
from crl.rules import RuleSet, RulesFileError, load_rules
from crl.train import FROZEN_BACKBONE, KIND, CRLRecipe, build_model
from medimg_core.checkpoint import CheckpointError, load_weights, read_tensors, write_extra_file, write_json
from medimg_core.config import ConfigError, config_from_dict
from medimg_core.data import DatasetCard, MedicalImageDataset, load_dataset
from medimg_core.data.errors import DatasetError
from medimg_core.data.preprocess import load_split
from medimg_core.estimator import Estimator
from medimg_core.experiment import fit_run
from medimg_core.metrics import concept_metrics, metrics_with_ci
from medimg_core.pretrained import checkpoint_config, read_checkpoint_config

CONFIGS = Path(__file__).parent / "configs"
#: config.json keys of the checkpoint contract (the rest are CRL's own: in_chans, in_features)
_CONTRACT_KEYS = ("kind", "format", "versions", "config", "card", "preprocess", "medimg_core_version", "torch_version")


def run_folder_of(folder: Path) -> Path | None:
    """The run folder around a checkpoint folder (RUN/checkpoints/<name>), or None for a standalone one."""
    folder = Path(folder)
    if folder.parent.name == "checkpoints" and (folder.parent.parent / "config.yaml").is_file():
        return folder.parent.parent
    return None


def artefact_path(folder: Path, name: str) -> Path | None:
    """`name` in the checkpoint folder, else (run folders written before it moved there) in its run folder."""
    run = run_folder_of(folder)
    for candidate in (Path(folder) / name, None if run is None else run / name):
        if candidate is not None and candidate.is_file():
            return candidate
    return None


def _crl_config(folder: Path, config: dict[str, Any]) -> CRLConfig:
    try:
        return config_from_dict(CRLConfig, config["config"])
    except (KeyError, ConfigError) as exc:
        raise CheckpointError(f"{folder}/config.json: its config is not a CRL config ({exc})") from None


def build_from_checkpoint(folder: Path, config: dict[str, Any]) -> CRL:
    """The trained network of a checkpoint folder (its config.json already read), built by `build_model` as in
    training, with its weights and, in features mode, the frozen backbone attached; in eval mode, on the CPU."""
    cfg = _crl_config(folder, config)
    card = DatasetCard.from_dict(config["card"])
    model, backbone = build_model(cfg, card, int(config["in_chans"]), pretrained=False)
    load_weights(model, folder)
    if cfg.mode == "features":  # CRL reads the features of this exact backbone
        frozen = artefact_path(folder, FROZEN_BACKBONE)
        if frozen is None:
            raise CheckpointError(
                f"{folder}: this features-mode CRL checkpoint has no {FROZEN_BACKBONE} (checkpoints written before "
                "it moved into the checkpoint folder keep it in their run folder): load the run folder instead, or "
                f"copy RUN/{FROZEN_BACKBONE} into {folder}")
        state = read_tensors(frozen, "the frozen backbone")
        try:
            backbone.load_state_dict(state)
        except RuntimeError as exc:  # missing keys, other shapes
            raise CheckpointError(f"{frozen}: the frozen backbone does not fit the model ({exc})") from None
        model.backbone = backbone
    return model.eval()


def load_crl(path: str | Path) -> tuple[CRL, dict[str, Any]]:
    """A trained CRL (best checkpoint of a run folder, or a checkpoint folder, with its backbone) and its
    checkpoint config, plus "cfg" (the CRLConfig) and "card_obj" (the DatasetCard)."""
    folder, config = read_checkpoint_config(path, KIND)
    model = build_from_checkpoint(folder, config)
    return model, {**config, "cfg": _crl_config(folder, config), "card_obj": DatasetCard.from_dict(config["card"])}


def load_rules_of(path: str | Path) -> RuleSet:
    """The rules of a run or checkpoint folder (checkpoint folder first, then, for older runs, the run folder)."""
    folder, config = read_checkpoint_config(path, KIND)
    found = artefact_path(folder, "rules.json")
    if found is None:
        raise CheckpointError(f"{folder}: no rules.json in this checkpoint folder or its run folder (the rules are "
                              "read out after training: did the training finish?)")
    rules = load_rules(found)
    check_rules_fit(rules, found, DatasetCard.from_dict(config["card"]))
    return rules


def check_rules_fit(rules: RuleSet, path: Path, card: DatasetCard) -> None:
    """The rules of `path` must speak of the model's concepts and classes, in its order; else a RulesFileError."""
    for key, found, expected in (("concept_names", rules.concept_names, list(card.concept_names)),
                                 ("class_names", rules.class_names, list(card.class_names))):
        if list(found) != expected:
            raise RulesFileError(f"{path}: '{key}' is {found}; expected the model's {expected} (config.json of "
                                 "the checkpoint), in that order")


class ConceptRuleLearner(Estimator):
    """CRL as an estimator (see the module docstring).

    Fitted attributes: `model_` (the `CRL` network, backbone included), `rules_` (the learned `RuleSet`, None
    when the checkpoint has none), `card_`, `preprocess_`, `checkpoint_`, `run_`. `predict_proba` gives the
    network's class probabilities; `predict_concepts` its binary concepts; `explain` the rules that fired.
    """

    config_class = CRLConfig
    configs_dir = CONFIGS
    kind = KIND

    def fit(self, train: MedicalImageDataset, val: MedicalImageDataset | None = None) -> ConceptRuleLearner:
        """Train on `train` (model selection on `val`, else on the training set's own metrics), read the rules out;
        the datasets given are not changed (copies take CRL's transforms)."""
        cfg = self.resolved_config()
        recipe = CRLRecipe()
        run = fit_run(recipe, cfg, splits=recipe.splits_of(cfg, train, val), command=[f"{type(self).__name__}.fit"])
        return self._fitted_from(run.checkpoint("best"), read_checkpoint_config(run)[1], run)

    def _load(self, folder: Path, config: dict[str, Any]) -> None:
        self.model_ = build_from_checkpoint(folder, config).to(self.device_)
        rules = artefact_path(folder, "rules.json")
        self.rules_ = load_rules(rules) if rules is not None else None
        if self.rules_ is not None:
            check_rules_fit(self.rules_, rules, self.card_)

    def _write_pretrained(self, folder: Path) -> None:
        """The checkpoint's inference files, plus what older run folders kept outside it (the frozen backbone, the
        rules) and the contract's config.json keys (the stored preprocessing), so the folder stands alone."""
        super()._write_pretrained(folder)
        if self.model_.backbone is not None and not (folder / FROZEN_BACKBONE).is_file() \
                and _crl_config(self.checkpoint_, self.checkpoint_config_).mode == "features":
            write_extra_file(folder / FROZEN_BACKBONE, self.model_.backbone)
        if self.rules_ is not None and not (folder / "rules.json").is_file():
            self.rules_.save(folder)
        config = self.checkpoint_config_
        if "preprocess" not in config:  # written before the contract: add its keys, keep CRL's own
            own = {k: v for k, v in config.items() if k not in _CONTRACT_KEYS}
            write_json(folder / "config.json",
                       checkpoint_config(KIND, config["config"], self.card_, self.preprocess_, package="crl", **own))

    @torch.no_grad()
    def _forward(self, x: torch.Tensor) -> dict[str, Any]:
        self.model_.to(self.device_).eval()
        return self.model_(x.to(self.device_))

    def _scores(self, x: torch.Tensor) -> np.ndarray:
        """The network's class probabilities (N, C): softmax of the temperature-scaled scores of x (N, C, H, W)."""
        return torch.softmax(self._forward(x)["scaled_logits"].float(), dim=1).cpu().numpy()

    def predict_concepts(self, x: Any, batch_size: int = 64) -> np.ndarray:
        """The network's binary concepts (N, K) float32 in {0, 1} (concept logit > 0) for images given as to
        `predict_proba`; the rules read exactly these."""
        self._require_fitted()
        parts = [self._forward(batch)["concepts"].float().cpu().numpy() for batch in self._batches(x, batch_size)]
        if not parts:
            return np.zeros((0, len(self.card_.concept_names)), dtype=np.float32)
        return np.concatenate(parts)

    def _rules(self) -> RuleSet:
        if self.rules_ is None:
            raise CheckpointError(f"{self.checkpoint_}: no rules.json in this checkpoint folder or its run folder "
                                  "(the rules are read out after training: did the training finish?)")
        return self.rules_

    def explain(self, x: Any, target: int | str | None = None) -> Explanation:
        """The concepts of one image (a file path, a preprocessed (C, H, W) / (1, C, H, W) tensor or a sample
        dict), the rules that fire on them and their contributions to class `target` (an index or a class name;
        None: the predicted class). The scores and the prediction are the rule set's; the network's class and
        probabilities are given next to them (`network_predicted`, `agrees`), since they can differ."""
        rules = self._rules()
        tensor, shown = self.as_input(x)
        out = self._forward(tensor)
        probs = torch.sigmoid(out["concept_logits"].float())[0].cpu().numpy()
        network = torch.softmax(out["scaled_logits"].float(), dim=1)[0].cpu().numpy()
        return explain_concepts(rules, out["concepts"][0].cpu().numpy(), probs, shown, target=target,
                                network_scores=network)


def explain_image(run_dir: str | Path, image_path: str | Path, device: str = "cpu") -> Explanation:
    """Load a trained run (or checkpoint folder), run one image file through it and explain the decision."""
    return ConceptRuleLearner.from_pretrained(run_dir).to(device).explain(image_path)


#: datasets whose published CRL evaluation scores a subset of them: name -> (the loader option, its value for the
#: paper's subset, its value for the whole set, what the paper's subset is)
PUBLISHED_SUBSETS: dict[str, tuple[str, str, str, str]] = {
    "ddi": ("subset", "skincon-annotated", "all",
            "as published (official test_ood.py): the DDI images SkinCon annotates, less those it flags 'Do not "
            "consider this image'"),
}


def evaluate_run(run_dir: str | Path, dataset: str, root: str, split: str = "test",
                 options: dict | None = None, device: str = "cpu", n_boot: int = 1000, seed: int = 0,
                 progress: bool = True) -> dict[str, Any]:
    """The trained model of `run_dir` on another dataset's split (same classes; its concepts, when it has the
    model's, are scored too): {"dataset", "split", "n", "test" (metrics with intervals), "concepts"?}.

    For a dataset of `PUBLISHED_SUBSETS` (DDI) without its subset option in `options`, both are scored from one
    pass: the paper's subset at the top level ("subset": "skincon-annotated", "protocol": what it is) and the
    whole set under "all_images" ({"subset": "all", "n", "test", "concepts"?}). With the option given, only
    that subset is scored (and named under "subset")."""
    estimator = ConceptRuleLearner.from_pretrained(run_dir).to(device)
    card = estimator.card_
    options = dict(options or {})
    published = PUBLISHED_SUBSETS.get(dataset)
    both = published is not None and published[0] not in options
    if both:
        assert published is not None
        options[published[0]] = published[2]
    ds = load_dataset(dataset, root, split, transform=estimator.preprocess_.eval_transform(), **options)
    if list(ds.card.class_names) != list(card.class_names):
        raise DatasetError(f"{dataset} classes {list(ds.card.class_names)} differ from the model's "
                           f"{list(card.class_names)}; evaluate on a dataset with the model's classes, in its order")
    if ds.card.num_concepts not in (0, card.num_concepts):
        raise DatasetError(f"{dataset} has {ds.card.num_concepts} concepts; the model predicts {card.num_concepts} "
                           f"({list(card.concept_names)})")
    passed = forward_split(estimator, ds, f"evaluating {dataset}/{split}", progress)
    def scores(rows: np.ndarray) -> dict[str, Any]:
        part = {key: value[rows] for key, value in passed.items()}
        out: dict[str, Any] = {"n": int(len(rows)),
                               "test": metrics_with_ci(card.task, part["targets"], part["scores"],
                                                       list(card.class_names), n_boot=n_boot, seed=seed)}
        if part["truth"].shape[1] == card.num_concepts and not np.isnan(part["truth"]).all():
            out["concepts"] = concept_metrics(part["truth"], part["probabilities"], list(card.concept_names))
        if estimator.rules_ is not None:
            out["compact"] = compact_on_split(estimator, part, progress)
        return out

    every = np.arange(len(ds))
    result: dict[str, Any] = {"dataset": dataset, "split": split}
    if published is None:
        return {**result, **scores(every)}
    if not both:
        return {**result, "subset": options[published[0]], **scores(every)}
    option, paper, whole, protocol = published
    paper_ids = set(load_dataset(dataset, root, split, **{**options, option: paper}).ids)
    rows = np.flatnonzero([i in paper_ids for i in ds.ids])
    return {**result, "subset": paper, "protocol": protocol, **scores(rows),
            "all_images": {"subset": whole, **scores(every)}}


def compact_on_split(estimator: ConceptRuleLearner, passed: dict[str, np.ndarray], progress: bool = True
                     ) -> dict[str, Any]:
    """The run's compact rules (`crl.compact`) and their fidelity to the network on the images of `passed` (a
    `forward_split` output). A run trained before compact rules existed has none in its rules.json: they are
    condensed here from its training split, as training would have (`"computed_now": true`)."""
    from crl.compact import compact_fidelity, compact_rules

    rules, cfg = estimator.rules_, estimator.resolved_config()
    compact, computed_now = rules.compact, False
    if compact is None:
        train = forward_split(estimator, load_split(cfg.data, "train", transform=estimator.preprocess_.eval_transform()),
                              "concepts of the training split", progress)
        compact = compact_rules(rules, train["probabilities"] > 0.5, train["scores"].argmax(1),
                                exact_max_concepts=cfg.compact.exact_max_concepts,
                                prefix_fidelity=cfg.compact.prefix_fidelity)
        computed_now = True
    fidelity = compact_fidelity(rules, compact, passed["probabilities"] > 0.5, passed["scores"].argmax(1))
    return {**compact.to_json(), "computed_now": computed_now, "fidelity_on_split": fidelity}


def forward_split(estimator: ConceptRuleLearner, dataset: Any, desc: str, progress: bool = True
                  ) -> dict[str, np.ndarray]:
    """One pass of a fitted CRL over a dataset (64 images a batch): the network's class probabilities "scores"
    (N, C), concept probabilities "probabilities" (N, K), the annotated concepts "truth" (N, K) and "targets" (N,)."""
    scores, concepts, truth, targets = [], [], [], []
    for batch in tqdm(DataLoader(dataset, batch_size=64), desc=desc, unit="batch", disable=not progress,
                      leave=False):
        out = estimator._forward(batch["image"])
        scores.append(torch.softmax(out["scaled_logits"].float(), 1).cpu().numpy())
        concepts.append(torch.sigmoid(out["concept_logits"].float()).cpu().numpy())
        truth.append(batch["concepts"].float().numpy())
        targets.append(batch["target"].numpy())
    return {"scores": np.concatenate(scores), "probabilities": np.concatenate(concepts),
            "truth": np.concatenate(truth), "targets": np.concatenate(targets)}
