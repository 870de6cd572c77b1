"""Nested dataclasses from YAML-read dicts: unknown keys with a suggestion, type checks, overrides.

`build_dataclass` validates a nested mapping into a dataclass whose fields are dataclasses or
plain types (bool, int, float, str, list, dict, ``tuple[X, ...]``, unions with None, Any); numbers written as text
(``3e-4``) become numbers. `apply_overrides` applies ``section.key=value`` command-line strings.
Used by `hf_wavepos.training.experiment_config` and the benchmark settings
(`hf_wavepos.experiments.bench_configs.read_bench_config`).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Mapping, Sequence, Union

import yaml


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with ``section.key=value`` overrides applied (values parsed as YAML)."""
    merged = {k: dict(v) if isinstance(v, Mapping) else v for k, v in data.items()}
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like section.key=value (e.g. train.max_steps=20).")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else ""
        parts = key.strip().split(".")
        if len(parts) == 1:
            merged[parts[0]] = value
        elif len(parts) == 2:
            section = merged.setdefault(parts[0], {})
            if not isinstance(section, dict):
                raise ValueError(f"override {item!r}: {parts[0]!r} is not a section.")
            section[parts[1]] = value
        else:
            raise ValueError(f"override {item!r}: keys have at most two parts (section.key).")
    return merged


def build_dataclass(cls: type, data: Any, prefix: str = "") -> Any:
    """``cls(**data)`` with nested dataclass fields built recursively and every value type-checked.

    Args:
        cls: a dataclass type; data: a mapping (or None: all defaults, or already a ``cls``).
        prefix: dotted path of ``data`` in the whole config, for error messages (``"train."``).

    Raises:
        ValueError: an unknown key (naming the closest known one) or a value of the wrong type.
    """
    if isinstance(data, cls):
        return data
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ValueError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {data!r}.")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.5)
        hint = f"did you mean '{prefix}{close[0]}'? " if close else ""
        raise ValueError(f"unknown config key '{prefix}{key}'; {hint}known keys: {', '.join(prefix + f for f in fields)}.")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = build_dataclass(hint, value, f"{prefix}{name}.")
        else:
            kwargs[name] = coerce_value(value, hint, f"{prefix}{name}")
    return cls(**kwargs)


def coerce_value(value: Any, hint: Any, name: str) -> Any:
    """Check ``value`` against a field's type annotation; return it (numbers written as text, ``3e-4``,
    become numbers; a YAML list becomes a tuple for ``tuple[X, ...]``).

    Args:
        value: as read from YAML; hint: the resolved annotation (bool, int, float, str, list,
            dict, ``tuple[X, ...]``, unions with None, Any); name: the field, for the message.

    Raises:
        ValueError: naming the field, the expected type and the value.
    """
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return coerce_value(value, option, name)
            except ValueError as err:
                errors.append(str(err))
        raise ValueError(errors[0] if errors else f"{name} has a bad value {value!r}.")
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{name} must be true or false, got {value!r}.")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ValueError(f"{name} must be an integer, got {value!r}.")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ValueError(f"{name} must be a number, got {value!r}.")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"{name} must be text, got {value!r}.")
    if hint is list or origin is list:
        if isinstance(value, (list, tuple)):
            return [coerce_value(v, float, name) if isinstance(v, str) and _numeric(v) else v for v in value]
        raise ValueError(f"{name} must be a list, got {value!r}.")
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{name} must be a list (e.g. [a, b]), got {value!r}.")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce_value(v, args[0], f"{name}[{i}]") for i, v in enumerate(value))
        return tuple(value)
    if hint is dict or origin is dict:
        if isinstance(value, Mapping):
            return dict(value)
        raise ValueError(f"{name} must be a mapping, got {value!r}.")
    return value


def _numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
