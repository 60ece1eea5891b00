"""The `cipl` command: train, push, evaluate, reason about an image, show the prototype gallery.

Every command calls the Python API: `train` -> cipl.train.train_cipl; `reason RUN IMAGE` ->
`CIPLClassifier.from_pretrained(RUN).explain(IMAGE)`; `gallery RUN` -> `CIPLClassifier.from_pretrained(RUN).gallery`;
`push` and `evaluate` -> cipl.api.push_run and evaluate_run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from cipl import __version__
from medimg_core.cli import ErrorReportingGroup
from medimg_core.cli_options import device_option, out_option, progress_option, seed_option, training_options

CONFIGS = Path(__file__).parent / "configs"
RUN = click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
MAP_STEP = click.option("--map-step", type=click.IntRange(min=1), default=None,
                        help="Sample the similarity maps every N pixels by shift-and-stitch (N divides the backbone "
                             "stride; (stride/N)^2 forward passes) instead of once per feature cell.")


@contextmanager
def map_step_usage() -> Iterator[None]:
    """A --map-step that the model's stride refuses (cipl.maps.MapStepError) as a usage error of that option."""
    from cipl.maps import MapStepError

    try:
        yield
    except MapStepError as exc:
        raise click.BadParameter(str(exc), param_hint="--map-step") from None


