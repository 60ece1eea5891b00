"""Run folders: one per run, never overwritten, with the resolved config, metrics, checkpoints,
figures and a log."""

from __future__ import annotations

import logging
import re
import sys
import time
from pathlib import Path

log = logging.getLogger("medimg")


class RunFolderError(OSError):
    """The run folder cannot be created or written, or its disk is nearly full (reported before training)."""


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "run"


def create_run_dir(base: str | Path, name: str) -> Path:
    """A new folder `base/<date>-<name>`; a suffix -2, -3 ... keeps runs from overwriting each other."""
    base = Path(base)
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunFolderError(f"{base}: cannot create the folder for runs ({exc.strerror or exc}); "
                             "expected a writable directory (--out)") from None
    stem = f"{time.strftime('%Y%m%d-%H%M%S')}-{slug(name)}"
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


def prepare_run(cfg, method: str, dataset: str, backbone: str, dist_info, resume_dir: str | Path | None = None) -> Path:
    """The run folder of a training run, ready on every rank.

    A new folder `<cfg.out>/<date>-<cfg.name or method-dataset-backbone[-foldF]>-seed<S>` is made by rank 0
    (or `resume_dir` is reused), shared with the other ranks, logging starts, the folder is checked for
    writing and free space, and the resolved config is saved as config.yaml. `cfg` needs `out`, `name`,
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
    return run_dir
