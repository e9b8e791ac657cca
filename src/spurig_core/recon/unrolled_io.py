"""Model files of the unrolled SPUR-iG reconstruction: what a training stage saves, and loading it.

:func:`model_state` is the dictionary a training stage writes (``io.save_checkpoint``);
:func:`load_model` reads it back into an :class:`~spurig_core.recon.unrolled.UnrolledRecon` after
checking its kind, architecture, sequence and basis (:func:`check_model_fits`), so that a file
that does not fit fails with one line naming it rather than deep inside ``load_state_dict``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..config import from_dict, to_dict
from ..data import FispSequence
from ..errors import InputError
from .domain import SHIPPED_DOMAIN
from .unrolled import MODEL_KIND, TRAIN_KIND, UnrollConfig, UnrolledRecon
from .weight_packing import unpack_weights

__all__ = ["check_model_fits", "load_model", "model_state", "truncate_unroll"]


def model_state(
    model: UnrolledRecon,
    *,
    sequence: FispSequence,
    basis: torch.Tensor,
    kind: str = MODEL_KIND,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Return the dictionary saved as a model file (``io.save_checkpoint``).

    Parameters
    ----------
    model : UnrolledRecon
    sequence : FispSequence
        The acquisition the model was trained for.
    basis : Tensor, shape (tr, basis), complex64
        The balanced basis of the training coefficients.
    kind : str
        :data:`MODEL_KIND` or :data:`TRAIN_KIND`.
    extra : dict, optional
        More entries (e.g. ``duration``, ``stage``, optimiser state).
    """
    state: dict[str, Any] = {
        "kind": kind,
        "version": 1,
        "config": to_dict(model.cfg),
        "sequence": sequence.to_dict(),
        "sequence_key": sequence.key(),
        "basis": basis.detach().cpu().to(torch.complex64),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    if extra:
        state.update(extra)
    return state


def check_model_fits(
    meta: dict[str, Any],
    *,
    basis: torch.Tensor | None = None,
    sequence: FispSequence | None = None,
    where: str = "model",
) -> str | None:
    """Check a loaded model against a scan.

    Parameters
    ----------
    meta : dict
        The ``meta`` returned by :func:`load_model`.
    basis : Tensor, shape (tr, basis), optional
        The scan's balanced basis; its shape must equal the model's.
    sequence : FispSequence, optional
        The scan's sequence.
    where : str
        Name used in messages (the file).

    Returns
    -------
    str or None
        A warning when the model was trained for another flip-angle train / timing (SPEC §4),
        else ``None``.

    Raises
    ------
    InputError
        When the basis shape differs (the model cannot be applied).
    """
    if basis is not None:
        mb = tuple(meta["basis"].shape)
        if tuple(basis.shape) != mb:
            raise InputError(
                f"{where}: trained for a basis of shape {mb} (tr, basis), the scan's is "
                f"{tuple(basis.shape)}"
            )
    if sequence is not None:
        trained = meta["sequence"]
        if not sequence.same_as(trained):
            return (
                f"{where}: trained for another sequence (key {trained.key()}, {trained.n_tr} TRs) "
                f"than the scan's (key {sequence.key()}, {sequence.n_tr} TRs); results may be poor"
            )
    return None


#: Config fields that decide the network's parameter shapes; a model file must state them all.
_ARCH_FIELDS = ("steps", "share_weights", "network")
_NET_FIELDS = ("dim", "basis", "base_width", "levels", "se_reduction", "embed_dim", "conditioned")
#: What each reconstruction method needs of a model (``UNetConfig.dim``).
_METHOD_DIM = {"spurig": 3, "hybrid": 2}


def _check_kind(state: dict[str, Any], p: Path, method: str | None) -> str:
    """Return the file's ``kind``; with ``method``, only a finished model (not resume/pretrain)."""
    kind = state.get("kind")
    if kind not in (MODEL_KIND, TRAIN_KIND):
        raise InputError(f"{p}: a {kind!r} checkpoint, not a SPUR-iG model ({MODEL_KIND!r})")
    if method is None:
        return str(kind)
    if kind == TRAIN_KIND:
        raise InputError(
            f"{p}: a training-resume checkpoint (kind {TRAIN_KIND!r}); --method {method} expects "
            f"kind {MODEL_KIND!r} (the run's model.pt)"
        )
    if state.get("stage") == "pretrain":
        raise InputError(
            f"{p}: a pretrain-stage (denoiser-only) model; --method {method} expects kind "
            f"{MODEL_KIND!r} from the gleam or finetune stage"
        )
    return str(kind)


def _check_architecture(state: dict[str, Any], p: Path, method: str | None) -> UnrollConfig:
    """Return the stored ``UnrollConfig``, which must state every shape-deciding field."""
    raw = state["config"]
    net = raw.get("network") if isinstance(raw, dict) else None
    missing = [k for k in _ARCH_FIELDS if not isinstance(raw, dict) or k not in raw]
    missing += [f"network.{k}" for k in _NET_FIELDS if isinstance(net, dict) and k not in net]
    if missing or not isinstance(net, dict):
        raise InputError(f"{p}: config lacks its architecture field(s) {', '.join(missing)}")
    cfg = from_dict(UnrollConfig, raw, where=f"{p}: config")
    if method is not None and cfg.network.dim != _METHOD_DIM.get(method, cfg.network.dim):
        got = "3D (spurig)" if cfg.network.dim == 3 else "2D slice-wise (hybrid)"
        want = "3D (spurig)" if _METHOD_DIM[method] == 3 else "2D slice-wise (hybrid)"
        raise InputError(
            f"{p}: a {got} network; --method {method} expects a {want} model of kind {MODEL_KIND!r}"
        )
    return cfg


def _sequence_and_basis(
    state: dict[str, Any], p: Path, cfg: UnrollConfig
) -> tuple[FispSequence, torch.Tensor]:
    """Return the stored sequence and ``(tr, basis)`` basis, checked against its key and ``cfg``."""
    try:
        seq = FispSequence.from_dict(state["sequence"])
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{p}: unreadable sequence entry ({exc})") from None
    if state.get("sequence_key", seq.key()) != seq.key():
        raise InputError(f"{p}: its sequence does not match its stored sequence key (corrupt file)")
    mbasis = state["basis"]
    if not isinstance(mbasis, torch.Tensor) or mbasis.ndim != 2:
        raise InputError(f"{p}: basis entry is not a (tr, basis) tensor")
    if mbasis.shape[1] != cfg.network.basis:
        raise InputError(
            f"{p}: basis has {mbasis.shape[1]} columns but the network expects {cfg.network.basis}"
        )
    if mbasis.shape[0] != seq.n_tr:
        raise InputError(f"{p}: basis has {mbasis.shape[0]} TRs, its sequence {seq.n_tr}")
    return seq, mbasis


def _load_weights(model: UnrolledRecon, weights: Any, p: Path) -> None:
    """Load ``weights`` into ``model`` strictly; any difference of keys or shapes is one line."""
    msg = f"{p}: weights do not fit the stored config"
    if not isinstance(weights, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in weights.items()
    ):
        raise InputError(f"{msg}: the 'model' entry is not a dictionary of named tensors")
    own = model.state_dict()
    missing, extra = sorted(set(own) - set(weights)), sorted(set(weights) - set(own))
    if missing or extra:
        what = [f"{len(missing)} missing (e.g. {missing[0]!r})"] if missing else []
        what += [f"{len(extra)} unexpected (e.g. {extra[0]!r})"] if extra else []
        raise InputError(f"{msg}: {', '.join(what)} parameter(s)")
    for k, v in own.items():
        if tuple(weights[k].shape) != tuple(v.shape):
            raise InputError(
                f"{msg}: {k!r} has shape {tuple(weights[k].shape)}, the config makes "
                f"{tuple(v.shape)}"
            )
    try:
        model.load_state_dict(weights)
    except (RuntimeError, KeyError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{msg}: {first}") from None


def load_model(
    path: str | Path,
    *,
    basis: torch.Tensor | None = None,
    sequence: FispSequence | None = None,
    device: str | torch.device = "cpu",
    method: str | None = None,
) -> tuple[UnrolledRecon, dict[str, Any]]:
    """Read and validate a model file or training checkpoint (never running code from it).

    Parameters
    ----------
    path : path-like
        A file written by the training stages (kind ``spurig-model`` or ``spurig-train``).
    basis : Tensor, shape (tr, basis), optional
        The scan's balanced basis, checked with :func:`check_model_fits`.
    sequence : FispSequence, optional
        The scan's sequence; a different one gives a warning in ``meta["warning"]``.
    device : str or torch.device
    method : {"spurig", "hybrid"}, optional
        Load as the model of this reconstruction method (``--model``): only kind
        ``spurig-model`` from an unrolled stage, with a 3D (``spurig``) or 2D (``hybrid``)
        network.  ``None`` (e.g. ``init`` of a training stage) accepts any stage and resume files.

    Returns
    -------
    model : UnrolledRecon
        In eval mode on ``device``.
    meta : dict
        ``config`` (UnrollConfig), ``sequence`` (FispSequence), ``basis`` (Tensor (tr, basis)),
        ``kind``, ``stage``, ``duration`` (when recorded), ``warning`` (str or None),
        ``sha256`` (of the file), ``card`` (the model card whose sha256 it matches, or None) and
        ``line`` (``"model NAME sha256 HEX"``, for the user), ``domain``, ``gridding`` (the
        settings a scan is gridded with for this model: its training data's, or those
        ``tools/set_model_gridding.py`` wrote, which keeps the training data's as
        ``training_gridding``; None when not recorded) and ``encoding`` (the data term's
        settings it was trained with, ``{}`` when not recorded).

    Raises
    ------
    InputError
        Missing, corrupt or truncated file, Python objects or NaN/Inf in it, wrong kind (for
        ``method``), missing architecture fields, weights that do not fit, a basis of another
        shape, a sha256 that differs from the file's model card.
    """
    from ..io import load_checkpoint
    from .trained import check_card

    p = Path(path)
    state = load_checkpoint(p)
    kind = _check_kind(state, p, method)
    for key in ("config", "sequence", "basis", "model"):
        if key not in state:
            raise InputError(f"{p}: model file lacks its {key!r} entry")
    cfg = _check_architecture(state, p, method)
    seq, mbasis = _sequence_and_basis(state, p, cfg)
    model = UnrolledRecon(cfg)
    _load_weights(model, unpack_weights(state, str(p)), p)
    model.to(device).eval()
    meta: dict[str, Any] = {
        "kind": kind,
        "config": cfg,
        "sequence": seq,
        "basis": mbasis,
        "stage": state.get("stage"),
        "duration": state.get("duration"),
        "warning": None,
        **check_card(p),
    }
    dom = state.get("domain")
    if not isinstance(dom, dict) and meta["card"]:  # a shipped model: the cohort it was trained on
        dom = dict(SHIPPED_DOMAIN)
        if meta["duration"] in dom["durations"]:
            dom["durations"] = [meta["duration"]]
    meta["domain"] = dom if isinstance(dom, dict) else None
    grid = state.get("gridding")  # the gridding to reconstruct with (v3 recipe on)
    meta["gridding"] = dict(grid) if isinstance(grid, dict) else None
    # the data term it was trained with, so that a reconstruction need not read the file again
    enc = state.get("encoding")  # (issue #14: 0.3 s of a 64³ SPUR-iG run)
    meta["encoding"] = dict(enc) if isinstance(enc, dict) else {}
    meta["warning"] = check_model_fits(meta, basis=basis, sequence=sequence, where=str(p))
    return model, meta


def truncate_unroll(
    state: dict[str, Any], steps: int, record: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Return a model file's state with only its first ``steps`` unrolled steps.

    The unroll is a fixed iteration, so its first ``K`` steps are a ``K``-step model with the same
    weights (the per-step DC step sizes and, without weight sharing, denoisers beyond ``K``
    dropped); :func:`load_model` reads the result like any model file.  ``record`` (e.g. why
    ``K`` was chosen) is kept as ``state["unroll_steps"]`` together with the trained count.

    Raises
    ------
    InputError
        When ``steps`` is not between 1 and the trained number of steps.
    """
    if state.get("packed"):
        raise InputError("truncate_unroll: the file's weights are packed; truncate before packing")
    cfg = dict(state["config"])
    trained = int(cfg["steps"])
    if not 1 <= steps <= trained:
        raise InputError(f"steps: {steps} is not between 1 and the trained {trained}")
    cfg["steps"] = int(steps)
    weights = {}
    for key, value in state["model"].items():
        if key in ("log_mu", "log_lam"):
            value = value[:steps]
        elif key.startswith("denoisers.") and not cfg.get("share_weights", True):
            if int(key.split(".")[1]) >= steps:
                continue
        weights[key] = value
    rec = {"trained": trained, "kept": int(steps), **(record or {})}
    return {**state, "config": cfg, "model": weights, "unroll_steps": rec}