@click.group(cls=ErrorReportingGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cipl")
def main() -> None:
    """Cross- and Intra-image Prototypical Learning (Wang et al., IEEE TMI 2025): multi-label diagnosis
    explained as "this region looks like that training patch".

    Train with `cipl train` (prototypes are pushed during training), re-push with `cipl push RUN`,
    evaluate with `cipl evaluate RUN`, explain an image with `cipl reason RUN IMAGE`, and look at the
    prototypes with `cipl gallery RUN`.
    """


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@training_options("chestxray14, chestxray14-224, odir (the paper's settings), synth-cxr-cpu, medmnist-cpu "
                  "(CPU presets)", "model init, pairs, augmentation")
@click.option("--root", default=None, help="Dataset root (data.root): a folder, or an .npz for MedMNIST.")
@click.option("--dataset", default=None, help="Dataset format (data.dataset), e.g. csv, chestxray14, pneumoniamnist.")
@click.pass_context
def train(ctx: click.Context, config_name, device, seed, out, progress, resume_dir, root, dataset) -> None:
    """Train CIPL; any config key can be overridden as --section.key VALUE (e.g. --train.epochs 5,
    --model.prototypes_per_class 10, --schedule.push_epochs "[4, 6]").

    Writes a run folder: config.yaml, metrics.jsonl, metrics.json (test metrics with 95% intervals, and the
    pointing game and IoU where the data have masks), checkpoints/, prototypes/epoch-N/ (each push:
    source images, overlays, contours, patches), figures/ (training curves, prototype gallery).
    """
    from cipl.train import CIPLConfig, train_cipl
    from medimg_core.cli import training_config

    named = {"data.root": root, "data.dataset": dataset, "device": device, "seed": seed, "out": out,
             "train.progress": progress}
    cfg = training_config(CIPLConfig, config_name, CONFIGS, named, ctx.args, resume_dir)
    run_dir = train_cipl(cfg, resume_dir)
    if os.environ.get("RANK", "0") == "0":
        click.echo(f"run folder: {run_dir}")


@main.command()
@RUN
@click.option("--checkpoint", default="best", show_default=True, help="Which checkpoint of the run: best, last.")
@click.option("--split", default=None, help="Split whose images host the prototypes (default: the training split).")
@device_option(from_config=False)
@seed_option("unused: the push is deterministic; accepted for scripts", from_config=False)
@progress_option()
def push(run_dir: Path, checkpoint: str, split: str | None, device: str, seed: int, progress: bool | None) -> None:
    """Project the prototypes of RUN_DIR's checkpoint onto training patches (one prototype per image).

    Saves the pushed model as RUN_DIR/checkpoints/pushed and the prototypes' source images, overlays,
    contours and patches under RUN_DIR/prototypes/push-<checkpoint>-<split>/.
    """
    from cipl.api import push_run
    from medimg_core.distributed import seed_everything
    from medimg_core.training import show_progress

    seed_everything(seed)
    result = push_run(run_dir, checkpoint, split, device, progress=show_progress(progress))
    click.echo(f"pushed {result['images_hosting']} prototypes onto {result['n_images']} images "
               f"(mean squared distance moved {result['mean_distance_moved']:.4f})")
    click.echo(f"wrote {result['checkpoint']} and {result['prototypes']}")


@main.command()
@RUN
@click.option("--dataset", default=None, help="Dataset format (default: the run's own).")
@click.option("--root", default=None, help="Its root (default: the run's own).")
@click.option("--split", default="test", show_default=True)
@click.option("--option", "-o", "options", multiple=True, metavar="KEY=VALUE", help="Loader option (repeatable).")
@click.option("--checkpoint", default="best", show_default=True, help="best, last or pushed.")
@device_option(from_config=False)
@seed_option("the bootstrap intervals", from_config=False)
@click.option("--bootstrap", default=1000, show_default=True, help="Bootstrap resamples for the intervals.")
@MAP_STEP
@out_option("JSON file to write (default RUN_DIR/eval-<dataset>-<split>[-step<N>].json).", dir_okay=False)
@progress_option()
def evaluate(run_dir: Path, dataset, root, split, options, checkpoint, device, seed, bootstrap, map_step, out,
             progress) -> None:
    """Evaluate RUN_DIR's model on a split: per-class AUROC, mean AUROC, accuracy and (multi-label) the mean F1 at
    thresholds chosen on the run's validation split, beside the F1 tuned on the split itself, with 95% intervals (over patients where the data have patient ids); pointing game and mask IoU where the data have
    masks; on ChestX-ray14 with BBox_List_2017 the box protocol (accuracy at T(IoBB), T(IoU), pointing game in the
    box, key box_localisation). Writes
    RUN_DIR/eval-<dataset>-<split>.json (or --out)."""
    from cipl.api import evaluate_run
    from medimg_core.checkpoint import write_json
    from medimg_core.cli import parse_options
    from medimg_core.training import show_progress

    with map_step_usage():
        result = evaluate_run(run_dir, dataset, root, split, parse_options(options) if options else None, device,
                              bootstrap, checkpoint, seed, map_step, progress=show_progress(progress))
    suffix = f"-step{map_step}" if map_step else ""
    path = out or run_dir / f"eval-{result['dataset']}-{split}{suffix}.json"
    write_json(path, result)
    t = result["test"]
    if result["task"] == "multilabel":
        click.echo(f"{result['dataset']}/{split} (n={result['n']}): mean AUROC {t['auroc_mean']:.4f} "
                   f"{t['auroc_mean_ci']}, accuracy at 0.5 {t['accuracy']:.4f}")
        if "f1_val_threshold_mean" in t:
            click.echo(f"mean F1 at thresholds chosen on validation {t['f1_val_threshold_mean']:.4f} "
                       f"{t['f1_val_threshold_mean_ci']}; tuned on this split itself (the released code's mean F1, "
                       f"optimistic) {t['f1_test_tuned_mean']:.4f}")
        elif "f1_val_threshold_unavailable" in t:
            click.echo(f"no F1 at validation thresholds: {t['f1_val_threshold_unavailable']}")
    else:
        click.echo(f"{result['dataset']}/{split} (n={result['n']}): accuracy {t['accuracy']:.4f} {t['accuracy_ci']}, "
                   f"AUROC {t.get('auroc', float('nan')):.4f}")
    boxes = result.get("box_localisation")
    if boxes and boxes.get("n_boxes"):
        click.echo(f"boxes ({boxes['n_boxes']} on {boxes['n_images']} images): pointing game "
                   f"{boxes['pointing_game']:.3f} {boxes['pointing_game_ci']}, accuracy at IoBB > 0.5 "
                   f"{boxes['iobb_acc@0.5']:.3f} {boxes['iobb_acc@0.5_ci']}, at IoU > 0.5 {boxes['iou_acc@0.5']:.3f}")
    loc = result.get("localisation")
    if loc and loc.get("n"):
        click.echo(f"localisation: pointing game {loc['pointing_game']:.3f}, IoU {loc['iou_mean']:.3f} "
                   f"({loc['n']} detected findings)")
    click.echo(f"wrote {path}")


@main.command()
@RUN
@click.argument("image", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--top-k", default=5, show_default=True, help="Prototypes shown per class.")
@click.option("--threshold", default=0.5, show_default=True, help="Probability above which a finding is predicted.")
@out_option("Folder for the figures and summary (default RUN_DIR/figures/reason-<image>/).", file_okay=False)
@click.option("--checkpoint", default="best", show_default=True)
@device_option(from_config=False)
@seed_option("unused: the reasoning is deterministic; accepted for scripts", from_config=False)
@MAP_STEP
def reason(run_dir: Path, image: Path, top_k: int, threshold: float, out: Path | None, checkpoint: str, device: str,
           seed: int, map_step: int | None) -> None:
    """Explain IMAGE: for each predicted finding, where the image looks like which prototypes and how much
    each adds to the finding's logit. One figure per finding plus summary.txt."""
    from cipl.api import CIPLClassifier
    from cipl.run import checkpoint_path

    model = CIPLClassifier.from_pretrained(checkpoint_path(run_dir, checkpoint)).to(device)
    with map_step_usage():
        reasoning = model.explain(image, top_k=top_k, threshold=threshold, map_step=map_step)
    out = out or run_dir / "figures" / f"reason-{image.stem}"
    paths = reasoning.figures(out, stem="reason")
    text = reasoning.to_text()
    (out / "summary.txt").write_text(text + "\n")
    click.echo(text)
    click.echo(f"wrote {len(paths)} figure(s) and summary.txt to {out}")


@main.command()
@RUN
@out_option("Folder for the figures (default RUN_DIR/figures/gallery/).", file_okay=False)
@click.option("--checkpoint", default="best", show_default=True)
@device_option(from_config=False)
@seed_option("unused: the gallery is drawn from saved artefacts; accepted for scripts", from_config=False)
def gallery(run_dir: Path, out: Path | None, checkpoint: str, device: str, seed: int) -> None:
    """Draw the prototypes of each class after the push: one figure per class and overview.png (a few per class)."""
    from cipl.api import CIPLClassifier
    from cipl.push import PicturesUnavailable
    from cipl.run import checkpoint_path

    model = CIPLClassifier.from_pretrained(checkpoint_path(run_dir, checkpoint))
    if model.push_index_ is None:
        raise click.ClickException(f"{run_dir}: this checkpoint's prototypes are no push's (no push index in it, and "
                                   "no push folder under prototypes/ matches them); run `cipl push` first")
    out = out or run_dir / "figures" / "gallery"
    try:
        paths = model.gallery(out)
    except PicturesUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    source = model.push_index_.folder or model.checkpoint_
    click.echo(f"{len(model.push_index_.prototypes)} prototypes from {source}")
    click.echo(f"wrote {len(paths)} figure(s) to {out}")


if __name__ == "__main__":
    main()
