"""The options shared by every command that trains or explains, defined once for the six command lines
(medimg, crl, cipl, iis, neuron-concepts, dae-cf).

The convention (checked command by command by integration-tests/test_cli_convention.py):

- A command that **trains** (starts a run from a dataset and a config: `medimg train-baseline`, `crl train`,
  `cipl train`, `dae-cf train`, `iis score`, `neuron-concepts run` and `train-opaque`) takes `--config`,
  `--device`, `--seed`, `--out`, `--progress/--no-progress` and `--resume` (`training_options`). Each
  defaults to None: the value comes from the config, and the option overrides it. With `--resume` only
  `--progress/--no-progress` may be added (a display setting, not part of the run).
- A **stage** (a step that reads an earlier folder, with a config of its own: the neuron-concepts stages,
  `iis extract-concepts`) takes the same options but `--resume` (a stage reruns whole into a new folder).
- A command that **explains or evaluates** a trained run takes `--device` (default auto, resolved and
  checked before any work); `--seed` where it draws random numbers (default 0); `--out` where it writes
  figures, reports or evaluation files (default: a place inside the run folder); `--progress/--no-progress`
  where it passes over a dataset split or samples a diffusion model.

Every one of these options is a `CommonOption`, so the convention test can tell the shared definition
from a look-alike.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

#: the same text as medimg_core.distributed.DEVICE_NAMES (not imported: it would import torch for --help)
DEVICE_CHOICES = "auto (CUDA, else MPS, else CPU), cpu, cuda, cuda:1 or mps"
PROGRESS_HELP = "Progress bars (default: when interactive)."
FROM_CONFIG = "default: from the config"


class ErrorReportingGroup(click.Group):
    """A command group that turns bad data and bad configs into a clean message and exit status 1
    instead of a traceback; every medimg command line uses it."""

    def invoke(self, ctx: click.Context):
        from medimg_core.checkpoint import CheckpointError
        from medimg_core.config import ConfigError
        from medimg_core.data.errors import DatasetError
        from medimg_core.models.weight_files import BackboneError
        from medimg_core.runs import RunFolderError
        from medimg_core.training import TrainingDiverged

        try:
            return super().invoke(ctx)
        except (DatasetError, ConfigError, RunFolderError, CheckpointError, BackboneError, TrainingDiverged) as exc:
            raise click.ClickException(str(exc)) from None


class CommonOption(click.Option):
    """An option of the shared convention (see the module docstring)."""


def _check_device(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A device name that this machine has, as typed (a training resolves it per process under torchrun)."""
    if value is None:
        return None
    _resolve(value)
    return value


