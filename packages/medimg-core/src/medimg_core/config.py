"""Typed configs: dataclasses loaded from YAML, overridden by dotted command-line options, validated.

    cfg = load_config(BaselineConfig, "wbc.yaml", ["--optim.lr", "1e-4", "--data.fold=2"])
    save_config(cfg, run_dir / "config.yaml")

Unknown keys are rejected with the nearest valid key suggested; values are coerced to the field's
type (int, float, bool, str, Optional, Literal, tuple/list, nested dataclasses) with a clear error.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key and what was expected."""


class FieldError(ConfigError):
    """A value out of range in a config section's `__post_init__`: `key` is the field's name, which the loader
    prefixes with the section (`train.batch_size`)."""

    def __init__(self, key: str, detail: str):
        self.key, self.detail = key, detail
        super().__init__(f"{key}: {detail}")


def check_range(section: Any, key: str, *, minimum: float | None = None, maximum: float | None = None,
                above: float | None = None, below: float | None = None, integer: bool = False,
                optional: bool = False, why: str = "") -> None:
    """Raise FieldError unless `section.key` is a finite number within the bounds (inclusive `minimum` and
    `maximum`, exclusive `above` and `below`); None passes when `optional`. `why` ends the message."""
    value = getattr(section, key)
    if value is None and optional:
        return
    bounds = []
    if minimum is not None:
        bounds.append(f">= {minimum:g}")
    if above is not None:
        bounds.append(f"> {above:g}")
    if maximum is not None:
        bounds.append(f"<= {maximum:g}")
    if below is not None:
        bounds.append(f"< {below:g}")
    expected = f"{'an integer' if integer else 'a finite number'}{' ' + ' and '.join(bounds) if bounds else ''}"
    if optional:
        expected += " (or null)"
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and integer:
        ok = float(value).is_integer()
    if ok:
        ok = ((minimum is None or value >= minimum) and (maximum is None or value <= maximum)
              and (above is None or value > above) and (below is None or value < below))
    if not ok:
        raise FieldError(key, f"expected {expected}, got {value!r}{'; ' + why if why else ''}")


def parse_overrides(args: Sequence[str]) -> dict[str, str]:
    """`["--optim.lr", "1e-4", "--data.fold=2"]` -> `{"optim.lr": "1e-4", "data.fold": "2"}`."""
    out: dict[str, str] = {}
    i = 0
    args = list(args)
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or len(arg) == 2:
            raise ConfigError(f"unexpected argument {arg!r}; overrides look like --section.key VALUE")
        key = arg[2:]
        if "=" in key:
            key, value = key.split("=", 1)
        else:
            if i + 1 >= len(args):
                raise ConfigError(f"override --{key} has no value")
            value = args[i + 1]
            i += 1
        out[key.replace("-", "_")] = value
        i += 1
    return out


