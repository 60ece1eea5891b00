"""Run folders: one per run, never overwritten, with the resolved config, metrics, checkpoints, figures and a log.

Every method writes the same layout (`RUN_LAYOUT`); a multi-stage method (neuron-concepts) writes one such
folder per stage inside its pipeline folder (`Run.stage`). `Run` is the one object that reads and writes it:

    run = Run.open("runs/20261207-101500-crl-synth-derm-resnet18-seed0")
    run.metrics()["test"]["accuracy"]; run.checkpoint("best"); run.figures_dir
    run.update_metrics("boundary", {...})        # a later stage adds a section to metrics.json, atomically
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import resource
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger("medimg")

#: what a run folder holds (the contract every method's run folder keeps)
RUN_LAYOUT: dict[str, str] = {
    "config.yaml": "the resolved config of the run (every default filled in)",
    "metrics.json": "the final metrics: the common keys below plus the method's sections (test, ...)",
    "metrics.jsonl": "one line of metrics per epoch (trainings only)",
    "checkpoints/": "checkpoint folders best/ and last/ (see medimg_core.pretrained for their files)",
    "figures/": "the run's PNG figures",
    "log.txt": "the log",
}
#: keys every run's metrics.json carries
COMMON_KEYS = ("method", "dataset", "backbone", "wall_time_s", "peak_memory_mb", "device", "sizes")
LOCK_FILE = ".lock"


class RunFolderError(OSError):
    """The run folder cannot be created or written, or its disk is nearly full (reported before training)."""


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "run"


def create_run_dir(base: str | Path, name: str, dated: bool = True) -> Path:
    """A new folder `base/<date>-<name>` (`base/<name>` when not `dated`, as a pipeline's stage folders); a
    suffix -2, -3 ... keeps runs from overwriting each other."""
    base = Path(base)
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunFolderError(f"{base}: cannot create the folder for runs ({exc.strerror or exc}); "
                             "expected a writable directory (--out)") from None
    stem = f"{time.strftime('%Y%m%d-%H%M%S')}-{slug(name)}" if dated else slug(name)
    for i in range(1, 1000):
        path = base / (stem if i == 1 else f"{stem}-{i}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        except OSError as exc:
            raise RunFolderError(f"{path}: cannot create the run folder ({exc.strerror or exc})") from None
        (path / "figures").mkdir()
        return path
    raise RuntimeError(f"{base}: cannot create a new run folder for {name}")


def peak_memory_mb() -> float:
    """Peak resident memory of this process in MiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


class Run:
    """A run folder (see `RUN_LAYOUT`). Path-like: `run / "rules.json"`, `open(run / ...)`, `Path(run)` work."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    # -- creation and opening ----------------------------------------------------------------------
    @classmethod
    def create(cls, base: str | Path, name: str) -> Run:
        """A new run folder `base/<date>-<name>` (a suffix -2, -3 ... when taken), with figures/."""
        return cls(create_run_dir(base, name))

    @classmethod
    def open(cls, path: str | Path) -> Run:
        """An existing run folder; anything else is a RunFolderError saying what was expected."""
        path = Path(path)
        if not path.is_dir():
            raise RunFolderError(f"{path}: no such run folder")
        if not (path / "config.yaml").is_file() and not (path / "metrics.json").is_file():
            raise RunFolderError(f"{path}: not a run folder (expected config.yaml or metrics.json)")
        return cls(path)

    # -- path-like ---------------------------------------------------------------------------------
    def __fspath__(self) -> str:
        return str(self.path)

    def __truediv__(self, other: str | Path) -> Path:
        return self.path / other

    def __str__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Run):
            return self.path == other.path
        if isinstance(other, (str, Path)):
            return self.path == Path(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.path)

    @property
    def name(self) -> str:
        return self.path.name

    # -- the layout --------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.json"

    @property
    def history_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def figures_dir(self) -> Path:
        return self.path / "figures"

    @property
    def log_path(self) -> Path:
        return self.path / "log.txt"

    def checkpoint(self, name: str = "best") -> Path:
        """The checkpoint folder checkpoints/<name> (or the one a crash left mid-publish)."""
        from medimg_core.checkpoint import find_checkpoint

        return find_checkpoint(self.checkpoints_dir / name)

    def stage(self, name: str) -> Run:
        """The run folder of stage `name` inside this (pipeline) folder."""
        return Run(self.path / name)

    # -- metrics -----------------------------------------------------------------------------------
    def metrics(self) -> dict[str, Any]:
        """metrics.json; missing or malformed is a RunFolderError naming the file."""
        return read_json_object(self.metrics_path, "the run's final metrics")

    def history(self) -> list[dict[str, Any]]:
        """The per-epoch metrics of metrics.jsonl (empty when the run logged none)."""
        if not self.history_path.is_file():
            return []
        rows = []
        for i, line in enumerate(self.history_path.read_text().splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except ValueError as exc:
                    raise RunFolderError(f"{self.history_path}, line {i}: not valid JSON ({exc})") from None
        return rows

    def write_metrics(self, metrics: dict[str, Any]) -> Path:
        """Write metrics.json atomically (NaN as null)."""
        from medimg_core.checkpoint import write_json

        write_json(self.metrics_path, metrics)
        return self.metrics_path

    def update_metrics(self, section: str | None, values: dict[str, Any]) -> Path:
        """Merge `values` into metrics.json, under `section` (replacing it) or at the top level (None)."""
        current = self.metrics() if self.metrics_path.is_file() else {}
        if section is None:
            current.update(values)
        else:
            current[section] = values
        return self.write_metrics(current)

    # -- one writer at a time ----------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self) -> Iterator[Run]:
        """Hold the run folder's lock (a lock file, released when the process ends, even killed): a second
        training or resume of the same folder meanwhile is a RunFolderError instead of a second writer."""
        import fcntl

        path = self.path / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EACCES):
                    raise RunFolderError(f"{self.path}: another process is training or resuming this run "
                                         f"(it holds {path}); wait for it to finish") from None
                raise
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            yield self
        finally:
            os.close(fd)


def run_kind(path: str | Path) -> tuple[str, str] | None:
    """(what trained the run at `path`, where that was read) from its checkpoints' config.json kind or its
    metrics.json method; None when neither says. Never raises: it only explains other errors."""
    path = Path(path)
    for rel, key in (("checkpoints/last/config.json", "kind"), ("checkpoints/best/config.json", "kind"),
                     ("metrics.json", "method")):
        try:
            value = json.loads((path / rel).read_text()).get(key)
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(value, str) and value:
            return value, rel
    return None


def read_json_file(path: Path, what: str, invalid: type[Exception] = RunFolderError) -> Any:
    """The parsed content of a JSON file of a run (`what` says what it should hold). A missing file is a
    RunFolderError, malformed JSON an `invalid` error; both name the file."""
    if not path.is_file():
        raise RunFolderError(f"{path}: not found ({what})")
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise invalid(f"{path}: not valid JSON ({exc}); expected {what}") from None


def read_json_object(path: Path, what: str) -> dict[str, Any]:
    """A JSON file holding an object; missing, malformed or another type is a RunFolderError naming the file."""
    data = read_json_file(path, what)
    if not isinstance(data, dict):
        raise RunFolderError(f"{path}: expected a JSON object ({what}), found {type(data).__name__}")
    return data


def check_writable(path: str | Path, min_free_mb: int = 200) -> None:
    """Fail before training starts when the run folder cannot be written or the disk is nearly full."""
    import shutil

    path = Path(path)
    probe = path / ".write-test"
    try:
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise RunFolderError(f"{path}: the run folder is not writable ({exc.strerror})") from None
    free_mb = shutil.disk_usage(path).free / 2**20
    if free_mb < min_free_mb:
        raise RunFolderError(f"{path}: only {free_mb:.0f} MB free on this disk; need at least {min_free_mb} MB for checkpoints")


def setup_logging(run_dir: Path | None = None, is_main: bool = True, verbose: bool = False) -> None:
    """Log to stderr (main process only) and to run_dir/log.txt."""
    logger = logging.getLogger("medimg")
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    if is_main:
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(fmt)
        logger.addHandler(stream)
        if run_dir is not None:
            file = logging.FileHandler(Path(run_dir) / "log.txt")
            file.setFormatter(fmt)
            logger.addHandler(file)


def source_commit(module_file: str | Path | None = None) -> dict[str, Any]:
    """The git commit of the source checkout a module (default: medimg_core) is imported from: {"commit", "dirty"
    (tracked files changed)}, or {"commit": None, "why": ...} where it is not a git checkout (an installed wheel)
    or git is missing."""
    import subprocess

    folder = Path(module_file or __file__).resolve().parent
    try:
        head = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        if head.returncode != 0:
            return {"commit": None, "why": "not a git checkout"}
        status = subprocess.run(["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"commit": None, "why": f"git unavailable ({type(exc).__name__})"}
    return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip())}


#: the workspace's distributions, whose versions every run records
MEDIMG_DISTRIBUTIONS = ("crl", "neuron-concepts", "cipl", "iis", "dae-counterfactual")


def write_provenance(run_dir: Path) -> None:
    """provenance.json of a run: the command line, the versions of medimg-core, torch, timm and the method
    packages, and the source commit; a resumed run appends its own record under "resumes"."""
    from medimg_core.checkpoint import write_json
    from medimg_core.pretrained import versions

    record = {"command": sys.argv, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "versions": versions(*MEDIMG_DISTRIBUTIONS), "source": source_commit()}
    path = run_dir / "provenance.json"
    previous = read_json_object(path, "the run's provenance") if path.is_file() else None
    payload = record if previous is None else {**previous, "resumes": [*previous.get("resumes", []), record]}
    write_json(path, payload)


def prepare_run(cfg, method: str, dataset: str, backbone: str, dist_info, resume_dir: str | Path | None = None) -> Run:
    """The run folder of a training run, ready on every rank.

    A new folder `<cfg.out>/<date>-<cfg.name or method-dataset-backbone[-foldF]>-seed<S>` is made by rank 0
    (or `resume_dir` is reused), shared with the other ranks, logging starts, the folder is checked for
    writing and free space, the resolved config is saved as config.yaml and the command, versions and source
    commit as provenance.json (`write_provenance`). `cfg` needs `out`, `name`,
    `seed` and `data.options`.
    """
    from medimg_core.config import save_config
    from medimg_core.distributed import broadcast_object

    if resume_dir is not None:
        run_dir: Path | None = Path(resume_dir)
    elif dist_info.is_main:
        fold = cfg.data.options.get("fold")
        name = cfg.name or f"{method}-{dataset}-{backbone}" + (f"-fold{fold}" if fold is not None else "")
        base = Path(cfg.out)
        try:
            base.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunFolderError(f"{base}: cannot create the folder for runs ({exc.strerror or exc}); "
                                 "expected a writable directory (--out)") from None
        check_writable(base)  # before the run folder exists, so a refused run leaves nothing behind
        run_dir = create_run_dir(base, f"{name}-seed{cfg.seed}")
    else:
        run_dir = None
    run_dir = Path(broadcast_object(str(run_dir) if run_dir else None, dist_info))
    setup_logging(run_dir, dist_info.is_main)
    if dist_info.is_main:
        if resume_dir is not None:
            check_writable(run_dir)
        save_config(cfg, run_dir / "config.yaml")
        write_provenance(run_dir)
    return Run(run_dir)
