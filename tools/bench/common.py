"""Shared pieces of the benchmarks: machine description, result files, the report.

Every benchmark writes docs/bench/<name>.json (numbers, the exact command, date, machine);
`python tools/bench/report.py` renders all of them into docs/benchmarks.md. Numbers are never
edited by hand: rerun the benchmark to change them.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "docs" / "bench"
SHARED = ROOT.parent / "shared" / "data"


def machine() -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = None
    with contextlib.suppress(ValueError, OSError):
        mem_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": mem_gb, "gpu": gpu, "python": platform.python_version(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads()}


def command_line() -> str:
    rel = Path(sys.argv[0]).resolve()
    with contextlib.suppress(ValueError):
        rel = rel.relative_to(ROOT)
    return "python " + " ".join(shlex.quote(a) for a in [str(rel), *sys.argv[1:]])


def write_result(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"name": name, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(),
               **payload}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, path)
    print(f"wrote {path}")
    return path


def mean_sd(values: list[float | None]) -> dict[str, float] | None:
    """{"mean", "sd" (sample, 0 for one value), "min", "max", "n"} of the values given (None: skipped)."""
    import numpy as np

    vals = np.array([v for v in values if v is not None], dtype=np.float64)
    if not len(vals):
        return None
    return {"mean": float(vals.mean()), "sd": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0,
            "min": float(vals.min()), "max": float(vals.max()), "n": len(vals)}


def split_overrides(argv: list[str] | None) -> tuple[list[str], list[str]]:
    """A benchmark's own arguments and the config overrides after `--` (passed on to every stage)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        return argv, []
    cut = argv.index("--")
    return argv[:cut], argv[cut + 1:]


def display(cmd: list[str] | str | Path) -> str:
    """A command (or path) as the report shows it: this environment's programs by name, the shared data as
    ../shared/data, paths inside the repository relative to it."""
    text = " ".join(map(str, cmd)) if isinstance(cmd, list) else str(cmd)
    return text.replace(str(Path(sys.executable).parent) + "/", "").replace(str(SHARED), "../shared/data") \
        .replace(str(ROOT) + "/", "")


# Formatting shared by report.py and the render_<package>.py modules.
def fmt(value, digits=3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def ci(metrics: dict, key: str) -> str:
    value, interval = metrics.get(key), metrics.get(f"{key}_ci")
    if value is None:
        return "n/a"
    return f"{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else f"{value:.3f}"


#: the concept metrics of medimg_core.metrics.concept_metrics that the CRL tables show
CONCEPT_KEYS = ("concept_macro_f1", "concept_accuracy", "concept_positive_f1_mean", "concept_accuracy_pooled")


def concept_numbers(concepts: dict) -> dict:
    """The CRL concept metrics of a metrics.json's test_concepts (or a result file's copy), old files included.

    Files written before the published definitions were added (no concept_positive_f1_mean) stored the
    positive-class F1 mean as concept_macro_f1 and the pooled accuracy as concept_accuracy: those become
    concept_positive_f1_mean / concept_accuracy_pooled, and the published ones are None (n/a) until rerun.
    """
    if "concept_positive_f1_mean" in concepts:
        return {k: concepts.get(k) for k in CONCEPT_KEYS}
    return {"concept_macro_f1": None, "concept_accuracy": None,
            "concept_positive_f1_mean": concepts.get("concept_macro_f1"),
            "concept_accuracy_pooled": concepts.get("concept_accuracy")}


def machine_line(m: dict) -> str:
    gpu = f", GPU {m['gpu']}" if m.get("gpu") else ", no GPU"
    return f"{m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB{gpu}; Python {m['python']}, torch {m['torch']}"


def _subfolders(folder: Path | None) -> set[Path]:
    return {p for p in folder.iterdir() if p.is_dir()} if folder is not None and folder.is_dir() else set()


class CommandFailed(SystemExit):
    """A benchmark command that exited non-zero: stops the benchmark unless caught. `folder` is the one folder it
    made in `creates_in` (None if it made none or several), `output` the tail of its stderr, `wall` its seconds."""

    def __init__(self, message: str, folder: Path | None, output: str, wall: float) -> None:
        super().__init__(message)
        self.folder, self.output, self.wall = folder, output, wall


def run_command(cmd: list[str], creates_in: Path | None = None, echo: bool = False
                ) -> tuple[Path | None, float, str]:
    """Run one command of a benchmark and time it.

    `creates_in`: the folder in which the command makes its output folder (a run's `--out`, a run folder's
    `evaluations/`): the one folder that appears there is returned, so no benchmark reads paths out of stdout.
    Returns (that folder, or None without `creates_in`; wall seconds; stdout). A failing command prints the tail
    of its output and raises CommandFailed, which stops the benchmark unless caught; so does a command that made no new folder, or several.
    """
    print("running:", " ".join(cmd), flush=True)
    before = _subfolders(creates_in)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-4000:])
        made = sorted(_subfolders(creates_in) - before) if creates_in is not None else []
        raise CommandFailed(f"command failed: {' '.join(cmd)}", made[0] if len(made) == 1 else None,
                            proc.stderr[-4000:], wall)
    if echo:
        print(proc.stdout.strip()[-1500:], flush=True)
    if creates_in is None:
        return None, wall, proc.stdout
    made = sorted(_subfolders(creates_in) - before)
    if len(made) != 1:
        raise SystemExit(f"{' '.join(cmd)}: expected one new folder in {creates_in}, found {len(made)}: "
                         f"{[p.name for p in made]}")
    return made[0], wall, proc.stdout


