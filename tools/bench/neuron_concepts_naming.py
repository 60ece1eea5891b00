"""Concepts from Neurons named without annotations: the report route (vocabulary enrichment of the top images'
reports) against the annotation route, on the same opaque model, features and SAE, over seeds.

    python tools/bench/neuron_concepts_naming.py [--n 2000] [--seeds 0 1 2] [--out runs/bench-neuron-concepts-naming]
                                                 [--vocabulary-top-n 100] [-- --section.key VALUE ...]

Data: `medimg synth synth-derm --n N --seed 0 --reports` (one free-text report per image, written from the drawn
concepts with paraphrases, omissions and noise; medimg_core.synthetic.reports). Per seed, ONE pipeline from the
command line: `train-opaque --config synth-derm-cpu`, `encode`, `train-sae`; then the name stage three times on that
SAE,

- annotations: `name SAE --sources annotations` (train AUROC against the concept annotations, floor naming.min_auroc),
- vocabulary: `name SAE --sources vocabulary --vocabulary synth-derm --reports DATA/reports.csv --naming.top_n T`
  (the shipped vocabulary's terms ranked by enrichment in the reports of each latent's T top train images; the
  naming reads the terms alone, the `term => concept` lines only score the names),
- vocabulary-val-floor: the same with `--naming.floor_from val`: naming.min_z chosen on the validation split from
  naming.min_z_grid (the floor maximising the F1 of "named and holds on val", names chosen on train; the val
  annotations serve that choice only; `floors_val` of the name stage's metrics.json, the chosen floor as `min_z`),

each followed by `cav`, `select` and `train-cbm`. Per route: latents named; label-relevant concepts (the rule's
variables) that some latent is named after, and those whose train-chosen named latent holds on test (test AUROC
>= naming.min_auroc, `concept_naming_test` of the name stage: a term counts as the concept it stands for);
concepts recovered (the best train latent's test AUROC >= 0.9, the same for both routes: one SAE); CBM test
accuracy with its 95% interval (None where no latent was named, so no bottleneck could be built). Extra config
overrides after `--` go to every stage (the tests run it on 80 images at 32 px for 1 epoch this way).
Writes docs/bench/<--result>.json (default neuron_concepts_naming) after every seed; a rerun reuses a recorded
seed whose commands are unchanged and whose folders exist.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import (
    ROOT,
    CommandFailed,
    command_line,
    display,
    machine,
    mean_sd,
    run_command,
    split_overrides,
    write_result,
)

RESULT = "neuron_concepts_naming"
ROUTES = ("annotations", "vocabulary", "vocabulary-val-floor")
MATCH = 0.9  # a concept is recovered when its best train latent reaches this test AUROC


def route_args(route: str, data: Path, vocabulary_top_n: int) -> list[str]:
    """The name stage's options of a route."""
    if route == "annotations":
        return ["--sources", "annotations"]
    floor = ["--naming.floor_from", "val"] if route == "vocabulary-val-floor" else []
    return ["--sources", "vocabulary", "--vocabulary", "synth-derm", "--reports", str(data / "reports.csv"),
            "--naming.top_n", str(vocabulary_top_n), *floor]


def score_route(name_dir: Path, cbm_dir: Path | None, failure: str | None = None) -> dict:
    """What one naming route gives: from the name stage's metrics.json and (when it was built) the CBM's."""
    m = json.loads((name_dir / "metrics.json").read_text())
    relevant = m.get("label_relevant") or []
    rows = {r["concept"]: r for r in m["concept_naming_test"]}
    recovered = {r["concept"]: r.get("test_auroc") for r in m["concept_matching"]}
    out = {
        "name_dir": display(name_dir), "named": m["named"], "alive": m["alive"], "sources": m["sources"],
        "distinct_names": m["distinct_names"], "min_auroc": m["min_auroc"], "min_z": m.get("min_z"),
        "floor_from": m.get("floor_from", "given"), "floors_val": m.get("floors_val"), "label_relevant": relevant,
        "concepts_named": sorted(c for c, r in rows.items() if r["latents_named"] > 0),
        "relevant_named": sorted(c for c in relevant if rows[c]["latents_named"] > 0),
        "relevant_named_confirmed": sorted(c for c in relevant if rows[c]["confirmed"]),
        "concepts_named_confirmed": sorted(c for c, r in rows.items() if r["confirmed"]),
        "concept_naming_test": m["concept_naming_test"],
        "best_latent_test_auroc": recovered,
        "relevant_recovered": sorted(c for c in relevant if (recovered.get(c) or 0) >= MATCH),
        "cbm_dir": None, "cbm_test_accuracy": None, "cbm_test_accuracy_ci": None, "cbm_k": None,
        "opaque_test_accuracy": None, "failure": failure,
    }
    if cbm_dir is not None:
        c = json.loads((cbm_dir / "metrics.json").read_text())
        out.update(cbm_dir=display(cbm_dir), cbm_test_accuracy=c["test"]["accuracy"],
                   cbm_test_accuracy_ci=c["test"].get("accuracy_ci"), cbm_k=c["k"],
                   opaque_test_accuracy=c["opaque_test"]["accuracy"])
    return out


