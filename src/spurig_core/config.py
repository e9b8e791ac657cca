"""Typed, frozen configuration dataclasses and their TOML round trip (STYLE.md practice 7).

Each stage defines a frozen dataclass next to the code that uses it (``SimulationConfig``,
``GriddingConfig``, ``LLRConfig``, ``UnrollConfig``, training stage configs, ``MatchingConfig``);
this module turns any of them into plain dictionaries (written into every checkpoint and result) and
reads them back from TOML, rejecting -- before any work -- unknown tables or keys, mistyped values,
NaN/Inf and values outside the ranges of :data:`RANGES` with one line that names ``[table] key``,
the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import operator
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from .durations import DURATIONS
from .errors import InputError

__all__ = [
    "RANGES",
    "check_tables",
    "dump_toml",
    "from_dict",
    "load_toml",
    "merge_tables",
    "read_toml",
    "to_dict",
]

T = TypeVar("T")

_DURATIONS = tuple(sorted(DURATIONS, key=DURATIONS.__getitem__))  # shortest first
_DEVICES = ("cpu", "cuda")

#: The allowed values of the config fields, by dataclass name (looked up along the class's MRO)
#: and field: an interval (``">= 1"``, ``"> 0"``, ``"[0, 1]"``, ``"(0, 1]"``) or a tuple of
#: choices; ``"device"`` is ``cpu``, ``cuda`` or ``cuda:N``.  Numbers inside tuples and tables
#: are checked one by one, and every float must be finite.  :func:`from_dict` applies it, so
#: every TOML path (``spurig recon --config``, ``prepare-training --config``, the training
#: stages, a checkpoint's config) is checked before any work.
RANGES: dict[str, dict[str, str | tuple[Any, ...]]] = {
    "GriddingConfig": {
        "grid_oversampling": "[1, 4]",
        "n_sources": ">= 1",
        "search_window": ">= 0",
        "hidden": ">= 1",
        "layers": ">= 1",
        "fourier_features": ">= 1",
        "fourier_scale": "> 0",
        "prior_width": ">= 0",
        "steps": ">= 1",
        "lr": "> 0",
        "batch": ">= 1",
        "train_sets": ">= 1",
        "targets_per_set": ">= 1",
        "calib_margin": ">= 0",
        "grid_batch": ">= 1",
        "seed": ">= 0",
        "device": _DEVICES,
        "ridge": "[0, 1]",
        "check_samples": ">= 256",
        "max_rel_error": "(0, 1]",
        "max_noise_gain": ">= 1",
        "source_spacing": "[0, 2]",
        "max_error_ratio": "(0, 1]",
        "pair_weight": ("signal", "global", "local"),
        "max_data_error_ratio": ">= 1",
        "max_coils": ">= 0",
    },
    "EncodingConfig": {
        "chunk": ">= 0",
        "sparse_below": "[0, 1]",
        "samples_per_block": ">= 1",
        "density_compensation": "[0, 1]",
    },
    "LLRConfig": {
        "iterations": ">= 1",
        "block": ">= 1",
        "thresholds": ">= 0",
        "seed": ">= 0",
        "power_iterations": ">= 1",
        "lipschitz_safety": ">= 1",
    },
    "UnrollConfig": {
        "steps": ">= 1",
        "mu_init": "> 0",
        "power_iters": ">= 1",
        "dc": ("gradient", "cg"),
        "dc_steps": ">= 1",
        "lambda_init": "> 0",
    },
    "DenoiserOverrides": {"flips": (0, 1, 2, 4, 8)},
    "UNetConfig": {
        "basis": ">= 1",
        "base_width": ">= 1",
        "levels": ">= 1",
        "norm_groups": ">= 1",
        "se_reduction": ">= 1",
        "embed_dim": ">= 2",
        "slice_chunk": ">= 1",
        "flips": (1, 2, 4, 8),
    },
    "AugmentConfig": {
        "max_rotation_deg": "[0, 180]",
        "max_translation": ">= 0",
        "scale_range": "> 0",
    },
    "_Common": {  # the three training stages
        "duration": _DURATIONS,
        "epochs": ">= 1",
        "lr": "> 0",
        "lr_patience": ">= 0",
        "lr_factor": "(0, 1]",
        "tissue_weights": ">= 0",
        "seed": ">= 0",
        "device": "device",
        "max_train": ">= 0",
        "max_val": ">= 0",
    },
    "PretrainConfig": {
        "indices": ">= 0",
        "target_index": ">= 0",
        "batch_size": ">= 1",
        "crop": ">= 1",
        "steps_per_epoch": ">= 0",
    },
    "GleamConfig": {
        "accumulation": ">= 1",
        "step_weight_ratio": "> 0",
        "ssim_weight": ">= 0",
        "ssim_slices": ">= 1",
    },
    "FinetuneConfig": {"accumulation": ">= 1", "ssim_weight": ">= 0", "ssim_slices": ">= 1"},
    "RecipeConfig": {  # training/configs.py (issue 13)
        "duration": _DURATIONS,
        "pretrain_updates": ">= 0",
        "gleam_updates": ">= 0",
        "finetune_updates": ">= 0",
        "refresh_every": ">= 1",
        "refresh_subjects": ">= 0",
        "lr_schedule": ("constant", "cosine"),
        "lr_min_ratio": "[0, 1]",
        "val_every": ">= 1",
        "lr": "> 0",
        "finetune_lr": "> 0",
        "tissue_weights": ">= 0",
        "magnitude_weight": ">= 0",
        "fingerprint_weight": ">= 0",
        "fingerprint_tissues": ">= 0",
        "maps_weights": ">= 0",
        "maps_sharpness": "(0, 1)",
        "maps_atoms": ">= 2",
        "maps_boundary_weight": "[1, 100]",
        "maps_edge_weight": "[0, 100]",
        "edge_weight": ">= 0",
        "seed": ">= 0",
        "max_train": ">= 0",
        "max_val": ">= 0",
    },
    "RedrawConfig": {"draws": ">= 1", "seed_base": ">= 0", "noise": ">= 0"},
}

_BOUND = re.compile(r"^(>=|>|<=|<) *(-?[0-9.e+-]+)$")
_OPS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}
_INTERVAL = re.compile(r"^([\[(]) *(-?[0-9.e+-]+), *(-?[0-9.e+-]+) *([\])])$")


def _allowed(value: Any, spec: str | tuple[Any, ...]) -> bool:
    """Whether one scalar ``value`` satisfies a :data:`RANGES` entry."""
    if isinstance(spec, tuple):
        return value in spec
    if spec == "device":
        return isinstance(value, str) and re.fullmatch(r"cpu|cuda(:[0-9]+)?", value) is not None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return True  # a type error is reported by the coercion
    if m := _BOUND.match(spec):
        return bool(_OPS[m.group(1)](value, float(m.group(2))))
    m = _INTERVAL.match(spec)
    if m is None:
        raise ValueError(f"RANGES: cannot read {spec!r}")
    lo, hi = float(m.group(2)), float(m.group(3))
    above = value >= lo if m.group(1) == "[" else value > lo
    below = value <= hi if m.group(4) == "]" else value < hi
    return above and below


def _describe(spec: str | tuple[Any, ...], hint: Any) -> str:
    if isinstance(spec, tuple):
        return "one of " + ", ".join(map(repr, spec))
    if spec == "device":
        return "'cpu', 'cuda' or 'cuda:N'"
    kind = "an integer" if int in (hint, *typing.get_args(hint)) else "a number"
    return f"{kind} {spec}" if spec[0] in "<>" else f"{kind} in {spec}"


def _range_of(cls: type, name: str) -> str | tuple[Any, ...] | None:
    for klass in cls.__mro__:
        spec = RANGES.get(klass.__name__, {}).get(name)
        if spec is not None:
            return spec
    return None


def _check_value(cls: type, name: str, value: Any, hint: Any, loc: str) -> None:
    """Finite numbers within the field's :data:`RANGES` entry (elementwise for tuples/tables)."""
    spec = _range_of(cls, name)
    items: list[tuple[str, Any]]
    if isinstance(value, dict):
        items = [(f"{loc}.{k}", v) for k, v in value.items()]
    elif isinstance(value, tuple | list):
        items = [(f"{loc}[{i}]", v) for i, v in enumerate(value)]
    else:
        items = [(loc, value)]
    allowed = f" (allowed: {_describe(spec, hint)})" if spec is not None else ""
    for where, v in items:
        if isinstance(v, float) and not math.isfinite(v):
            raise InputError(f"{where} = {v} is not a finite number{allowed}")
        if spec is not None and not _allowed(v, spec):
            raise InputError(f"{where} = {v!r} is out of range{allowed}")