def run_or_reuse(cmd: list[str], reuse: str | None, creates_in: Path | None = None, echo: bool = False,
                 expected_config: dict | None = None) -> tuple[Path | None, float]:
    """Run a training command, or take the run folder `reuse` of an earlier call instead (its command stands;
    with `expected_config`, only if the run's config.yaml is that config: `check_reused_config`).

    Returns (the run folder, the wall seconds of its training: measured here, or the run's metrics.json
    `wall_time_s`, whose "total" where it is given per stage, as in a neuron-concepts pipeline).
    """
    if reuse is None:
        path, wall, _ = run_command(cmd, creates_in, echo)
        return path, wall
    run = Path(reuse).resolve()
    if expected_config is not None:
        check_reused_config(run, expected_config)
    wall = json.loads((run / "metrics.json").read_text())["wall_time_s"]
    return run, wall["total"] if isinstance(wall, dict) else wall


#: config keys (last component) that may differ between a reused run and the command it stands for: where it wrote,
#: on which device, with which progress bars; and data.root, where the (regenerated, identical) data lay. A key
#: the command leaves at "auto" is free too: the run saves what it resolved it to.
REUSE_FREE_KEYS = ("out", "device", "progress")


def check_reused_config(run: Path, expected: dict) -> None:
    """Refuse a reused run whose config.yaml differs from `expected` (the config the benchmark's command would
    resolve to, as a nested dict) in any key but REUSE_FREE_KEYS, listing the differences."""
    import yaml

    def flat(d: dict, prefix: str = "") -> dict:
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    have = flat(yaml.safe_load((run / "config.yaml").read_text()) or {})
    want = flat(json.loads(json.dumps(expected)))  # tuples as lists, as YAML reads them
    # keys the config gained after the run was written (e.g. data.train_subset) hold defaults that keep the earlier
    # behaviour; they are named, not counted as differences
    added = sorted(k for k in set(want) - set(have) if k.rsplit(".", 1)[-1] not in REUSE_FREE_KEYS)
    if added:
        print(f"{run}: config keys added since the run was written, taken at their defaults: {', '.join(added)}")
    diff = [f"{k}: run {have.get(k)!r}, command {want.get(k)!r}" for k in sorted(set(have) | set(want))
            if k.rsplit(".", 1)[-1] not in REUSE_FREE_KEYS and k != "data.root" and want.get(k) != "auto"
            and k not in added and have.get(k) != want.get(k)]
    if diff:
        raise SystemExit(f"{run}: not the run the benchmark's command makes ({len(diff)} config keys differ: "
                         + "; ".join(diff[:8]) + (" ..." if len(diff) > 8 else "") + "); rerun without reusing it")


def source_of(run: Path) -> dict:
    """The source commit a run recorded (provenance.json), or why there is none."""
    path = run / "provenance.json"
    if not path.is_file():
        return {"commit": None, "why": "no provenance.json (the run predates it)"}
    return json.loads(path.read_text()).get("source", {"commit": None, "why": "not recorded"})
