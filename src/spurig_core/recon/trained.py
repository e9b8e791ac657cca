"""Shipped models and running a trained SPUR-iG / hybrid network on a scan (and ``dc-only``).

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
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import to_dict
from ..durations import DURATIONS, SPEC_DURATIONS, nearest_duration
from ..errors import InputError, NotAvailableError
from ..io import file_sha256
from ..progress import emit

__all__ = [
    "MODELS_DIR",
    "LoadedModel",
    "card_sha256",
    "check_card",
    "gridding_groups",
    "load_method_model",
    "model_encoding",
    "model_file",
    "model_gridding",
    "resolve_model",
    "run_model",
    "run_network",
    "set_flips",
    "shipped_models",
]

#: Where the shipped models live.
MODELS_DIR = Path(__file__).resolve().parents[1] / "models"

_log = logging.getLogger("spurig")
_CARD_SHA = re.compile(r"sha256 `([0-9a-f]{64})`")


def shipped_models() -> list[Path]:
    """Return the model files shipped with the package."""
    return sorted(MODELS_DIR.glob("*.pt")) if MODELS_DIR.is_dir() else []


def card_sha256(card: str | Path) -> str | None:
    """Return the sha256 a model card states for its file (``sha256 `HEX``` in it), or None."""
    try:
        m = _CARD_SHA.search(Path(card).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        return None
    return m.group(1) if m else None


def check_card(path: str | Path) -> dict[str, Any]:
    """Return the model file's sha256, checked against the model card beside it (``<stem>.md``).

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


def model_file(family: str, duration: str, models_dir: Path = MODELS_DIR) -> Path | None:
    """Return ``models_dir/<family>-<duration>.pt``, or the file that stands in for it, or None.

    A duration the SPEC does not name (15 s) without a file of its own takes the family's file of
    the nearest duration (:func:`~spurig_core.durations.nearest_duration` among the durations
    with a file: what 1–2 groups took before 15 s was named); the pipeline's domain check then
    warns that the scan is outside that model's durations.  For the SPEC's durations a missing
    file gives None.
    """
    p = models_dir / f"{family}-{duration}.pt"
    if p.exists():
        return p
    have = {m.stem.removeprefix(f"{family}-") for m in models_dir.glob(f"{family}-*.pt")}
    among = [d for d in DURATIONS if d in have]
    if duration in DURATIONS and duration not in SPEC_DURATIONS and among:
        return models_dir / f"{family}-{nearest_duration(DURATIONS[duration], among)}.pt"
    return None


def _model_path(model: str | Path | None, family: str, duration: str) -> Path:
    """``model`` when given (it must exist), else the shipped file (:func:`model_file`)."""
    if model is not None:
        p = Path(model)
        if not p.exists():
            raise InputError(f"model {p}: no such file")
        return p
    shipped = model_file(family, duration)
    if shipped is None:
        have = ", ".join(m.stem for m in shipped_models()) or "none"
        raise InputError(
            f"no shipped {family} model for the {duration} scan (shipped: {have}); "
            "pass --model CKPT"
        )
    return shipped


def _family(method: str) -> str:
    """Return a reconstruction method's model family (``dc-only`` uses the ``spurig`` model)."""
    from .methods import METHODS

    entry = METHODS.get(method)
    return entry.model if entry is not None and entry.model is not None else method


