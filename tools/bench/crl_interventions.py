"""Concept interventions (Koh et al., ICML 2020) on trained CRL runs: CRL against a logistic-regression bottleneck on
the same predicted concepts, random and uncertainty order.

    python tools/bench/crl_interventions.py [--orders 5] [--out runs/bench-crl-interventions]

Runs `crl intervene RUN --split test` on the runs other benchmarks recorded: the CRL WBCAtt runs of
tools/bench/pretrained.py (crl/wbcatt, both arms, every seed) and the clean synth-derm CRL run of
tools/bench/crl_synthetic.py. A run whose folder is gone is skipped with a note. Writes
docs/bench/crl_interventions.json and copies each setting's first figure to docs/figures/crl/.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, ROOT, command_line, display, mean_sd, run_command, write_result

FIGURES = ROOT / "docs" / "figures" / "crl"


def recorded_runs() -> dict[str, list[tuple[int, Path]]]:
    """setting -> [(seed, run folder)] of the CRL runs the other benchmarks recorded (folders still on disk)."""
    out: dict[str, list[tuple[int, Path]]] = {}
    pretrained = RESULTS / "pretrained.json"
    if pretrained.exists():
        arms = json.loads(pretrained.read_text())["benches"].get("crl/wbcatt", {}).get("arms", {})
        for arm, record in arms.items():
            out[f"wbcatt/{arm}"] = [(int(s), ROOT / r["run_dir"]) for s, r in sorted(record["runs"].items())]
    synthetic = RESULTS / "crl_synthetic.json"
    if synthetic.exists():
        clean = json.loads(synthetic.read_text())["runs"].get("clean", {})
        if clean.get("crl_run"):
            out["synth-derm/scratch"] = [(0, ROOT / clean["crl_run"])]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--orders", type=int, default=5)
    p.add_argument("--out", default=str(ROOT / "runs" / "bench-crl-interventions"))
    args = p.parse_args()
    crl = str(Path(sys.executable).parent / "crl")
    settings, missing = {}, []
    for setting, runs in recorded_runs().items():
        entries = []
        for seed, run in runs:
            if not (run / "checkpoints" / "best").is_dir():
                missing.append(display(run))
                continue
            out = Path(args.out) / setting.replace("/", "-") / f"seed{seed}"
            cmd = [crl, "intervene", str(run), "--split", "test", "--orders", str(args.orders), "--device", "cpu",
                   "--out", str(out), "--no-progress"]
            _, wall, _ = run_command(cmd)
            result = json.loads((out / "interventions-test.json").read_text())
            entries.append({"seed": seed, "run": display(run), "command": display(cmd), "wall_time_s": wall,
                            "n": result["n"], "concepts": len(result["concepts"]), "curves": result["curves"]})
            if len(entries) == 1:
                FIGURES.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(result["figure"], FIGURES / f"interventions-{setting.replace('/', '-')}.png")
            print(f"{setting} seed {seed}: CRL k=0 {result['curves']['CRL']['random']['accuracy'][0]:.4f}, "
                  f"k=K {result['curves']['CRL']['random']['accuracy'][-1]:.4f}; {wall:.0f} s", flush=True)
        if entries:
            settings[setting] = {"runs": entries, "summary": summarise(entries)}
    write_result("crl_interventions", {"command": command_line(), "orders": args.orders, "settings": settings,
                                       "missing_runs": missing})


def summarise(entries: list[dict]) -> dict:
    """Per model and order, the mean ± sd over seeds of the test accuracy at every k."""
    first = entries[0]["curves"]
    return {model: {order: {"k": curve["k"],
                            "accuracy": [mean_sd([e["curves"][model][order]["accuracy"][i] for e in entries])
                                         for i in range(len(curve["k"]))]}
                    for order, curve in by_order.items()}
            for model, by_order in first.items()}


if __name__ == "__main__":
    main()
