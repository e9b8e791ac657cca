"""Shipped models and running a trained SPUR-iG / hybrid network on a scan.

Shipped models live in ``spurig_core/models/`` (package data) as ``<method>-<duration>.pt``
(e.g. ``spurig-2min.pt``, ``hybrid-2min.pt``), each with a model card ``<same name>.md`` that
states its config, training data, steps and measured metrics.  ``--model CKPT`` overrides the
choice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import to_dict
from ..data import Scan
from ..errors import InputError
from ..io import file_sha256
from ..operators.base import LinearOperator
from ..progress import Callback

__all__ = [
    "MODELS_DIR",
    "UnrolledOutput",
    "model_encoding",
    "resolve_model",
    "run_unrolled",
    "shipped_models",
]

#: Where the shipped models live.
MODELS_DIR = Path(__file__).resolve().parents[1] / "models"

_log = logging.getLogger("spurig")


def shipped_models() -> list[Path]:
    """The model files shipped with the package."""
    return sorted(MODELS_DIR.glob("*.pt")) if MODELS_DIR.is_dir() else []


def resolve_model(model: str | Path | None, *, method: str, duration: str) -> Path:
    """The checkpoint to use: ``model`` when given, else the shipped one for method and duration.

    Raises
    ------
    InputError
        When ``model`` does not exist, or no shipped model covers ``method`` at ``duration``.
    """
    if model is not None:
        p = Path(model)
        if not p.exists():
            raise InputError(f"model {p}: no such file")
        return p
    p = MODELS_DIR / f"{method}-{duration}.pt"
    if not p.exists():
        have = ", ".join(m.stem for m in shipped_models()) or "none"
        raise InputError(
            f"no shipped {method} model for the {duration} scan (shipped: {have}); "
            "pass --model CKPT"
        )
    return p


def model_encoding(ckpt: str | Path) -> dict[str, Any]:
    """The gridded encoding settings a model was trained with (``{}`` when not recorded).

    Models trained on data-consistency operators with a density-compensated data term record it
    (``GriddedEncodingConfig`` fields); inference must use the same operator, since the learned
    step sizes and the denoiser's input statistics depend on it.
    """
    from ..io import load_checkpoint

    state = load_checkpoint(ckpt)
    enc = state.get("encoding") if isinstance(state, dict) else None
    return dict(enc) if isinstance(enc, dict) else {}


@dataclass(frozen=True, eq=False)
class UnrolledOutput:
    """What :func:`run_unrolled` returns.

    Attributes
    ----------
    coefficients : Tensor, shape (basis, x, y, z), complex64
    iterations : Tensor, shape (steps + 1, basis, x, y, z), complex64, or None
    model_info : dict
        ``{"file": name, "sha256": ...}`` for the result store.
    config : dict
        The model's ``UnrollConfig`` as a dictionary.
    warning : str or None
        Set when the model was trained for another sequence.
    """

    coefficients: torch.Tensor
    iterations: torch.Tensor | None
    model_info: dict[str, str]
    config: dict[str, Any]
    warning: str | None


def run_unrolled(
    ckpt: str | Path,
    op: LinearOperator,
    ahb: torch.Tensor,
    *,
    method: str,
    scan: Scan,
    basis: torch.Tensor,
    b_norm: float,
    device: torch.device,
    save_iterations: bool = False,
    callback: Callback | None = None,
) -> UnrolledOutput:
    """Load ``ckpt``, check it fits the scan and method, and run the unrolled reconstruction.

    Parameters
    ----------
    ckpt : path
        Model file.
    op : LinearOperator
        The iGROG-gridded subspace encoding (its ``gram`` is the DC step).
    ahb : Tensor, shape (basis, x, y, z), complex64
        ``A^H b``.
    method : {"spurig", "hybrid"}
        ``spurig`` needs a 3D network, ``hybrid`` a 2D (slice-wise) one.
    scan : Scan
        For the sequence check.
    basis : Tensor, shape (tr, basis)
        The scan's balanced basis.
    b_norm : float
        ``‖b‖₂`` of the gridded data (for the norm-matching initialisation).
    """
    from .unrolled import load_model

    model, meta = load_model(ckpt, basis=basis, sequence=scan.sequence, device=device)
    want = 3 if method == "spurig" else 2
    dim = meta["config"].network.dim
    if dim != want:
        kind = "3D (spurig)" if dim == 3 else "2D slice-wise (hybrid)"
        raise InputError(f"model {Path(ckpt).name}: a {kind} network cannot run --method {method}")
    if meta["warning"]:
        _log.warning(meta["warning"])
    with torch.no_grad():
        coeffs, iterations = model.reconstruct(
            op, ahb, b_norm=b_norm, save_iterations=save_iterations, callback=callback
        )
    return UnrolledOutput(
        coefficients=coeffs,
        iterations=iterations,
        model_info={"file": Path(ckpt).name, "sha256": file_sha256(ckpt)},
        config=to_dict(meta["config"]),
        warning=meta["warning"],
    )
