"""Concepts from Neurons on synth-derm (ground-truth concepts and rule known): does the SAE of an opaque model
find the concepts the label depends on, do annotation names chosen on train (above the naming floor) hold on
test, and how close is the concept bottleneck to the opaque model?

    python tools/bench/neuron_concepts_synth_derm.py [--n 2000] [--out runs/bench-neuron-concepts] [--pipeline DIR]

Runs `neuron-concepts run --config synth-derm-cpu` once from the command line (opaque model trained here), then
two SAE variants on the same cached features (`train-sae` + `name` rerun alone), and `explain` on a test image.
Per concept: the latent whose activation predicts it best on train (AUROC), that latent's test AUROC, and as a
diagnostic the test AUROC of a logistic-regression probe on the opaque model's features (what any linear latent
could reach at most, up to the probe's fit) and of the best latent for each term of the rule.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import ROOT, command_line, run_command, run_or_reuse, write_result

FIGURES = ROOT / "docs" / "figures" / "neuron-concepts"




def rel(path: Path | str) -> str:
    return str(path).replace(str(ROOT) + "/", "")


def rule_terms(rule) -> list:
    """The top-level terms of the rule (the arguments of an Or), each as a Rule."""
    from medimg_core.synthetic.rules import Or, Rule

    node = rule.node
    args = node.args if isinstance(node, Or) else (node,)
    return [Rule(a, rule.concept_names) for a in args]


def probe_test_aurocs(feats: dict) -> dict[str, float]:
    """Per annotated concept: the test AUROC of a logistic-regression probe fitted on the train features (`feats`:
    an encode stage's `load_features`), what any linear latent could reach at most, up to the probe's fit."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    H = {s: feats[s]["features"].numpy() for s in ("train", "test")}
    C = {s: feats[s]["concepts"].numpy() for s in ("train", "test")}
    probes = {}
    for j, name in enumerate(feats["card"].concept_names):
        lr = LogisticRegression(max_iter=3000).fit(H["train"], C["train"][:, j])
        probes[name] = float(roc_auc_score(C["test"][:, j], lr.decision_function(H["test"])))
    return probes


def diagnostics(pipeline: Path, sae_dir: Path) -> dict:
    """Linear-probe upper bounds per concept and the best latent per rule term (train-chosen, test-scored)."""
    from sklearn.metrics import roc_auc_score

    from medimg_core.synthetic import parse_rule
    from neuron_concepts.model import encode_all
    from neuron_concepts.naming import auroc_matrix
    from neuron_concepts.train import load_features, load_sae

    feats = load_features(pipeline / "encode")
    card = feats["card"]
    names = list(card.concept_names)
    rule = parse_rule(card.extra["rule"], names)
    H = {s: feats[s]["features"].numpy() for s in ("train", "test")}
    C = {s: feats[s]["concepts"].numpy() for s in ("train", "test")}
    probes = probe_test_aurocs(feats)
    sae = load_sae(sae_dir)
    A = {s: encode_all(sae, feats[s]["features"]).numpy() for s in ("train", "test")}
    terms = []
    for term in rule_terms(rule):
        y = {s: term.evaluate(C[s]).astype(float)[:, None] for s in ("train", "test")}
        tr = auroc_matrix(A["train"], y["train"])[:, 0]
        k = int(np.nanargmax(tr))
        terms.append({"term": str(term), "best_latent": k, "train_auroc": float(tr[k]),
                      "test_auroc": float(auroc_matrix(A["test"][:, [k]], y["test"])[0, 0])})
    # what a latent that fires exactly on a rule term (not on the concept) scores for each concept in that term:
    # for a conjunction A & B that is 0.5 + 0.5 P(B | A), far below 0.9 when B is common but not certain
    term_ceiling = {}
    for term in rule_terms(rule):
        indicator = term.evaluate(C["test"]).astype(float)
        for name in term.variables:
            j = names.index(name)
            term_ceiling.setdefault(name, []).append(
                {"term": str(term), "test_auroc": float(roc_auc_score(C["test"][:, j], indicator))})
    # how the features are spread: a representation collapsed onto a few class directions leaves a concept that
    # the label needs only in conjunction with another without a direction of its own
    from sklearn.decomposition import PCA

    pca = PCA(10).fit(H["train"])
    neuron_tr, neuron_te = auroc_matrix(H["train"], C["train"]), auroc_matrix(H["test"], C["test"])
    best_neuron = {}
    for j, name in enumerate(names):
        either = np.maximum(neuron_tr[:, j], 1 - neuron_tr[:, j])
        k = int(np.nanargmax(either))
        best_neuron[name] = float(max(neuron_te[k, j], 1 - neuron_te[k, j]))
    return {"rule": str(rule), "relevant": list(rule.variables), "probe_test_auroc": probes, "rule_terms": terms,
            "term_indicator_test_auroc": term_ceiling,
            "pca_variance_ratio": [float(v) for v in pca.explained_variance_ratio_],
            "best_single_feature_test_auroc": best_neuron}


def matching_of(name_dir: Path, relevant: list[str]) -> dict:
    """Per concept: the train-best latent (matching) and the naming check (names chosen on train, above the naming
    floor, checked on test: `name_confirmed`); the counts over the label-relevant concepts."""
    m = json.loads((name_dir / "metrics.json").read_text())
    rows = m["concept_matching"]
    naming = {r["concept"]: r for r in m["concept_naming_test"]}
    for r in rows:
        r["label_relevant"] = r["concept"] in relevant
        n = naming[r["concept"]]
        r.update(named_latent=n["latent"], named_latent_test_auroc=n["check_auroc"], latents_named=n["latents_named"],
                 name_confirmed=n["confirmed"])
    rel_rows = [r for r in rows if r["label_relevant"]]
    return {"rows": rows, "alive": m["alive"], "named": m["named"], "min_auroc": m["min_auroc"],
            "relevant_matched_0.9": sum((r["test_auroc"] or 0) >= 0.9 for r in rel_rows),
            "relevant_count": len(rel_rows),
            "relevant_named_confirmed": sum(r["name_confirmed"] for r in rel_rows),
            "named_confirmed_all": m["concepts_named_confirmed_test"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--out", default=str(ROOT / "runs" / "bench-neuron-concepts"))
    p.add_argument("--pipeline", default=None,
                   help="reuse this `neuron-concepts run --config synth-derm-cpu` pipeline folder (no retraining)")
    args = p.parse_args()
    from medimg_core.baseline import peak_memory_mb
    from medimg_core.synthetic import generate

    out = Path(args.out)
    data = out / "synth-derm"
    if not (data / "dataset.json").exists():
        generate("synth-derm", n=args.n, out=data, seed=0)
    nc = str(Path(sys.executable).parent / "neuron-concepts")
    run_args = ["run", "--config", "synth-derm-cpu", "--root", str(data), "--device", "cpu", "--out", str(out),
                "--no-progress"]
    pipeline, total_s = run_or_reuse([nc, *run_args], args.pipeline, out)
    summary = json.loads((pipeline / "metrics.json").read_text())
    diag = diagnostics(pipeline, pipeline / "sae")
    result_main = matching_of(pipeline / "name", diag["relevant"])
    for r in result_main["rows"]:
        r["probe_test_auroc"] = diag["probe_test_auroc"][r["concept"]]

    # SAE variants on the same cached features: each stage rerun alone from the CLI
    variants = []
    for label, extra in (("standardised input", ["--sae.standardize", "true"]),
                         ("TopK (k=32)", ["--kind", "topk", "--sae.k", "32"]),
                         ("5x the epochs (300)", ["--sae.epochs", "300"]),
                         ("2x expansion (1024 latents), 150 epochs", ["--sae.expansion", "2", "--sae.epochs", "150"]),
                         ("1x expansion, L1 1e-4, 150 epochs",
                          ["--sae.expansion", "1", "--sae.l1", "1e-4", "--sae.epochs", "150"])):
        sae_dir, _sae_s, _ = run_command([nc, "train-sae", str(pipeline / "encode"), *extra, "--no-progress"], creates_in=pipeline)
        name_dir, _name_s, _ = run_command([nc, "name", str(sae_dir), "--naming.figures", "0", "--no-progress"], creates_in=pipeline)
        m = json.loads((sae_dir / "metrics.json").read_text())
        variants.append({"label": label, "command": f"neuron-concepts train-sae <pipeline>/encode {' '.join(extra)}",
                         "sae": {k: m["test"][k] for k in ("r2", "l0", "dead_fraction")},
                         "fit_time_s": m["fit_time_s"], **matching_of(name_dir, diag["relevant"])})

    # figures: the explanation of a malignant test image, and the top images of the best latent per concept
    from medimg_core.data import load_dataset

    test = load_dataset("csv", data, "test")
    index = int(np.flatnonzero(np.asarray(test.targets) == 1)[0])
    image = Path(test.table.paths[index])
    FIGURES.mkdir(parents=True, exist_ok=True)
    explain_png = FIGURES / "synth-derm-explain.png"
    proc = subprocess.run([nc, "explain", str(pipeline / "cbm"), str(image), "--out", str(explain_png)],
                          capture_output=True, text=True, check=True)
    shutil.copyfile(pipeline / "name" / "figures" / "top_latents.png", FIGURES / "synth-derm-top-latents.png")

    cbm, opaque = summary["cbm_test"], summary["opaque_test"]
    gap = opaque["accuracy"] - cbm["accuracy"]
    payload = {
        "command": command_line(),
        "environment": {k: os.environ[k] for k in ("OMP_NUM_THREADS",) if k in os.environ},
        "data": f"medimg synth synth-derm --n {args.n} --seed 0",
        "run_command": "neuron-concepts " + " ".join(run_args).replace(str(out), "runs/bench-neuron-concepts"),
        "pipeline": rel(pipeline),
        "rule": diag["rule"], "label_relevant": diag["relevant"],
        "concepts": result_main["rows"], "rule_terms": diag["rule_terms"],
        "term_indicator_test_auroc": diag["term_indicator_test_auroc"],
        "pca_variance_ratio": diag["pca_variance_ratio"],
        "best_single_feature_test_auroc": diag["best_single_feature_test_auroc"],
        "relevant_matched_0.9": result_main["relevant_matched_0.9"], "relevant_count": result_main["relevant_count"],
        "relevant_named_confirmed": result_main["relevant_named_confirmed"],
        "named_confirmed_all": result_main["named_confirmed_all"],
        "min_auroc": result_main["min_auroc"], "named": result_main["named"],
        "opaque_test": opaque, "cbm_test": cbm, "accuracy_gap": gap, "within_3_points": bool(gap <= 0.03),
        "cbm": summary["cbm"], "sae": summary["sae"], "alive": summary["naming"]["alive"],
        "cavs": summary["cavs"], "selected": summary["selected"],
        "stage_wall_time_s": summary["wall_time_s"], "run_wall_time_s": total_s,
        "stage_peak_memory_mb": {s: json.loads((pipeline / s / "metrics.json").read_text())["peak_memory_mb"]
                                 for s in ("encode", "sae", "name", "cav", "select", "cbm")},
        "peak_memory_mb": peak_memory_mb(),
        "variants": variants,
        "explain_text": proc.stdout.strip().splitlines()[:8],
        "figures": [rel(explain_png), rel(FIGURES / "synth-derm-top-latents.png")],
    }
    print(f"opaque {opaque['accuracy']:.4f}, CBM {cbm['accuracy']:.4f}; relevant concepts matched at 0.9: "
          f"{payload['relevant_matched_0.9']}/{payload['relevant_count']}")
    write_result("neuron_concepts_synth_derm", payload)


if __name__ == "__main__":
    main()
