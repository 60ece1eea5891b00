"""The method as one estimator, and the commands that read a fitted one.

    from dae_counterfactual import CounterfactualExplainer
    model = CounterfactualExplainer("synth-grade-cpu", train__epochs=5).fit(train, val)  # DAE + latents + boundary
    model.predict_proba(test)            # (N, 2): P(grade < k), P(grade >= k), k = boundary.positive_min_grade
    model.explain(image).to_text()       # the image moved to the other class, rendered with its own x_T
    model.save_pretrained("dae-model"); CounterfactualExplainer.from_pretrained("dae-model")

`fit` is the whole method: it trains the diffusion autoencoder (`fit_run` with `DAERecipe`), encodes the
datasets it was given and fits the latent boundary, which is stored in the best checkpoint. `from_pretrained`
reads a run folder or a checkpoint folder, including runs written before the boundary moved into the checkpoint
(their RUN/boundary.json is read).

The classes are the latent boundary's: the binary pathology grade >= `boundary.positive_min_grade` (named after
the dataset's classes when it has two, else "grade < k" / "grade >= k"). `predict_proba` gives
(1 - sigmoid(d), sigmoid(d)) with d the signed distance of the image's z_sem to the hyperplane: the score behind
the boundary's AUROC in metrics.json, monotone in d, with predict = the side of the hyperplane; it is not a
calibrated probability (the paper's SVM has none). `explain(x, target)` moves the image to class `target`
(default: the class it is not predicted in) and renders it at every grade of that class (with k = 1: grade 0
for the negative class, grades 1..G-1 for the pathology).

`counterfactual_run` and `evaluate_run` are the `dae-cf counterfactual` / `evaluate` commands on a run folder.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from dae_counterfactual.boundary import BoundaryFileError, LatentBoundary
from dae_counterfactual.config import KIND, DAEConfig, check_config
from dae_counterfactual.evaluate import (
    ImageOracle,
    counterfactual_metrics,
    latent_swap_probe,
    measure_for,
    per_target_table,
    region_for,
    select_images,
)
from dae_counterfactual.explain import CounterfactualSeries, generate_counterfactuals, series_figure
from dae_counterfactual.model import DiffusionAutoencoder
from dae_counterfactual.run import (
    BOUNDARY_FILE,
    checkpoint_channels,
    encode_dataset,
    eval_datasets,
    load_dae,
    model_from_checkpoint,
    save_latents,
)
from dae_counterfactual.run import boundary_path as find_boundary
from dae_counterfactual.stages import fit_boundary
from dae_counterfactual.train import DAERecipe
from medimg_core.checkpoint import CheckpointError, write_json
from medimg_core.config import config_from_dict, save_config
from medimg_core.data import DatasetCard, MedicalImageDataset
from medimg_core.data.preprocess import Preprocess, build_transforms, load_image
from medimg_core.distributed import seed_everything, select_device
from medimg_core.estimator import Estimator, NotFittedError, with_transform
from medimg_core.experiment import fit_run
from medimg_core.explain import resolve_target
from medimg_core.pretrained import read_checkpoint_config
from medimg_core.runs import RunFolderError, create_run_dir, peak_memory_mb
from medimg_core.training import show_progress

CONFIGS = Path(__file__).parent / "configs"


class NoBoundaryError(NotFittedError, CheckpointError):
    """A trained DAE whose latent boundary is not fitted yet (the commands report it without a traceback)."""


class CounterfactualExplainer(Estimator):
    """Diffusion-autoencoder counterfactuals as an estimator (see the module docstring).

    Fitted attributes: `model_` (the DiffusionAutoencoder, EMA weights), `boundary_` (the LatentBoundary, None
    for a checkpoint whose boundary was not fitted yet), `dae_config_` (its DAEConfig), plus the base's
    `checkpoint_`, `card_`, `preprocess_`, `run_`.
    """

    config_class = DAEConfig
    configs_dir = CONFIGS
    kind = KIND

    # -- fitting ------------------------------------------------------------------------------------
    def fit(self, train: MedicalImageDataset, val: MedicalImageDataset | None = None) -> CounterfactualExplainer:
        """Train the DAE on `train` (validated on `val`), encode both with the trained encoder (RUN/latents/) and
        fit the latent boundary on the training latents (metrics on both in metrics.json["boundary"])."""
        cfg = self.resolved_config()
        check_config(cfg)
        recipe = DAERecipe()
        run = fit_run(recipe, cfg, splits=recipe.splits_of(cfg, train, val), command=[f"{type(self).__name__}.fit"])
        device = select_device(cfg.device)
        loaded = load_dae(run, device)
        eval_tf = build_transforms(cfg.data, train.card)[1]
        given = {"train": train} if val is None else {"train": train, "val": val}
        latents = {}
        for split, dataset in given.items():
            latents[split] = encode_dataset(loaded.model, with_transform(dataset, eval_tf), device=device,
                                            progress=show_progress(cfg.train.progress))
            save_latents(run, split, latents[split], loaded.card.name)
        fit_boundary(run, latents, loaded.card, cfg.boundary, cfg.bootstrap, cfg.seed)
        return self._fitted_from(run.checkpoint("best"), read_checkpoint_config(run)[1], run)

    # -- loading --------------------------------------------------------------------------------------
    def _preprocess_of(self, config: dict[str, Any]) -> Preprocess:
        if "preprocess" in config:
            return super()._preprocess_of(config)
        # checkpoint format 1 (before the preprocessing was stored, with in_channels)
        cfg = config_from_dict(DAEConfig, config["config"])
        return Preprocess.from_config(cfg.data, DatasetCard.from_dict(config["card"]),
                                      checkpoint_channels(config, self.checkpoint_ / "config.json"))

    def _load(self, folder: Path, config: dict[str, Any]) -> None:
        self.model_, self.dae_config_ = model_from_checkpoint(folder, config)
        self.model_.eval()
        # format 1 (no "format" key) kept the boundary in the run folder; later checkpoints hold their own, so a
        # run-level file never stands in for a checkpoint it was not fitted on
        path = find_boundary(folder, self.run_ if "format" not in config else None)
        self.boundary_: LatentBoundary | None = None if path is None else LatentBoundary.load(path)
        z_dim = self.dae_config_.model.z_dim
        if self.boundary_ is not None and self.boundary_.n_features_in_ != z_dim:
            raise BoundaryFileError(f"{path}: 'coef' has {self.boundary_.n_features_in_} dimensions; expected the "
                                    f"model's {z_dim} latent dimensions (the boundary belongs to another model: run "
                                    "`dae-cf fit-boundary RUN` again)")
        boundary_cfg = self.boundary_ if self.boundary_ is not None else self.dae_config_.boundary
        k = boundary_cfg.positive_min_grade
        names = self.card_.class_names
        self.output_names_ = (list(names) if len(names) == 2 and k == 1
                              else [f"grade < {k:g}", f"grade >= {k:g}"])

    def _write_pretrained(self, folder: Path) -> None:
        """The checkpoint's inference files, and the boundary (a run of format 1 kept it in the run folder)."""
        super()._write_pretrained(folder)
        if self.boundary_ is not None:
            self.boundary_.save(folder / BOUNDARY_FILE)

    def _boundary(self) -> LatentBoundary:
        self._require_fitted()
        if self.boundary_ is None:
            where = self.run_ if self.run_ is not None else self.checkpoint_
            raise NoBoundaryError(f"{self.checkpoint_}: the diffusion autoencoder has no latent boundary yet; run "
                                 f"`dae-cf fit-boundary {where}` (or fit) first")
        return self.boundary_

    def _model(self) -> DiffusionAutoencoder:
        return self.model_.to(self.device_).eval()

    # -- prediction -----------------------------------------------------------------------------------
    @torch.no_grad()
    def _scores(self, x: torch.Tensor) -> np.ndarray:
        """(1 - sigmoid(d), sigmoid(d)) (N, 2) of images x (N, C, H, W) in [0, 1], d their signed distance."""
        boundary = self._boundary()
        positive = boundary.score_proba(self._model().encode(x.to(self.device_)).cpu().numpy())
        return np.stack([1.0 - positive, positive], axis=1)

    def grades_of(self, target: int) -> list[int]:
        """The dataset's grades in class `target` (0: grade < k, 1: grade >= k)."""
        k = self._boundary().positive_min_grade
        grades = [g for g in range(self.card_.num_classes) if (g >= k) == bool(target)]
        if not grades:
            raise ValueError(f"no grade of {self.card_.name} (0..{self.card_.num_classes - 1}) is in class "
                             f"{self.classes_[target]!r}")
        return grades

    # -- explanations ---------------------------------------------------------------------------------
    def explain(self, x: Any, target: int | str | None = None) -> CounterfactualSeries:
        """The image `x` (a file path, a (C, H, W) / (1, C, H, W) tensor in [0, 1] or a dataset sample) moved to
        class `target` (index or name; None: the class it is not predicted in), rendered with its own x_T at
        every grade of that class (config counterfactual.edit "grade"), or at each of the config's fixed steps
        towards that class ("step")."""
        image, _ = self.as_input(x)
        boundary = self._boundary()
        predicted = int(boundary.predict(self._model().encode(image.to(self.device_)).cpu().numpy())[0])
        index = 1 - predicted if target is None else resolve_target(target, predicted, self.classes_)
        ids, truth = None, None
        if isinstance(x, Mapping):
            ids = [str(x["id"])] if "id" in x else None
            truth = [float(x["target"])] if "target" in x else None
        elif isinstance(x, (str, Path)):
            ids = [Path(x).stem]
        edit = self.dae_config_.counterfactual
        if edit.edit == "step":
            series = self.counterfactuals(image, sorted(edit.steps), "step", 1.0 if index == 1 else -1.0, ids=ids,
                                          true_grades=truth, along=edit.along)[0]
        else:
            series = self.counterfactuals(image, self.grades_of(index), ids=ids, true_grades=truth)[0]
        series.target = index
        return series

    def counterfactuals(self, images: Any, targets: Sequence[float], mode: Literal["grade", "step"] = "grade",
                        direction: float | Sequence[float] | None = None, encode_steps: int | None = None,
                        render_steps: int | None = None, ids: Sequence[str] | None = None,
                        true_grades: Sequence[float] | None = None, batch_size: int = 8,
                        progress: bool = False, along: str | None = None) -> list[CounterfactualSeries]:
        """Counterfactual series of images at target grades (or, mode "step", the notebooks' fixed steps along
        the normal, or along="mean-difference" the class-mean difference; `direction` +1 / -1 / None = across the
        hyperplane): images (N, C, H, W) / (C, H, W) in [0, 1], or image files (their names are the ids).
        Diffusion steps default to the config's diffusion section; `along` (step mode) to counterfactual.along."""
        boundary = self._boundary()
        if isinstance(images, (str, Path)):
            images = [images]
        if isinstance(images, (list, tuple)) and images and isinstance(images[0], (str, Path)):
            ids = [Path(p).stem for p in images] if ids is None else ids
            x = torch.cat([load_image(p, self.preprocess_)[0] for p in images])
        else:
            x = torch.as_tensor(images).float()
            x = x[None] if x.ndim == 3 else x
        diffusion = self.dae_config_.diffusion
        return generate_counterfactuals(self._model(), boundary, x, targets, mode,
                                        encode_steps or diffusion.encode_steps, render_steps or diffusion.render_steps,
                                        direction, ids, true_grades, batch_size, self.device_, progress,
                                        classes=tuple(self.classes_),
                                        along=(along or self.dae_config_.counterfactual.along) if mode == "step"
                                        else "normal")


