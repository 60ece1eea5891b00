"""The five-minute demo: every method of medimg on small synthetic data with ground truth, from ImageNet weights.

    bash tools/demo.sh                  # set-up, then this script (about 5 minutes on 2 CPU cores)
    .venv/bin/python tools/demo.py [--out runs/demo] [--methods crl iis ...]
    bash tools/demo.sh --full           # the full-size demo of tools/demo_full.sh (about an hour)

It runs, in one Python process, the same commands a user types (each is printed; its output goes to
OUT/logs/<step>.log): synthetic data, the black-box baseline, then CRL, Concepts from Neurons and IIS on the
dermoscopy set, CIPL on the chest X-rays and the DAE counterfactuals on the grading set. Each run gets its HTML
report (`medimg report`), and OUT/index.html shows a summary table and one figure per method.

Every number here is demo-sized: a few hundred 64 px images and a few epochs (the settings are the
`--key value` overrides below). The baseline and CRL train the same backbone from the same ImageNet weights
for the same number of epochs on the same images, so their accuracies compare; the other rows measure
different things on different sets and do not. Full-size numbers are in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("crl", "neuron-concepts", "iis", "cipl", "dae")
DATA = {"synth-derm": (600, 64), "synth-cxr": (600, 64), "synth-grade": (1200, 32)}
EPOCHS = 3  # baseline and CRL: the same budget


@dataclass
class Step:
    """One method of the demo: its summary row once it has run."""

    title: str
    explains: str
    headline: str = ""
    seconds: float = 0.0
    figure: Path | None = None
    run: Path | None = None
    note: str = ""
    commands: list[str] = field(default_factory=list)


class Demo:
    def __init__(self, out: Path):
        self.out = out
        self.logs = out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)

    def command(self, step: Step, program: str, args: list[str], log: str) -> None:
        """Run `program args` in this process (its click group), its output appended to logs/<log>.log."""
        from importlib import import_module

        module = {"medimg": "medimg_core.cli", "crl": "crl.cli", "neuron-concepts": "neuron_concepts.cli",
                  "iis": "iis.cli", "cipl": "cipl.cli", "dae-cf": "dae_counterfactual.cli"}[program]
        line = shlex.join([program, *[str(a) for a in args]]).replace(str(self.out) + "/", "")
        print(f"  $ {line}", flush=True)
        step.commands.append(line)
        buffer = io.StringIO()
        try:
            with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
                rc = import_module(module).main.main([str(a) for a in args], prog_name=program,
                                                     standalone_mode=False)
        except Exception as exc:  # the command's own error message, then where its whole output is
            rc = f"{type(exc).__name__}: {exc}"
        finally:
            with open(self.logs / f"{log}.log", "a", encoding="utf-8") as f:
                f.write(f"$ {line}\n{buffer.getvalue()}\n")
        if rc not in (None, 0):
            raise SystemExit(f"{line} failed ({rc}); its output is in {self.logs / f'{log}.log'}")

    @staticmethod
    def one_folder(parent: Path) -> Path:
        """The one run folder a command made in its --out (each method gets its own --out)."""
        folders = [p for p in parent.iterdir() if p.is_dir()]
        if len(folders) != 1:
            raise SystemExit(f"{parent}: expected one run folder, found {len(folders)}")
        return folders[0]


def ci_text(section: dict, key: str) -> str:
    value, interval = section[key], section.get(f"{key}_ci")
    return f"{value:.3f}" + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "")


def test_image(data: Path, with_finding: bool = False) -> Path:
    """The first test image of a synthetic folder (its labels.csv); `with_finding`: the first one with at least
    one finding (a mask column filled), so that the explanation has something to point at."""
    import pandas as pd

    table = pd.read_csv(data / "labels.csv")
    test = table[table["split"] == "test"]
    if with_finding:
        masks = [c for c in table.columns if c.startswith("mask_")]
        test = test[test[masks].notna().any(axis=1)]
    return data / test["path"].iloc[0]


def run_data(demo: Demo, out: Path) -> dict[str, Path]:
    step = Step("data", "")
    folders = {}
    for name, (n, size) in DATA.items():
        folders[name] = out / "data" / name
        if not (folders[name] / "dataset.json").is_file():
            demo.command(step, "medimg", ["synth", name, "--n", n, "--size", size, "--out", folders[name],
                                          "--seed", 0], "data")
    return folders


COMMON = ["--device", "cpu", "--seed", "0", "--no-progress"]


def run_baseline(demo: Demo, data: dict[str, Path], shared: dict) -> Step:
    step = Step("baseline (black box)", "nothing: the accuracy an interpretable model is measured against")
    out = demo.out / "runs" / "baseline"
    demo.command(step, "medimg", ["train-baseline", "--config", "baseline-synth-derm-lite0-cpu", "--root",
                                  data["synth-derm"], "--epochs", EPOCHS, "--out", out, *COMMON], "baseline")
    step.run = shared["baseline"] = demo.one_folder(out)
    m = json.loads((step.run / "metrics.json").read_text())
    step.headline = f"test accuracy {ci_text(m['test'], 'accuracy')}"
    step.figure = next(iter(sorted((step.run / "figures").glob("*.png"))), None)
    step.note = (f"EfficientNet-Lite0 from ImageNet weights, {EPOCHS} epochs at 64 px on "
                 f"{m['sizes']['train']} training images.")
    return step


def run_crl(demo: Demo, data: dict[str, Path], shared: dict) -> Step:
    step = Step("CRL (Concept Rule Learner)", "the label as Boolean rules over named concepts")
    out = demo.out / "runs" / "crl"
    demo.command(step, "crl", ["train", "--config", "synthetic-lite0-cpu", "--root", data["synth-derm"],
                               "--train.epochs", EPOCHS, "--out", out, *COMMON], "crl")
    step.run = demo.one_folder(out)
    step.figure = demo.out / "figures" / "crl-explain.png"
    demo.command(step, "crl", ["explain", step.run, shared["derm_image"], "--out", step.figure, "--device", "cpu"],
                 "crl")
    m = json.loads((step.run / "metrics.json").read_text())
    step.headline = (f"test accuracy {ci_text(m['test'], 'accuracy')}; {m['rules']['count']} rules; concept "
                     f"macro-F1 (as published) {m['test_concepts']['concept_macro_f1']:.3f}")
    step.note = f"Same backbone, weights, images and epochs ({EPOCHS}) as the baseline."
    return step


def run_neuron_concepts(demo: Demo, data: dict[str, Path], shared: dict) -> Step:
    step = Step("Concepts from Neurons", "the baseline's own features as named concepts (a sparse autoencoder)")
    out = demo.out / "runs" / "neuron-concepts"
    demo.command(step, "neuron-concepts", ["run", "--config", "synth-derm-lite0-cpu", "--opaque-run",
                                           shared["baseline"], "--sae.epochs", "60", "--out", out, *COMMON],
                 "neuron-concepts")
    step.run = demo.one_folder(out)
    step.figure = demo.out / "figures" / "neuron-concepts-explain.png"
    demo.command(step, "neuron-concepts", ["explain", step.run / "cbm", shared["derm_image"], "--out", step.figure,
                                           "--device", "cpu"], "neuron-concepts")
    cbm = json.loads((step.run / "cbm" / "metrics.json").read_text())
    name = json.loads((step.run / "name" / "metrics.json").read_text())
    named = name["concepts_named_confirmed_test"]
    step.headline = (f"bottleneck test accuracy {ci_text(cbm['test'], 'accuracy')} (baseline "
                     f"{cbm['opaque_test']['accuracy']:.3f}); {named} of {len(name['concept_naming_test'])} "
                     f"annotated concepts named on train (AUROC >= {name['min_auroc']}) and holding on test")
    step.note = "Dissects the baseline run above: no training of its own besides the SAE and the bottleneck."
    return step


def run_iis(demo: Demo, data: dict[str, Path], shared: dict) -> Step:
    step = Step("IIS (Inherent Interpretability Score)",
                "how much accuracy a representation keeps when only a few concepts may be used")
    out = demo.out / "runs" / "iis"
    demo.command(step, "iis", ["score", "--config", "synth-derm-lite0-cpu", "--root", data["synth-derm"],
                               "--backbone", f"tf_efficientnet_lite0:{shared['baseline']}",
                               "--backbone", "tf_efficientnet_lite0:imagenet-lite0",
                               "--sweep.epochs", "15", "--sweep.lrs", "[0.01]", "--out", out, *COMMON], "iis")
    step.run = demo.one_folder(out)
    step.figure = demo.out / "figures" / "iis-explain.png"
    demo.command(step, "iis", ["explain", step.run, shared["derm_image"], "--out", step.figure, "--device", "cpu"],
                 "iis")
    m = json.loads((step.run / "metrics.json").read_text())
    fine_tuned, frozen = (b["result"] for b in m["backbones"])
    difference = m["comparison"][1]
    step.headline = (f"IIS fine-tuned {ci_text(fine_tuned, 'iis')}, ImageNet frozen {ci_text(frozen, 'iis')} "
                     f"(difference {ci_text(difference, 'difference')})")
    step.note = "Scores the baseline's fine-tuned representation against the same network's frozen ImageNet one."
    return step


def run_cipl(demo: Demo, data: dict[str, Path], shared: dict) -> Step:
    step = Step("CIPL (prototypes)", "each finding by the training-image patches it resembles, and where")
    out = demo.out / "runs" / "cipl"
    # the shipped scratch preset, unchanged: on synth-cxr resnet18 from scratch localised better than the lite0
    # preset (pointing game 0.855 against 0.290 over 5 seeds, docs/benchmarks.md), and 3 lite0 epochs gave 0.000
    demo.command(step, "cipl", ["train", "--config", "synth-cxr-cpu", "--root", data["synth-cxr"], "--out", out,
                                *COMMON], "cipl")
    step.run = demo.one_folder(out)
    reason = demo.out / "figures" / "cipl-reason"
    demo.command(step, "cipl", ["reason", step.run, test_image(data["synth-cxr"], with_finding=True), "--top-k", "3",
                                "--out", reason, "--device", "cpu"], "cipl")
    step.figure = next(iter(sorted(reason.glob("*.png"))), None)
    m = json.loads((step.run / "metrics.json").read_text())
    pointing = m.get("test_localisation", {}).get("all_present/pointing_game")
    step.headline = f"test mean AUROC {ci_text(m['test'], 'auroc_mean')}" + (
        f"; pointing game {pointing:.3f}" if pointing is not None else "")
    step.note = ("Synthetic chest X-rays with finding masks; the pointing game checks the class maps against them. "
                 "resnet18 from scratch (the synth-cxr-cpu preset, 8 epochs): on this set it localised better than "
                 "the ImageNet lite0 preset (pointing game 0.855 against 0.290, 5 seeds, docs/benchmarks.md).")
    return step


def run_dae(demo: Demo, data: dict[str, Path], shared: dict) -> Step:
    step = Step("DAE counterfactuals", "the same image re-rendered at other grades (what would change)")
    out = demo.out / "runs" / "dae"
    epochs = 3
    demo.command(step, "dae-cf", ["train", "--config", "synth-grade-cpu", "--root", data["synth-grade"],
                                  "--train.epochs", epochs, "--train.eval_every", epochs,
                                  "--train.checkpoint_every", epochs, "--out", out, *COMMON], "dae")
    step.run = demo.one_folder(out)
    demo.command(step, "dae-cf", ["fit-boundary", step.run, "--device", "cpu"], "dae")
    cf = demo.out / "figures" / "dae"
    targets = [0, 2, 4]
    demo.command(step, "dae-cf", ["counterfactual", step.run, test_image(data["synth-grade"]), "--grades", *targets,
                                  "--encode-steps", "20", "--render-steps", "10", "--out", cf, *COMMON], "dae")
    series_dir = demo.one_folder(cf)
    step.figure = next(iter(sorted((series_dir / "figures").glob("*.png"))), None)
    series = json.loads((series_dir / "metrics.json").read_text())["series"][0]
    reencoded = series["reencoded_grades"]
    b = json.loads((step.run / "metrics.json").read_text())["boundary"]["test"]
    step.headline = (f"latent boundary test AUROC {ci_text(b['binary'], 'auroc')}, grade Spearman "
                     f"{b['grade']['spearman']:.3f}; one image edited to grades {targets} re-encodes as "
                     f"{', '.join(f'{g:.2f}' for g in reencoded)}")
    followed = max(reencoded) - min(reencoded) >= 0.5 * (max(targets) - min(targets))
    step.note = (f"Demo-sized: {epochs} epochs instead of the preset's 50 (16 min; `bash tools/demo.sh --full`). "
                 "The semantic code already separates the grades (the boundary above), but "
                 + ("the renderings follow the edit." if followed else
                    f"the decoder does not follow the edit yet: the re-encoded grades span "
                    f"{max(reencoded) - min(reencoded):.2f} for targets spanning {max(targets) - min(targets)}."))
    return step


RUNNERS: dict[str, Callable[[Demo, dict[str, Path], dict], Step]] = {
    "crl": run_crl, "neuron-concepts": run_neuron_concepts, "iis": run_iis, "cipl": run_cipl, "dae": run_dae}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "demo")
    p.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS)
    args = p.parse_args(argv)
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("MPLBACKEND", "Agg")
    out = args.out.resolve()
    if (out / "runs").exists() and any((out / "runs").iterdir()):
        raise SystemExit(f"{out}: holds an earlier demo; give another --out or remove it")
    out.mkdir(parents=True, exist_ok=True)
    demo = Demo(out)
    start = time.perf_counter()
    print(f"[demo] data -> {out / 'data'}", flush=True)
    t0 = time.perf_counter()
    data = run_data(demo, out)
    data_s = time.perf_counter() - t0
    shared: dict = {"derm_image": test_image(data["synth-derm"])}
    steps = []
    for name, runner in [("baseline", run_baseline), *((m, RUNNERS[m]) for m in args.methods)]:
        print(f"[demo] {name}", flush=True)
        t0 = time.perf_counter()
        step = runner(demo, data, shared)
        step.seconds = time.perf_counter() - t0
        steps.append(step)
    print("[demo] reports", flush=True)
    from medimg_core.report import IndexEntry, build_index, build_report

    t0 = time.perf_counter()
    reports = [build_report(s.run) if s.run else None for s in steps]
    report_s = time.perf_counter() - t0
    total = time.perf_counter() - start
    intro = [f"Every method of medimg on small synthetic data with ground truth ({', '.join(DATA)}), written by "
             f"tools/demo.py in {total:.0f} s on {os.cpu_count()} CPU threads (data {data_s:.0f} s, reports "
             f"{report_s:.0f} s). All numbers are demo-sized: a few hundred images, a few epochs; see "
             "docs/benchmarks.md for full-size ones.",
             f"The baseline and CRL train the same backbone from the same ImageNet weights for {EPOCHS} epochs on "
             "the same images, so their accuracies compare; the other rows measure different things and do not.",
             "Brackets: 95% bootstrap intervals over the test split. The commands of each step are in logs/."]
    index = build_index([IndexEntry(s.title, s.explains, s.headline, s.seconds, s.figure, r, s.note)
                         for s, r in zip(steps, reports, strict=True)], out / "index.html", "medimg demo", intro)
    (out / "summary.json").write_text(json.dumps(
        {"total_s": total, "data_s": data_s, "reports_s": report_s,
         "steps": [{"title": s.title, "headline": s.headline, "seconds": s.seconds, "run": str(s.run),
                    "figure": str(s.figure), "commands": s.commands} for s in steps]}, indent=2))
    width = max(len(s.title) for s in steps)
    print(f"\n{'method':<{width}}  {'time':>6}  headline")
    for s in steps:
        print(f"{s.title:<{width}}  {s.seconds:>5.0f}s  {s.headline}")
    print(f"\nwhat each explains, its figure and report: {index}\ntotal {total:.0f} s (numbers are demo-sized)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
