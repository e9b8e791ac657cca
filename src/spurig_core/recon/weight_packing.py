"""Compact model files: the per-step denoisers as 4-bit deltas from one shared base (issue 13).

A model with a denoiser per unrolled step that was continued from a file with one shared denoiser
keeps its steps close to each other (relative differences of 6–12 % for the shipped 4-step files).
:func:`pack_weights` stores each large weight tensor of such a model as its step's base tensor
(float16, once for all steps) plus the difference, quantised to 4 bits with one float16 scale per
group of ``group`` consecutive weights of an output channel.  A tensor without a base, or whose
difference is not small against itself (e.g. an output layer that started at zero), and every
small tensor stay float16.  :func:`unpack_weights` rebuilds float32 weights; the file holds plain
tensors only (``torch.load(weights_only=True)``).  Measured on the test subjects: −0.01 dB of
mean PSNR at ≈ a quarter of the float16 size of the per-step weights (benchmarks/RESULTS-models.md).

Layout of ``state["packed"]``::

    {"format": "int4-delta/1",
     "bases":   {"denoisers.*.unet.enc.0.conv1.weight": Tensor float16, ...},
     "tensors": {"denoisers.2.unet.enc.0.conv1.weight":
                    {"base": "denoisers.*.unet.enc.0.conv1.weight",
                     "shape": [16, 10, 3, 3, 3],
                     "q": Tensor uint8 (ceil(numel / 2),),      # two 4-bit codes per byte
                     "scale": Tensor float16 (rows, groups)}}}

A weight is ``base + (code − 8) · scale`` with codes 1…15 (differences −7…7 scale steps).
"""

from __future__ import annotations

import re
from typing import Any

import torch

from ..errors import InputError

__all__ = ["FORMAT", "pack_weights", "shared_bases", "unpack_weights"]

FORMAT = "int4-delta/1"
#: Largest code magnitude of a 4-bit symmetric difference.
_QMAX = 7
#: Tensors smaller than this stay float16 (their bytes do not matter; output layers are among them).
_MIN_NUMEL = 4096
#: A difference is quantised only where it is below this fraction of the tensor's norm.
_MAX_REL_DELTA = 0.5
_STEP = re.compile(r"^denoisers\.(\d+)\.")


def _base_name(name: str) -> str | None:
    """``denoisers.<i>.rest`` → ``denoisers.*.rest`` (the key shared by every step), else None."""
    return _STEP.sub("denoisers.*.", name) if _STEP.match(name) else None


def _groups(row: int, group: int) -> int:
    """Return the groups of a row: ``row / group`` where it divides, else one group per row."""
    return row // group if row % group == 0 else 1


