"""CIPL on synth-cxr (five localized findings with generator masks, multi-label): classification against the
medimg-core black-box baseline with the same backbone, image size and epoch budget, and whether CIPL's
similarity maps point at the findings (pointing game, mask IoU). Saves a prototype gallery and a reasoning
figure to docs/figures/cipl/.

    python tools/bench/cipl_synth_cxr.py [--n 1500] [--out runs/bench-cipl]

Targets (issue 5): mean AUROC within 2 points of the baseline; pointing game >= 0.8 for detected findings.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import ROOT, command_line, run_command, run_or_reuse, write_result

FIGURES = ROOT / "docs" / "figures" / "cipl"




def relative(cmd: list[str], out: Path) -> str:
    return " ".join(Path(c).name if i == 0 else c for i, c in enumerate(cmd)).replace(str(out), "runs/bench-cipl")


def pick_reason_image(run_dir: Path) -> tuple[str, Path]:
    """A test image with two findings that the model detects (the first such, in id order)."""
    import torch

    from cipl.train import load_cipl, load_split

    model, info = load_cipl(run_dir)
    ds = load_split(info["cfg"], "test", info["in_chans"])
    with torch.no_grad():
        for i in range(len(ds)):
            if ds.targets[i].sum() < 2:
                continue
            probs = model.predict_proba(ds[i]["image"][None])[0].numpy()
            if ((probs > 0.5) == (ds.targets[i] > 0.5)).all():
                return ds.ids[i], Path(ds.table.paths[i])
    raise SystemExit("no test image with two correctly detected findings")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "runs" / "bench-cipl"))
    p.add_argument("--map-step", type=int, default=2,
                   help="also score the maps sampled every N pixels by shift-and-stitch (`cipl evaluate --map-step`)")
    p.add_argument("--cipl-run", default=None, help="reuse this `cipl train --config synth-cxr-cpu` run")
    p.add_argument("--baseline-run", default=None, help="reuse this baseline run")
    args = p.parse_args()
    out = Path(args.out)
    bin_dir = Path(sys.executable).parent
    data = out / f"synth-cxr-{args.n}"
    if not (data / "dataset.json").exists():
        from medimg_core.synthetic import generate

        generate("synth-cxr", n=args.n, out=data, seed=0)
    from cipl.cli import CONFIGS
    from cipl.train import CIPLConfig
    from medimg_core.config import load_config

    preset = load_config(CIPLConfig, CONFIGS / "synth-cxr-cpu.yaml")
    cipl_cmd = [str(bin_dir / "cipl"), "train", "--config", "synth-cxr-cpu", "--root", str(data), "--device", "cpu",
                "--out", str(out), "--seed", str(args.seed), "--no-progress"]
    base_cmd = [str(bin_dir / "medimg"), "train-baseline", "--config", "baseline-synth-derm", "--root", str(data),
                "--device", "cpu", "--out", str(out), "--seed", str(args.seed), "--no-progress",
                "--backbone", preset.model.backbone, "--image-size", str(preset.data.image_size),
                "--epochs", str(preset.train.epochs)]
    cipl_run, cipl_wall = run_or_reuse(cipl_cmd, args.cipl_run)
    base_run, base_wall = run_or_reuse(base_cmd, args.baseline_run)
    dense_cmd = [str(bin_dir / "cipl"), "evaluate", str(cipl_run), "--split", "test", "--map-step", str(args.map_step)]
    _, dense_wall, _ = run_command(dense_cmd, marker="wrote")
    dense = json.loads((cipl_run / f"eval-csv-test-step{args.map_step}.json").read_text())["localisation"]
    cm = json.loads((cipl_run / "metrics.json").read_text())
    bm = json.loads((base_run / "metrics.json").read_text())

    FIGURES.mkdir(parents=True, exist_ok=True)
    gallery_dir = out / "gallery"
    shutil.rmtree(gallery_dir, ignore_errors=True)
    gal_cmd = [str(bin_dir / "cipl"), "gallery", str(cipl_run), "--out", str(gallery_dir)]
    _, gal_wall, _ = run_command(gal_cmd)
    shutil.copy(gallery_dir / "overview.png", FIGURES / "synth_cxr_gallery.png")
    image_id, image = pick_reason_image(cipl_run)
    reason_dir = out / "reason"
    shutil.rmtree(reason_dir, ignore_errors=True)
    reason_cmd = [str(bin_dir / "cipl"), "reason", str(cipl_run), str(image), "--top-k", "3", "--out", str(reason_dir)]
    _, reason_wall, reason_text = run_command(reason_cmd)
    reason_figures = []
    for fig in sorted(reason_dir.glob("reason-*.png")):
        target = FIGURES / f"synth_cxr_{fig.name.replace('-', '_')}"
        shutil.copy(fig, target)
        reason_figures.append(str(target.relative_to(ROOT)))

    loc = cm.get("test_localisation", {})
    t, b = cm["test"], bm["test"]
    payload = {
        "command": command_line(),
        "data": f"medimg synth synth-cxr --n {args.n} --seed 0 (64 px; train/val/test {cm['sizes']['train']}/"
                f"{cm['sizes']['val']}/{cm['sizes']['test']})",
        "cipl_command": relative(cipl_cmd, out),
        "baseline_command": relative(base_cmd, out),
        "gallery_command": relative(gal_cmd, out),
        "reason_command": relative(reason_cmd, out),
        "preset": {"backbone": preset.model.backbone, "output_stride": preset.model.output_stride,
                   "image_size": preset.data.image_size, "epochs": preset.train.epochs,
                   "prototypes_per_class": preset.model.prototypes_per_class,
                   "prototype_dim": preset.model.prototype_dim, "push_epochs": list(preset.schedule.push_epochs),
                   "warm_epochs": preset.schedule.warm_epochs, "last_layer_epochs": preset.schedule.last_layer_epochs},
        "dense_command": relative(dense_cmd, out),
        "cipl": {"test": t, "localisation": loc, "localisation_dense": dense, "best_epoch": cm["best_epoch"], "epochs_run": cm["epochs_run"],
                 "wall_time_s": cm["wall_time_s"], "process_wall_s": cipl_wall, "peak_memory_mb": cm["peak_memory_mb"]},
        "baseline": {"test": b, "best_epoch": bm["best_epoch"], "epochs_run": bm["epochs_run"],
                     "wall_time_s": bm["wall_time_s"], "process_wall_s": base_wall,
                     "peak_memory_mb": bm["peak_memory_mb"]},
        "auroc_gap_points": 100 * (t["auroc_mean"] - b["auroc_mean"]),
        "targets": {"auroc_within_2_points": bool(t["auroc_mean"] >= b["auroc_mean"] - 0.02),
                    "pointing_game_at_least_0.8": bool(loc.get("pointing_game", 0.0) >= 0.8),
                    f"pointing_game_at_least_0.8 (maps every {args.map_step} px)":
                        bool(dense.get("pointing_game", 0.0) >= 0.8),
                    "cell_pointing_game_at_least_0.8 (diagnostic)": bool(loc.get("cell_pointing_game", 0.0) >= 0.8)},
        "figures": {"gallery": str((FIGURES / "synth_cxr_gallery.png").relative_to(ROOT)), "reason": reason_figures,
                    "reason_image": image_id},
        "reason_summary": reason_text.strip().splitlines()[:16],
        "stage_wall_s": {"cipl_train": cipl_wall, "baseline_train": base_wall, "gallery": gal_wall,
                         "reason": reason_wall, f"evaluate_map_step_{args.map_step}": dense_wall},
    }
    print(f"CIPL mean AUROC {t['auroc_mean']:.4f}, baseline {b['auroc_mean']:.4f}; pointing game "
          f"{loc.get('pointing_game')} (cell level {loc.get('cell_pointing_game')}), IoU {loc.get('iou_mean')}")
    write_result("cipl_synth_cxr", payload)


if __name__ == "__main__":
    main()
