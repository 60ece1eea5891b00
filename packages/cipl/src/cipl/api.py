"""CIPL as an estimator, and the entry points that take a run or checkpoint folder (what the `cipl` command calls).

    from cipl import CIPLClassifier
    model = CIPLClassifier("synth-cxr-cpu", train__epochs=2).fit(train, val)    # writes a run folder
    model.predict_proba(test)                 # (N, L) per-finding probabilities (single-label: class probabilities)
    model.explain("image.png").to_text()      # a Reasoning: "this region looks like that training patch"
    model.save_pretrained("my-cipl"); CIPLClassifier.from_pretrained("my-cipl")

`from_pretrained` takes a run folder (its best checkpoint), a checkpoint folder (checkpoints/last, checkpoints/pushed,
or what save_pretrained wrote), including runs written before checkpoints carried their push index: their push
folder is then found by matching prototype vectors, as before. Its keyword arguments change where data are read
(`data__root=...`: the training images the prototypes' pictures are drawn from when the push folder is not at
hand), never the trained network, which is rebuilt from the checkpoint's own config.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from cipl.config import CIPLConfig
from cipl.evaluate import box_localisation_metrics, localisation_metrics, predict, prototype_placement
from cipl.explain import Reasoning, gallery_figures, gallery_overview, reason_tensor
from cipl.push import (
    PUSH_INDEX_FILE,
    PicturesUnavailable,
    PrototypePictures,
    PushIndex,
    images_by_id,
    push_prototypes,
)
from cipl.run import KIND, build_model, checkpoint_path, load_cipl, load_split, model_card, output_task
from cipl.train import CIPLRecipe
from medimg_core.checkpoint import load_weights, save_checkpoint
from medimg_core.data import MedicalImageDataset, load_dataset
from medimg_core.data.errors import DatasetError
from medimg_core.data.preprocess import load_split as load_data_split
from medimg_core.estimator import Estimator
from medimg_core.experiment import fit_run, sample_groups
from medimg_core.explain import resolve_target
from medimg_core.metrics import best_f1_thresholds, metrics_with_ci
from medimg_core.pretrained import checkpoint_config, read_checkpoint_config
from medimg_core.runs import RunFolderError

CONFIGS = Path(__file__).parent / "configs"


class CIPLClassifier(Estimator):
    """Cross- and Intra-image Prototypical Learning as an estimator (see the module docstring).

    Fitted attributes: `model_` (the student CIPL, eval mode), `cfg_` (its CIPLConfig), `labels_` (LabelSpace),
    `output_names_` (what predict_proba scores: the findings, or the classes), `push_index_` (which training image
    and cell each prototype is; None when the checkpoint's prototypes are no push's), plus the Estimator's
    `checkpoint_`, `card_`, `preprocess_` and `run_`.
    """

    config_class = CIPLConfig
    configs_dir = CONFIGS
    kind = KIND

    def fit(self, train: MedicalImageDataset, val: MedicalImageDataset | None = None) -> CIPLClassifier:
        """Train with the published schedule on `train` (pairs, push set), selecting among pushed states on `val`
        (without val: the last epoch); writes a run folder (`run_`). The datasets are not modified."""
        cfg = self.resolved_config()
        recipe = CIPLRecipe()
        run = fit_run(recipe, cfg, splits=recipe.splits_of(cfg, train, val), command=[f"{type(self).__name__}.fit"])
        return self._fitted_from(run.checkpoint("best"), read_checkpoint_config(run)[1], run)

    def _load(self, folder: Path, config: dict[str, Any]) -> None:
        student, info = load_cipl(folder)
        self.model_ = student.to(self.device_)
        # the checkpoint's config, with the keyword overrides (from_pretrained's: where the data are now)
        self.cfg_ = type(self)(info["cfg"], **self.params).resolved_config() if self.params else info["cfg"]
        self.labels_ = info["labels_obj"]
        self.output_names_ = list(self.labels_.output_names)
        self.in_chans_ = int(info["in_chans"])
        self.push_index_ = info["push_index"]
        self._pictures: PrototypePictures | None = None

    @torch.no_grad()
    def _scores(self, x: torch.Tensor) -> np.ndarray:
        """Per-finding probabilities (N, L) (multi-label) or class probabilities (N, K) of a batch (N, C, H, W)."""
        model = self.model_.to(self.device_).eval()
        return model.predict_proba(x.to(self.device_)).float().cpu().numpy()

    def explain(self, x: Any, target: int | str | None = None, top_k: int = 5, threshold: float = 0.5,
                map_step: int | None = None) -> Reasoning:
        """Why the model scores one image x (a file path, a preprocessed (C, H, W) / (1, C, H, W) tensor or a sample
        dict) as it does: for `target` (an output index or name), else for each finding above `threshold` (none:
        the reference class; single-label: the predicted class), the class map and the `top_k` most activated
        prototypes, each with its source training patch. `map_step`: maps sampled every N px (shift-and-stitch)."""
        self._require_fitted()
        tensor, shown = self.as_input(x)
        model = self.model_.to(self.device_).eval()
        index = None
        if target is not None:
            index = resolve_target(target, 0, self.output_names_)
        return reason_tensor(model, tensor[0], shown, self.pictures(), top_k, threshold, _image_id(x),
                             map_step=map_step, target=index)

    def pictures(self) -> PrototypePictures | None:
        """The prototypes' pictures: from the run's push folder when at hand, else drawn again from the training
        images the push index names (the configured dataset's training split); None without a push index."""
        self._require_fitted()
        if self.push_index_ is None:
            return None
        if self._pictures is None:
            self._pictures = PrototypePictures(self.push_index_, self.model_, _lazy_push_set(self),
                                               self.preprocess_.to_display)
        return self._pictures

    def gallery(self, out_dir: str | Path, per_class: int = 6) -> list[Path]:
        """One figure per class of its prototypes on their source images, and overview.png (`per_class` of each)."""
        self._require_fitted()
        pictures = self.pictures()
        if pictures is None:
            raise PicturesUnavailable(f"{self.checkpoint_}: this checkpoint's prototypes are no push's (no "
                                      f"{PUSH_INDEX_FILE}, and no push folder of its run matches them); run "
                                      "`cipl push` first")
        out_dir = Path(out_dir)
        paths = gallery_figures(self.model_, pictures, out_dir)
        paths.append(gallery_overview(self.model_, pictures, out_dir / "overview.png", per_class))
        return paths


def _image_id(x: Any) -> str:
    if isinstance(x, (str, Path)):
        return Path(x).stem
    if isinstance(x, Mapping) and "id" in x:
        return str(x["id"])
    return "image"


def _lazy_push_set(est: CIPLClassifier) -> Callable[[str], torch.Tensor]:
    """source id -> model input of that training image, loading the configured training split on first use."""
    found: list[Callable[[str], torch.Tensor]] = []

    def image(source_id: str) -> torch.Tensor:
        if not found:
            cfg = est.cfg_
            try:
                found.append(images_by_id(load_split(cfg, cfg.data.train_split, est.in_chans_)))
            except Exception as exc:
                raise PicturesUnavailable(
                    f"the push folder of {est.checkpoint_} is not at hand and its training images cannot be read "
                    f"(data.dataset {cfg.data.dataset!r}, data.root {cfg.data.root!r}: {exc})") from None
        return found[0](source_id)

    return image


# ------------------------------------------------------------------------------- run-folder entry points
def reason_image(run_dir: str | Path, image_path: str | Path, device: str = "cpu", top_k: int = 5,
                 threshold: float = 0.5, checkpoint: str = "best", map_step: int | None = None) -> Reasoning:
    """`cipl reason`: explain one image file with a run's checkpoint (see `CIPLClassifier.explain`)."""
    model = CIPLClassifier.from_pretrained(checkpoint_path(run_dir, checkpoint)).to(device)
    return model.explain(image_path, top_k=top_k, threshold=threshold, map_step=map_step)


def evaluate_run(run_dir: str | Path, dataset: str | None = None, root: str | None = None, split: str = "test",
                 options: dict | None = None, device: str = "cpu", n_boot: int = 1000, checkpoint: str = "best",
                 seed: int = 0, map_step: int | None = None, progress: bool = False) -> dict[str, Any]:
    """`cipl evaluate`: a run's checkpoint on a split of its own data (default) or of another dataset with the same
    classes: metrics with intervals (over patients where the data have patient ids; multi-label F1 at per-finding
    thresholds chosen on the run's own validation split, `f1_val_threshold_mean`, beside the test-tuned
    `f1_test_tuned_mean`, the released code's mean F1), localisation where the data
    have masks, the ChestX-ray8 box protocol where they have boxes (`box_localisation`), and (on its own data) where
    the push put the prototypes."""
    model = CIPLClassifier.from_pretrained(checkpoint_path(run_dir, checkpoint))
    cfg, card, labels, student = model.cfg_, model.card_, model.labels_, model.model_
    name = dataset or cfg.data.dataset
    data_root = root or cfg.data.root
    opts = cfg.data.options if dataset is None and options is None else (options or {})
    ds = load_dataset(name, data_root, split, transform=model.preprocess_.eval_transform(), **opts)
    if list(ds.card.class_names) != list(card.class_names):
        raise DatasetError(f"{name} classes {list(ds.card.class_names)} differ from the model's "
                           f"{list(card.class_names)}; evaluate on a dataset with the model's classes, in its order")
    batch = cfg.train.eval_batch_size or cfg.train.batch_size
    out = predict(student, ds, device, batch, progress)
    task = output_task(labels)
    target = out["target"] if labels.multilabel else out["target"].astype(np.int64)
    thresholds, unavailable = None, None
    if labels.multilabel and not (dataset is None and split == cfg.data.val_split):
        thresholds, unavailable = _val_thresholds(model, device, batch, progress)
    result: dict[str, Any] = {"dataset": name, "split": split, "n": len(ds), "task": task,
                              "test": metrics_with_ci(task, target, out["scores"], list(labels.output_names),
                                                      n_boot=n_boot, seed=seed, groups=sample_groups(ds),
                                                      val_thresholds=thresholds)}
    if unavailable:
        result["test"]["f1_val_threshold_unavailable"] = unavailable
    loc = localisation_metrics(student, ds, device, batch, cfg.iou_threshold, n_boot=n_boot, seed=seed,
                               kind=cfg.localisation_map, map_step=map_step, progress=progress)
    boxes = box_localisation_metrics(student, ds, device, batch, cfg.iou_threshold, n_boot=n_boot, seed=seed,
                                     kind=cfg.localisation_map, map_step=map_step, progress=progress)
    if boxes is not None:
        result["box_localisation"] = boxes
    if loc is not None:
        result["localisation"] = loc
        index = model.push_index_ if dataset is None and root is None else None
        if index is not None:
            train = load_data_split(cfg.data, "train")  # the push ran on the run's own training images
            placement = prototype_placement(index.to_dict(), train)
            if placement is not None:
                result["prototype_placement"] = placement
    return result


def _val_thresholds(model: CIPLClassifier, device: str, batch: int, progress: bool
                   ) -> tuple[np.ndarray | None, str | None]:
    """Per-finding thresholds of the best F1 on the run's own validation split (`best_f1_thresholds`), or None and
    why when that split cannot be read (e.g. a checkpoint evaluated away from its training data)."""
    cfg = model.cfg_
    try:
        val = load_dataset(cfg.data.dataset, cfg.data.root, cfg.data.val_split,
                           transform=model.preprocess_.eval_transform(), **cfg.data.options)
    except (DatasetError, OSError, ValueError, TypeError) as exc:
        return None, (f"the run's validation split ({cfg.data.dataset} {cfg.data.val_split!r} at {cfg.data.root}) "
                      f"cannot be read: {exc}")
    out = predict(model.model_, val, device, batch, progress)
    return best_f1_thresholds(out["target"], out["scores"]), None


def push_run(run_dir: str | Path, checkpoint: str = "best", split: str | None = None, device: str = "cpu",
             progress: bool = False) -> dict[str, Any]:
    """`cipl push`: project the prototypes of a run's checkpoint onto its training split (or `split`), save the
    pushed model as checkpoints/pushed (with its push index) and the artefacts under
    prototypes/push-<checkpoint>-<split>/."""
    model = CIPLClassifier.from_pretrained(checkpoint_path(run_dir, checkpoint))
    if model.run_ is None:
        raise RunFolderError(f"{run_dir}: `cipl push` writes into a run folder (checkpoints/, prototypes/); this is a "
                             "checkpoint folder outside a run")
    run = Path(model.run_)
    cfg, labels = model.cfg_, model.labels_
    split_name = split or cfg.data.train_split
    ds = load_data_split(cfg.data, split_name, transform=model.preprocess_.eval_transform())
    loader = DataLoader(ds, batch_size=cfg.train.eval_batch_size or cfg.train.batch_size, shuffle=False)
    directory = f"prototypes/push-{checkpoint}-{split_name}"
    student = model.model_.to(device)
    result = push_prototypes(student, loader, out_dir=run / directory, device=device,
                             display=model.preprocess_.to_display, progress=progress)
    module = build_model(cfg, labels, model.in_chans_, pretrained=False)
    load_weights(module, model.checkpoint_)
    module.student.load_state_dict(student.cpu().state_dict())
    config = checkpoint_config(KIND, cfg, model.card_, model.preprocess_, package="cipl", labels=labels.to_dict(),
                               in_chans=model.in_chans_)
    folder = save_checkpoint(run / "checkpoints" / "pushed", module, config, card=model_card(cfg, model.card_, labels),
                             extra_files={PUSH_INDEX_FILE: PushIndex.of_result(result, directory).to_dict()})
    return {"checkpoint": str(folder), "prototypes": str(run / directory), "n_images": len(ds), **result.stats}
