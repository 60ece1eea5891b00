"""The `neuron-concepts` command: the whole pipeline (`run`) or one stage at a time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from medimg_core.cli import ErrorReportingGroup, resolve_config_path
from medimg_core.cli_options import device_option, out_option, seed_option, training_options
from neuron_concepts import __version__

CONFIGS = Path(__file__).parent / "configs"
SHIPPED = ("ham10000, fairvlmed, mimic-cxr (the paper's settings), wbcatt, derm7pt, synth-derm-cpu, wbcatt-cpu, "
           "retinamnist-cpu (CPU presets)")
STAGE_CONTEXT = {"ignore_unknown_options": True, "allow_extra_args": True}
#: the options of a command that trains (run, train-opaque) ...
run_options = training_options(SHIPPED, "the opaque model, SAE, naming samples, CAVs",
                               out="Folder that receives the pipeline folder (default: from the config, runs/).")
#: ... and of a stage, which reruns whole into a new folder (no --resume)
stage_options = training_options(
    SHIPPED, "the stage's random draws", resume=False, config_default="the input folder's config",
    out="Write this stage into a new pipeline folder under this folder (default: the input's pipeline folder).")


@click.group(cls=ErrorReportingGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="neuron-concepts")
def main() -> None:
    """Concepts from Neurons (Gong et al., IPMI 2025): dissect an opaque model with a sparse autoencoder,
    name its concepts, select them and build a concept bottleneck model.

    \b
    Stages (each reads the previous stage's folder, so any stage can be rerun alone):
      train-opaque -> encode -> train-sae -> name -> cav -> select -> train-cbm -> explain
    `gallery PIPELINE` shows the latents' top images and writes a names file to edit and import.
    `neuron-concepts run --config synth-derm-cpu --root DATA` chains them all in one pipeline folder.
    Any config key can be overridden as --section.key VALUE (e.g. --sae.kind topk --select.k 64).
    """


def _overrides(ctx: click.Context, **named: Any) -> dict[str, Any]:
    from medimg_core.config import parse_overrides

    out = {k: v for k, v in named.items() if v is not None}
    out.update(parse_overrides(ctx.args))
    return out


def _stage_config(prev: Path, config_name: str | None, overrides: dict[str, Any]):
    from neuron_concepts.folders import config_for_stage

    path = resolve_config_path(config_name, CONFIGS) if config_name else None
    return config_for_stage(prev, path, overrides)


def _fresh_config(config_name: str | None, overrides: dict[str, Any]):
    from medimg_core.config import load_config
    from neuron_concepts.config import NeuronConceptsConfig

    return load_config(NeuronConceptsConfig, resolve_config_path(config_name, CONFIGS), overrides)


@main.command(context_settings=STAGE_CONTEXT)
@run_options
@click.option("--root", default=None, help="Dataset root (data.root).")
@click.option("--opaque-run", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Dissect this trained baseline run instead of training the opaque model.")
@click.pass_context
def run(ctx, config_name, device, seed, out, progress, resume_dir, root, opaque_run) -> None:
    """Every stage in order, in one new pipeline folder (its metrics.json summarises them).

    With --resume PIPELINE: finish its opaque training, keep every stage that finished and run the
    others from the first unfinished one on."""
    from medimg_core.config import ConfigError
    from neuron_concepts.config import NeuronConceptsConfig
    from neuron_concepts.pipeline import run_pipeline

    if resume_dir is not None:
        _resume_alone(ctx, config_name, device, seed, out, root, opaque_run)
        from medimg_core.config import load_config

        shown = {} if progress is None else {"progress": progress}
        folder = run_pipeline(load_config(NeuronConceptsConfig, resume_dir / "config.yaml", shown), resume=resume_dir)
    else:
        cfg = _fresh_config(config_name, _overrides(ctx, **{"data.root": root, "device": device, "seed": seed,
                                                            "out": out, "progress": progress}))
        if opaque_run is None and not cfg.data.root:
            raise ConfigError("--root (data.root) is required to train the opaque model (or pass --opaque-run)")
        folder = run_pipeline(cfg, opaque_run)
    _report(folder / "metrics.json")
    click.echo(f"pipeline folder: {folder}")


def _resume_alone(ctx: click.Context, *given: Any) -> None:
    if any(v is not None for v in given) or ctx.args:
        raise click.UsageError("--resume continues a run with its saved config; drop the other options "
                               "(only --progress/--no-progress may be given with it)")


def _report(path: Path) -> None:
    import json

    m = json.loads(path.read_text())
    if m.get("cbm_test") and m.get("opaque_test"):
        c, o = m["cbm_test"], m["opaque_test"]
        click.echo(f"test accuracy: CBM {c['accuracy']:.4f} {c.get('accuracy_ci')}, opaque {o['accuracy']:.4f} "
                   f"{o.get('accuracy_ci')}")
    times = m.get("wall_time_s") or {}
    if times:
        click.echo("wall time: " + ", ".join(f"{k} {v:.1f} s" for k, v in times.items()))


@main.command("train-opaque", context_settings=STAGE_CONTEXT)
@run_options
@click.option("--root", default=None, help="Dataset root (data.root).")
@click.pass_context
def train_opaque_cmd(ctx, config_name, device, seed, out, progress, resume_dir, root) -> None:
    """Train the opaque model (medimg-core's baseline classifier; per-label BCE for multi-label data) in a
    new pipeline folder. Next: `neuron-concepts encode <run folder>`. --resume takes the opaque run folder
    or the pipeline folder holding it."""
    from medimg_core.config import ConfigError
    from neuron_concepts.opaque import resume_opaque, train_opaque

    if resume_dir is not None:
        _resume_alone(ctx, config_name, device, seed, out, root)
        click.echo(f"run folder: {resume_opaque(resume_dir, progress)}")
        return
    cfg = _fresh_config(config_name, _overrides(ctx, **{"data.root": root, "device": device, "seed": seed,
                                                        "out": out, "train.progress": progress}))
    if not cfg.data.root:
        raise ConfigError("--root (data.root) is required: the dataset folder")
    click.echo(f"run folder: {train_opaque(cfg)}")


def _run_stage(ctx: click.Context, stage: str, prev: Path, config_name, device, seed, out, progress,
               **named: Any) -> None:
    from neuron_concepts import stages
    from neuron_concepts.folders import new_pipeline

    fn = {"encode": stages.encode_stage, "sae": stages.train_sae, "name": stages.name_stage,
          "cav": stages.cav_stage, "select": stages.select_stage, "cbm": stages.train_cbm}[stage]
    cfg = _stage_config(prev, config_name, _overrides(ctx, device=device, seed=seed, out=out, progress=progress,
                                                      **named))
    pipeline = new_pipeline(cfg) if out is not None else None
    click.echo(f"{stage} folder: {fn(prev, cfg, pipeline)}")


def _folder(name: str):
    return click.argument(name, type=click.Path(exists=True, file_okay=False, path_type=Path))


@main.command(context_settings=STAGE_CONTEXT)
@_folder("opaque_run")
@stage_options
@click.pass_context
def encode(ctx, opaque_run, config_name, device, seed, out, progress) -> None:
    """Pooled penultimate features (exactly the head's input) of train/val/test of the baseline run
    OPAQUE_RUN, kept in the encode folder (extracted through the medimg feature cache, which spares a
    repeat the extraction); checks head(features) against the model's logits."""
    _run_stage(ctx, "encode", opaque_run, config_name, device, seed, out, progress)


@main.command("train-sae", context_settings=STAGE_CONTEXT)
@_folder("encode_dir")
@stage_options
@click.option("--kind", type=click.Choice(["relu", "topk", "batchtopk"]), default=None, help="SAE variant (sae.kind).")
@click.pass_context
def train_sae_cmd(ctx, encode_dir, config_name, device, seed, out, progress, kind) -> None:
    """Train the sparse autoencoder on the encoded train features of ENCODE_DIR; reports reconstruction R^2,
    L0 and the dead-latent fraction (--sae.resample_every N resamples dead latents every N steps)."""
    _run_stage(ctx, "sae", encode_dir, config_name, device, seed, out, progress, **{"sae.kind": kind})


@main.command(context_settings=STAGE_CONTEXT)
@_folder("sae_dir")
@stage_options
@click.option("--sources", default=None, help="Naming sources in priority order, comma-separated: annotations, "
                                              "vocabulary, file, backend (naming.sources).")
@click.option("--vocabulary", default=None, help="File of clinical terms, one per line (naming.vocabulary).")
@click.option("--reports", default=None, help="CSV of reports: id and report columns (naming.reports).")
@click.option("--names-file", default=None, help="JSON {latent: name} or CSV latent,name (naming.names_file).")
@click.option("--backend", default=None, help="mock, clip:/local/model or text:/local/model (naming.backend).")
@click.pass_context
def name(ctx, sae_dir, config_name, device, seed, out, progress, sources, vocabulary, reports, names_file,
         backend) -> None:
    """Name every alive latent of SAE_DIR and record each name's source; one figure of top-activating
    images per latent (latents/), and with concept annotations how well latents match each concept."""
    _run_stage(ctx, "name", sae_dir, config_name, device, seed, out, progress,
               **{"naming.sources": sources, "naming.vocabulary": vocabulary, "naming.reports": reports,
                  "naming.names_file": names_file, "naming.backend": backend})


@main.command(context_settings=STAGE_CONTEXT)
@_folder("name_dir")
@stage_options
@click.pass_context
def cav(ctx, name_dir, config_name, device, seed, out, progress) -> None:
    """One concept activation vector per named latent of NAME_DIR: the unit normal of a logistic regression
    separating the latent's top-activating images from images where it is silent."""
    _run_stage(ctx, "cav", name_dir, config_name, device, seed, out, progress)


@main.command(context_settings=STAGE_CONTEXT)
@_folder("cav_dir")
@stage_options
@click.option("--k", "k", type=int, default=None, help="Concepts to select (select.k).")
@click.pass_context
def select(ctx, cav_dir, config_name, device, seed, out, progress, k) -> None:
    """Greedy facility-location selection of K concepts over the CAVs of CAV_DIR (squared cosine
    similarity, optionally + --select.discriminative_weight W); the ranking and the marginal gains."""
    _run_stage(ctx, "select", cav_dir, config_name, device, seed, out, progress, **{"select.k": k})


@main.command("train-cbm", context_settings=STAGE_CONTEXT)
@_folder("select_dir")
@stage_options
@click.pass_context
def train_cbm_cmd(ctx, select_dir, config_name, device, seed, out, progress) -> None:
    """Sparse decomposition (OMP, --cbm.n_nonzero) of every embedding over the concepts of SELECT_DIR, then
    logistic regression with C tuned on validation; CBM and opaque test metrics with 95% intervals."""
    _run_stage(ctx, "cbm", select_dir, config_name, device, seed, out, progress)


@main.command()
@click.argument("pipeline", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--all", "all_latents", is_flag=True, default=False,
              help="Every alive latent instead of the selected concepts.")
@click.option("--top", "top_n", default=8, show_default=True, type=click.IntRange(min=1),
              help="Top-activating train images per latent.")
@click.option("--thumb-size", default=96, show_default=True, type=click.IntRange(min=8), help="Thumbnail size (px).")
@click.option("--overwrite", is_flag=True, default=False, help="Replace an existing gallery/names.csv.")
@click.option("--crops/--no-crops", default=True, show_default=True,
              help="Beside each image, the latent's map over it and the crop around the map's maximum.")
@click.option("--crop-fraction", default=0.5, show_default=True, type=click.FloatRange(0, 1, min_open=True),
              help="The crop's side as a fraction of the image's.")
@device_option(from_config=False)
def gallery(pipeline: Path, all_latents: bool, top_n: int, thumb_size: int, overwrite: bool, crops: bool,
            crop_fraction: float, device: str) -> None:
    """The human naming route: PIPELINE/gallery/index.html shows every selected latent (every alive one with
    --all) with its top-activating images (and, unless --no-crops, where in each image the latent fires: a map
    and the crop around its maximum), current name, source and naming score; PIPELINE/gallery/names.csv
    (latent,name, prefilled) is for a person to edit and import with
    `neuron-concepts name SAE_DIR --sources file --names-file PIPELINE/gallery/names.csv`."""
    from neuron_concepts.gallery import build_gallery

    try:
        out = build_gallery(pipeline, all_latents=all_latents, top_n=top_n, thumb_size=thumb_size,
                            overwrite=overwrite, crops=crops, crop_fraction=crop_fraction, device=device)
    except (FileNotFoundError, FileExistsError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"wrote {out / 'index.html'} and {out / 'names.csv'}")


@main.command()
@click.argument("cbm_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("image", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--class", "target", default=None, help="Class name or index whose logit to decompose "
                                                       "(default: the predicted class).")
@click.option("--top", default=10, show_default=True, help="Concepts to show.")
@out_option("Figure to write (default CBM_DIR/figures/explain-<image>.png).", dir_okay=False)
@device_option(from_config=False)
@seed_option("unused: the explanation is deterministic; accepted for scripts", from_config=False)
def explain(cbm_dir: Path, image: Path, target, top: int, out: Path | None, device: str, seed: int) -> None:
    """Explain IMAGE with the concept bottleneck of CBM_DIR (a cbm stage folder, its pipeline folder or a saved
    model): the top concepts and their contributions to the predicted (or --class) logit, as text and as a bar
    figure."""
    from neuron_concepts.api import ConceptsFromNeurons

    e = ConceptsFromNeurons.from_pretrained(cbm_dir).to(device).explain(image, target)
    out = out or cbm_dir / "figures" / f"explain-{image.stem}.png"
    e.figure(out, top_k=top)
    click.echo(e.to_text(top_k=top))
    click.echo(f"wrote {out}")


if __name__ == "__main__":
    main()