def resolve_model(model: str | Path | None, *, method: str, duration: str) -> Path:
    """Return the checkpoint: ``model`` when given, else the shipped one for method and duration.

    ``method`` is a reconstruction method (its :attr:`~.methods.Method.model` family picks the
    shipped file: ``dc-only`` uses ``spurig-<duration>.pt``) or a family name.  The file is
    validated for the family at once (:func:`~.unrolled_io.load_model` with ``method``), so a
    model that does not fit fails before any long work.

    Raises
    ------
    InputError
        When ``model`` does not exist, no shipped model covers ``method`` at ``duration``, or
        the file is refused (Python objects in it, wrong kind or network, weights that do not
        fit, a sha256 that differs from its card).
    """
    from .unrolled_io import load_model

    family = _family(method)
    p = _model_path(model, family, duration)
    load_model(p, method=family if family in ("spurig", "hybrid") else None)
    return p


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A model file read once and checked against the scan (:func:`load_method_model`).

    Attributes
    ----------
    path : Path
    network : UnrolledRecon
        In eval mode, on the CPU (the run moves it to the device).
    meta : dict
        :func:`~.unrolled_io.load_model`'s ``meta``; ``warning`` set when the model was trained for
        another sequence.
    encoding : dict
        The data-term settings it was trained with (:func:`model_encoding`).
    gridding : dict
        The gridding settings that decided its training data
        (:func:`~spurig_core.operators.igrog.data_fields`; ``{}`` when not recorded: the shipped
        models before issue #13's v3 recipe).
    """

    path: Path
    network: Any
    meta: dict[str, Any]
    encoding: dict[str, Any]
    gridding: dict[str, Any] = field(default_factory=dict)

    @property
    def info(self) -> dict[str, str]:
        """``{"file": name, "sha256": hex}`` for the result store."""
        return {"file": self.path.name, "sha256": str(self.meta["sha256"])}


def load_method_model(
    model: str | Path | None,
    *,
    method: str,
    duration: str,
    basis: torch.Tensor | None = None,
    sequence: Any = None,
    flips: int = 0,
) -> LoadedModel:
    """Read the model of ``method`` once, before any gridding work, and check it fits the scan.

    Parameters
    ----------
    model : path, optional
        ``--model``; default: the shipped model of the method's family for ``duration``.
    method : str
        A method of :data:`~.methods.METHODS` with a model.
    duration : str
        The named duration nearest the scan's groups.
    basis : Tensor, shape (tr, basis), optional
        The scan's basis (a model of another basis shape is refused).
    sequence : Sequence, optional
        The scan's sequence (another one sets ``meta["warning"]``).
    flips : int
        Run the denoisers averaged over this many axis flips (``[denoiser] flips``,
        :func:`set_flips`); ``0``: the file's own setting.

    Raises
    ------
    InputError
        As :func:`resolve_model`, for a basis of another shape, and for ``flips`` that the
        network cannot take (not 1, 2, 4 or 8; anything but 1 for a 2D model).
    """
    from .unrolled_io import check_model_fits, load_model

    family = _family(method)
    p = _model_path(model, family, duration)
    network, meta = load_model(p, method=family)
    if flips:
        set_flips(network, flips)
        meta["config"] = network.cfg
    meta["warning"] = check_model_fits(meta, basis=basis, sequence=sequence, where=str(p))
    encoding = dict(meta["encoding"])  # load_model reports it: the file is read once
    from ..operators.igrog import data_fields

    grid = meta.get("gridding")
    return LoadedModel(
        p, network, meta, encoding, data_fields(grid if isinstance(grid, dict) else {})
    )


def model_gridding(
    methods: Iterable[str], duration: str, model: str | Path | None = None
) -> dict[str, Any]:
    """Return the gridding settings of the first model among ``methods`` (``{}`` if none).

    A run that grids a scan once for several gridded methods (the demo, ``spurig bench``) grids
    it as the model's training data was gridded, so that the model sees the inputs it learned
    on; the classical methods share that gridding and stay comparable.  A model that cannot be
    read gives ``{}`` here: the method that needs it reports the problem when it runs.

    Parameters
    ----------
    methods : iterable of str
        Method names of :data:`~.methods.METHODS`.
    duration : str
        The named duration nearest the scan's groups (selects the shipped model).
    model : path, optional
        ``--model``; default: the shipped model of the method's family.
    """
    from .methods import get_method

    for name in methods:
        if get_method(name).needs_model:
            try:
                return load_method_model(model, method=name, duration=duration).gridding
            except (InputError, NotAvailableError):
                return {}
    return {}


def gridding_groups(
    methods: Iterable[str],
    duration: str,
    model: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    base: dict[str, Any] | None = None,
) -> list[tuple[dict[str, Any], tuple[str, ...]]]:
    """Group the gridded ``methods`` by the gridding their data need: one gridding per group.

    A method's settings are ``base`` (default: :func:`model_gridding` of ``methods``, so that the
    classical methods share the model's kernel settings), then the method's own
    (:func:`~.methods.method_gridding`, e.g. LLR's 2× grid), then ``overrides["gridding"]``.

    Parameters
    ----------
    methods : iterable of str
        Method names; those that do not grid are left out.
    duration, model
        As :func:`model_gridding`.
    overrides : dict, optional
        Checked ``{"gridding": {...}}`` overrides (the user's word wins).
    base : dict, optional
        Settings to start from instead of the model's (e.g. a training data's ``[gridding]``).

    Returns
    -------
    list of (dict, tuple of str)
        ``(gridding settings, methods)`` in the order the methods first appear.
    """
    from .methods import get_method, method_gridding

    names = [m for m in methods if get_method(m).gridded]
    start = model_gridding(names, duration, model) if base is None else dict(base)
    user = (overrides or {}).get("gridding") or {}
    groups: dict[str, tuple[dict[str, Any], list[str]]] = {}
    for name in names:
        settings = {**start, **method_gridding(name), **user}
        key = repr(sorted(settings.items()))
        groups.setdefault(key, (settings, []))[1].append(name)
    return [(settings, tuple(found)) for settings, found in groups.values()]


def model_encoding(ckpt: str | Path) -> dict[str, Any]:
    """Return the gridded encoding settings a model was trained with (``{}`` when not recorded).

    Models trained on data-consistency operators with a density-compensated data term record it
    (``EncodingConfig`` fields); inference must use the same operator, since the learned
    step sizes and the denoiser's input statistics depend on it.
    """
    from ..io import load_checkpoint

    state = load_checkpoint(ckpt)
    enc = state.get("encoding") if isinstance(state, dict) else None
    return dict(enc) if isinstance(enc, dict) else {}


def run_network(network: Any, term: Any, ctx: Any, loaded: LoadedModel) -> Any:
    """Run an unrolled network on a data term (``s·A^H b``, then its steps, without a graph).

    Parameters
    ----------
    network : UnrolledRecon
    term : DataTerm
    ctx : RunContext
    loaded : LoadedModel
        The model file (its info line, warning and provenance).

    Returns
    -------
    MethodOutput
        With ``record = {"unroll": UnrollConfig dict}`` (plus ``"warning"``) and ``model_info``.
    """
    from .data_term import MethodOutput

    emit(ctx.callback, "model", 1, 1, loaded.meta["line"])
    warning = loaded.meta["warning"]
    if warning:
        _log.warning(warning)
    network.to(ctx.device).eval()
    with torch.no_grad():
        coeffs, iterations = network.reconstruct(
            term.op,
            term.ahb,
            b_norm=term.b_norm,
            lipschitz=getattr(term, "lipschitz", None),  # stored with the gridding (issue #14)
            save_iterations=ctx.save_iterations,
            callback=ctx.callback,
        )
    record: dict[str, Any] = {"unroll": to_dict(network.cfg)}
    if warning:
        record["warning"] = warning
    return MethodOutput(coeffs, iterations, record, loaded.info)


def run_model(term: Any, ctx: Any) -> Any:
    """Run ``--method spurig`` / ``hybrid``: the trained unrolled network of ``ctx.model``.

    Parameters
    ----------
    term : DataTerm
        The gridded encoding (its ``gram`` is the DC step), ``A^H b`` and ``‖b‖₂``.
    ctx : RunContext
        ``ctx.model`` is the :class:`LoadedModel` (3D network for ``spurig``, 2D for ``hybrid``).

    Returns
    -------
    MethodOutput
    """
    return run_network(ctx.model.network, term, ctx, ctx.model)


def set_flips(network: Any, flips: int) -> None:
    """Make every denoiser of ``network`` average its output over ``flips`` axis flips.

    Parameters
    ----------
    network : UnrolledRecon
        Changed in place (its ``cfg`` and each denoiser's; no weights change).
    flips : int
        1, 2, 4 or 8 (:attr:`~.networks.UNetConfig.flips`); 1 for a 2D (hybrid) model.

    Raises
    ------
    InputError
        For a count the network cannot take, naming the allowed ones.
    """
    from dataclasses import replace

    try:
        net_cfg = replace(network.cfg.network, flips=flips)
    except InputError as exc:
        raise InputError(f"[denoiser] {exc}") from None
    network.cfg = replace(network.cfg, network=net_cfg)
    for d in network.denoisers:
        d.cfg = net_cfg
