"""The ``--config`` TOML of ``spurig recon`` and ``spurig prepare-training``, checked before work.

Such a file holds up to four tables, each the fields of one stage config that replace its
defaults: ``[gridding]`` (:class:`~spurig_core.operators.igrog.GriddingConfig`), ``[encoding]``
(:class:`~spurig_core.operators.encoding.EncodingConfig`), ``[llr]``
(:class:`~spurig_core.recon.llr.LLRConfig`) and ``[denoiser]`` (:class:`DenoiserOverrides`, a
trained model's inference options); ``prepare-training`` also reads ``[inputs]``
(:class:`PrepareInputs`).  Every table and value is checked when the file is read
(:func:`spurig_core.config.check_tables`), so ``[llr] iterations = -1`` is one line before any
data is read or a kernel is trained.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import check_tables, read_toml

__all__ = [
    "DenoiserOverrides",
    "PrepareInputs",
    "check_overrides",
    "read_overrides",
    "read_prepare_config",
    "recon_tables",
]


@dataclass(frozen=True)
class PrepareInputs:
    """``[inputs]`` of a prepare-training config.

    Attributes
    ----------
    llr_from : str
        A folder prepared earlier (relative to the config file) whose ``llr-<duration>`` inputs
        are reused; ``""``: compute them.
    """

    llr_from: str = ""


@dataclass(frozen=True)
class DenoiserOverrides:
    """``[denoiser]`` of a reconstruction config: how a trained model's denoisers run.

    Attributes
    ----------
    flips : int
        Average each denoiser's output over this many axis flips of its input
        (:attr:`~spurig_core.recon.networks.UNetConfig.flips`: 1, 2, 4 or 8 UNet passes a step;
        3D models only); ``0``: the model file's own setting.  Measured (48³, four test
        subjects, session 24): 2 flips +0.37 dB at every duration, T1/T2 within ±0.1 point.
    """

    flips: int = 0


def recon_tables() -> dict[str, type]:
    """Return the tables a reconstruction config may hold and the stage config of each."""
    from .operators.encoding import EncodingConfig
    from .operators.igrog import GriddingConfig
    from .recon.llr import LLRConfig

    return {
        "gridding": GriddingConfig,
        "encoding": EncodingConfig,
        "llr": LLRConfig,
        "denoiser": DenoiserOverrides,
    }


def check_overrides(overrides: dict[str, Any] | None, *, where: str = "config") -> dict[str, Any]:
    """Check an overrides mapping ``{"gridding": {...}, "llr": {...}}``; return it as a dict."""
    return check_tables(overrides or {}, recon_tables(), where=where)


def read_overrides(config: str | Path | None, *, prepare: bool = False) -> dict[str, Any]:
    """Read a ``--config`` TOML and check every table and value (``{}`` without a file).

    Parameters
    ----------
    config : path-like, optional
        The TOML file.
    prepare : bool
        Also accept the ``[inputs]`` table of ``prepare-training``.

    Raises
    ------
    InputError
        One line for a missing file, a folder, a binary, non-UTF-8 or invalid TOML file, an
        unknown table or key, a value of the wrong type, NaN/Inf or a value out of range
        (:data:`spurig_core.config.RANGES`).
    """
    if config is None:
        return {}
    tables = {**recon_tables(), **({"inputs": PrepareInputs} if prepare else {})}
    return check_tables(read_toml(config), tables, where=f"config {config}")


def read_prepare_config(config: str | Path | None) -> tuple[tuple[Any, Any, Any], Path | None]:
    """Return the stage configs and the reused LLR inputs of a ``prepare-training`` config.

    Returns
    -------
    configs : (GriddingConfig, LLRConfig, EncodingConfig)
        The defaults updated by the ``[gridding]``, ``[llr]`` and ``[encoding]`` tables.
    llr_from : Path or None
        ``[inputs] llr_from`` relative to the config file.

    Raises
    ------
    InputError
        As :func:`read_overrides`, and when ``llr_from`` is not a directory.
    """
    from .config import from_dict
    from .errors import InputError

    overrides = read_overrides(config, prepare=True)
    tables = recon_tables()
    gcfg: Any = from_dict(tables["gridding"], overrides.get("gridding", {}), where="gridding")
    ecfg: Any = from_dict(tables["encoding"], overrides.get("encoding", {}), where="encoding")
    lcfg: Any = from_dict(tables["llr"], overrides.get("llr", {}), where="llr")
    llr_from: Path | None = None
    if overrides.get("inputs", {}).get("llr_from"):
        llr_from = Path(str(config)).parent / str(overrides["inputs"]["llr_from"])
        if not llr_from.is_dir():
            raise InputError(f"config [inputs] llr_from: {llr_from} is not a directory")
    return (gcfg, lcfg, ecfg), llr_from
