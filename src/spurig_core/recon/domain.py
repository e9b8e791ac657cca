"""The training domain of a SPUR-iG model and the one-line warning for scans outside it (issue 13).

A model file written by the v2 recipe records ``domain`` (matrix, voxel size, durations, coils,
data term); the shipped CPU models predate that record and get :data:`SHIPPED_DOMAIN` (their
cards state the same).  :func:`check_domain` compares a scan with it; ``spurig recon`` logs the
line (:func:`spurig_core.pipeline.reconstruct`).
"""

from __future__ import annotations

from typing import Any

from ..durations import DURATIONS, MODEL_DURATIONS

__all__ = ["SHIPPED_DOMAIN", "check_domain"]


#: Training domain of the shipped CPU models, whose files predate the ``domain`` record: the 48³
#: cohort of ``spurig simulate-cohort`` (220 mm FOV, 10 coils), γ = 0.75 gridded data term.
SHIPPED_DOMAIN: dict[str, Any] = {
    "matrix": [48, 48, 48],
    "voxel_mm": [220.0 / 48] * 3,
    "durations": list(MODEL_DURATIONS),
    "coils": 10,
    "data_term": "iGROG-gridded, density_compensation 0.75",
}


def check_domain(
    meta: dict[str, Any],
    *,
    matrix: tuple[int, ...],
    voxel_mm: tuple[float, ...],
    duration: str | None = None,
    where: str = "model",
    groups: int | None = None,
) -> str | None:
    """One line when a scan lies outside the model's training domain (``meta["domain"]``).

    Parameters
    ----------
    meta : dict
        :func:`load_model`'s ``meta``.
    matrix : tuple of 3 int
        The scan's image matrix.
    voxel_mm : tuple of 3 float
        Its voxel size (FOV / matrix), mm.
    duration : str, optional
        The named duration nearest its groups.
    where : str
        The model file, for the message.
    groups : int, optional
        Its number of groups.  Compared with the trained durations' group counts, so that a scan
        between or beyond the named durations (e.g. 1 group, nearest 15 s) is named by its groups.

    Returns
    -------
    str or None
        ``None`` inside the domain or when the model records none.
    """
    dom = meta.get("domain")
    if not isinstance(dom, dict):
        return None
    issues = []
    if list(matrix) != list(dom.get("matrix", matrix)):
        issues.append(f"matrix {tuple(matrix)} (trained {tuple(dom['matrix'])})")
    trained = [float(v) for v in dom.get("voxel_mm", voxel_mm)]
    if any(abs(float(a) - b) > 0.05 * b for a, b in zip(voxel_mm, trained, strict=False)):
        got = "×".join(f"{float(v):.2f}" for v in voxel_mm)
        issues.append(f"voxel {got} mm (trained {'×'.join(f'{v:.2f}' for v in trained)} mm)")
    durs = dom.get("durations")
    if groups is None and duration is not None:
        groups = DURATIONS.get(duration)
    if (
        isinstance(durs, list)
        and groups is not None
        and groups not in {DURATIONS.get(d) for d in durs}
    ):
        name = duration if duration and DURATIONS.get(duration) == groups else None
        what = name or f"{groups} group{'s' if groups != 1 else ''}"
        issues.append(f"duration {what} (trained {', '.join(durs)})")
    if not issues:
        return None
    return f"{where}: scan outside the model's training domain: {'; '.join(issues)}"
