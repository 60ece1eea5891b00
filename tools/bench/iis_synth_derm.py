"""IIS on synth-derm: a resnet18 trained on the task against the same architecture at random initialisation,
with the Prototype library and with text concepts backed by the ground-truth concept annotations.

    python tools/bench/iis_synth_derm.py [--n 2000] [--trained-run RUN] [--out runs/bench-iis]

1. data: `medimg synth synth-derm --n 2000 --seed 0` (written once under --out);
2. trained backbone: `medimg train-baseline --config baseline-synth-derm` on it (skipped with --trained-run);
3. `iis score --config synth-derm-cpu` with both backbones (Prototype concepts, M = 200);
4. the same with `--library text --text-backend annotations` (phrases of shared-data/concepts/text/synth-derm.txt
   scored by the annotations, Label-free CBM projection and filters).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import ROOT, command_line, run_command, write_result

from medimg_core.baseline import peak_memory_mb
from medimg_core.synthetic import generate


def rel(text: str, out: Path) -> str:
    from common import SHARED

    text = text.replace(str(out), "runs/bench-iis").replace(str(SHARED), "../shared/data")
    return text.replace(str(Path(sys.executable).parent) + "/", "").replace(str(ROOT) + "/", "")


def recorded_command(baseline: dict, fallback: str, out: Path) -> str:
    """The command line the trained run recorded (metrics.json), relative to the repository."""
    return rel(baseline.get("command") or fallback, out)


def summary(run_dir: Path) -> dict:
    m = json.loads((run_dir / "metrics.json").read_text())
    backbones = []
    for b, c in zip(m["backbones"], m["comparison"], strict=True):
        r = b["result"]
        backbones.append({
            "label": b["label"], "iis": r["iis"], "iis_ci": r["iis_ci"], "iis_val": r["iis_val"],
            "probe": r["probe"], "num_concepts": r["num_concepts"], "bias_only": r.get("bias_only"),
            "saturated": r.get("saturated"),
            "per_ratio": [{k: p[k] for k in ("ratio", "kept_concepts", "test_accuracy", "arr", "arr_ci", "lr")}
                          for p in r["per_ratio"]],
            "difference": c["difference"], "difference_ci": c["difference_ci"],
            "library": b["library"], "timings": b["timings"], "cached_features": b["cached_features"]})
    return {"run": run_dir.name, "dataset": m["dataset"], "library": m["library"], "ratios": m["ratios"],
            "backbones": backbones, "shared_timings": m["shared_timings"], "wall_time_s": m["wall_time_s"],
            "peak_memory_mb": m["peak_memory_mb"], "sizes": m["sizes"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--trained-run", default=None, help="A `medimg train-baseline --config baseline-synth-derm` run "
                                                         "on the same data (default: train one).")
    p.add_argument("--out", default=str(ROOT / "runs" / "bench-iis"))
    args = p.parse_args()
    out = Path(args.out)
    bin_dir = Path(sys.executable).parent
    data = out / "synth-derm"
    if not (data / "dataset.json").exists():
        generate("synth-derm", n=args.n, out=data, seed=0)
    timings = {}
    base_args = ["train-baseline", "--config", "baseline-synth-derm", "--root", str(data), "--device", "cpu",
                 "--out", str(out), "--no-progress"]
    if args.trained_run:
        trained = Path(args.trained_run).resolve()
    else:
        trained, timings["train_baseline_s"], _ = run_command([str(bin_dir / "medimg"), *base_args], creates_in=out)
    baseline = json.loads((trained / "metrics.json").read_text())
    backbones = ["--backbone", f"resnet18:{trained}", "--backbone", "resnet18:random"]
    common = ["--config", "synth-derm-cpu", "--root", str(data), "--device", "cpu", "--out", str(out), "--no-progress",
              *backbones]
    runs, commands = {}, {}
    variants = (("prototype", []), ("text", ["--library", "text", "--text-backend", "annotations"]),
                ("prototype-raw-probe", ["--sweep.probe_standardize", "false"]))
    for name, extra in variants:
        cmd = [str(bin_dir / "iis"), "score", *common, *extra]
        run_dir, timings[f"iis_score_{name}_s"], _ = run_command(cmd, creates_in=out, echo=True)
        runs[name] = summary(run_dir)
        commands[name] = rel("iis " + " ".join(cmd[1:]), out)
        for b in runs[name]["backbones"]:
            print(f"{name}: {b['label']}: IIS {b['iis']:.4f} {b['iis_ci']}, probe {b['probe']['test_accuracy']:.4f}")
    write_result("iis_synth_derm", {
        "command": command_line(),
        "data_command": f"medimg synth synth-derm --n {args.n} --seed 0 --out runs/bench-iis/synth-derm",
        "baseline_command": recorded_command(baseline, "medimg " + " ".join(base_args), out),
        "baseline_config_command": "medimg " + rel(" ".join(base_args[:-3]), out),
        "baseline_run": trained.name, "baseline_test": baseline["test"],
        "baseline_wall_time_s": baseline["wall_time_s"],
        "iis_commands": commands, "runs": runs, "timings": timings, "peak_memory_mb": peak_memory_mb(),
    })


if __name__ == "__main__":
    main()