def to_dict(cfg: Any) -> dict[str, Any]:
    """Return a plain ``dict`` of a (possibly nested) config dataclass; tuples become lists."""
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


def _loc(where: str, table: str | None, key: str) -> str:
    """How a field is named in messages: ``config F: [llr] iterations`` (or ``where.key``)."""
    if table is None:
        return f"{where}.{key}"
    return f"{where}: [{table}] {key}" if table else f"{where}: {key}"


def from_dict(
    cls: type[T], data: dict[str, Any], *, where: str = "config", table: str | None = None
) -> T:
    """Build the config dataclass ``cls`` from ``data``, checking names, types and ranges.

    Parameters
    ----------
    cls : dataclass type
    data : dict
        Field values (e.g. one table of a TOML file); missing fields keep their defaults.
    where : str
        What the values come from, at the start of every message (e.g. ``"config run.toml"``).
    table : str, optional
        The TOML table ``data`` is (``""``: the top level); fields are then named
        ``[table] key`` and nested tables ``[table.key]``.  Without it: ``where.key``.

    Raises
    ------
    InputError
        On an unknown field, a value of the wrong type, NaN/Inf, or a value outside the field's
        :data:`RANGES` entry (one line naming the field, the value and what is allowed).
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        known = ", ".join(sorted(names))
        if table is None:
            raise InputError(
                f"{where}: unknown field {unknown[0]!r} for {cls.__name__} (known: {known})"
            )
        inside = f" in [{table}]" if table else ""
        raise InputError(f"{where}: unknown key {unknown[0]!r}{inside} (known: {known})")
    kwargs = {}
    for k, v in data.items():
        loc, hint = _loc(where, table, k), hints[k]
        if table is not None and dataclasses.is_dataclass(hint) and isinstance(hint, type):
            if not isinstance(v, dict):
                raise InputError(f"{loc}: expected a table, got {v!r}")
            kwargs[k] = from_dict(hint, v, where=where, table=f"{table}.{k}" if table else k)
            continue
        kwargs[k] = _coerce(v, hint, loc)
        _check_value(cls, k, kwargs[k], hint, loc)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        inside = f" [{table}]" if table else ""
        raise InputError(f"{where}:{inside} {exc}") from None


def _read_one(p: Path, max_bytes: int) -> dict[str, Any]:
    """Parse one TOML file (no ``base`` resolution), with one-line errors."""
    if not p.exists():
        raise InputError(f"config {p}: no such file")
    if p.is_dir():
        raise InputError(f"config {p}: is a folder, not a TOML file")
    try:
        size = p.stat().st_size
        with open(p, "rb") as f:
            raw = f.read(max_bytes + 1)
    except OSError as exc:
        raise InputError(f"config {p}: cannot read it: {exc.strerror or exc}") from None
    if size > max_bytes or len(raw) > max_bytes:
        raise InputError(f"config {p}: {size} bytes is too large for a TOML config")
    if b"\0" in raw:
        raise InputError(f"config {p}: a binary file, not TOML text")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"config {p}: not UTF-8 text (byte {exc.start})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "parse error"
        raise InputError(f"config {p}: not valid TOML: {first}") from None


def merge_tables(base: Mapping[str, Any], child: Mapping[str, Any]) -> dict[str, Any]:
    """``child`` over ``base``: tables are merged key by key, any other value replaces the base's.

    Parameters
    ----------
    base, child : mapping
        Parsed TOML documents (nested dicts).

    Returns
    -------
    dict
        A new document; neither input is modified.
    """
    out = dict(base)
    for key, value in child.items():
        below = out.get(key)
        if isinstance(value, Mapping) and isinstance(below, Mapping):
            out[key] = merge_tables(below, value)
        else:
            out[key] = value
    return out


def read_toml(path: str | Path, *, max_bytes: int = 16 << 20) -> dict[str, Any]:
    """Parse a TOML config file, resolving its ``base`` chain, with one-line errors.

    A top-level ``base = "<file>"`` key names a config this one inherits from, relative to this
    file: the base is read (and its own ``base``, recursively) and this file's values are merged
    over it (:func:`merge_tables`) before any validation. Values are taken as written, so relative
    paths *inside* a base are resolved later against the file that was loaded, not the base.

    Raises
    ------
    InputError
        For a missing file, a folder, an unreadable, binary, oversized or non-UTF-8 file, invalid
        TOML, a ``base`` that is not a string or not a file, or a cycle of ``base`` keys.
    """
    chain: list[Path] = []
    p = Path(path)
    docs: list[dict[str, Any]] = []
    while True:
        key = p.resolve()
        if key in chain:
            loop = " -> ".join(str(c) for c in [*chain, key])
            raise InputError(f"config {path}: 'base' files form a cycle: {loop}")
        chain.append(key)
        doc = _read_one(p, max_bytes)
        base = doc.pop("base", None)
        docs.append(doc)
        if base is None:
            break
        if not isinstance(base, str) or not base:
            raise InputError(f"config {p}: base = {base!r} must be the path of a TOML file")
        if not (p.parent / base).is_file():
            raise InputError(f"config {p}: base = {base!r}: no such file {p.parent / base}")
        p = p.parent / base
    merged: dict[str, Any] = {}
    for doc in reversed(docs):
        merged = merge_tables(merged, doc)
    return merged


def check_tables(
    data: Mapping[str, Any], tables: Mapping[str, type], *, where: str = "config"
) -> dict[str, Any]:
    """Check a document whose top-level tables each hold one stage config; return it as a dict.

    Every table must be one of ``tables`` and every value must pass :func:`from_dict` of that
    table's dataclass (defaults fill the rest), so a wrong value is reported before any work.

    Raises
    ------
    InputError
        For an unknown table, a value where a table is expected (``llr = 5``), or a bad field.
    """
    for name, value in data.items():
        if name not in tables:
            known = ", ".join(f"[{t}]" for t in tables)
            raise InputError(f"{where}: unknown table [{name}] (known: {known})")
        if not isinstance(value, dict):
            raise InputError(f"{where}: {name} = {value!r} must be a table [{name}]")
        from_dict(tables[name], value, where=where, table=name)
    return dict(data)


def load_toml(cls: type[T], path: str | Path, *, table: str | None = None) -> T:
    """Read ``cls`` from a TOML file (optionally from one ``[table]`` of it)."""
    p = Path(path)
    data = read_toml(p)
    if table is not None:
        if not isinstance(data.get(table), dict):
            raise InputError(f"config {p}: no [{table}] table")
        data = data[table]
    return from_dict(cls, data, where=f"config {p}", table=table or "")


def dump_toml(cfg: Any) -> str:
    """TOML text of a config dataclass (``None`` fields are left out, as TOML has no null)."""
    import tomli_w

    def strip(d: dict[str, Any]) -> dict[str, Any]:
        return {k: strip(v) if isinstance(v, dict) else v for k, v in d.items() if v is not None}

    return tomli_w.dumps(strip(to_dict(cfg)))
