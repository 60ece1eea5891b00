"""Concepts from Neurons with an opaque model trained from scratch against one whose features were first learned
on ImageNet (imagenet-lite0), same data and splits, over seeds: which concepts get a latent of their own?

    python tools/bench/neuron_concepts_pretrained.py --dataset synth-derm|wbcatt [--arms scratch imagenet-lite0]
                                                     [--seeds 0 1 2] [--out runs/bench-neuron-concepts]

Arms: `scratch` is the shipped `synth-derm-cpu` / `wbcatt-cpu` preset (resnet18 from random weights), `imagenet-lite0`
the `*-lite0-cpu` preset (EfficientNet-Lite0 fine-tuned from the offline ImageNet weights). Each seed runs
`neuron-concepts run --config PRESET --seed S`. On WBCAtt the lite0 opaque model is exactly the baseline
benchmark's (tools/bench/pretrained.py, baseline/wbcatt), so where that run exists for the seed it is reused
with `--opaque-run` instead of being trained again. A concept is *matched* when the latent chosen on the
train split (highest AUROC for it) reaches a test AUROC of at least 0.9 (the synth-derm target's threshold; on
WBCAtt 0.8 is reported as well). synth-derm data: `medimg synth synth-derm --n 2000 --seed 0`, the folder of
tools/bench/neuron_concepts_synth_derm.py. Writes docs/bench/neuron_concepts_pretrained.json after every run; a
rerun reuses a recorded pipeline whose command is unchanged.
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
    CommandFailed,
    command_line,
    display,
    machine,
    mean_sd,
    run_command,
    write_result,
)
from pretrained import recorded_run

PRESETS = {"synth-derm": {"scratch": "synth-derm-cpu", "imagenet-lite0": "synth-derm-lite0-cpu"},
           "wbcatt": {"scratch": "wbcatt-cpu", "imagenet-lite0": "wbcatt-lite0-cpu"}}
RESULT = "neuron_concepts_pretrained"


def score(pipeline: Path, relevant: list[str] | None, failure: str | None = None) -> dict:
    """Per concept: best train latent's test AUROC and whether a latent named after it on train (above the naming
    floor) holds on test; counts at 0.8 / 0.9. `failure`: the error of a pipeline that stopped after its name
    stage (no latent named at the floor): the concept numbers are scored, the CBM's are None."""
    naming = json.loads((pipeline / "name" / "metrics.json").read_text())
    if failure is None:
        summary = json.loads((pipeline / "metrics.json").read_text())
    else:  # the opaque model's test metrics as the encode stage measured them; no bottleneck was built
        opaque = json.loads((pipeline / "encode" / "metrics.json").read_text())["opaque"]
        summary = {"opaque_test": opaque["test"], "cbm_test": {"accuracy": None}, "sae": None,
                   "wall_time_s": None}
    rows = naming["concept_matching"]
    focus = [r for r in rows if relevant is None or r["concept"] in relevant]
    naming_check = {r["concept"]: r for r in naming["concept_naming_test"]}
    out = {"concepts": {r["concept"]: {"latent": r.get("best_latent"), "test_auroc": r.get("test_auroc"),
                                       "name_confirmed": naming_check[r["concept"]]["confirmed"]} for r in rows},
           "named_confirmed": sorted(r["concept"] for r in focus if naming_check[r["concept"]]["confirmed"]),
           "scored": [r["concept"] for r in focus],
           "matched_0.9": sorted(r["concept"] for r in focus if (r.get("test_auroc") or 0) >= 0.9),
           "matched_0.8": sorted(r["concept"] for r in focus if (r.get("test_auroc") or 0) >= 0.8),
           "opaque_test_accuracy": summary["opaque_test"]["accuracy"],
           "opaque_test_accuracy_ci": summary["opaque_test"].get("accuracy_ci"),
           "cbm_test_accuracy": summary["cbm_test"]["accuracy"],
           "cbm_test_accuracy_ci": summary["cbm_test"].get("accuracy_ci"),
           "alive": naming["alive"], "named": naming.get("named"), "min_auroc": naming.get("min_auroc"),
           "sae": summary["sae"], "stage_wall_time_s": summary["wall_time_s"], "failure": failure}
    if relevant is not None:
        from neuron_concepts_synth_derm import diagnostics

        diag = diagnostics(pipeline, pipeline / "sae")
        out["probe_test_auroc"] = {c: diag["probe_test_auroc"][c] for c in relevant}
        out["pca_variance_ratio"] = diag["pca_variance_ratio"][:3]
        out["rule_terms"] = diag["rule_terms"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, choices=list(PRESETS))
    p.add_argument("--arms", nargs="*", default=["imagenet-lite0", "scratch"], choices=["scratch", "imagenet-lite0"])
    p.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    p.add_argument("--out", default=str(ROOT / "runs" / "bench-neuron-concepts"))
    args = p.parse_args()
    from medimg_core.synthetic import generate, parse_rule

    out = Path(args.out).resolve()
    if args.dataset == "synth-derm":
        root = out / "synth-derm"
        if not (root / "dataset.json").exists():
            generate("synth-derm", n=2000, out=root, seed=0)
        from medimg_core.data import load_dataset

        card = load_dataset("csv", root, "train").card
        relevant = sorted(parse_rule(card.extra["rule"], list(card.concept_names)).variables)
        data_text = "medimg synth synth-derm --n 2000 --seed 0"
    else:
        root, relevant, data_text = SHARED / "wbcatt", None, "../shared/data/wbcatt"
    nc = str(Path(sys.executable).parent / "neuron-concepts")
    path = RESULTS / f"{RESULT}.json"
    result = json.loads(path.read_text()) if path.exists() else {"datasets": {}}
    entry = result.setdefault("datasets", {}).setdefault(args.dataset, {"arms": {}})
    entry.update({"data": data_text, "relevant": relevant})
    for arm in args.arms:
        record = entry["arms"].setdefault(arm, {"runs": {}})
        record["preset"] = PRESETS[args.dataset][arm]
        for seed in args.seeds:
            cmd = [nc, "run", "--config", PRESETS[args.dataset][arm], "--root", str(root), "--device", "cpu",
                   "--out", str(out), "--seed", str(seed), "--no-progress"]
            opaque = (recorded_run("baseline/wbcatt", "imagenet-lite0", seed)
                      if args.dataset == "wbcatt" and arm == "imagenet-lite0" else None)
            if opaque is not None:
                cmd += ["--opaque-run", str(opaque)]
            old = record["runs"].get(str(seed))
            if old and old["command"] == display(cmd) and (ROOT / old["pipeline"] / "metrics.json").is_file():
                print(f"{args.dataset} {arm} seed {seed}: reusing {old['pipeline']}")
                continue
            try:
                pipeline, wall, _ = run_command(cmd, creates_in=out)
                scored = score(pipeline, relevant)
            except CommandFailed as failed:  # scored from its name stage when it got that far, else it stops here
                if failed.folder is None or not (failed.folder / "name" / "metrics.json").is_file():
                    raise
                pipeline, wall = failed.folder, failed.wall
                reason = [line for line in failed.output.splitlines() if line.startswith("Error:")]
                scored = score(pipeline, relevant, failure=(reason or [failed.output.strip()[-300:]])[-1])
            record["runs"][str(seed)] = {"seed": seed, "command": display(cmd),
                                         "pipeline": str(pipeline.relative_to(ROOT)), "wall_time_s": wall,
                                         "opaque_reused": opaque is not None, "machine": machine(),
                                         "load_average_after": os.getloadavg(), **scored}
            cbm = scored["cbm_test_accuracy"]
            print(f"{args.dataset} {arm} seed {seed}: matched at 0.9 {scored['matched_0.9']}; opaque "
                  f"{scored['opaque_test_accuracy']:.4f}, CBM {'not built' if cbm is None else f'{cbm:.4f}'}; "
                  f"{wall:.0f} s", flush=True)
            summarise(record)
            write_result(RESULT, {"command": command_line(), "datasets": result["datasets"]})
        summarise(record)
    write_result(RESULT, {"command": command_line(), "datasets": result["datasets"]})


