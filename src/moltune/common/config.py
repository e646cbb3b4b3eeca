"""Typed configs: dataclass defaults, overridden by a YAML preset, overridden by CLI flags.

A preset is a YAML file in ``moltune/presets/`` (by name) or anywhere on disk (by path). Unknown
keys are an error, so a typo in a preset never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml

from moltune.common.errors import InputFileError, InvalidInputError

T = TypeVar("T")


class ConfigKeyError(InvalidInputError, KeyError):
    """A config key the typed config does not have (exit status 2 on the command line)."""

    def __str__(self) -> str:
        return Exception.__str__(self)

PRESET_PACKAGE = "moltune.presets"


def preset_path(name_or_path: str | Path) -> Path:
    """Resolve a preset name (``aa_300_450``) or a path to a YAML file."""
    p = Path(name_or_path)
    if p.suffix in (".yml", ".yaml") and p.exists():
        return p
    candidate = resources.files(PRESET_PACKAGE) / f"{name_or_path}.yml"
    if candidate.is_file():
        return Path(str(candidate))
    available = sorted(
        f.name[:-4] for f in resources.files(PRESET_PACKAGE).iterdir() if f.name.endswith(".yml")
    )
    raise InputFileError(
        f"preset {str(name_or_path)!r} is neither a YAML file nor a known preset; "
        f"known presets: {', '.join(available) or 'none'}"
    )


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; an empty file is an empty mapping."""
    try:
        with open(path) as fh:
            data = yaml.safe_load(fh)
    except (OSError, UnicodeDecodeError) as exc:
        raise InputFileError(f"cannot read config {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" (line {where.line + 1})" if where is not None else ""
        raise InvalidInputError(f"{path} is not valid YAML{at}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InvalidInputError(f"{path}: expected a YAML mapping at top level, "
                                f"got {type(data).__name__}")  # fmt: skip
    return data


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build dataclass ``cls`` from ``data``, recursing into nested dataclasses.

    Raises :class:`ConfigKeyError` (a ``KeyError``) naming any key ``cls`` does not have.
    """
    if not isinstance(data, dict):
        raise InvalidInputError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(data) - set(fields)
    if unknown:
        raise ConfigKeyError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(fields)}")
    kwargs = {}
    defaults = cls()  # type: ignore[call-arg]
    for name, value in data.items():
        default = getattr(defaults, name)
        if dataclasses.is_dataclass(default):
            if not isinstance(value, dict):
                raise InvalidInputError(f"{where}.{name}: expected a mapping, "
                                        f"got {type(value).__name__}")  # fmt: skip
            merged = dataclasses.asdict(default) | value
            kwargs[name] = from_dict(type(default), merged, f"{where}.{name}")
        else:
            kwargs[name] = value
    return dataclasses.replace(defaults, **kwargs)


def merge(base: T, overrides: dict[str, Any]) -> T:
    """Return ``base`` with ``overrides`` (possibly nested dicts; ``None`` values ignored)."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    current = dataclasses.asdict(base)  # type: ignore[arg-type]
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(current.get(key), dict):
            current[key] = current[key] | value
        else:
            current[key] = value
    return from_dict(type(base), current)


def load_config(cls: type[T], preset: str | Path | None = None, **overrides: Any) -> T:
    """Typed defaults of ``cls`` <- preset YAML <- keyword overrides (``None`` means unset)."""
    cfg = cls()  # type: ignore[call-arg]
    if preset is not None:
        cfg = merge(cfg, load_yaml(preset_path(preset)))
    return merge(cfg, overrides)


def to_yaml(cfg: Any) -> str:
    """Serialise a dataclass config to YAML (the resolved config a run folder keeps)."""
    data = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else cfg
    return yaml.safe_dump(_plain(data), sort_keys=False)


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj
