"""From scratch against ImageNet weights (imagenet-lite0), same data and splits, over seeds: the single-command
benchmarks (baselines, CRL on WBCAtt, CIPL on the MedMNIST sets).

    python tools/bench/pretrained.py [--only baseline/wbcatt crl/wbcatt ...] [--arms scratch imagenet-lite0]
                                     [--seeds 0 1 2] [--out runs/bench-pretrained]

Each benchmark has two arms: `scratch` is the command of the earlier single-seed benchmark (resnet18 from
random weights), `imagenet-lite0` the matching `*-lite0-cpu` preset (EfficientNet-Lite0 from the offline
ImageNet weights). Every run adds `--seed S --device cpu --out OUT`. Results go to docs/bench/pretrained.json
after each run, so an interrupted benchmark keeps what it finished; a rerun reuses a recorded run only when
its command is the one this script would run now and its folder still holds metrics.json (otherwise it
trains again). Per run: the test metrics with their 95% bootstrap intervals, wall time, peak memory and the
weights' source; per arm: mean, sd, min and max over the seeds. The methods with multi-stage benchmarks
(neuron-concepts, IIS, CIPL on synth-cxr) have their own scripts with a `--preset` for the same comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import (
    RESULTS,
    ROOT,
    SHARED,
    command_line,
    concept_numbers,
    display,
    machine,
    mean_sd,
    run_command,
    write_result,
)

BIN = Path(sys.executable).parent
MEDMNIST = SHARED / "medmnist"


def _baseline_medmnist_scratch(name: str) -> list[str]:  # as tools/bench/cipl_medmnist.py
    return ["medimg", "train-baseline", "--config", "baseline-retinamnist", "--dataset", name, "--root",
            str(MEDMNIST / f"{name}.npz"), "--backbone", "resnet18", "--image-size", "32", "--epochs", "8",
            "--data.scale_min", "0.85", "--no-progress"]


#: name -> (metrics to summarise, {arm: command without --seed/--device/--out})
BENCHES: dict[str, tuple[list[str], dict[str, list[str]]]] = {
    "baseline/wbcatt": (["accuracy", "balanced_accuracy", "macro_f1"], {
        # tools/bench/baselines.py's command
        "scratch": ["medimg", "train-baseline", "--dataset", "wbcatt", "--root", str(SHARED / "wbcatt"),
                    "--backbone", "resnet18", "--image-size", "64", "--epochs", "6", "--batch-size", "64",
                    "--lr", "2e-3", "--optim.scheduler", "onecycle", "--optim.weight_decay", "0.05",
                    "--data.vflip", "true", "--no-progress"],
        "imagenet-lite0": ["medimg", "train-baseline", "--config", "baseline-wbcatt-lite0-cpu", "--root",
                           str(SHARED / "wbcatt"), "--no-progress"]}),
    "crl/wbcatt": (["accuracy", "balanced_accuracy", "macro_f1", "concept_macro_f1", "concept_accuracy",
                    "concept_positive_f1_mean", "concept_accuracy_pooled", "rules"], {
        "scratch": ["crl", "train", "--config", "wbc-cpu", "--root", str(SHARED / "wbcatt")],
        "imagenet-lite0": ["crl", "train", "--config", "wbc-lite0-cpu", "--root", str(SHARED / "wbcatt")]}),
    "baseline/retinamnist": (["accuracy", "balanced_accuracy", "auroc", "qwk"], {
        "scratch": ["medimg", "train-baseline", "--dataset", "retinamnist", "--root", str(MEDMNIST),
                    "--backbone", "resnet18", "--image-size", "28", "--epochs", "30", "--batch-size", "64",
                    "--lr", "1e-3", "--optim.scheduler", "cosine", "--data.scale_min", "1.0", "--no-progress"],
        "imagenet-lite0": ["medimg", "train-baseline", "--config", "baseline-medmnist-lite0-cpu", "--dataset",
                           "retinamnist", "--root", str(MEDMNIST), "--no-progress"],
        # the diagnosis of the lite0 arm's test shortfall: a third of the fine-tuning learning rate
        "imagenet-lite0-lr3e-4": ["medimg", "train-baseline", "--config", "baseline-medmnist-lite0-cpu", "--dataset",
                                  "retinamnist", "--root", str(MEDMNIST), "--lr", "3e-4", "--no-progress"]}),
}
for _name in ("breastmnist", "pneumoniamnist"):
    BENCHES[f"baseline/{_name}"] = (["accuracy", "balanced_accuracy", "auroc", "macro_f1"], {
        "scratch": _baseline_medmnist_scratch(_name),
        "imagenet-lite0": ["medimg", "train-baseline", "--config", "baseline-medmnist-lite0-cpu", "--dataset", _name,
                           "--root", str(MEDMNIST / f"{_name}.npz"), "--epochs", "8", "--no-progress"]})
    BENCHES[f"cipl/{_name}"] = (["accuracy", "balanced_accuracy", "auroc", "macro_f1"], {
        "scratch": ["cipl", "train", "--config", "medmnist-cpu", "--dataset", _name, "--root",
                    str(MEDMNIST / f"{_name}.npz"), "--no-progress"],
        "imagenet-lite0": ["cipl", "train", "--config", "medmnist-lite0-cpu", "--dataset", _name, "--root",
                           str(MEDMNIST / f"{_name}.npz"), "--no-progress"]})

#: benches whose runs recorded before the published concept metrics existed get them from `crl evaluate` on the
#: run's best checkpoint (same test split): bench -> (dataset, root)
CONCEPT_EVALUATION = {"crl/wbcatt": ("wbcatt", SHARED / "wbcatt")}

RESULT = "pretrained"
ALL_ARMS = sorted({arm for _, arms in BENCHES.values() for arm in arms})


def recorded_run(bench: str, arm: str, seed: int) -> Path | None:
    """The run folder this script recorded for (bench, arm, seed), if it is still on disk with its best checkpoint
    (the neuron-concepts and IIS comparisons reuse the lite0 baseline runs)."""
    path = RESULTS / f"{RESULT}.json"
    if not path.exists():
        return None
    run = json.loads(path.read_text())["benches"].get(bench, {}).get("arms", {}).get(arm, {}).get("runs", {}) \
        .get(str(seed))
    if run and (ROOT / run["run_dir"] / "checkpoints" / "best").is_dir():
        return ROOT / run["run_dir"]
    return None


def extract(metrics: dict, names: list[str]) -> dict:
    """The summarised numbers of one run (with intervals where the run has them)."""
    out = {}
    test = metrics.get("test", {})
    concepts = concept_numbers(metrics.get("test_concepts", {}))  # older metrics.json files read as what they hold
    for name in names:
        if name == "rules":
            out[name] = metrics.get("rules", {}).get("count")
            continue
        source = concepts if name.startswith("concept_") else test
        key = name if name in source else f"{name}_mean" if f"{name}_mean" in source else None
        out[name] = source.get(key) if key else None
        if key and f"{key}_ci" in source:
            out[f"{name}_ci"] = source[f"{key}_ci"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="*", default=list(BENCHES), choices=list(BENCHES))
    p.add_argument("--arms", nargs="*", default=["imagenet-lite0", "scratch"], choices=ALL_ARMS,
                   help="arms a benchmark lacks are skipped (imagenet-lite0-lr3e-4: baseline/retinamnist only)")
    p.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    p.add_argument("--out", default=str(ROOT / "runs" / "bench-pretrained"))
    args = p.parse_args()
    out = Path(args.out).resolve()
    path = RESULTS / f"{RESULT}.json"
    result = json.loads(path.read_text()) if path.exists() else {"benches": {}}
    benches = result.setdefault("benches", {})
    for name in args.only:
        metric_names, arms = BENCHES[name]
        bench = benches.setdefault(name, {"metrics": metric_names, "arms": {}})
        bench["metrics"] = metric_names
        for arm in args.arms:
            if arm not in arms:
                continue
            cmd = [str(BIN / arms[arm][0]), *arms[arm][1:], "--device", "cpu", "--out", str(out)]
            record = bench["arms"].setdefault(arm, {"runs": {}})
            record["command"] = display(cmd) + " --seed S"
            for seed in args.seeds:
                full = [*cmd, "--seed", str(seed)]
                old = record["runs"].get(str(seed))
                if old and old.get("command") == display(full) and (ROOT / old["run_dir"] / "metrics.json").is_file():
                    print(f"{name} {arm} seed {seed}: reusing {old['run_dir']}")
                    # read again: the summarised metrics may have changed since (e.g. CRL's concept metrics), and runs
                    # recorded before the selection value was lack best_val
                    recorded = json.loads((ROOT / old["run_dir"] / "metrics.json").read_text())
                    old["numbers"] = extract(recorded, metric_names)
                    old["best_val"], old["monitor"] = recorded.get("best_val"), recorded.get("monitor")
                    evaluate_concepts(name, old, metric_names)
                    continue
                run_dir, wall, _ = run_command(full, creates_in=out)
                metrics = json.loads((run_dir / "metrics.json").read_text())
                record["runs"][str(seed)] = {
                    "seed": seed, "command": display(full), "run_dir": str(run_dir.relative_to(ROOT)),
                    "numbers": extract(metrics, metric_names), "wall_time_s": wall,
                    "peak_memory_mb": metrics.get("peak_memory_mb"), "backbone": metrics.get("backbone"),
                    "pretrained_source": str(metrics.get("pretrained_source", "")).split(":", 1)[0] or "none",
                    "best_epoch": metrics.get("best_epoch"), "epochs_run": metrics.get("epochs_run"),
                    "best_val": metrics.get("best_val"), "monitor": metrics.get("monitor"),
                    "machine": machine(), "load_average_after": os.getloadavg()}
                numbers = record["runs"][str(seed)]["numbers"]
                print(f"{name} {arm} seed {seed}: " + ", ".join(
                    f"{k} {v:.4f}" for k, v in numbers.items() if isinstance(v, float)) + f"; {wall:.0f} s", flush=True)
                summarise_arm(record, metric_names)
                write_result(RESULT, {"command": command_line(), "benches": benches})
            summarise_arm(record, metric_names)
    write_result(RESULT, {"command": command_line(), "benches": benches})


def evaluate_concepts(bench: str, run: dict, metric_names: list[str]) -> None:
    """Fill a reused CRL run's published concept metrics (None in runs trained before they were computed) from
    `crl evaluate RUN` on its test split, recording the command; the evaluation's test accuracy must equal the
    run's, or the two did not score the same model."""
    if bench not in CONCEPT_EVALUATION or (run["numbers"].get("concept_macro_f1") is not None
                                           and run.get("compact") is not None):
        return
    dataset, root = CONCEPT_EVALUATION[bench]
    run_dir = ROOT / run["run_dir"]
    out = run_dir / f"eval-{dataset}-test.json"
    cmd = [str(BIN / "crl"), "evaluate", str(run_dir), "--dataset", dataset, "--root", str(root), "--split", "test",
           "--device", "cpu", "--no-progress", "--out", str(out)]
    _, wall, _ = run_command(cmd)
    evaluation = json.loads(out.read_text())
    if abs(evaluation["test"]["accuracy"] - run["numbers"]["accuracy"]) > 1e-9:
        raise SystemExit(f"{run_dir}: crl evaluate's test accuracy {evaluation['test']['accuracy']} differs from the "
                         f"run's {run['numbers']['accuracy']}")
    concepts = concept_numbers(evaluation["concepts"])
    run["numbers"].update({k: concepts[k] for k in concepts if k in metric_names})
    compact = evaluation["compact"]  # the compact rules (condensed now where the run predates them), test fidelity
    run["compact"] = {"method": compact["method"], "computed_now": compact["computed_now"],
                      "prefix_rules": compact.get("prefix_rules"), "fidelity_train": compact.get("fidelity_train"),
                      "fidelity_test": compact["fidelity_on_split"].get("overall"),
                      "per_class": [{**({k: e[k] for k in ("class", "rules", "literals", "fidelity_train")}
                                        if compact["method"] == "prefix" else
                                        {"class": e["class"], "rule": e["rule"], "literals": e["literals"],
                                         "fidelity_train": e["fidelity_train"]}),
                                     "fidelity_test": compact["fidelity_on_split"]["per_class"][e["class"]]}
                                    for e in compact.get("per_class" if compact["method"] == "prefix" else "classes",
                                                         [])]}
    run["concept_evaluation"] = {"command": display(cmd), "wall_time_s": wall}
    print(f"{bench} seed {run['seed']}: published concept macro-F1 {concepts['concept_macro_f1']:.4f}, "
          f"accuracy {concepts['concept_accuracy']:.4f} (crl evaluate, {wall:.0f} s)", flush=True)


def summarise_arm(record: dict, metric_names: list[str]) -> None:
    runs = sorted(record["runs"].values(), key=lambda r: r["seed"])
    record["seeds"] = [r["seed"] for r in runs]
    record["summary"] = {m: mean_sd([r["numbers"].get(m) for r in runs]) for m in metric_names}
    record["summary"]["best_val"] = mean_sd([r.get("best_val") for r in runs])
    record["summary"]["wall_time_s"] = mean_sd([r["wall_time_s"] for r in runs])
    record["summary"]["peak_memory_mb"] = mean_sd([r["peak_memory_mb"] for r in runs])


if __name__ == "__main__":
    main()
