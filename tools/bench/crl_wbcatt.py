"""CRL on the real WBCAtt data next to the black-box baseline of docs/bench/baselines.json (same backbone,
image size and epoch budget).

    python tools/bench/crl_wbcatt.py [--out runs/bench-crl]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import ROOT, SHARED, command_line, run_command, write_result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "runs" / "bench-crl"))
    args = p.parse_args()
    crl_args = ["train", "--config", "wbc-cpu", "--root", str(SHARED / "wbcatt"), "--device", "cpu", "--out", args.out]
    cmd = [str(Path(sys.executable).parent / "crl"), *crl_args]
    run_dir, _, _ = run_command(cmd, creates_in=Path(args.out))
    m = json.loads((run_dir / "metrics.json").read_text())
    baseline_path = ROOT / "docs" / "bench" / "baselines.json"
    baseline = json.loads(baseline_path.read_text())["runs"].get("wbcatt") if baseline_path.exists() else None
    result = {
        "command": command_line(),
        "crl_command": "crl " + " ".join(crl_args).replace(str(SHARED), "../shared/data").replace(args.out, "runs/bench-crl"),
        "crl": {k: m[k] for k in ("test", "rules", "wall_time_s", "peak_memory_mb", "best_epoch", "epochs_run")},
        "crl_concepts": {k: v for k, v in m["test_concepts"].items() if "/" not in k},
        "baseline": None if baseline is None else {"command": baseline["command"], "test": baseline["metrics"]["test"],
                                                    "wall_time_s": baseline["metrics"]["wall_time_s"]},
    }
    print(f"CRL test accuracy {m['test']['accuracy']:.4f}; rules {m['rules']['count']}; "
          f"concept macro-F1 (published) {m['test_concepts']['concept_macro_f1']:.4f}, positive-class F1 mean "
          f"{m['test_concepts']['concept_positive_f1_mean']:.4f}")
    write_result("crl_wbcatt", result)


if __name__ == "__main__":
    main()
