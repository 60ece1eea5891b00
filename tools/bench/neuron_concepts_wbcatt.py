"""Concepts from Neurons on the real WBCAtt data, the whole pipeline from the command line on this machine:
opaque model (medimg-core's WBCAtt baseline recipe, resnet18 from scratch at 64 px) -> features -> SAE ->
names from the 24 annotated attributes -> CAVs -> facility-location selection -> concept bottleneck.

    python tools/bench/neuron_concepts_wbcatt.py [--out runs/bench-neuron-concepts]

Reports opaque vs CBM test accuracy with 95% bootstrap intervals, how many of the 24 concepts some latent
matches at AUROC >= 0.8 (latent chosen on train, AUROC on test), SAE R^2 / L0 / dead fraction, and each stage's
wall time; then reruns the SAE stage alone with dead-latent resampling on, for comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import ROOT, SHARED, command_line, run_command, write_result

FIGURES = ROOT / "docs" / "figures" / "neuron-concepts"




def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "runs" / "bench-neuron-concepts"))
    args = p.parse_args()
    from medimg_core.baseline import peak_memory_mb

    root = SHARED / "wbcatt"
    if not root.is_dir():
        raise SystemExit(f"{root} not found: the WBCAtt data live in ../shared/data/wbcatt (see its README)")
    out = Path(args.out)
    nc = str(Path(sys.executable).parent / "neuron-concepts")
    run_args = ["run", "--config", "wbcatt-cpu", "--root", str(root), "--device", "cpu", "--out", str(out),
                "--no-progress"]
    pipeline, total_s, _ = run_command([nc, *run_args], creates_in=out)
    summary = json.loads((pipeline / "metrics.json").read_text())
    naming = json.loads((pipeline / "name" / "metrics.json").read_text())
    rows = naming["concept_matching"]

    # the SAE stage alone again, with dead-latent resampling (seconds on the cached features)
    resample_args = ["--sae.resample_every", "25", "--sae.resample_max_fraction", "0.02"]
    sae2, _sae2_s, _ = run_command([nc, "train-sae", str(pipeline / "encode"), *resample_args, "--no-progress"], creates_in=pipeline)
    m2 = json.loads((sae2 / "metrics.json").read_text())

    from medimg_core.data import load_dataset

    test = load_dataset("wbcatt", root, "test")
    index = int(np.flatnonzero(np.asarray(test.targets) == 0)[0])  # a basophil, the rarest class
    FIGURES.mkdir(parents=True, exist_ok=True)
    explain_png = FIGURES / "wbcatt-explain.png"
    proc = subprocess.run([nc, "explain", str(pipeline / "cbm"), str(test.table.paths[index]), "--out",
                           str(explain_png)], capture_output=True, text=True, check=True)

    cbm, opaque = summary["cbm_test"], summary["opaque_test"]
    stage_metrics = {s: json.loads((pipeline / s / "metrics.json").read_text())
                     for s in ("encode", "sae", "name", "cav", "select", "cbm")}
    payload = {
        "command": command_line(),
        "environment": {k: os.environ[k] for k in ("OMP_NUM_THREADS",) if k in os.environ},
        "run_command": "neuron-concepts " + " ".join(run_args).replace(str(root), "../shared/data/wbcatt")
        .replace(str(out), "runs/bench-neuron-concepts"),
        "pipeline": str(pipeline).replace(str(ROOT) + "/", ""),
        "opaque_test": opaque, "cbm_test": cbm, "accuracy_gap": opaque["accuracy"] - cbm["accuracy"],
        "cbm": summary["cbm"], "selected": summary["selected"], "cavs": summary["cavs"],
        "concepts": rows, "n_concepts": len(rows),
        "matched_test_auroc_0.8": naming["matched_test_auroc_0.8"],
        "matched_test_auroc_0.9": naming["matched_test_auroc_0.9"],
        "named_confirmed": naming["concepts_named_confirmed_test"], "named": naming["named"],
        "min_auroc": naming["min_auroc"], "concept_naming": naming["concept_naming_test"], "alive": naming["alive"],
        "sae": {**summary["sae"], "test": stage_metrics["sae"]["test"]},
        "sae_resampling": {"command": "neuron-concepts train-sae <pipeline>/encode " + " ".join(resample_args),
                           "train": m2["train"], "test": m2["test"], "fit_time_s": m2["fit_time_s"],
                           "events": len(m2["resampling"]),
                           "resampled": sum(e["resampled"] for e in m2["resampling"])},
        "stage_wall_time_s": summary["wall_time_s"], "run_wall_time_s": total_s,
        "sae_fit_time_s": stage_metrics["sae"]["fit_time_s"], "select_time_s": stage_metrics["select"]["select_time_s"],
        "stage_peak_memory_mb": {s: m["peak_memory_mb"] for s, m in stage_metrics.items()},
        "peak_memory_mb": peak_memory_mb(),
        "top_concepts": stage_metrics["cbm"]["top_concepts"][:10],
        "explain_text": proc.stdout.strip().splitlines()[:8],
        "figures": [str(explain_png).replace(str(ROOT) + "/", "")],
    }
    print(f"opaque {opaque['accuracy']:.4f}, CBM {cbm['accuracy']:.4f}; concepts matched at 0.8: "
          f"{payload['matched_test_auroc_0.8']}/{len(rows)}")
    write_result("neuron_concepts_wbcatt", payload)


if __name__ == "__main__":
    main()
