"""Behaviour fingerprint: every method's short run on small synthetic data, with its numbers and weights, so that a
refactoring can show it changes nothing.

    python tools/bench/fingerprint.py --out runs/fingerprint-before.json      # on the old tree
    python tools/bench/fingerprint.py --out runs/fingerprint-after.json       # on the new tree
    python tools/bench/fingerprint.py --compare runs/fingerprint-before.json runs/fingerprint-after.json

Runs the commands of integration-tests/test_end_to_end.py (tiny backbones, 32 px, 2 epochs) on synth-derm,
synth-cxr and synth-grade (n=160, seed 0, generated once into --data), through the command lines only, so the
same script runs on both trees. Per method it records every number of metrics.json (wall times, memory, paths and
commands left out), the sha256 of the best checkpoint's weights, and the text of its explanation of one image.
`--compare` prints each differing number (and exits 1 when any differs). Threads are fixed at 2
(OMP_NUM_THREADS), since the thread count changes float sums.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

BIN = Path(sys.executable).parent
#: keys that describe the machine or the moment, not the behaviour
VOLATILE = ("wall_time_s", "process_wall_s", "peak_memory_mb", "time_s", "time/", "_s", "command", "run_dir", "date",
            "path", "folder", "pipeline", "checkpoint", "prototypes", "device", "load_average")

DAE_TINY = ["--model.base_channels", "8", "--model.channel_mult", "[1, 2]", "--model.num_res_blocks", "1",
            "--model.attention_resolutions", "[8]", "--model.groups", "4", "--model.time_embed_dim", "null",
            "--model.z_dim", "16", "--model.encoder_channel_mult", "[1, 2]", "--model.encoder_num_res_blocks", "1",
            "--model.encoder_attention_resolutions", "[]", "--data.image_size", "16"]
SMALL = ["--device", "cpu", "--seed", "0", "--no-progress"]


def sh(*args: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "2", "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"}
    result = subprocess.run([str(BIN / args[0]), *args[1:]], capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result.stdout


def only_run(out: Path) -> Path:
    runs = [p for p in out.iterdir() if p.is_dir()]
    if len(runs) != 1:
        raise SystemExit(f"{out}: expected one run folder, found {len(runs)}")
    return runs[0]


def numbers(obj, prefix: str = "") -> dict[str, float | str]:
    """Every number (and short string) of a metrics tree, by its path, volatile keys left out."""
    flat: dict[str, float | str] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            key = f"{prefix}{k}"
            if any(tag in str(k) for tag in VOLATILE):
                continue
            flat.update(numbers(v, key + "."))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            flat.update(numbers(v, f"{prefix}{i}."))
    elif isinstance(obj, bool) or obj is None:
        flat[prefix.rstrip(".")] = str(obj)
    elif isinstance(obj, (int, float)):
        flat[prefix.rstrip(".")] = float(obj)
    elif isinstance(obj, str) and len(obj) < 80 and "/" not in obj:
        flat[prefix.rstrip(".")] = obj
    return flat


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def best_weights(run: Path) -> str:
    files = sorted((run / "checkpoints" / "best").glob("*.safetensors"))
    return ",".join(f"{f.name}:{sha(f)}" for f in files)


def fingerprint(data: Path, runs: Path) -> dict:
    from medimg_core.synthetic import generate

    sets = {}
    for name in ("synth-derm", "synth-cxr", "synth-grade"):
        sets[name] = data / name
        if not (sets[name] / "dataset.json").exists():
            generate(name, n=160, out=sets[name], seed=0, size=32)
    image = {k: sorted((v / "images").glob("*.png"))[0] for k, v in sets.items()}
    result: dict[str, dict] = {}

    out = runs / "baseline"
    sh("medimg", "train-baseline", "--config", "baseline-synth-derm", "--root", str(sets["synth-derm"]), "--out",
       str(out), "--backbone", "test_resnet", "--image-size", "32", "--epochs", "2", *SMALL)
    baseline = only_run(out)
    result["baseline"] = {"metrics": numbers(json.loads((baseline / "metrics.json").read_text())),
                          "weights": best_weights(baseline)}

    out = runs / "crl"
    sh("crl", "train", "--config", "synthetic-cpu", "--root", str(sets["synth-derm"]), "--out", str(out),
       "--model.backbone", "test_resnet", "--data.image_size", "32", "--train.epochs", "2", *SMALL)
    run = only_run(out)
    result["crl"] = {"metrics": numbers(json.loads((run / "metrics.json").read_text())), "weights": best_weights(run),
                     "rules": (run / "rules.txt").read_text(),
                     "explain": sh("crl", "explain", str(run), str(image["synth-derm"]), "--out",
                                   str(runs / "crl-explain.png"), "--device", "cpu").rsplit("wrote", 1)[0]}

    out = runs / "cipl"
    sh("cipl", "train", "--config", "synth-cxr-cpu", "--root", str(sets["synth-cxr"]), "--out", str(out),
       "--model.backbone", "test_resnet", "--model.output_stride", "8", "--data.image_size", "32", "--train.epochs",
       "2", "--train.batch_size", "8", "--model.prototypes_per_class", "2", "--model.prototype_dim", "16",
       "--model.reduce_dim", "16", "--schedule.warm_epochs", "1", "--schedule.push_epochs", "[1, 2]",
       "--schedule.last_layer_epochs", "1", "--bootstrap", "20", *SMALL)
    run = only_run(out)
    reason = sh("cipl", "reason", str(run), str(image["synth-cxr"]), "--top-k", "2", "--out", str(runs / "cipl-reason"),
                "--device", "cpu")
    result["cipl"] = {"metrics": numbers(json.loads((run / "metrics.json").read_text())), "weights": best_weights(run),
                      "explain": "\n".join(ln for ln in reason.splitlines() if "wrote" not in ln)}

    out = runs / "neuron-concepts"
    env_home = os.environ.get("MEDIMG_HOME")
    os.environ["MEDIMG_HOME"] = str(runs / "medimg-home")
    try:
        sh("neuron-concepts", "run", "--config", "synth-derm-cpu", "--root", str(sets["synth-derm"]), "--out", str(out),
           "--model.backbone", "test_resnet", "--data.image_size", "32", "--train.epochs", "2", "--train.batch_size",
           "16", "--sae.expansion", "2", "--sae.batch_size", "32", "--sae.epochs", "10", "--naming.figures", "3",
           "--cav.top_n", "10", "--cav.n_negative", "20", "--select.k", "12", "--cbm.n_nonzero", "4",
           "--cbm.c_search_steps", "1", "--bootstrap", "20", *SMALL)
        pipeline = only_run(out)
        stage_metrics = {p.parent.name: numbers(json.loads(p.read_text()))
                         for p in sorted(pipeline.glob("*/metrics.json"))}
        explain = sh("neuron-concepts", "explain", str(pipeline / "cbm"), str(image["synth-derm"]), "--out",
                     str(runs / "nc-explain.png"), "--device", "cpu")
        result["neuron-concepts"] = {"metrics": numbers(json.loads((pipeline / "metrics.json").read_text())),
                                     "stages": stage_metrics, "explain": explain.rsplit("wrote", 1)[0]}

        out = runs / "iis"
        sh("iis", "score", "--config", "synth-derm-cpu", "--root", str(sets["synth-derm"]), "--out", str(out),
           "--backbone", "test_resnet:random", "--backbone", f"test_resnet:{baseline}", "--elements.images_per_class",
           "2", "--elements.slic_segments", "[10]", "--num-concepts", "12", "--sweep.ratios", "[0.0, 0.5, 0.9]",
           "--sweep.lrs", "[0.01, 0.1]", "--sweep.epochs", "3", "--bootstrap", "20", "--data.image_size", "32",
           *SMALL)
        run = only_run(out)
        explain = sh("iis", "explain", str(run), str(image["synth-derm"]), "--out", str(runs / "iis-explain.png"),
                     "--device", "cpu")
        result["iis"] = {"metrics": numbers(json.loads((run / "metrics.json").read_text())),
                         "explain": explain.rsplit("wrote", 1)[0]}
    finally:
        if env_home is None:
            os.environ.pop("MEDIMG_HOME", None)
        else:
            os.environ["MEDIMG_HOME"] = env_home

    out = runs / "dae"
    sh("dae-cf", "train", "--config", "synth-grade-cpu", "--root", str(sets["synth-grade"]), "--out", str(out),
       *DAE_TINY, "--train.epochs", "2", "--train.batch_size", "16", "--diffusion.encode_steps", "4",
       "--diffusion.render_steps", "4", "--recon_images", "2", "--bootstrap", "20", *SMALL)
    run = only_run(out)
    sh("dae-cf", "encode", str(run), "--device", "cpu", "--no-progress")
    sh("dae-cf", "fit-boundary", str(run), "--bootstrap", "20", "--device", "cpu")
    sh("dae-cf", "counterfactual", str(run), str(image["synth-grade"]), "--grades", "0", "2", "4", "--device", "cpu",
       "--no-progress")
    series = sorted((run / "counterfactuals").rglob("*.json"))
    result["dae"] = {"metrics": numbers(json.loads((run / "metrics.json").read_text())), "weights": best_weights(run),
                     "counterfactual": {p.name: numbers(json.loads(p.read_text())) for p in series}}
    return result


def compare(before: dict, after: dict, tol: float = 0.0) -> int:
    differences = 0
    for method in sorted(set(before) | set(after)):
        a, b = before.get(method), after.get(method)
        if a is None or b is None:
            print(f"{method}: only in {'after' if a is None else 'before'}")
            differences += 1
            continue
        fa = numbers(a) if not isinstance(a, str) else {"": a}
        fb = numbers(b) if not isinstance(b, str) else {"": b}
        for key in sorted(set(fa) | set(fb)):
            va, vb = fa.get(key), fb.get(key)
            same = va == vb or (isinstance(va, float) and isinstance(vb, float) and abs(va - vb) <= tol)
            if not same:
                differences += 1
                print(f"{method}.{key}: {va!r} -> {vb!r}")
        print(f"{method}: {len(set(fa) & set(fb))} values compared")
    print(f"{differences} difference(s)")
    return differences


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, help="JSON file to write")
    p.add_argument("--data", type=Path, default=None, help="folder for the synthetic data (default: a temp folder)")
    p.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"))
    args = p.parse_args()
    if args.compare:
        raise SystemExit(1 if compare(*(json.loads(f.read_text()) for f in args.compare)) else 0)
    if not args.out:
        p.error("--out or --compare is needed")
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or Path(tmp) / "data"
        result = fingerprint(data, Path(tmp) / "runs")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, sort_keys=True))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