def _field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _suggest(key: str, valid: Sequence[str]) -> str:
    near = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.5)
    return f"; did you mean '{near[0]}'?" if near else f"; valid keys: {', '.join(valid)}"


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        is_none = value is None or (isinstance(value, str) and value.lower() in ("none", "null", "~"))
        if is_none and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, option, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} does not fit {hint}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping of {hint.__name__} settings, got {value!r}")
        return _build(hint, value, where)
    if origin in (tuple, list) or hint in (tuple, list):
        if isinstance(value, str):
            loaded = yaml.safe_load(value)
            value = loaded if isinstance(loaded, list) else [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item = args[0] if args else Any
        items = [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if (origin or hint) is tuple else items
    if origin in (dict,) or hint is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        try:
            as_float = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
        if as_float != int(as_float):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return int(as_float)
    if hint is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if hint is str:
        if isinstance(value, (dict, list)) or value is None:
            raise ConfigError(f"{where}: expected a string, got {'null' if value is None else repr(value)}")
        return str(value)
    if hint is Path:
        return Path(value)
    return value


def _build(cls: type[T], data: Mapping[str, Any], where: str = "") -> T:
    hints = typing.get_type_hints(cls)
    names = _field_names(cls)
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            label = f"{where}.{key}" if where else key
            valid = [f"{where}.{n}" if where else n for n in names]
            raise ConfigError(f"unknown config key '{label}'{_suggest(label, valid)}")
        kwargs[key] = _coerce(value, hints[key], f"{where}.{key}" if where else key)
    try:
        return cls(**kwargs)
    except FieldError as exc:
        raise ConfigError(f"{where + '.' if where else ''}{exc.key}: {exc.detail}") from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where or cls.__name__}: {exc}") from None


def _all_keys(cls: type, prefix: str = "") -> list[str]:
    hints = typing.get_type_hints(cls)
    out = []
    for name in _field_names(cls):
        key = f"{prefix}{name}"
        out.append(key)
        if dataclasses.is_dataclass(hints[name]):
            out += _all_keys(hints[name], key + ".")
    return out


def config_to_dict(config: Any) -> dict[str, Any]:
    """A plain, YAML-friendly dict (tuples become lists, paths strings)."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, Mapping):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, Path):
            return str(v)
        return v

    return plain(config)


def merge_overrides(data: dict[str, Any], overrides: Mapping[str, Any], cls: type,
                    parse_strings: bool = True) -> dict[str, Any]:
    """Apply dotted overrides to a nested dict, checking each key exists in `cls`. String values are read as
    YAML (`--optim.lr 1e-4`, `--model.layers [8, 4]`), except the empty string, unless `parse_strings` is False
    (values of a YAML file or a config object, already typed)."""
    valid = _all_keys(cls)
    free_form = {k for k in valid if _is_mapping_field(cls, k)}
    merged = yaml.safe_load(yaml.safe_dump(data)) or {}
    for key, value in overrides.items():
        inside_mapping = any(key.startswith(prefix + ".") for prefix in free_form)
        if key not in valid and not inside_mapping:
            raise ConfigError(f"unknown config key '{key}'{_suggest(key, valid)}")
        node = merged
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"'{key}': '{part}' is not a section")
        parse = parse_strings and isinstance(value, str) and value.strip() != ""  # '' stays '', never null
        node[parts[-1]] = yaml.safe_load(value) if parse else value
    return merged


def load_config(
    cls: type[T], path: str | Path | None = None, overrides: Sequence[str] | Mapping[str, Any] = ()
) -> T:
    """Defaults of `cls`, then the YAML file at `path`, then the overrides."""
    data: dict[str, Any] = config_to_dict(cls())
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        flat = _flatten_sections(cls, loaded)
        try:
            data = merge_overrides(data, flat, cls, parse_strings=False)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    if not isinstance(overrides, Mapping):
        overrides = parse_overrides(overrides)
    data = merge_overrides(data, overrides, cls)
    return _build(cls, data)


def _flatten_sections(cls: type, nested: Mapping[str, Any]) -> dict[str, Any]:
    """Nested sections of `cls` as dotted keys; free-form mappings (e.g. data.options) stay whole."""
    section_keys = {k for k in _all_keys(cls) if dataclasses.is_dataclass(_hint_at(cls, k))}
    flat: dict[str, Any] = {}

    def walk(node: Mapping, prefix: str = "") -> None:
        for k, v in node.items():
            if isinstance(v, Mapping) and f"{prefix}{k}" in section_keys:
                walk(v, f"{prefix}{k}.")
            else:
                flat[f"{prefix}{k}"] = v

    walk(nested)
    return flat


def config_from_dict(cls: type[T], nested: Mapping[str, Any]) -> T:
    """`cls` built from a nested dict such as a checkpoint's saved config (`config_to_dict` output)."""
    merged = merge_overrides(config_to_dict(cls()), _flatten_sections(cls, nested), cls, parse_strings=False)
    return _build(cls, merged)


def _is_mapping_field(cls: type, dotted: str) -> bool:
    hint = _hint_at(cls, dotted)
    return hint is dict or typing.get_origin(hint) is dict


def _hint_at(cls: type, dotted: str) -> Any:
    hint: Any = cls
    for part in dotted.split("."):
        hint = typing.get_type_hints(hint)[part]
    return hint


def save_config(config: Any, path: str | Path) -> Path:
    """Write the resolved config as YAML, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
    os.replace(tmp, path)
    return path