# ---------------------------------------------------------------------------------- the commands on a run


def _output_folder(explainer: CounterfactualExplainer, out: str | Path | None, default: str, name: str) -> Path:
    if out is None and explainer.run_ is None:
        raise RunFolderError(f"{explainer.checkpoint_} is a checkpoint folder outside a run: give --out")
    return create_run_dir(Path(out) if out else Path(explainer.run_) / default, name)


def save_png(image: torch.Tensor, path: Path) -> None:
    """(C, H, W) in [0, 1] -> PNG (uint8)."""
    arr = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(path)


def counterfactual_run(run_dir: str | Path, images: Sequence[str | Path], targets: Sequence[float],
                       mode: Literal["grade", "step"] = "grade", direction: float | None = None,
                       encode_steps: int | None = None, render_steps: int | None = None, device: str = "cpu",
                       out: str | Path | None = None, seed: int = 0, batch_size: int = 8,
                       progress: bool = True, along: str | None = None) -> tuple[Path, list[CounterfactualSeries]]:
    """Counterfactual series of image files; writes a folder with config.yaml, metrics.json, images/, figures/
    (default RUN/counterfactuals/<date>-<mode>-<n>-images)."""
    seed_everything(seed)
    explainer = CounterfactualExplainer.from_pretrained(run_dir).to(device)
    diffusion = explainer.dae_config_.diffusion
    encode_steps = encode_steps or diffusion.encode_steps
    render_steps = render_steps or diffusion.render_steps
    along = (along or explainer.dae_config_.counterfactual.along) if mode == "step" else "normal"
    series = explainer.counterfactuals(list(images), targets, mode, direction, encode_steps, render_steps,
                                       batch_size=batch_size, progress=progress, along=along)
    folder = _output_folder(explainer, out, "counterfactuals", f"{mode}-{len(series)}-images")
    settings = {"run": str(run_dir), "images": [str(p) for p in images], "mode": mode, "along": along,
                "targets": [float(t) for t in targets], "direction": direction, "encode_steps": encode_steps,
                "render_steps": render_steps, "device": device, "seed": seed}
    save_config(settings, folder / "config.yaml")
    (folder / "images").mkdir()
    for s in series:
        save_png(s.reconstruction, folder / "images" / f"{s.id}_reconstruction.png")
        for t, cf in zip(s.targets, s.counterfactuals, strict=True):
            save_png(cf, folder / "images" / f"{s.id}_{mode}{t:g}.png")
        s.figure(folder / "figures" / f"{s.id}.png")
    write_json(folder / "metrics.json", {**settings, "series": [s.to_dict() for s in series]})
    return folder, series


