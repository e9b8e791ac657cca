"""Typed, frozen configuration dataclasses and their TOML round trip (STYLE.md practice 7).

Each stage defines a frozen dataclass next to the code that uses it (``SimulationConfig``,
``GriddingConfig``, ``LLRConfig``, ``UnrollConfig``, training stage configs, ``MatchingConfig``);
this module turns any of them into plain dictionaries (written into every checkpoint and result) and
reads them back from TOML, rejecting unknown or mistyped fields with one clear line.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from .errors import InputError

__all__ = ["dump_toml", "from_dict", "load_toml", "to_dict"]

T = TypeVar("T")


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain ``dict`` of a (possibly nested) config dataclass; tuples become lists."""
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        raise TypeError(f"{cfg!r} is not a dataclass instance")

    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return to_dict(v)
        if isinstance(v, tuple | list):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {str(k): conv(x) for k, x in v.items()}
        if isinstance(v, Path):
            return str(v)
        return v

    return {f.name: conv(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except InputError as exc:
                errors.append(str(exc))
        raise InputError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise InputError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], where) for v in value)
        if len(args) != len(value):
            raise InputError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(v, a, where) for v, a in zip(value, args, strict=True))
    if origin is dict:
        if not isinstance(value, dict):
            raise InputError(f"{where}: expected a table, got {value!r}")
        return dict(value)
    if origin is typing.Literal:
        if value not in args:
            raise InputError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        if not isinstance(value, dict):
            raise InputError(f"{where}: expected a table, got {value!r}")
        return from_dict(hint, value, where=where)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InputError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise InputError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise InputError(f"{where}: expected a string, got {value!r}")
        return value
    if hint is Path:
        if not isinstance(value, str | Path):
            raise InputError(f"{where}: expected a path, got {value!r}")
        return Path(value)
    return value


def from_dict(cls: type[T], data: dict[str, Any], *, where: str = "config") -> T:
    """Build the config dataclass ``cls`` from ``data``, checking names and types.

    Raises
    ------
    InputError
        On an unknown field or a value of the wrong type (the message names the field).
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        raise InputError(
            f"{where}: unknown field {unknown[0]!r} for {cls.__name__} "
            f"(known: {', '.join(sorted(names))})"
        )
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{where}: {exc}") from None


def load_toml(cls: type[T], path: str | Path, *, table: str | None = None) -> T:
    """Read ``cls`` from a TOML file (optionally from one ``[table]`` of it)."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"config {p}: no such file")
    try:
        data = tomllib.loads(p.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"config {p}: not valid TOML: {exc}") from None
    if table is not None:
        if table not in data:
            raise InputError(f"config {p}: no [{table}] table")
        data = data[table]
    return from_dict(cls, data, where=str(p) if table is None else f"{p}[{table}]")


def dump_toml(cfg: Any) -> str:
    """TOML text of a config dataclass (``None`` fields are left out, as TOML has no null)."""
    import tomli_w

    def strip(d: dict[str, Any]) -> dict[str, Any]:
        return {k: strip(v) if isinstance(v, dict) else v for k, v in d.items() if v is not None}

    return tomli_w.dumps(strip(to_dict(cfg)))
