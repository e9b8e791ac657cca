"""Shipped models and running a trained SPUR-iG / hybrid network on a scan.

Shipped models live in ``spurig_core/models/`` (package data) as ``<method>-<duration>.pt``
(e.g. ``spurig-2min.pt``, ``hybrid-2min.pt``), each with a model card ``<same name>.md`` that
states its config, training data, steps and measured metrics, and the file's sha256.  ``--model
CKPT`` overrides the choice.

A model is read without running code from it (``io.load_checkpoint``: ``weights_only``), must be
of kind ``spurig-model`` from an unrolled training stage with the method's network (3D for
``spurig``, 2D for ``hybrid``) and weights that fit its stated architecture, and is checked before
any gridding work.  Its sha256 is reported when it is used (a progress event
``"model NAME sha256 HEX"``) and, when a model card sits beside it, must equal the card's.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import to_dict
from ..data import Scan
from ..errors import InputError
from ..io import file_sha256
from ..operators.base import LinearOperator
from ..progress import Callback, emit

__all__ = [
    "MODELS_DIR",
    "UnrolledOutput",
    "card_sha256",
    "check_card",
    "model_encoding",
    "resolve_model",
    "run_unrolled",
    "shipped_models",
]

#: Where the shipped models live.
MODELS_DIR = Path(__file__).resolve().parents[1] / "models"

_log = logging.getLogger("spurig")
_CARD_SHA = re.compile(r"sha256 `([0-9a-f]{64})`")


def shipped_models() -> list[Path]:
    """The model files shipped with the package."""
    return sorted(MODELS_DIR.glob("*.pt")) if MODELS_DIR.is_dir() else []


def card_sha256(card: str | Path) -> str | None:
    """The sha256 a model card states for its file (``sha256 `HEX``` in the card), or None."""
    try:
        m = _CARD_SHA.search(Path(card).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        return None
    return m.group(1) if m else None


def check_card(path: str | Path) -> dict[str, Any]:
    """The model file's sha256, checked against the model card beside it (``<stem>.md``).

    Returns
    -------
    dict
        ``sha256`` (hex), ``card`` (the card's path when it states a sha256, else None) and
        ``line``: ``"model NAME sha256 HEX"`` (plus ``"(matches its model card)"``), for the user.

    Raises
    ------
    InputError
        When the card states another sha256 (the file was changed after it was shipped).
    """
    p = Path(path)
    sha = file_sha256(p)
    card = p.with_suffix(".md")
    want = card_sha256(card) if card.is_file() else None
    if want is not None and want != sha:
        raise InputError(
            f"{p}: sha256 {sha[:16]}… differs from the {want[:16]}… its model card {card.name} "
            "states (the file was changed after it was shipped)"
        )
    line = f"model {p.name} sha256 {sha}" + (" (matches its model card)" if want else "")
    return {"sha256": sha, "card": card if want else None, "line": line}


def resolve_model(model: str | Path | None, *, method: str, duration: str) -> Path:
    """The checkpoint to use: ``model`` when given, else the shipped one for method and duration.

    The file is validated for ``method`` at once (:func:`~.unrolled.load_model` with
    ``method``), so a model that does not fit fails before any long work.

    Raises
    ------
    InputError
        When ``model`` does not exist, no shipped model covers ``method`` at ``duration``, or
        the file is refused (Python objects in it, wrong kind or network, weights that do not
        fit, a sha256 that differs from its card).
    """
    from .unrolled import load_model

    if model is not None:
        p = Path(model)
        if not p.exists():
            raise InputError(f"model {p}: no such file")
    else:
        p = MODELS_DIR / f"{method}-{duration}.pt"
        if not p.exists():
            have = ", ".join(m.stem for m in shipped_models()) or "none"
            raise InputError(
                f"no shipped {method} model for the {duration} scan (shipped: {have}); "
                "pass --model CKPT"
            )
    load_model(p, method=method if method in ("spurig", "hybrid") else None)
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

    model, meta = load_model(
        ckpt, basis=basis, sequence=scan.sequence, device=device, method=method
    )
    emit(callback, "model", 1, 1, meta["line"])
    if meta["warning"]:
        _log.warning(meta["warning"])
    with torch.no_grad():
        coeffs, iterations = model.reconstruct(
            op, ahb, b_norm=b_norm, save_iterations=save_iterations, callback=callback
        )
    return UnrolledOutput(
        coefficients=coeffs,
        iterations=iterations,
        model_info={"file": Path(ckpt).name, "sha256": meta["sha256"]},
        config=to_dict(meta["config"]),
        warning=meta["warning"],
    )
