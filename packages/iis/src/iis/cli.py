"""The `iis` command: build concept libraries, score representations, explain one image."""

from __future__ import annotations

from pathlib import Path

import click

from iis import __version__
from medimg_core.cli import ErrorReportingGroup, resolve_config_path
from medimg_core.cli_options import (
    config_option,
    device_option,
    out_option,
    progress_option,
    resume_option,
    seed_option,
)

CONFIGS = Path(__file__).parent / "configs"
SHIPPED = "paper (the paper's settings, 224 px), synth-derm-cpu, wbcatt-cpu (CPU presets)"


class IISGroup(ErrorReportingGroup):
    """medimg's error reporting, plus the clear ValueError / FileNotFoundError / ImportError messages of
    IIS (bad concept lists, libraries larger than the elements, missing weights): one line, exit 1."""

    def invoke(self, ctx: click.Context):
        from medimg_core.models.backbones import BackboneError

        try:
            return super().invoke(ctx)
        except (ValueError, FileNotFoundError, ImportError, BackboneError) as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=IISGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="iis")
def main() -> None:
    """Inherent Interpretability Score (Shen et al., ICLR 2025): how much of a representation's
    accuracy survives when it is explained by a few concepts per image.

    `iis score --backbone NAME[:weights] ... --dataset D --root R` compares representations (IIS with a
    95% interval, ARR per sparsity ratio, one table and one overlaid figure); `iis extract-concepts`
    builds and shows a concept library; `iis explain RUN IMAGE` shows the concepts behind one decision.
    """


def _common(function):
    options = [
        config_option(SHIPPED),
        click.option("--dataset", default=None, help="Dataset format (`medimg datasets list`), e.g. wbcatt, csv."),
        click.option("--root", default=None, help="Dataset root folder (data.root)."),
        click.option("--backbone", "backbones", multiple=True, metavar="NAME[:weights]",
                     help="timm name, then :random, :pretrained (local timm cache only), :/path/weights.safetensors "
                          "or :/path/to/baseline-run (a `medimg train-baseline` run folder). Repeatable."),
        click.option("--library", "library", default=None,
                     type=click.Choice(["prototype", "cluster", "end2end", "text"]),
                     help="Concept library (library.kind; default prototype)."),
        click.option("--num-concepts", type=int, default=None, help="M, the library size (library.num_concepts)."),
        click.option("--concept-list", default=None,
                     help="Text library: a phrase list file or a dataset name under shared-data/concepts/text."),
        click.option("--text-backend", default=None, type=click.Choice(["annotations", "open_clip"]),
                     help="Text library teacher: the dataset's concept annotations, or open_clip with local weights."),
        click.option("--clip-weights", default=None, help="open_clip backend: local weights file (never downloaded)."),
        device_option(),
        seed_option("element sampling, libraries, random inits, heads"),
        out_option(),
        progress_option(),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _config(ctx: click.Context, config_name, dataset, root, backbones, library, num_concepts, concept_list,
            text_backend, clip_weights, device, seed, out, progress):
    from iis.config import IISConfig
    from medimg_core.config import load_config, parse_overrides

    named = {"data.dataset": dataset, "data.root": root, "library.kind": library,
             "library.num_concepts": num_concepts, "text.concept_list": concept_list, "text.backend": text_backend,
             "text.clip_weights": clip_weights, "device": device, "seed": seed, "out": out, "progress": progress}
    overrides = {k: v for k, v in named.items() if v is not None}
    if backbones:
        overrides["backbones"] = list(backbones)
    overrides.update(parse_overrides(ctx.args))
    return load_config(IISConfig, resolve_config_path(config_name, CONFIGS), overrides)


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@_common
@resume_option("Backbones already scored there are kept.")
@click.pass_context
def score(ctx: click.Context, resume_dir: Path | None, **options) -> None:
    """Score the interpretability of one or more representations on a dataset.

    For every backbone: cached pooled features of train/val/test, a concept library from the training
    images, then for each sparsity ratio s and learning rate a linear head on the LayerNorm'd concept
    activations with the fraction s zeroed per image (selected on val, scored on test), a linear probe
    likewise, ARR(s) = head accuracy / probe accuracy and IIS = its trapezoid integral over s, with a
    bootstrap interval over the test images. Any config key can be overridden as --section.key VALUE
    (e.g. --sweep.epochs 10, --elements.images_per_class 5).

    Writes a run folder: config.yaml, metrics.json, table.md/.csv, figures/arr.png, backbones/<i>-<name>/.
    """
    from iis.config import IISConfig
    from iis.pipeline import run_score
    from medimg_core.config import load_config

    if resume_dir is not None:
        if any(v for k, v in options.items() if k != "progress") or ctx.args:
            raise click.UsageError("--resume continues a run with its saved config; drop the other options "
                                   "(only --progress/--no-progress may be given with it)")
        shown = {} if options["progress"] is None else {"progress": options["progress"]}
        cfg = load_config(IISConfig, resume_dir / "config.yaml", shown)
    else:
        cfg = _config(ctx, **options)
    run_dir = Path(run_score(cfg, resume_dir))
    click.echo((run_dir / "table.md").read_text().rstrip())
    click.echo(f"run folder: {run_dir}")


@main.command("extract-concepts", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@_common
@click.pass_context
def extract_concepts_cmd(ctx: click.Context, **options) -> None:
    """Build the concept library of one backbone from the training images and show it.

    Visual libraries: patches (k x k grid) and SLIC segments of a seeded per-class sample of training
    images, embedded with the backbone's pooled feature; Prototype (sampled elements), Cluster (K-Means
    centroids) or End2End (elements only: the assignment is learned by `iis score`). Text: phrases scored
    by the teacher, filtered and projected (Label-free CBM). Writes library/, elements.json, metrics.json
    and figures/concepts.png.
    """
    from iis.pipeline import extract_concepts

    run_dir = extract_concepts(_config(ctx, **options))
    click.echo(f"run folder: {run_dir}")


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("image", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--backbone", default=None, help="Which scored backbone (its label or index; default the first).")
@click.option("--ratio", type=float, default=None,
              help="Sparsity ratio of the head (a swept one; default the sparsest keeping --top-k concepts).")
@click.option("--top-k", default=10, show_default=True, help="Concepts listed and drawn.")
@click.option("--class", "target_class", type=int, default=None, help="Explain this class index (default: predicted).")
@click.option("--root", default=None, help="Training data root, where it moved since the run (for concept pictures).")
@out_option("Figure to write (default RUN_DIR/figures/explain-<image>.png).", dir_okay=False)
@device_option(from_config=False)
def explain(run_dir: Path, image: Path, backbone, ratio, top_k, target_class, root, out, device) -> None:
    """Explain IMAGE with a scored representation: the concepts that survive the sparsity mask, what each
    adds to the class score, and their prototype pictures (or phrases)."""
    from iis.api import InterpretabilityScore

    model = InterpretabilityScore.from_pretrained(run_dir, backbone=backbone, ratio=ratio, top_k=top_k, root=root)
    explanation = model.to(device).explain(image, target=target_class)
    out = out or run_dir / "figures" / f"explain-{image.stem}.png"
    explanation.figure(out, top_k=top_k)
    click.echo(explanation.to_text(top_k))
    click.echo(f"wrote {out}")


if __name__ == "__main__":
    main()