def _resolve_device(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """`auto` -> the device to use now (`cuda:0`, `mps` or `cpu`); an explicit name is checked."""
    return str(_resolve(value))


def _resolve(value: str):
    from medimg_core.distributed import select_device

    try:
        return select_device(value)
    except RuntimeError as exc:  # DeviceError, with what to use instead
        raise click.BadParameter(str(exc)) from None


def _option(*decls: str, **kwargs: Any) -> Callable:
    return click.option(*decls, cls=CommonOption, **kwargs)


def config_option(shipped: str, default: str = "the package defaults") -> Callable:
    """`--config FILE|NAME`, passed as `config_name`. `shipped` lists the configs shipped with the package."""
    return _option("--config", "config_name", default=None, metavar="FILE|NAME",
                   help=f"YAML config file, or the name of a shipped one: {shipped}. The other options and "
                        f"--section.key VALUE overrides win over it (default: {default}).")


def device_option(from_config: bool = True) -> Callable:
    """`--device`. From the config (trainings, stages: None unless given; checked) or, for commands that
    explain or evaluate, `auto` resolved to the device used (`cpu`, `cuda:0`, `mps`) before the command runs."""
    if from_config:
        return _option("--device", default=None, callback=_check_device,
                       help=f"{DEVICE_CHOICES} ({FROM_CONFIG}, auto).")
    return _option("--device", default="auto", show_default=True, callback=_resolve_device,
                   help=f"{DEVICE_CHOICES}.")


def seed_option(what: str, from_config: bool = True) -> Callable:
    """`--seed N`; `what` says what it seeds. None unless given (from the config), or 0 for direct commands."""
    if from_config:
        return _option("--seed", type=int, default=None, help=f"Random seed ({what}; {FROM_CONFIG}).")
    return _option("--seed", type=int, default=0, show_default=True, help=f"Random seed ({what}).")


def out_option(help: str | None = None, as_path: bool = True, **path: Any) -> Callable:
    """`--out`. Trainings: the folder receiving the run folder (a config key, a string). Others say what
    they write in `help`; with as_path the value is a Path (click.Path settings such as dir_okay=False as
    keywords)."""
    if help is None:
        return _option("--out", default=None, help=f"Folder that receives the run folder ({FROM_CONFIG}, runs/).")
    return _option("--out", default=None, type=click.Path(path_type=Path, **path) if as_path else None, help=help)


def progress_option() -> Callable:
    """`--progress/--no-progress`, None unless given: bars when stderr is a terminal."""
    return _option("--progress/--no-progress", default=None, help=PROGRESS_HELP)


def resume_option(detail: str = "") -> Callable:
    """`--resume RUN_DIR`, passed as `resume_dir`."""
    return _option("--resume", "resume_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
                   default=None, help="Continue the interrupted run in this folder with its saved config; only "
                                      f"--progress/--no-progress may be given with it.{' ' + detail if detail else ''}")


def training_options(shipped: str, seeds: str, resume: bool = True, out: str | None = None,
                     resume_detail: str = "", config_default: str = "the package defaults") -> Callable:
    """--config, --device, --seed, --out, --progress/--no-progress and (unless resume=False) --resume, in
    this order: the options of a command that trains (or, without --resume, of a stage). `out` replaces
    the help of --out (still a string for the config)."""
    decorators = [config_option(shipped, config_default), device_option(), seed_option(seeds),
                  out_option(out, as_path=False), progress_option()]
    if resume:
        decorators.append(resume_option(resume_detail))

    def apply(function: Callable) -> Callable:
        for decorator in reversed(decorators):
            function = decorator(function)
        return function

    return apply


def resolve_config_path(name: str | None, shipped_dir: Path | None = None) -> Path | None:
    """A config file path, or the name of a config shipped in `shipped_dir` (medimg_core/configs by default)."""
    if name is None:
        return None
    if shipped_dir is None:
        shipped_dir = Path(__file__).parent / "configs"
    path = Path(name)
    if path.is_file():
        return path
    shipped = shipped_dir / f"{name.removesuffix('.yaml')}.yaml"
    if shipped.is_file():
        return shipped
    available = sorted(p.stem for p in shipped_dir.glob("*.yaml"))
    raise click.BadParameter(f"{name!r} is neither a file nor a shipped config ({', '.join(available)})",
                             param_hint="--config")


#: config keys a resumed run may change: how it is displayed, not what it computes
DISPLAY_KEYS = ("train.progress", "progress")


def training_config(config_cls: type, config_name: str | None, shipped_dir: Path, named: dict[str, Any],
                    extra_args: list[str], resume_dir: Path | None) -> Any:
    """The resolved config of a command that trains; a bad config or option is a usage error (exit 2).

    With `resume_dir`: the run's saved config.yaml (only the DISPLAY_KEYS, --progress/--no-progress, may be
    given). Otherwise the YAML `config_name` (a path or a config shipped in `shipped_dir`), then the command's
    named options (`named`, dotted keys; None values are skipped), then `--section.key VALUE` pairs from
    `extra_args`; data.root is required.
    """
    from medimg_core.config import ConfigError, load_config, parse_overrides

    try:
        overrides = {k: v for k, v in named.items() if v is not None}
        overrides.update(parse_overrides(extra_args))
        if resume_dir is not None:
            display = {k: overrides.pop(k) for k in list(overrides) if k in DISPLAY_KEYS}
            if overrides or config_name:
                raise ConfigError("--resume continues a run with its saved config; drop the other options "
                                  "(only --progress/--no-progress may be given with it)")
            if not (resume_dir / "config.yaml").is_file():
                raise ConfigError(f"{resume_dir}: not a run folder (no config.yaml, which every training writes); "
                                  "--resume takes the folder of a run, such as runs/<date>-<method>-...")
            try:
                return load_config(config_cls, resume_dir / "config.yaml", display)
            except ConfigError as exc:
                raise ConfigError(_resume_mismatch(resume_dir, exc)) from None
        cfg = load_config(config_cls, resolve_config_path(config_name, shipped_dir), overrides)
        if not cfg.data.root:
            raise ConfigError("--root (data.root) is required: the dataset folder or file")
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    return cfg


def _resume_mismatch(resume_dir: Path, exc: Exception) -> str:
    """The error of a --resume whose saved config does not load: name the method that trained the run."""
    from medimg_core.runs import run_kind

    found = run_kind(resume_dir)
    if found is None or not any(sign in str(exc) for sign in ("unknown config key", "is not a section")):
        return str(exc)  # a damaged config.yaml (not valid YAML, a bad value): its own error names the file
    kind, where = found
    return (f"{resume_dir}: this run was trained by {kind!r} ({where}), and its config.yaml does not fit this "
            f"command ({exc}); resume it with the command of the method that trained it")


def parse_options(pairs: tuple[str, ...]) -> dict:
    """`("a=1", "b=false", "c=x,y")` -> `{"a": 1, "b": False, "c": ["x", "y"]}`."""
    import yaml

    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise click.BadParameter(f"{pair!r}: expected KEY=VALUE", param_hint="--option")
        key, value = pair.split("=", 1)
        parsed = yaml.safe_load(value) if value else ""
        if isinstance(parsed, str) and "," in parsed:
            parsed = [v.strip() for v in parsed.split(",")]
        out[key.strip()] = parsed
    return out
