"""The `crl` command: train, evaluate, read rules, explain an image, write fold files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from crl import __version__
from medimg_core.cli import ErrorReportingGroup
from medimg_core.cli_options import device_option, out_option, progress_option, seed_option, training_options

CONFIGS = Path(__file__).parent / "configs"


@click.group(cls=ErrorReportingGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="crl")
def main() -> None:
    """Concept Rule Learner (Gao et al., MICCAI 2025): images -> binary concepts -> Boolean rules.

    Train with `crl train`, read the learned decision logic with `crl rules RUN`, explain one image
    with `crl explain RUN IMAGE`, test on a shifted dataset with `crl evaluate RUN --dataset ...`.
    """


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@training_options("wbc, skin, derm7pt (the paper's settings), synthetic-cpu, wbc-cpu (CPU presets from scratch), "
                  "synthetic-lite0-cpu, wbc-lite0-cpu (CPU presets from the offline ImageNet weights), "
                  "small-lite0-cpu (a few hundred images: a budget in steps; name the dataset)",
                  "model init, data order, augmentation")
@click.option("--root", default=None, help="Dataset root (data.root).")
@click.pass_context
def train(ctx: click.Context, config_name, device, seed, out, progress, resume_dir, root) -> None:
    """Train CRL; any config key can be overridden as --section.key VALUE (e.g. --train.epochs 5).

    Writes a run folder: config.yaml, metrics.jsonl, metrics.json (task metrics with 95% intervals,
    concept metrics, rule count and length, rule-set fidelity), rules.json, rules.txt, checkpoints/ (best/ also
    holds the rules; in features mode every checkpoint holds the frozen backbone), figures/.
    """
    from crl.config import CRLConfig
    from crl.train import train_crl
    from medimg_core.cli import training_config

    named = {"data.root": root, "device": device, "seed": seed, "out": out, "train.progress": progress}
    cfg = training_config(CRLConfig, config_name, CONFIGS, named, ctx.args, resume_dir)
    run_dir = train_crl(cfg, resume_dir)
    if os.environ.get("RANK", "0") == "0":
        click.echo(f"run folder: {run_dir}")


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--dataset", required=True, help="Dataset format, e.g. ddi for the out-of-distribution skin test.")
@click.option("--root", required=True, help="Its root folder.")
@click.option("--split", default="test", show_default=True)
@click.option("--option", "-o", "options", multiple=True, metavar="KEY=VALUE", help="Loader option (repeatable).")
@device_option(from_config=False)
@seed_option("the bootstrap intervals", from_config=False)
@out_option("JSON file to write (default RUN_DIR/eval-<dataset>-<split>.json).", dir_okay=False)
@progress_option()
def evaluate(run_dir: Path, dataset: str, root: str, split: str, options, device: str, seed: int, out: Path | None,
             progress: bool | None) -> None:
    """Evaluate the trained model of RUN_DIR on another dataset's split; writes RUN_DIR/eval-<dataset>-<split>.json
    (or --out).

    On DDI it scores the paper's test set (the images SkinCon annotates, less those flagged 'Do not consider this
    image') and the whole set from one pass; `-o subset=all` or `-o subset=skincon-annotated` scores one of them."""
    from crl.api import evaluate_run
    from medimg_core.checkpoint import write_json
    from medimg_core.cli import parse_options
    from medimg_core.training import show_progress

    result = evaluate_run(run_dir, dataset, root, split, parse_options(options), device, seed=seed,
                          progress=show_progress(progress))
    path = out or run_dir / f"eval-{dataset}-{split}.json"
    write_json(path, result)
    parts = [(f"{dataset}/{split}" + (f", subset {result['subset']}" if "subset" in result else ""), result)]
    if "all_images" in result:
        parts[0] = (f"{dataset}/{split}, subset {result['subset']} ({result['protocol']})", result)
        parts.append((f"{dataset}/{split}, all images (ours: the whole set)", result["all_images"]))
    for title, part in parts:
        t = part["test"]
        click.echo(f"{title} (n={part['n']}): accuracy {t['accuracy']:.4f} {t['accuracy_ci']}, "
                   f"macro-F1 {t['macro_f1']:.4f}, AUROC {t.get('auroc', float('nan')):.4f}")
        if "concepts" in part:
            c = part["concepts"]
            click.echo(f"  concepts, as published (mean over the {int(c['concept_with_positives'])} concepts with a "
                       f"positive): accuracy {c['concept_accuracy']:.4f}, macro-F1 {c['concept_macro_f1']:.4f}; "
                       f"pooled accuracy {c['concept_accuracy_pooled']:.4f}, positive-class F1 mean "
                       f"{c['concept_positive_f1_mean']:.4f}")
        if "compact" in part:
            c = part["compact"]
            made = " (condensed now from the training split: the run predates them)" if c["computed_now"] else ""
            per_class = ", ".join(f"{k} {v:.3f}" for k, v in c["fidelity_on_split"]["per_class"].items())
            overall = (f"; prefix of {c['prefix_rules']} rules, overall {c['fidelity_on_split']['overall']:.3f}"
                       if c["method"] == "prefix" else "")
            click.echo(f"  compact rules{made}, fidelity to the network on {title}, per class: {per_class}"
                       f"{overall}")
    click.echo(f"wrote {path}")


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--split", default="test", show_default=True, help="The split of the run's dataset to intervene on.")
@click.option("--orders", "n_orders", default=5, show_default=True, type=click.IntRange(1),
              help="Random orders to average over.")
