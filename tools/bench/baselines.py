"""The black-box baselines on the real data in ../shared/data, through the `medimg train-baseline` CLI.

    python tools/bench/baselines.py [--only wbcatt retinamnist] [--out runs/bench]

Each entry runs one command; its run folder's metrics.json (test metrics with 95% bootstrap
intervals, wall time, peak memory) goes into docs/bench/baselines.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import ROOT, SHARED, command_line, run_command, write_result

RUNS = {
    # resnet18 from scratch at 64 px, AdamW + one-cycle, flips, batch 64, 6 epochs (CPU budget ~10 min)
    "wbcatt": ["--dataset", "wbcatt", "--root", str(SHARED / "wbcatt"), "--backbone", "resnet18",
               "--image-size", "64", "--epochs", "6", "--batch-size", "64", "--lr", "2e-3",
               "--optim.scheduler", "onecycle", "--optim.weight_decay", "0.05", "--data.vflip", "true",
               "--device", "cpu", "--seed", "0"],
    # resnet18 at the native 28 px, as in the MedMNIST v2 benchmark (which trains 100 epochs)
    "retinamnist": ["--dataset", "retinamnist", "--root", str(SHARED / "medmnist"), "--backbone", "resnet18",
                    "--image-size", "28", "--epochs", "30", "--batch-size", "64", "--lr", "1e-3",
                    "--optim.scheduler", "cosine", "--data.scale_min", "1.0", "--device", "cpu", "--seed", "0"],
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="*", default=list(RUNS))
    p.add_argument("--out", default=str(ROOT / "runs" / "bench"))
    args = p.parse_args()
    medimg = str(Path(sys.executable).parent / "medimg")
    results_path = ROOT / "docs" / "bench" / "baselines.json"
    results = json.loads(results_path.read_text())["runs"] if results_path.exists() else {}
    for name in args.only:
        cmd = [medimg, "train-baseline", *RUNS[name], "--out", args.out]
        run_dir, _, _ = run_command(cmd, creates_in=Path(args.out))
        metrics = json.loads((run_dir / "metrics.json").read_text())
        shown = "medimg train-baseline " + " ".join(RUNS[name]).replace(str(SHARED), "../shared/data")
        results[name] = {"command": shown, "run_dir": str(run_dir.relative_to(ROOT)), "metrics": metrics}
        test = metrics["test"]
        print(f"{name}: test accuracy {test['accuracy']:.4f} {test.get('accuracy_ci')}, "
              f"{metrics['wall_time_s']:.0f} s, peak {metrics['peak_memory_mb']:.0f} MB")
    write_result("baselines", {"command": command_line(), "runs": results})


if __name__ == "__main__":
    main()