def peak_memory_mb(pipeline: Path) -> float | None:
    """The largest peak memory of the pipeline's stages (each stage is its own process)."""
    peaks = [json.loads(m.read_text()).get("peak_memory_mb") for m in sorted(pipeline.glob("*/metrics.json"))]
    peaks = [p for p in peaks if p is not None]
    return max(peaks) if peaks else None


def summarise(record: dict) -> None:
    runs = sorted(record["runs"].values(), key=lambda r: r["seed"])
    for r in runs:
        if r.get("peak_memory_mb") is None and (ROOT / r["pipeline"]).is_dir():
            r["peak_memory_mb"] = peak_memory_mb(ROOT / r["pipeline"])
    record["seeds"] = [r["seed"] for r in runs]
    concepts = runs[0]["scored"] if runs else []
    record["summary"] = {
        "matched_0.9": mean_sd([len(r["matched_0.9"]) for r in runs]),
        "matched_0.8": mean_sd([len(r["matched_0.8"]) for r in runs]),
        "opaque_test_accuracy": mean_sd([r["opaque_test_accuracy"] for r in runs]),
        "cbm_test_accuracy": mean_sd([r["cbm_test_accuracy"] for r in runs]),
        "cbm_not_built": sum(r["cbm_test_accuracy"] is None for r in runs),
        "named_latents": [r.get("named") for r in runs],
        "wall_time_s": mean_sd([r["wall_time_s"] for r in runs]),
        "peak_memory_mb": mean_sd([r.get("peak_memory_mb") for r in runs]),
        "per_concept_test_auroc": {c: mean_sd([r["concepts"][c]["test_auroc"] for r in runs]) for c in concepts},
        "times_matched_0.9": {c: sum(c in r["matched_0.9"] for r in runs) for c in concepts},
    }
    if runs and "probe_test_auroc" in runs[0]:
        record["summary"]["probe_test_auroc"] = {c: mean_sd([r["probe_test_auroc"][c] for r in runs])
                                                 for c in runs[0]["probe_test_auroc"]}


if __name__ == "__main__":
    main()