@device_option(from_config=False)
@seed_option("the random orders", from_config=False)
@out_option("Folder for interventions-<split>.json and its figure (default RUN_DIR, figure in RUN_DIR/figures).")
@progress_option()
def intervene(run_dir: Path, split: str, n_orders: int, device: str, seed: int, out: Path | None,
              progress: bool | None) -> None:
    """Concept interventions (Koh et al., ICML 2020): test accuracy as k = 0..K concepts are set to their annotated
    values, in random order (averaged over --orders) and in order of concept uncertainty, for CRL and for a
    logistic-regression bottleneck on the same predicted concepts."""
    from crl.intervene import intervene_run, summary_table
    from medimg_core.training import show_progress

    result = intervene_run(run_dir, split, n_orders, seed, device, show_progress(progress), out)
    click.echo(summary_table(result))
    click.echo(f"wrote {Path(out or run_dir) / f'interventions-{split}.json'} and {result['figure']}")


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print rules.json instead of the readable list.")
def rules(run_dir: Path, as_json: bool) -> None:
    """Print the rules learned in RUN_DIR (a run folder, or a checkpoint folder such as RUN/checkpoints/best):
    first the compact rules (per class a minimal formula, or the shortest faithful prefix of the rules), then every
    rule sorted by importance per class (run folders of the older layout, with the rules in the run folder only,
    too)."""
    from crl.api import load_rules_of

    learned = load_rules_of(run_dir)
    click.echo(json.dumps(learned.to_json(), indent=2) if as_json else learned.to_text())


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("image", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@out_option("Figure to write (default RUN_DIR/figures/explain-<image>.png).", dir_okay=False)
@device_option(from_config=False)
def explain(run_dir: Path, image: Path, out: Path | None, device: str) -> None:
    """Explain the prediction for IMAGE: its concepts, the rules that fired and their contributions, the compact
    rule of the class, and the network's own class next to the rule set's (flagged when they differ).

    RUN_DIR is a run folder or a checkpoint folder."""
    from crl.api import ConceptRuleLearner

    explanation = ConceptRuleLearner.from_pretrained(run_dir).to(device).explain(image)
    out = out or run_dir / "figures" / f"explain-{image.stem}.png"
    explanation.figure(out)
    click.echo(explanation.to_text())
    click.echo(f"wrote {out}")


@main.command()
@click.option("--dataset", required=True, help="Dataset format without an official split, e.g. fitzpatrick17k-skincon.")
@click.option("--root", required=True)
@click.option("--n-folds", default=5, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--out", "split_file", required=True, type=click.Path(path_type=Path), help="Split file to write.")
def split(dataset: str, root: str, n_folds: int, seed: int, split_file: Path) -> None:
    """Write the fold file of DATASET once (stratified, grouped where the data say so); runs reuse it.

    Train fold k with --data.options.fold k --data.options.split_file FILE.
    """
    from medimg_core.data import load_dataset

    if split_file.exists():
        raise click.ClickException(f"{split_file} exists; split files are never overwritten (delete it first)")
    ds = load_dataset(dataset, root, "train", n_folds=n_folds, seed=seed, split_file=str(split_file), fold=0)
    folds = json.loads(split_file.read_text())["folds"]
    click.echo(f"wrote {split_file}: {len(folds)} images in {n_folds} folds ({ds.card.name})")


if __name__ == "__main__":
    main()
