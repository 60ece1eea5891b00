"""IIS on the real WBCAtt data: `iis score` comparing the medimg-core WBCAtt baseline's trained resnet18 with
the same architecture at random initialisation (Prototype library, M = 200, the paper's grid), then the same
comparison with text concepts backed by the WBCAtt attribute annotations.

    python tools/bench/iis_wbcatt.py [--trained-run RUN] [--out runs/bench-iis]

--trained-run: a run folder of `medimg train-baseline --config baseline-wbcatt --root ../shared/data/wbcatt`
(default: train one first). The table and the overlaid ARR figure are copied to docs/figures/iis/.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import ROOT, SHARED, command_line, run_command, write_result
from iis_synth_derm import recorded_command, rel, summary

from medimg_core.baseline import peak_memory_mb

FIGURES = ROOT / "docs" / "figures" / "iis"




def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trained-run", default=None,
                   help="Run folder of `medimg train-baseline --config baseline-wbcatt` (default: train one).")
    p.add_argument("--out", default=str(ROOT / "runs" / "bench-iis"))
    p.add_argument("--skip-text", action="store_true", help="Only the Prototype library.")
    args = p.parse_args()
    out = Path(args.out)
    root = SHARED / "wbcatt"
    if not root.is_dir():
        raise SystemExit(f"{root} not found: this benchmark reads the real WBCAtt data")
    bin_dir = Path(sys.executable).parent
    timings = {}
    base_args = ["train-baseline", "--config", "baseline-wbcatt", "--root", str(root), "--device", "cpu",
                 "--out", str(out), "--no-progress"]
    if args.trained_run:
        trained = Path(args.trained_run).resolve()
    else:
        trained, timings["train_baseline_s"], _ = run_command([str(bin_dir / "medimg"), *base_args], creates_in=out)
    baseline = json.loads((trained / "metrics.json").read_text())
    common = ["--config", "wbcatt-cpu", "--root", str(root), "--device", "cpu", "--out", str(out), "--no-progress",
              "--backbone", f"resnet18:{trained}", "--backbone", "resnet18:random"]
    libraries = [("prototype", [])] + ([] if args.skip_text else [("text", ["--library", "text"])])
    runs, commands = {}, {}
    FIGURES.mkdir(parents=True, exist_ok=True)
    for name, extra in libraries:
        cmd = [str(bin_dir / "iis"), "score", *common, *extra]
        run_dir, timings[f"iis_score_{name}_s"], _ = run_command(cmd, creates_in=out, echo=True)
        runs[name] = summary(run_dir)
        commands[name] = rel("iis " + " ".join(cmd[1:]), out)
        shutil.copyfile(run_dir / "figures" / "arr.png", FIGURES / f"wbcatt_arr_{name}.png")
        shutil.copyfile(run_dir / "table.md", FIGURES / f"wbcatt_table_{name}.md")
        runs[name]["figure"] = f"docs/figures/iis/wbcatt_arr_{name}.png"
        # one decision explained: the first eosinophil of the test split, trained backbone, s = 0.9
        image = root / next(line.split(",")[-1] for line in (root / "test.csv").read_text().splitlines()
                            if ",Eosinophil," in line)
        figure = FIGURES / f"wbcatt_explain_{name}.png"
        explain = ["explain", str(run_dir), str(image), "--ratio", "0.9", "--top-k", "8", "--out", str(figure)]
        proc = subprocess.run([str(bin_dir / "iis"), *explain], capture_output=True, text=True, check=True)
        runs[name]["explain"] = {"command": rel("iis " + " ".join(explain), out),
                                 "output": proc.stdout.strip().splitlines()[:-1],
                                 "figure": f"docs/figures/iis/wbcatt_explain_{name}.png"}
    write_result("iis_wbcatt", {
        "command": command_line(),
        "baseline_command": recorded_command(baseline, "medimg " + " ".join(base_args), out),
        "baseline_config_command": "medimg " + rel(" ".join(base_args[:-3]), out),
        "baseline_run": trained.name, "baseline_test": baseline["test"],
        "baseline_wall_time_s": baseline["wall_time_s"],
        "iis_commands": commands, "runs": runs, "timings": timings, "peak_memory_mb": peak_memory_mb(),
    })


if __name__ == "__main__":
    main()