def run_stage(stage_args: list[str], pipeline: Path, overrides: list[str], cmds: list[str]) -> Path:
    """`neuron-concepts STAGE ARGS --no-progress OVERRIDES`; the stage folder it made in `pipeline`. The command is
    appended to `cmds`."""
    cmd = [str(Path(sys.executable).parent / "neuron-concepts"), *stage_args, "--no-progress", *overrides]
    cmds.append(display(cmd))
    return run_command(cmd, creates_in=pipeline)[0]


def run_route(route: str, sae_dir: Path, pipeline: Path, data: Path, vocabulary_top_n: int,
              overrides: list[str]) -> tuple[dict, list[str]]:
    """The name stage of `route` on `sae_dir`, then cav, select and train-cbm; (scores, the commands run)."""
    cmds: list[str] = []
    name_dir = run_stage(["name", str(sae_dir), *route_args(route, data, vocabulary_top_n)], pipeline, overrides,
                         cmds)
    try:
        cav_dir = run_stage(["cav", str(name_dir)], pipeline, overrides, cmds)
        select_dir = run_stage(["select", str(cav_dir)], pipeline, overrides, cmds)
        cbm_dir = run_stage(["train-cbm", str(select_dir)], pipeline, overrides, cmds)
    except CommandFailed as failed:  # e.g. no latent named: no bottleneck; the naming is still scored
        reason = [line for line in failed.output.splitlines() if line.startswith("Error:")]
        return score_route(name_dir, None, (reason or [failed.output.strip()[-300:]])[-1]), cmds
    return score_route(name_dir, cbm_dir), cmds


def summarise(runs: list[dict]) -> dict:
    """Per route, mean ± sd over seeds of the counts and the CBM accuracy."""
    out = {}
    for route in ROUTES:
        rs = [r["routes"][route] for r in runs if route in r["routes"]]
        if not rs:
            continue
        concepts = sorted(rs[0]["best_latent_test_auroc"])
        out[route] = {
            "named": mean_sd([r["named"] for r in rs]),
            "relevant_named": mean_sd([len(r["relevant_named"]) for r in rs]),
            "relevant_named_confirmed": mean_sd([len(r["relevant_named_confirmed"]) for r in rs]),
            "concepts_named_confirmed": mean_sd([len(r["concepts_named_confirmed"]) for r in rs]),
            "relevant_recovered": mean_sd([len(r["relevant_recovered"]) for r in rs]),
            "cbm_test_accuracy": mean_sd([r["cbm_test_accuracy"] for r in rs]),
            "cbm_not_built": sum(r["cbm_test_accuracy"] is None for r in rs),
            "times_named_confirmed": {c: sum(c in r["concepts_named_confirmed"] for r in rs) for c in concepts},
            "relevant_count": len(rs[0]["label_relevant"]),
            "min_z_per_seed": [r.get("min_z") for r in rs],
        }
    out["opaque_test_accuracy"] = mean_sd([r["opaque_test_accuracy"] for r in runs])
    return out


