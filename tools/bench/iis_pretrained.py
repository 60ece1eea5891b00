"""IIS of four EfficientNet-Lite0 representations that really differ, on one dataset: random weights, trained on the
task from scratch, ImageNet features frozen (imagenet-lite0), and ImageNet features fine-tuned on the task.

    python tools/bench/iis_pretrained.py --dataset synth-derm|wbcatt [--seed 0] [--out runs/bench-iis]

The two trained representations are baseline runs with the `baseline-<dataset>-lite0-cpu` preset, the scratch
one with `--pretrained false` (the same budget: a weak scratch model at that budget is part of the answer).
The fine-tuned one is reused where another benchmark trained it with the same preset and seed (the opaque
model of tools/bench/neuron_concepts_pretrained.py on synth-derm, baseline/wbcatt of tools/bench/pretrained.py
on WBCAtt), else trained here. Then one `iis score --config <dataset>-lite0-cpu` call scores all four with the
Prototype library; each IIS has its bootstrap interval and its difference from the random one. synth-derm data:
`medimg synth synth-derm --n 2000 --seed 0` (the folder of the neuron-concepts benchmarks).
Writes docs/bench/iis_pretrained.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, ROOT, SHARED, command_line, display, run_command, write_result
from iis_synth_derm import summary
from pretrained import recorded_run

ARCH = "tf_efficientnet_lite0"
RESULT = "iis_pretrained"


def fine_tuned_elsewhere(dataset: str, seed: int) -> Path | None:
    if dataset == "wbcatt":
        return recorded_run("baseline/wbcatt", "imagenet-lite0", seed)
    path = RESULTS / "neuron_concepts_pretrained.json"
    if path.exists():
        run = json.loads(path.read_text())["datasets"].get("synth-derm", {}).get("arms", {}) \
            .get("imagenet-lite0", {}).get("runs", {}).get(str(seed))
        if run and (ROOT / run["pipeline"] / "opaque" / "checkpoints").is_dir():
            return ROOT / run["pipeline"] / "opaque"
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, choices=["synth-derm", "wbcatt"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "runs" / "bench-iis"))
    args = p.parse_args()
    out = Path(args.out).resolve()
    bin_dir = Path(sys.executable).parent
    if args.dataset == "synth-derm":
        from medimg_core.synthetic import generate

        root = ROOT / "runs" / "bench-neuron-concepts" / "synth-derm"
        if not (root / "dataset.json").exists():
            generate("synth-derm", n=2000, out=root, seed=0)
    else:
        root = SHARED / "wbcatt"
    preset = f"baseline-{args.dataset}-lite0-cpu"
    base = [str(bin_dir / "medimg"), "train-baseline", "--config", preset, "--root", str(root), "--device", "cpu",
            "--out", str(out), "--seed", str(args.seed), "--no-progress"]
    trained = {}
    scratch_run, scratch_s, _ = run_command([*base, "--pretrained", "false"], creates_in=out)
    trained["scratch"] = {"run": scratch_run, "wall_time_s": scratch_s,
                          "command": display([*base, "--pretrained", "false"])}
    tuned = fine_tuned_elsewhere(args.dataset, args.seed)
    if tuned is None:
        tuned, tuned_s, _ = run_command(base, creates_in=out)
        trained["fine-tuned"] = {"run": tuned, "wall_time_s": tuned_s, "command": display(base)}
    else:
        wall = json.loads((tuned / "metrics.json").read_text())["wall_time_s"]
        trained["fine-tuned"] = {"run": tuned, "wall_time_s": wall, "command": display(base),
                                 "reused_from": display(tuned)}
    specs = [f"{ARCH}:random", f"{ARCH}:{trained['scratch']['run']}", f"{ARCH}:imagenet-lite0",
             f"{ARCH}:{trained['fine-tuned']['run']}"]
    labels = ["random", "scratch (trained on the task)", "ImageNet, frozen", "ImageNet, fine-tuned on the task"]
    iis = [str(bin_dir / "iis"), "score", "--config", f"{args.dataset}-lite0-cpu", "--root", str(root), "--device",
           "cpu", "--out", str(out), "--seed", str(args.seed), "--no-progress"]
    for spec in specs:
        iis += ["--backbone", spec]
    run_dir, iis_s, _ = run_command(iis, creates_in=out)
    scored = summary(run_dir)
    for backbone, label in zip(scored["backbones"], labels, strict=True):
        backbone["representation"] = label
    for kind, t in trained.items():
        m = json.loads((Path(t["run"]) / "metrics.json").read_text())
        t.update(run=display(t["run"]), test_accuracy=m["test"]["accuracy"], test_accuracy_ci=m["test"].get("accuracy_ci"))
        print(f"{kind}: test accuracy {t['test_accuracy']:.4f}")
    for b in scored["backbones"]:
        print(f"{b['representation']}: IIS {b['iis']:.4f} {b['iis_ci']}, probe {b['probe']}")
    path = RESULTS / f"{RESULT}.json"
    result = json.loads(path.read_text()) if path.exists() else {"datasets": {}}
    result.setdefault("datasets", {})[args.dataset] = {
        "seed": args.seed, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "command": command_line(),
        "trained": trained, "iis_command": display(iis), "iis_wall_time_s": iis_s, **scored}
    write_result(RESULT, {"command": command_line(), "datasets": result["datasets"]})


if __name__ == "__main__":
    main()
