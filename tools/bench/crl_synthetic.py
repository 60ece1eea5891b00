"""CRL on synth-derm: exact rule recovery against the generating rule, and robustness to a spurious
artifact, next to the medimg-core black-box baseline on the same data and budget.

    python tools/bench/crl_synthetic.py [--n 2000] [--only clean spurious]

clean:    synth-derm without noise; CRL's rule set is compared with the generator's rule on every concept
          combination that occurs in the data and on all 2^6 combinations; test accuracy.
spurious: synth-derm with an artifact that matches the label in 95% of train/val images and is
          independent of it in test; CRL and the baseline are trained on it and tested on the clean test split.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, ROOT, command_line, display, run_command, write_result

from crl.rules import load_rules
from medimg_core.data import load_dataset
from medimg_core.synthetic import generate, parse_rule


def run(cmd: list[str]) -> Path:
    """Run one training command; its run folder is the one new folder in its --out."""
    return run_command(cmd, creates_in=Path(cmd[cmd.index("--out") + 1]))[0]


def rule_agreement(run_dir: Path, data_dir: Path) -> dict:
    rules = load_rules(run_dir)
    ds = load_dataset("csv", data_dir, "train")
    truth = parse_rule(ds.card.extra["rule"], ds.card.concept_names)
    combos, predicted = rules.truth_table()
    expected = truth.evaluate(combos).astype(int)
    seen = np.unique(np.concatenate([load_dataset("csv", data_dir, s).concepts for s in ("train", "val", "test")]),
                     axis=0)
    seen_idx = [int("".join(str(int(v)) for v in row), 2) for row in seen]  # truth_table rows are binary counting
    compact = {}
    if rules.compact is not None and rules.compact.method == "exact":  # the class the rule makes true: index 1
        positive = rules.compact.for_class(rules.class_names[1])
        compact = {"compact_rule": f"{positive.class_name} <=> {positive.text}",
                   "compact_equals_rule": bool((positive.evaluate(combos) == expected.astype(bool)).all()),
                   "compact_fidelity_test": positive.fidelity_test}
    return {**compact, "rule": str(truth), "combinations_all": len(combos), "agreement_all": float((predicted == expected).mean()),
            "combinations_seen": len(seen_idx),
            "agreement_seen": float((predicted[seen_idx] == expected[seen_idx]).mean()),
            "exact_on_seen": bool((predicted[seen_idx] == expected[seen_idx]).all()),
            "rule_count": len(rules.rules), "mean_rule_length": rules.mean_length,
            "top_rules": [r.text for r in rules.rules[:5]]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--only", nargs="*", default=["clean", "spurious"])
    p.add_argument("--out", default=str(ROOT / "runs" / "bench-crl"))
    args = p.parse_args()
    out = Path(args.out)
    bin_dir = Path(sys.executable).parent
    previous = RESULTS / "crl_synthetic.json"  # settings not rerun (--only) keep their recorded entry
    results = json.loads(previous.read_text()).get("runs", {}) if previous.exists() else {}
    settings = {"clean": {}, "spurious": {"spurious": 0.95}}
    for name in args.only:
        data = out / f"synth-derm-{name}"
        if not (data / "dataset.json").exists():
            generate("synth-derm", n=args.n, out=data, seed=0, **settings[name])
        crl_args = ["train", "--config", "synthetic-cpu", "--root", str(data), "--device", "cpu", "--out", str(out)]
        base_args = ["train-baseline", "--config", "baseline-synth-derm", "--root", str(data), "--device", "cpu",
                     "--out", str(out), "--train.epochs", "20"]
        crl_run = run([str(bin_dir / "crl"), *crl_args])
        base_run = run([str(bin_dir / "medimg"), *base_args])
        crl_m = json.loads((crl_run / "metrics.json").read_text())
        base_m = json.loads((base_run / "metrics.json").read_text())
        entry = {
            "data": f"medimg synth synth-derm --n {args.n} --seed 0"
                    + "".join(f" --{k} {v}" for k, v in settings[name].items()),
            "crl_command": "crl " + " ".join(crl_args).replace(str(out), "runs/bench-crl"),
            "crl_run": display(crl_run), "baseline_run": display(base_run),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "baseline_command": "medimg " + " ".join(base_args).replace(str(out), "runs/bench-crl"),
            "crl": {k: crl_m[k] for k in ("test", "test_concepts", "rules", "wall_time_s", "peak_memory_mb",
                                          "best_epoch", "epochs_run")},
            "baseline": {k: base_m[k] for k in ("test", "wall_time_s", "peak_memory_mb", "best_epoch", "epochs_run")},
        }
        entry["crl"]["test_concepts"] = {k: v for k, v in crl_m["test_concepts"].items() if "/" not in k}
        if name == "clean":
            entry["rule_recovery"] = rule_agreement(crl_run, data)
        results[name] = entry
        print(f"{name}: CRL test accuracy {crl_m['test']['accuracy']:.4f}, baseline {base_m['test']['accuracy']:.4f}")
    write_result("crl_synthetic", {"command": command_line(), "runs": results})


if __name__ == "__main__":
    main()