def main(argv: list[str] | None = None) -> dict:
    argv, overrides = split_overrides(argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=2000, help="synth-derm images (seed 0, with reports)")
    p.add_argument("--size", type=int, default=64, help="synth-derm image size")
    p.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    p.add_argument("--config", default="synth-derm-cpu")
    p.add_argument("--vocabulary-top-n", type=int, default=100,
                   help="naming.top_n of the vocabulary route: the top train images whose reports are read per latent")
    p.add_argument("--out", default=str(ROOT / "runs" / "bench-neuron-concepts-naming"))
    p.add_argument("--result", default=RESULT, help="the result file's name")
    p.add_argument("--results-dir", default=None, help="where the result file goes (default docs/bench)")
    args = p.parse_args(argv)
    import common

    from medimg_core.synthetic import generate

    if args.results_dir is not None:  # write_result writes to common.RESULTS
        common.RESULTS = Path(args.results_dir).resolve()

    out = Path(args.out).resolve()
    data = out / f"synth-derm-reports-n{args.n}-s{args.size}"
    data_cmd = f"medimg synth synth-derm --n {args.n} --size {args.size} --seed 0 --reports"
    if not (data / "dataset.json").exists():
        generate("synth-derm", n=args.n, out=data, seed=0, size=args.size, reports=True)
    card = json.loads((data / "dataset.json").read_text())["card"]["extra"]
    path = common.RESULTS / f"{args.result}.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    runs = {str(r["seed"]): r for r in old.get("runs", []) if old.get("data") == data_cmd}
    nc = str(Path(sys.executable).parent / "neuron-concepts")
    for seed in args.seeds:
        opaque_cmd = [nc, "train-opaque", "--config", args.config, "--root", str(data), "--device", "cpu",
                      "--out", str(out), "--seed", str(seed), "--no-progress", *overrides]
        prev = runs.get(str(seed))
        if prev and prev["commands"][0] == display(opaque_cmd) and (ROOT / prev["pipeline"]).is_dir() \
                and prev.get("vocabulary_top_n") == args.vocabulary_top_n and prev.get("overrides") == overrides:
            todo = [route for route in ROUTES if route not in prev["routes"]]
            print(f"seed {seed}: reusing {prev['pipeline']}" + (f"; adding route(s) {todo}" if todo else ""))
            if todo:  # a route added since: named on the recorded SAE
                pipeline = ROOT / prev["pipeline"]
                sae_dir = pipeline / json.loads((pipeline / "pipeline.json").read_text())["stages"]["sae"]
                for route in todo:
                    prev["routes"][route], prev["route_commands"][route] = run_route(
                        route, sae_dir, pipeline, data, args.vocabulary_top_n, overrides)
                _write(args, data_cmd, card, runs, overrides)
            continue
        pipeline, wall_opaque, _ = run_command(opaque_cmd, creates_in=out)
        opaque_run = pipeline / json.loads((pipeline / "pipeline.json").read_text())["stages"]["opaque"]
        cmds = [display(opaque_cmd)]
        encode_dir = run_stage(["encode", str(opaque_run)], pipeline, overrides, cmds)
        sae_dir = run_stage(["train-sae", str(encode_dir)], pipeline, overrides, cmds)
        record = {"seed": seed, "pipeline": display(pipeline), "commands": cmds, "overrides": overrides,
                  "vocabulary_top_n": args.vocabulary_top_n, "opaque_wall_time_s": wall_opaque, "routes": {},
                  "route_commands": {}, "machine": machine(), "load_average_after": None}
        for route in ROUTES:
            record["routes"][route], record["route_commands"][route] = run_route(
                route, sae_dir, pipeline, data, args.vocabulary_top_n, overrides)
        record["opaque_test_accuracy"] = next((r["opaque_test_accuracy"] for r in record["routes"].values()
                                               if r["opaque_test_accuracy"] is not None), None)
        if record["opaque_test_accuracy"] is None:  # no bottleneck on either route: the encode stage measured it
            enc = json.loads((encode_dir / "metrics.json").read_text())
            record["opaque_test_accuracy"] = enc.get("opaque", {}).get("test", {}).get("accuracy")
        record["load_average_after"] = os.getloadavg()
        runs[str(seed)] = record
        for route, r in record["routes"].items():
            cbm = r["cbm_test_accuracy"]
            print(f"seed {seed} {route}: {r['named']} latents named; relevant named {r['relevant_named']}, confirmed "
                  f"on test {r['relevant_named_confirmed']}; CBM {'not built' if cbm is None else f'{cbm:.4f}'}"
                  + (f"; min_z {r['min_z']} chosen on val" if r.get("floors_val") else ""), flush=True)
        _write(args, data_cmd, card, runs, overrides)
    return _write(args, data_cmd, card, runs, overrides)


def _write(args, data_cmd: str, card: dict, runs: dict, overrides: list[str]) -> dict:
    ordered = [runs[k] for k in sorted(runs, key=int)]
    payload = {"command": command_line(), "data": data_cmd, "rule": card["rule"],
               "label_relevant": card["rule_variables"],
               "report_rates": {k: card[k] for k in ("report_mention", "report_false_mention", "report_negation")},
               "config": args.config, "vocabulary": "shared-data/concepts/vocabulary/synth-derm.txt",
               "vocabulary_top_n": args.vocabulary_top_n, "recovered_threshold": MATCH, "overrides": overrides,
               "seeds": [r["seed"] for r in ordered], "runs": ordered, "summary": summarise(ordered)}
    write_result(args.result, payload)
    return payload


if __name__ == "__main__":
    main()