def evaluate_run(run_dir: str | Path, split: str = "test", n: int = 40, grades: Sequence[float] | None = None,
                 oracle_run: str | Path | None = None, encode_steps: int | None = None,
                 render_steps: int | None = None, device: str = "cpu", seed: int = 0, batch_size: int = 8,
                 figures: int = 6, out: str | Path | None = None, measure: str = "auto",
                 root: str | None = None, progress: bool = True, edit: str | None = None,
                 steps: Sequence[float] | None = None, along: str | None = None) -> tuple[Path, dict[str, Any]]:
    """Counterfactual series of n images of `split` at each target, and their metrics.

    edit: "grade" (targets: `grades`, default every grade) or "step" (targets: -steps and +steps along the
    normal, default the config's counterfactual.steps); None: the run config's counterfactual.edit. along (step
    only): "normal" or "mean-difference"; None: the run config's counterfactual.along.
    Writes a folder (default run_dir/evaluations/<date>-<split>-n<n>) with config.yaml, metrics.json
    (metrics, per-target rows, every series) and figures/counterfactuals.png (the first `figures` images).
    measure: "auto" (the generator's measure for synth-grade, else none) or "none". The metrics also hold
    `latent_swap` (see `latent_swap_probe`) for up to 8 pairs of images of the lowest and the highest true grade
    among the chosen ones: always its pixel response, and the response of the generator's measure (synth-grade)
    or else of the image classifier's expected grade (with an oracle).
    """
    start = time.perf_counter()
    seed_everything(seed)
    explainer = CounterfactualExplainer.from_pretrained(run_dir).to(device)
    boundary, card, cfg = explainer._boundary(), explainer.card_, explainer.dae_config_
    edit = edit or cfg.counterfactual.edit
    if edit not in ("grade", "step"):
        raise ValueError(f"edit must be 'grade' or 'step', got {edit!r}")
    if edit == "step" and grades is not None:
        raise ValueError("give target grades (edit 'grade') or steps (edit 'step'), not grades with edit 'step'")
    along = (along or cfg.counterfactual.along) if edit == "step" else "normal"
    if edit == "step":
        sizes = sorted(abs(float(v)) for v in (steps or cfg.counterfactual.steps))
        targets = [-v for v in reversed(sizes)] + sizes
    else:
        targets = list(range(card.num_classes)) if grades is None else list(grades)
    encode_steps = encode_steps or cfg.diffusion.encode_steps
    render_steps = render_steps or cfg.diffusion.render_steps
    if measure not in ("auto", "none"):
        raise ValueError(f"measure must be 'auto' or 'none', got {measure!r}")
    measure_fn = measure_for(card.name) if measure == "auto" else None
    oracle = ImageOracle(oracle_run, boundary.positive_min_grade, device) if oracle_run else None
    dataset = eval_datasets(cfg, (split,), root)[split]
    index = select_images(np.asarray(dataset.table.targets), n, seed)
    samples = [dataset[int(i)] for i in index]
    x = torch.stack([s["image"] for s in samples])
    series = explainer.counterfactuals(x, targets, edit, 1.0 if edit == "step" else None, encode_steps, render_steps,
                                       ids=[s["id"] for s in samples],
                                       true_grades=[float(s["target"]) for s in samples], batch_size=batch_size,
                                       progress=progress, along=along)
    generate_time = time.perf_counter() - start
    region_fn = region_for(card.name) if measure == "auto" else None
    metrics = counterfactual_metrics(series, boundary, oracle, measure_fn, region_fn, n_boot=cfg.bootstrap, seed=seed)
    truth = np.array([float(sm["target"]) for sm in samples])
    if truth.max() > truth.min():
        lo, hi = np.flatnonzero(truth == truth.min()), np.flatnonzero(truth == truth.max())
        pairs = min(len(lo), len(hi), 8)
        swap_measure, swap_name = measure_fn, "measure_structure"
        if swap_measure is None and oracle is not None:
            swap_measure, swap_name = (lambda imgs: oracle.expected_grade(oracle.probabilities(
                torch.from_numpy(np.asarray(imgs)).float()))), "image classifier's expected grade"
        metrics["latent_swap"] = latent_swap_probe(explainer._model(), x[lo[:pairs]], x[hi[:pairs]], swap_measure,
                                                   encode_steps, render_steps, device=explainer.device_)
        metrics["latent_swap"]["measure"] = swap_name if swap_measure is not None else None
    settings = {"run": str(run_dir), "split": split, "n": len(series), "edit": edit, "along": along,
                "targets": targets,
                "grades": targets if edit == "grade" else None, "encode_steps": encode_steps,
                "render_steps": render_steps, "oracle": None if oracle_run is None else str(oracle_run),
                "measure": "measure_structure" if measure_fn else None, "device": device, "seed": seed}
    folder = _output_folder(explainer, out, "evaluations", f"{split}-n{len(series)}")
    save_config(settings, folder / "config.yaml")
    extra = None
    if measure_fn is not None:
        shown = series[:figures]
        extra = [[f"measure {v:.1f}" for v in measure_fn(s.counterfactuals.numpy())] for s in shown]
    if figures > 0:
        series_figure(series[:figures], folder / "figures" / "counterfactuals.png",
                      f"{card.name}: counterfactuals at target "
                      f"{'grades' if edit == 'grade' else 'steps along the normal'} {[f'{t:g}' for t in targets]}",
                      extra)
    metrics.update({"method": KIND, "dataset": card.name, "settings": settings,
                    "per_target": per_target_table(metrics), "wall_time_s": time.perf_counter() - start,
                    "generate_time_s": generate_time, "peak_memory_mb": peak_memory_mb(),
                    "series": [s.to_dict() for s in series]})
    write_json(folder / "metrics.json", metrics)
    return folder, metrics
