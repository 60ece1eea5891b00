"""CIPL on real data here: PneumoniaMNIST and BreastMNIST (single-label: one prototype block per class, softmax,
same-class pairs) next to the medimg-core black-box baseline with the same backbone, image size and epoch
budget; and the real NIH ChestX-ray14 label table with its two sample images through CIPL's data path.

    python tools/bench/cipl_medmnist.py [--only pneumoniamnist breastmnist chestxray14]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import ROOT, SHARED, command_line, run_command, write_result


def shown(cmd: list[str], out: Path) -> str:
    return " ".join(Path(c).name if i == 0 else c for i, c in enumerate(cmd)).replace(str(out), "runs/bench-cipl") \
        .replace(str(SHARED), "../shared/data")


def medmnist(name: str, out: Path, seed: int) -> dict:
    from cipl.cli import CONFIGS
    from cipl.train import CIPLConfig
    from medimg_core.config import load_config

    bin_dir = Path(sys.executable).parent
    root = SHARED / "medmnist" / f"{name}.npz"
    preset = load_config(CIPLConfig, CONFIGS / "medmnist-cpu.yaml")
    cipl_cmd = [str(bin_dir / "cipl"), "train", "--config", "medmnist-cpu", "--dataset", name, "--root", str(root),
                "--device", "cpu", "--out", str(out), "--seed", str(seed), "--no-progress"]
    base_cmd = [str(bin_dir / "medimg"), "train-baseline", "--config", "baseline-retinamnist", "--dataset", name,
                "--root", str(root), "--device", "cpu", "--out", str(out), "--seed", str(seed), "--no-progress",
                "--backbone", preset.model.backbone, "--image-size", str(preset.data.image_size),
                "--epochs", str(preset.train.epochs), "--data.scale_min", str(preset.data.scale_min)]
    cipl_run, cipl_wall, _ = run_command(cipl_cmd, creates_in=out)
    base_run, base_wall, _ = run_command(base_cmd, creates_in=out)
    cm = json.loads((cipl_run / "metrics.json").read_text())
    bm = json.loads((base_run / "metrics.json").read_text())
    return {
        "cipl_command": shown(cipl_cmd, out), "baseline_command": shown(base_cmd, out), "sizes": cm["sizes"],
        "cipl": {"test": cm["test"], "best_epoch": cm["best_epoch"], "epochs_run": cm["epochs_run"],
                 "wall_time_s": cm["wall_time_s"], "process_wall_s": cipl_wall, "peak_memory_mb": cm["peak_memory_mb"]},
        "baseline": {"test": bm["test"], "best_epoch": bm["best_epoch"], "epochs_run": bm["epochs_run"],
                     "wall_time_s": bm["wall_time_s"], "process_wall_s": base_wall,
                     "peak_memory_mb": bm["peak_memory_mb"]},
    }


def chestxray14_check() -> dict:
    """The real label table and the two sample images through cipl's dataset building and prediction."""
    import numpy as np
    import torch

    from cipl.cli import CONFIGS
    from cipl.evaluate import predict
    from cipl.model import LabelSpace
    from cipl.train import CIPLConfig, build_model, load_split
    from medimg_core.baseline import peak_memory_mb
    from medimg_core.config import load_config

    root = SHARED / "chestxray14"
    start = time.perf_counter()
    overrides = {"data.root": str(root), "data.image_size": "224", "model.pretrained": "false",
                 "data.options.official_split": "false", "data.options.missing_images": "drop"}
    cfg = load_config(CIPLConfig, CONFIGS / "chestxray14.yaml", overrides)
    splits = {s: load_split(cfg, s) for s in ("train", "test")}
    load_s = time.perf_counter() - start
    card = splits["train"].card
    labels = LabelSpace.for_task(card.task, card.class_names, cfg.model.reference_class)
    torch.manual_seed(0)
    model = build_model(cfg, labels, cfg.data.channels).student.eval()
    images = []
    for split, ds in splits.items():
        t0 = time.perf_counter()
        out = predict(model, ds, batch_size=2)
        with torch.no_grad():
            maps = model.prototype_activations(ds[0]["image"][None])
        findings = [n for n, v in zip(card.class_names, ds.targets[0], strict=True) if v > 0] or ["No Finding"]
        images.append({"split": split, "id": ds.ids[0], "labels": findings,
                       "input_shape": list(ds[0]["image"].shape), "scores_shape": list(out["scores"].shape),
                       "similarity_maps_shape": list(maps.shape),
                       "scores_finite": bool(np.isfinite(out["scores"]).all()),
                       "predict_s": time.perf_counter() - t0})
    return {"command": "load_split(chestxray14 preset, official_split=false, missing_images=drop) + "
                       "build_model(densenet121, random init, 224 px) + cipl.evaluate.predict",
            "label_table": "Data_Entry_2017_v2020.csv.gz (112,120 rows)", "images_found": len(images),
            "classes": list(labels.class_names), "load_s": load_s, "images": images,
            "peak_memory_mb": peak_memory_mb()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="*", default=["pneumoniamnist", "breastmnist", "chestxray14"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "runs" / "bench-cipl"))
    args = p.parse_args()
    out = Path(args.out)
    payload: dict = {"command": command_line(), "runs": {}}
    for name in args.only:
        if name == "chestxray14":
            payload["chestxray14"] = chestxray14_check()
        else:
            payload["runs"][name] = medmnist(name, out, args.seed)
            r = payload["runs"][name]
            print(f"{name}: CIPL accuracy {r['cipl']['test']['accuracy']:.4f} AUROC {r['cipl']['test']['auroc']:.4f}; "
                  f"baseline {r['baseline']['test']['accuracy']:.4f} / {r['baseline']['test']['auroc']:.4f}")
    write_result("cipl_medmnist", payload)


if __name__ == "__main__":
    main()
