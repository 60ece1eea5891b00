"""`medimg benchmark`: registered under the entry-point group `medimg.commands`, which medimg-core's `medimg`
group loads, so it runs as a subcommand of `medimg` once medimg-benchmark is installed. A thin layer over
`medimg_benchmark.runner.run_benchmark`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from medimg_core.cli_options import device_option, out_option, progress_option

HELP = """Score post-hoc saliency maps against ground truth (first version of the benchmark).

\b
What it runs, per seed (--seeds, default 0 1 2):
- data: synth-derm (binary; malignant = (irregular_border & blue_white_veil) | streaks), generated with the
  data seed 1000 + seed (a seed family no preset was tuned on);
- model: the medimg-core baseline (preset baseline-synth-derm, a ResNet-18) trained on it;
- explainers: every medimg_core.posthoc method (gradcam, gradcam++, hirescam, layercam, saliency,
  integrated_gradients, occlusion) for the class malignant, and edge_reference (the image's gradient
  magnitude, independent of the model: it must fail the sanity check);
- protocols, on the test images that are malignant and predicted malignant, against the union of the masks
  of the rule's concepts present: pointing game, IoU and energy pointing game; RISE deletion and insertion
  AUC; Adebayo et al.'s cascading model randomisation (pass/fail at |rank corr.| < 0.5) and data
  randomisation (the baseline retrained on permuted labels);
- concepts: TCAV of every concept for malignant and a linear probe's test AUROC on the baseline's layer;
- CRL (preset synthetic-cpu, crl's CPU preset; --quick: 2 epochs) trained on the same data and seed: its
  concept head's test AUROC per concept; its rule set, its compact rule and, on its predicted concepts, a
  decision tree (depth <= 3) and a logistic regression: truth-table agreement with the generating rule (every
  assignment of the rule's concepts, the others absent), test accuracy, fidelity to CRL's network, size.

\b
Writes a run folder under --out: benchmark.json (every number with its bootstrap interval, config, seeds,
versions, thread count), benchmark.md (the tables, mean ± sd over seeds), index.html and
figures/example_maps.png.

\b
Not yet in: neuron-concepts latents, intervention curves, prototypes and CIPL's class maps, counterfactuals,
harder synthetic settings.
"""


def _parse_seeds(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    parts = [p for p in value.replace(",", " ").split() if p]
    try:
        seeds = tuple(int(p) for p in parts)
    except ValueError:
        raise click.BadParameter(f"expected integers separated by commas or spaces, got {value!r}") from None
    if not seeds:
        raise click.BadParameter("expected at least one seed")
    return seeds


@click.command(help=HELP)
@click.option("--quick", is_flag=True,
              help="CI budget: 2 seeds, 120 images at 32 px, 2 epochs (baseline and CRL), 6 images per protocol "
                   "(minutes on a CPU).")
@click.option("--seeds", default=None, metavar="N[,N...]", callback=_parse_seeds,
              help="Model seeds, comma- or space-separated (--seeds 0,1,2); default 0,1,2 (--quick: 0,1).")
@device_option(from_config=False)
@out_option("Folder that receives the benchmark's run folder (default: runs/).")
@progress_option()
@click.option("--n-images", type=int, default=None, help="Images generated per seed (default 1000; --quick 120).")
@click.option("--epochs", type=int, default=None, help="Training epochs of the baseline (default 10; --quick 2).")
def benchmark(quick: bool, seeds: tuple[int, ...] | None, device: str, out: Path | None, progress: bool | None,
              n_images: int | None, epochs: int | None) -> None:
    from medimg_benchmark.runner import BenchmarkConfig, run_benchmark

    changes = {"device": device, "progress": progress}
    if seeds:
        changes["seeds"] = tuple(seeds)
    if n_images is not None:
        changes["n_images"] = n_images
    if epochs is not None:
        changes["epochs"] = epochs
    try:
        cfg = BenchmarkConfig.quick_budget(**changes) if quick else BenchmarkConfig(**changes)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    show = progress if progress is not None else sys.stderr.isatty()
    result = run_benchmark(cfg, out if out is not None else Path("runs"),
                           say=(lambda msg: click.echo(msg, err=True)) if show else (lambda _: None))
    click.echo(f"benchmark written to {result['run_dir']}")
    click.echo((Path(result["run_dir"]) / "benchmark.md").read_text())
