"""IIS as an estimator, and run and checkpoint folders in: `InterpretabilityScore`, `explain_image`.

    model = InterpretabilityScore("synth-derm-cpu", backbones=["resnet18:random"]).fit(train, val)
    model.scores_["resnet18:random"]["iis"]       # the IIS of each backbone, with its interval (iis_ci)
    model.predict_proba(test); model.explain("image.png").to_text()
    model.save_pretrained("iis-heads"); InterpretabilityScore.from_pretrained("iis-heads")

IIS scores a representation rather than training a classifier; the object is a thin layer over `iis score`
(`iis.pipeline.run_score`, which calls `iis.sweep.score_representation`). What it predicts with is one scored
backbone's concept head at one sparsity (see `InterpretabilityScore`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from iis.config import IISConfig
from iis.explain import Explanation, explain_features, head_probabilities, pick_ratio
from iis.heads import KIND, PICTURE_SIZE, ScoredBackbone, is_old_layout, old_layout_config
from iis.pipeline import backbone_dirs, load_elements, run_score
from medimg_core.checkpoint import CheckpointError
from medimg_core.config import ConfigError, config_from_dict
from medimg_core.data.preprocess import load_split
from medimg_core.estimator import Estimator
from medimg_core.experiment import Splits
from medimg_core.runs import Run, RunFolderError, read_json_object

__all__ = ["InterpretabilityScore", "explain_image", "selection_split"]

log = logging.getLogger("medimg")
CONFIGS = Path(__file__).parent / "configs"


def selection_split(targets: np.ndarray, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(fit indices, selection indices), both sorted: a seeded split stratified by class (multi-hot targets by
    their first positive label). Every class with two images or more gives the selection round(fraction * n)
    of them, at least one, and keeps at least one for fitting."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"selection_fraction must be in (0, 1), got {fraction}")
    targets = np.asarray(targets)
    groups = targets if targets.ndim == 1 else np.where(targets.any(axis=1), targets.argmax(axis=1), -1)
    rng = np.random.default_rng(seed)
    chosen = []
    for g in np.unique(groups):
        members = rng.permutation(np.flatnonzero(groups == g))
        if len(members) >= 2:
            chosen.append(members[:min(max(1, round(fraction * len(members))), len(members) - 1)])
    select = np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)
    return np.setdiff1d(np.arange(len(targets)), select), select


def _pick_backbone(run_dir: Path, backbone: int | str | None) -> Path:
    """The folder of one scored backbone of a run: by index or label (None: the first)."""
    folders = backbone_dirs(run_dir)
    if not folders:
        raise RunFolderError(f"{run_dir}: no scored backbone found; is it a finished `iis score` run folder?")
    if backbone is None:
        return folders[0]
    labels = [read_json_object(f / "backbone.json", "the scored backbone's name and weights").get("label")
              for f in folders]
    if str(backbone).isdigit() and int(backbone) < len(folders):
        return folders[int(backbone)]
    if backbone in labels:
        return folders[labels.index(backbone)]
    raise ConfigError(f"--backbone {backbone!r} is not in {run_dir}; it scored {labels} (or give an index)")


def _locate(path: Path, backbone: int | str | None) -> tuple[Path, Run | None]:
    """(heads checkpoint folder, its run or None) for a run folder or a checkpoint folder."""
    if (path / "backbones").is_dir():
        return _pick_backbone(path, backbone) / "heads", Run(path)
    if (path / "config.json").is_file():
        if backbone is not None:
            raise ValueError(f"backbone={backbone!r} picks a backbone of a run folder; {path} is the checkpoint of one")
        for run_dir in (path.parent.parent, path.parent.parent.parent):  # checkpoints/best, backbones/<i>/heads
            if (run_dir / "backbones").is_dir() and (run_dir / "config.yaml").is_file():
                return path, Run(run_dir)
        return path, None
    raise CheckpointError(f"{path}: neither an `iis score` run folder (with backbones/) nor an IIS heads checkpoint "
                          "folder (with config.json)")


class InterpretabilityScore(Estimator):
    """The Inherent Interpretability Score of one or more representations, as an estimator.

    Settings (stored, nothing is built until `fit`): `config` (a preset of iis/configs, a YAML file or an
    `IISConfig`) and `section__key=value` overrides; `backbones` lists the representations as `NAME[:weights]`
    (`backbones=["resnet18:random", "resnet18:path/to/baseline-run"]`). Then, for prediction and explanation:
    `backbone` (which scored backbone: its index or label; default the first), `ratio` (the sparsity of the
    concept head; default the sparsest swept ratio whose head still keeps `top_k` concepts per image, the head
    `iis explain` uses), `top_k` (10), `selection_fraction` (see `fit`) and `root` (where the training images
    are now, to picture the concepts of a run written before checkpoints stored the pictures).

    Fitted attributes: `scores_` ({backbone label: its result, with "iis", "iis_ci", "per_ratio" (ARR with
    intervals), "probe"}), `run_` (the run folder), `backbone_` (the rebuilt backbone), `library_` (the concept
    library), `heads_` (every selected head's state dict by key, "s<ratio>" and "probe"), `ratio_` and `head_`
    (the concept head `predict_proba` and `explain` use).
    """

    config_class = IISConfig
    configs_dir = CONFIGS
    kind = KIND

    def __init__(self, config: str | Path | IISConfig | None = None, *, backbone: int | str | None = None,
                 ratio: float | None = None, top_k: int = 10, selection_fraction: float = 0.2,
                 root: str | None = None, **params: Any):
        super().__init__(config, **params)
        self.backbone = backbone
        self.ratio = ratio
        self.top_k = top_k
        self.selection_fraction = selection_fraction
        self.root = root

    _SETTINGS = ("backbone", "ratio", "top_k", "selection_fraction", "root")

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {**super().get_params(deep), **{k: getattr(self, k) for k in self._SETTINGS}}

    def set_params(self, **params: Any) -> InterpretabilityScore:
        for key in self._SETTINGS:
            if key in params:
                setattr(self, key, params.pop(key))
        super().set_params(**params)
        return self

    # -- fitting -----------------------------------------------------------------------------------------
    def fit(self, train: Dataset, val: Dataset | None = None) -> InterpretabilityScore:
        """Score the configured backbones on `train` and `val` (medimg datasets, which are not changed).

        Split roles (no number is reported on a split used to select): the concept library and the heads come
        from `train` minus a seeded, class-stratified `selection_fraction` (0.2) of it; that part selects each
        head's epoch and learning rate; `val` is scored (every IIS, ARR and interval in `scores_`). Writes an
        `iis score` run folder under `out` (`run_`); predictions and explanations use its backbone `backbone`.
        """
        if val is None:
            raise ValueError("InterpretabilityScore.fit(train, val): IIS is scored on a held-out split; pass val")
        if not hasattr(train, "subset"):
            raise TypeError(f"{type(train).__name__}: expected a medimg dataset (medimg_core.data), which has subset")
        cfg = self.resolved_config()
        if not cfg.backbones:
            raise ConfigError(f"{type(self).__name__}: no backbone to score; pass backbones=['NAME:weights', ...] "
                              "(e.g. 'resnet18:random' or 'resnet18:path/to/baseline-run')")
        fit_index, select_index = selection_split(train.targets, self.selection_fraction, cfg.seed)
        splits = Splits(train.subset(fit_index, f"{train.split}-fit"),
                        train.subset(select_index, f"{train.split}-selection"), val, train.card)
        share = f"{self.selection_fraction:.0%}"
        roles = {"train": "concept library and head training: the train set given to fit, less the selection part",
                 "val": f"selection (epoch and learning rate): a seeded stratified {share} of that train set",
                 "test": "scored (IIS, ARR and their intervals): the val set given to fit"}
        run = run_score(cfg, splits=splits, command=[f"{type(self).__name__}.fit"], split_roles=roles)
        folder, _ = _locate(run.path, self.backbone)
        return self._fitted_from(folder, read_json_object(folder / "config.json", "an IIS heads config"), run)

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs: Any) -> InterpretabilityScore:
        """A fitted object from an `iis score` run folder (its backbone `backbone=`, default the first) or a heads
        checkpoint folder, including run folders written before checkpoints were self-contained."""
        folder, run = _locate(Path(path), kwargs.get("backbone"))
        config = read_json_object(folder / "config.json", "an IIS heads config")
        if config.get("kind") != KIND:
            raise CheckpointError(f"{folder}: a checkpoint of kind {config.get('kind')!r}, expected {KIND!r}")
        if is_old_layout(config):
            config = old_layout_config(folder)
        try:
            cfg = config_from_dict(IISConfig, config["config"])
        except (KeyError, ConfigError) as exc:
            raise CheckpointError(f"{folder}/config.json: its config does not fit {cls.__name__} ({exc})") from None
        estimator = cls(cfg, **kwargs)
        estimator._fitted_from(folder, config, run)
        return estimator

    def _load(self, folder: Path, config: dict[str, Any]) -> None:
        old = is_old_layout(config)
        scored = ScoredBackbone.from_old_layout(folder, config) if old else ScoredBackbone.load(folder, config)
        self.scored_ = scored
        self.backbone_ = scored.loaded
        self.library_ = scored.library
        self.heads_ = scored.heads
        self.multilabel_ = scored.multilabel
        self.ratio_ = pick_ratio(scored.ratios, scored.library.num_concepts, self.ratio, self.top_k)
        self.head_ = scored.head(self.ratio_)
        self.scores_ = {scored.label: scored.score}
        if self.run_ is not None and self.run_.metrics_path.is_file():
            self.scores_ = {e["label"]: e["result"] for e in self.run_.metrics().get("backbones", [])}
        self._old_layout = old
        self._elements: Any = None

    # -- predicting and explaining ---------------------------------------------------------------------
    @torch.no_grad()
    def _features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features (N, D) of preprocessed images x (N, C, H, W)."""
        return self.backbone_.backbone.to(self.device_).eval()(x.to(self.device_))

    @torch.no_grad()
    def _scores(self, x: torch.Tensor) -> np.ndarray:
        logits = self.head_.to(self.device_)(self._features(x))
        return head_probabilities(logits, self.multilabel_).cpu().numpy()

    def explain(self, x: Any, target: int | str | None = None) -> Explanation:
        """The concepts behind the decision on one image (a file path, a preprocessed (C, H, W) or (1, C, H, W)
        tensor, or a dataset sample): those surviving the sparsity mask of the head at `ratio_`, with what each
        adds to the score of `target` (an index or class name; default the predicted class)."""
        self._require_fitted()
        tensor, shown = self.as_input(x)
        return explain_features(self.head_.to(self.device_), self._features(tensor), self.library_, self.classes_,
                                self.multilabel_, target, image=shown, backbone=self.backbone_.spec.label,
                                picture=self._picture_source(), top_k=self.top_k)

    def _picture_source(self) -> Callable[[int], np.ndarray | None] | None:
        """Element index -> its picture: the checkpoint's stored pictures, or (runs written before they were
        stored) drawn from the training images, where they still are (`root`)."""
        if self.scored_.pictures:
            return self.scored_.pictures.get
        if not self._old_layout or self.library_.kind == "text" or self.run_ is None:
            return None
        if self._elements is None:
            if not (self.run_ / "elements.json").is_file():
                return None
            cfg = config_from_dict(IISConfig, self.checkpoint_config_["config"])
            if self.root is not None:
                cfg.data.root = self.root
            try:
                train = load_split(cfg.data, "train")
                self._elements = load_elements(self.run_, train, cfg)
            except (OSError, ValueError) as exc:  # the training images moved: explain without pictures
                log.warning("concept pictures unavailable (%s); pass --root", exc)
                self._elements = False
        if self._elements is False:
            return None
        elements = self._elements
        return lambda index: elements.picture(index, size=PICTURE_SIZE)

    def _write_pretrained(self, folder: Path) -> None:
        """The self-contained heads checkpoint (a run written before the format is converted here, its concept
        pictures drawn from the training images where they still are)."""
        scored = self.scored_
        if not scored.pictures and (picture := self._picture_source()) is not None:
            scored.pictures = {e: p for e in scored.picture_elements() if (p := picture(e)) is not None}
        scored.save(folder)


def explain_image(run_dir: str | Path, image_path: str | Path, backbone: int | str | None = None,
                  ratio: float | None = None, top_k: int = 10, target_class: int | str | None = None,
                  device: str = "cpu", root: str | None = None, *, target: int | str | None = None) -> Explanation:
    """Explain an image file with a scored backbone of an `iis score` run (or a heads checkpoint folder):
    `InterpretabilityScore.from_pretrained(run_dir, ...).explain(image_path, target)`. `target_class` is the
    old name of `target`."""
    if target_class is not None:
        if target is not None and target != target_class:
            raise ValueError(f"target={target!r} and target_class={target_class!r} disagree; give one")
        target = target_class
    model = InterpretabilityScore.from_pretrained(run_dir, backbone=backbone, ratio=ratio, top_k=top_k, root=root)
    return model.to(device).explain(image_path, target=target)