def shared_bases(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Return the bases of :func:`pack_weights` from a model with one shared denoiser.

    Parameters
    ----------
    weights : dict of str to Tensor
        The ``state_dict`` (or a file's ``model`` entry) of a model with ``share_weights``: its
        ``denoisers.0.<rest>`` tensors become the bases ``denoisers.*.<rest>``.
    """
    bases = {}
    for name, w in weights.items():
        key = _base_name(name)
        if key is not None and name.startswith("denoisers.0."):
            bases[key] = w
    return bases


def pack_weights(
    weights: dict[str, torch.Tensor],
    *,
    bases: dict[str, torch.Tensor] | None = None,
    group: int = 27,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split a state dict into float16 tensors and 4-bit differences from shared bases.

    Parameters
    ----------
    weights : dict of str to Tensor
        A model's ``state_dict`` (float32 or float16).
    bases : dict of str to Tensor, optional
        Base tensors by shared key ``denoisers.*.<rest>``; default: the float16 mean of that
        tensor over the steps that have it.  A tool may pass the shared denoiser of the file the
        model was continued from (then the base bytes equal that file's).
    group : int
        Consecutive weights of an output channel that share one scale (27: one 3×3×3 kernel).

    Returns
    -------
    plain : dict of str to Tensor
        The tensors stored as float16 (``state["model"]``).
    packed : dict
        ``state["packed"]`` (module docstring); empty ``tensors`` when nothing qualifies.
    """
    if group < 1:
        raise ValueError(f"group: {group} is not a positive integer")
    if bases is None:  # the mean over the steps that have the tensor
        by_base: dict[str, list[torch.Tensor]] = {}
        for name, w in weights.items():
            key = _base_name(name)
            if key is not None and w.is_floating_point():
                by_base.setdefault(key, []).append(w.float())
        bases = {k: torch.stack(ws).mean(0) for k, ws in by_base.items() if len(ws) > 1}
    bases = {k: v.detach().cpu().half() for k, v in bases.items()}
    plain: dict[str, torch.Tensor] = {}
    tensors: dict[str, dict[str, Any]] = {}
    used: set[str] = set()
    for name, w in weights.items():
        key = _base_name(name)
        base = bases.get(key) if key is not None else None
        small = w.numel() < _MIN_NUMEL or w.ndim < 2 or not w.is_floating_point()
        if small or base is None or tuple(base.shape) != tuple(w.shape):
            plain[name] = w.detach().cpu().half() if w.is_floating_point() else w.detach().cpu()
            continue
        w32 = w.detach().cpu().float()
        delta = w32 - base.float()
        if float(delta.norm()) >= _MAX_REL_DELTA * float(w32.norm()):
            plain[name] = w.detach().cpu().half()
            continue
        rows = delta.reshape(w.shape[0], -1)
        n_groups = _groups(rows.shape[1], group)
        grouped = rows.reshape(rows.shape[0], n_groups, -1)
        scale = (grouped.abs().amax(-1, keepdim=True) / _QMAX).half()
        safe = scale.float().clamp_min(torch.finfo(torch.float16).tiny)
        codes = (torch.round(grouped / safe).clamp(-_QMAX, _QMAX) + 8).to(torch.uint8).flatten()
        if codes.numel() % 2:
            codes = torch.cat([codes, codes.new_full((1,), 8)])
        tensors[name] = {
            "base": key,
            "shape": list(w.shape),
            "q": codes[0::2] | (codes[1::2] << 4),
            "scale": scale.squeeze(-1),
        }
        used.add(str(key))
    packed = {
        "format": FORMAT,
        "bases": {k: v for k, v in bases.items() if k in used},
        "tensors": tensors,
    }
    return plain, packed


def _entry(name: str, entry: Any, bases: dict[str, Any], where: str) -> torch.Tensor:
    """Rebuild one packed tensor (float32), checking every field."""
    bad = f"{where}: packed weight {name!r}"
    if not isinstance(entry, dict) or not {"base", "shape", "q", "scale"} <= set(entry):
        raise InputError(f"{bad} lacks its base, shape, q or scale entry")
    shape, q, scale, base = entry["shape"], entry["q"], entry["scale"], bases.get(entry["base"])
    if not (isinstance(shape, list) and shape and all(isinstance(s, int) and s > 0 for s in shape)):
        raise InputError(f"{bad}: shape {shape!r} is not a list of positive integers")
    if not isinstance(base, torch.Tensor) or list(base.shape) != shape:
        raise InputError(f"{bad}: its base {entry['base']!r} is missing or of another shape")
    numel, rows = base.numel(), shape[0]
    if not isinstance(q, torch.Tensor) or q.dtype != torch.uint8 or q.numel() != (numel + 1) // 2:
        raise InputError(f"{bad}: q is not {(numel + 1) // 2} uint8 codes")
    if not isinstance(scale, torch.Tensor) or not scale.is_floating_point() or scale.ndim != 2:
        raise InputError(f"{bad}: scale is not a (rows, groups) float tensor")
    if scale.shape[0] != rows or (numel // rows) % scale.shape[1]:
        raise InputError(f"{bad}: scale of shape {tuple(scale.shape)} does not fit shape {shape}")
    codes = torch.stack([q & 15, q >> 4], dim=1).flatten()[:numel].to(torch.int16)
    if bool(((codes < 1) | (codes > 15)).any()):
        raise InputError(f"{bad}: codes outside 1…15 (corrupt file)")
    delta = (codes - 8).float().reshape(rows, scale.shape[1], -1) * scale.float().unsqueeze(-1)
    return base.float() + delta.reshape(shape)


def unpack_weights(state: dict[str, Any], where: str) -> dict[str, torch.Tensor]:
    """Return a model file's weights as one state dict: ``model`` plus the unpacked ``packed``.

    Parameters
    ----------
    state : dict
        A loaded model file.
    where : str
        Name used in messages (the file).

    Raises
    ------
    InputError
        An unknown format, a malformed entry, or a packed name that is also stored plain.
    """
    weights = state["model"]
    packed = state.get("packed")
    if packed is None:
        return weights  # type: ignore[no-any-return]
    if not isinstance(packed, dict) or packed.get("format") != FORMAT:
        fmt = packed.get("format") if isinstance(packed, dict) else type(packed).__name__
        raise InputError(f"{where}: packed weights of format {fmt!r}; this spurig reads {FORMAT!r}")
    bases, tensors = packed.get("bases"), packed.get("tensors")
    if not isinstance(bases, dict) or not isinstance(tensors, dict):
        raise InputError(f"{where}: packed weights lack their 'bases' or 'tensors' dictionary")
    if not isinstance(weights, dict):
        return weights  # type: ignore[no-any-return]  # _load_weights names this problem
    twice = sorted(set(tensors) & set(weights))
    if twice:
        raise InputError(f"{where}: weight {twice[0]!r} is stored both plain and packed")
    out = {k: (v.float() if v.is_floating_point() else v) for k, v in weights.items()}
    for name, entry in tensors.items():
        out[str(name)] = _entry(str(name), entry, bases, where)
    return out
