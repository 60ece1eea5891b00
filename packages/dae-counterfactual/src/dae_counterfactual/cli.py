"""The `dae-cf` command: train, encode, fit-boundary, counterfactual, evaluate."""

from __future__ import annotations

import os
from pathlib import Path

import click

from dae_counterfactual import __version__
from medimg_core.cli import ErrorReportingGroup
from medimg_core.cli_options import device_option, out_option, progress_option, seed_option, training_options

CONFIGS = Path(__file__).parent / "configs"
RUN_DIR = click.Path(exists=True, file_okay=False, path_type=Path)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


class GreedyNumbersCommand(click.Command):
    """Lets `--grades 0 1 2 3 4` (and `--steps`) take several numbers: the values are rewritten to
    `--grades 0 --grades 1 ...` before click parses them."""

    greedy = ("--grades", "--steps")

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        out: list[str] = []
        current: str | None = None
        for arg in args:
            if arg in self.greedy:
                current = arg
                out.append(arg)
                continue
            if current is not None and _is_number(arg):
                if out[-1] != current:
                    out.append(current)
                out.append(arg)
                continue
            current = None
            out.append(arg)
        return super().parse_args(ctx, out)


@click.group(cls=ErrorReportingGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dae-cf")
def main() -> None:
    """Diffusion-autoencoder counterfactuals for classification and ordinal grading (Atad et al., MELBA 2024).

    \b
    dae-cf train --config synth-grade-cpu --root DATA      # the diffusion autoencoder (no labels)
    dae-cf encode RUN                                      # z_sem of every image -> RUN/latents/
    dae-cf fit-boundary RUN                                # linear classifier + grade calibration -> checkpoint
    dae-cf counterfactual RUN IMAGE... --grades 0 1 2 3 4  # the same image at other grades
    dae-cf evaluate RUN --oracle BASELINE_RUN              # flip rates, Spearman, proximity
    """


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@training_options("dae-32, dae-64, dae-128 (templates), synth-grade-cpu, retinamnist-cpu (CPU presets), "
                  "retinamnist-64-gpu", "initialisation, data order, noise")
@click.option("--root", default=None, help="Dataset root (data.root).")
@click.pass_context
def train(ctx: click.Context, config_name, device, seed, out, progress, resume_dir, root) -> None:
    """Train the diffusion autoencoder; any config key can be overridden as --section.key VALUE
    (e.g. --train.epochs 5 --model.base_channels 32).

    Writes a run folder: config.yaml, metrics.jsonl, metrics.json (losses, reconstruction error),
    checkpoints/ (EMA weights used for inference, raw weights and optimizer state for --resume), figures/.
    """
    from dae_counterfactual.train import DAEConfig, train_dae
    from medimg_core.cli import training_config

    named = {"data.root": root, "device": device, "seed": seed, "out": out, "train.progress": progress}
    cfg = training_config(DAEConfig, config_name, CONFIGS, named, ctx.args, resume_dir)
    run_dir = train_dae(cfg, resume_dir)
    if os.environ.get("RANK", "0") == "0":
        click.echo(f"run folder: {run_dir}")


@main.command()
@click.argument("run_dir", type=RUN_DIR)
@click.option("--split", "splits", multiple=True, default=("train", "val", "test"), show_default=True,
              help="Split to encode (repeatable).")
@click.option("--root", default=None, help="Dataset root, if it moved since training.")
@click.option("--batch-size", default=64, show_default=True)
@device_option(from_config=False)
@seed_option("unused: the encoder is deterministic; accepted for scripts", from_config=False)
@progress_option()
def encode(run_dir: Path, splits, root, batch_size: int, device: str, seed: int, progress: bool | None) -> None:
    """Encode the run's dataset splits to z_sem with the EMA encoder -> RUN_DIR/latents/<split>.safetensors."""
    from dae_counterfactual.stages import encode_run
    from medimg_core.training import show_progress

    for split, path in encode_run(run_dir, tuple(splits), device, batch_size, root,
                                  progress=show_progress(progress)).items():
        click.echo(f"{split}: {path}")


@main.command("fit-boundary")
@click.argument("run_dir", type=RUN_DIR)
@click.option("--classifier", type=click.Choice(["svm", "logistic"]), default=None,
              help="Linear SVM (the paper) or logistic regression (default: the run's config).")
@click.option("--C", "C", type=float, default=None, help="Inverse regularisation strength.")
@click.option("--standardize/--no-standardize", default=None, help="Fit on per-dimension standardised latents.")
@click.option("--positive-min-grade", type=int, default=None,
              help="Binary pathology = grade >= this (default 1: grade > 0).")
@click.option("--class-weight", type=click.Choice(["none", "balanced"]), default=None)
@click.option("--bootstrap", type=int, default=None, help="Bootstrap resamples of the intervals.")
@device_option(from_config=False)
@seed_option("the bootstrap intervals", from_config=False)
@progress_option()
def fit_boundary(run_dir: Path, classifier, C, standardize, positive_min_grade, class_weight, bootstrap, device,
                 seed, progress) -> None:
    """Fit the linear boundary on the training latents and the grade calibration; evaluate on val and test.

    Encodes missing latents first; stores the boundary in the checkpoint it was fitted for
    (RUN_DIR/checkpoints/best/boundary.json) and writes metrics.json["boundary"] and figures/calibration.png.
    """
    from dataclasses import replace

    from dae_counterfactual.run import BOUNDARY_FILE, load_dae
    from dae_counterfactual.stages import fit_boundary_run
    from medimg_core.runs import Run
    from medimg_core.training import show_progress

    cfg = load_dae(run_dir).cfg.boundary
    changes = {"classifier": classifier, "C": C, "standardize": standardize,
               "positive_min_grade": positive_min_grade}
    cfg = replace(cfg, **{k: v for k, v in changes.items() if v is not None})
    if class_weight is not None:
        cfg = replace(cfg, class_weight=None if class_weight == "none" else class_weight)
    m = fit_boundary_run(run_dir, cfg, device, bootstrap, seed, progress=show_progress(progress))
    for split in ("val", "test"):
        b, g = m[split]["binary"], m[split]["grade"]
        click.echo(f"{split}: AUROC {b['auroc']:.4f} {[round(v, 4) for v in b['auroc_ci']]}, accuracy "
                   f"{b['accuracy']:.4f}; grade Spearman {g['spearman']:.4f}, MAE {g['mae']:.4f}, QWK {g['qwk']:.4f}")
    click.echo(f"wrote {Run(run_dir).checkpoint('best') / BOUNDARY_FILE}")


@main.command(cls=GreedyNumbersCommand)
@click.argument("run_dir", type=RUN_DIR)
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--grades", multiple=True, type=float, help="Target grades, e.g. --grades 0 1 2 3 4.")
@click.option("--steps", multiple=True, type=float,
              help="Instead of grades: the notebooks' fixed steps along the normal, e.g. --steps 100 300 500.")
@click.option("--direction", type=click.Choice(["auto", "up", "down"]), default="auto", show_default=True,
              help="Fixed steps only: towards the pathology (up), away (down), or across the hyperplane (auto).")
@click.option("--along", type=click.Choice(["normal", "mean-difference"]), default=None,
              help="Fixed steps only: along the hyperplane normal (the notebooks') or the class-mean difference of "
                   "the training latents (default: the run config's counterfactual.along).")
@click.option("--encode-steps", type=int, default=None, help="DDIM inversion steps (default: the run's config).")
@click.option("--render-steps", type=int, default=None, help="DDIM rendering steps (default: the run's config).")
@out_option("Folder receiving the output folder (default RUN_DIR/counterfactuals).", file_okay=False)
@click.option("--batch-size", default=8, show_default=True, help="Images per batch.")
@device_option(from_config=False)
@seed_option("the sampler's noise", from_config=False)
@progress_option()
def counterfactual(run_dir: Path, images, grades, steps, direction, along, encode_steps, render_steps, out,
                   batch_size, device, seed, progress) -> None:
    """Render IMAGE(s) at target grades (or fixed steps) with their own stochastic code x_T.

    Writes a folder with config.yaml, metrics.json (calibrated grade of each image, target and
    re-encoded grades), images/ (reconstruction and counterfactual PNGs) and figures/ (series and
    difference maps).
    """
    from dae_counterfactual.api import counterfactual_run
    from medimg_core.training import show_progress

    if bool(grades) == bool(steps):
        raise click.UsageError("give either --grades G... or --steps S...")
    mode = "grade" if grades else "step"
    sign = {"auto": None, "up": 1.0, "down": -1.0}[direction]
    folder, series = counterfactual_run(run_dir, list(images), list(grades or steps), mode, sign, encode_steps,
                                        render_steps, device, out, seed, batch_size, show_progress(progress), along)
    for s in series:
        pairs = ", ".join(f"{t:g}->{g:.2f}" for t, g in zip(s.targets, s.reencoded_grades, strict=True))
        click.echo(f"{s.id}: grade {s.grade:.2f}; {'target' if mode == 'grade' else 'step'} -> re-encoded: {pairs}")
    click.echo(f"wrote {folder}")


@main.command(cls=GreedyNumbersCommand)
@click.argument("run_dir", type=RUN_DIR)
@click.option("--split", default="test", show_default=True)
@click.option("--n", "n_images", default=40, show_default=True, help="Images (spread evenly over the grades).")
@click.option("--grades", multiple=True, type=float, help="Target grades (default: every grade of the dataset).")
@click.option("--edit", type=click.Choice(["grade", "step"]), default=None,
              help="grade: the smallest move to each target grade; step: the notebooks' fixed steps, each with "
                   "both signs (default: the run config's counterfactual.edit).")
@click.option("--steps", multiple=True, type=float,
              help="Step sizes for --edit step (default: the run config's counterfactual.steps).")
@click.option("--along", type=click.Choice(["normal", "mean-difference"]), default=None,
              help="--edit step only: step along the hyperplane normal (the notebooks') or the class-mean difference "
                   "of the training latents (default: the run config's counterfactual.along).")
@click.option("--oracle", type=RUN_DIR, default=None,
              help="A `medimg train-baseline` run: the independent image classifier of the image flip rate.")
@click.option("--encode-steps", type=int, default=None, help="DDIM inversion steps (default: the run's config).")
@click.option("--render-steps", type=int, default=None, help="DDIM rendering steps (default: the run's config).")
@click.option("--measure", type=click.Choice(["auto", "none"]), default="auto", show_default=True,
              help="auto: measure the structure of synth-grade counterfactuals with the generator's measure.")
@click.option("--figures", default=6, show_default=True, help="Series shown in figures/counterfactuals.png.")
@click.option("--root", default=None, help="Dataset root, if it moved since training.")
@out_option("Folder receiving the output folder (default RUN_DIR/evaluations).", file_okay=False)
@click.option("--batch-size", default=8, show_default=True, help="Images per batch.")
@device_option(from_config=False)
@seed_option("which images are drawn, the sampler's noise", from_config=False)
@progress_option()
def evaluate(run_dir: Path, split, n_images, grades, edit, steps, along, oracle, encode_steps, render_steps, measure,
             figures, root, out, batch_size, device, seed, progress) -> None:
    """Evaluate counterfactuals: reconstruction error, latent and image flip rates, Spearman of target vs
    re-encoded grade, L1/SSIM to the reconstruction, the decoder's latent-swap response (and, on synth-grade,
    the measured structure, effect and removal ratios, locality)."""
    from dae_counterfactual.api import evaluate_run
    from medimg_core.training import show_progress

    if (grades and edit == "step") or (steps and edit == "grade"):
        raise click.UsageError("--grades go with --edit grade, --steps with --edit step")
    edit = edit or ("step" if steps else "grade" if grades else None)
    folder, m = evaluate_run(run_dir, split, n_images, list(grades) or None, oracle, encode_steps, render_steps,
                             device, seed, batch_size, figures, out, measure, root, show_progress(progress), edit,
                             list(steps) or None, along)
    r, lat = m["reconstruction"], m["latent"]
    click.echo(f"edit: {m['edit']} (along {m['settings']['along']}), targets {[round(t, 4) for t in m['targets']]}")
    click.echo(f"reconstruction: MSE {r['mse']:.5f}, L1 {r['l1']:.4f}, SSIM {r['ssim']:.4f}")
    click.echo(f"latent flip rate {lat['flip_rate']:.3f} ({lat['n_crossing_pairs']} pairs); Spearman(target, "
               f"re-encoded grade) {lat['spearman_target_vs_reencoded_grade']:.3f}")
    if "image_classifier" in m:
        ic = m["image_classifier"]
        click.echo(f"image classifier flip rate {ic['flip_rate']:.3f} ({ic['n_crossing_pairs']} pairs)")
    if "measure" in m:
        ms = m["measure"]
        click.echo(f"measured structure: Spearman {ms['spearman_target_vs_measure']:.3f}, monotone series "
                   f"{ms['monotone_fraction']:.3f}, effect ratio {ms['effect_ratio']:.3f}")
        low = m["towards_lowest"]
        inside = 1 - low["locality"]["outside_fraction"] if "locality" in low else float("nan")
        click.echo(f"towards grade {low['grade']:g} ({low['n_images']} images above it): removal ratio "
                   f"{low['removal_ratio']:.3f}, share of the change inside the pathology {inside:.3f}")
    if "latent_swap" in m:
        sw = m["latent_swap"]["pixel"]["response_by_scale"]
        click.echo("latent swap, pixel response: " + ", ".join(f"{v:.3f} (s = {k})" for k, v in sw.items() if k != "0"))
    click.echo(f"wrote {folder}")


if __name__ == "__main__":
    main()
