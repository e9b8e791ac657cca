"""Image-panel figures of the paper (2 and 3) as PNG files, drawn headless.

The chart figures (4, 5 and 8) are in :mod:`spurig_core.figures_charts`.

matplotlib is imported inside the functions and used through :class:`matplotlib.figure.Figure`
(the Agg canvas, no pyplot state, no display), so the functions are safe in worker threads.  Every
function writes its PNG atomically (:func:`spurig_core.io.atomic_path`) at a fixed size and
``dpi`` and returns the path.

Display conventions
-------------------
- An axial slice ``image[:, :, z]`` is drawn with axis 0 horizontal (left to right) and axis 1
  vertical (bottom to top), i.e. ``imshow(image.T, origin="lower")``.  The *top-right quadrant*
  is therefore ``image[nx//2:, ny//2:]``; its error map ``| |image| − |ref| |``, multiplied by
  ``magnify``, is drawn over that quadrant on the same intensity scale (framed, labelled "×5").
- Coefficient magnitudes: grey, ``0 … peak`` (the reference's volume maximum when given); error
  overlay ``inferno``.  PSNR (dB) and SSIM of the shown slice, with the same peak, bottom right.
- T1/T2 maps: the recommended quantitative colormaps ``lipari`` / ``navia`` (Fuderer et al., MRM
  2025, doi:10.1002/mrm.30290) are not shipped with matplotlib, so T1 uses ``magma`` and T2
  ``viridis`` (perceptually uniform, colour-blind safe); ranges ``0–2500 ms`` and ``0–150 ms`` by
  default; error overlay in ``gray``, with both colour bars on the right.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data import Reference, Result
from .durations import duration_name
from .errors import InputError
from .io import atomic_path
from .metrics import QUANT_LABELS, _ssim, brain_slices, psnr
from .physics import unbalance_coefficients
from .recon.methods import METHODS

__all__ = [
    "SubjectPanels",
    "coefficient_figure",
    "coefficient_slice",
    "maps_figure",
]

#: Pixels per inch of every figure.
DPI = 100
#: Edge of one image panel in inches.
PANEL_IN = 2.0
#: Left margin for the row labels in inches.
LEFT_IN = 0.3
#: Column order of the panels: the adjoint (every method's input) first, then the methods in
#: the registry's order (SPEC §2); others follow alphabetically.
_COLUMN_ORDER = ("adjoint", *(m for m in METHODS if m != "adjoint"))
#: Panel titles (the registry's short names).
_NAMES = {**{m.name: m.short for m in METHODS.values()}, "reference": "reference"}
_TEXT_BOX = {"facecolor": "black", "alpha": 0.5, "pad": 1.0, "edgecolor": "none"}
_MAP_DEFAULTS = {"T1": ("magma", 2500.0), "T2": ("viridis", 150.0)}


def _np2d(a: Any, what: str) -> np.ndarray:
    arr = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    if arr.ndim != 2:
        raise InputError(f"{what}: expected a 2D slice (x, y), got shape {arr.shape}")
    return arr


def _save(fig: Any, path: str | Path) -> Path:
    final = Path(path)
    with atomic_path(final) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return final


def coefficient_slice(
    coefficients: torch.Tensor, z: int, *, index: int = 0, unbalanced: bool = False
) -> np.ndarray:
    """One axial slice of one coefficient, balanced or unbalanced.

    Parameters
    ----------
    coefficients : Tensor, shape (basis, x, y, z), complex
        Balanced coefficients ``α̃``.
    z : int
        Slice index along the last axis.
    index : int
        Coefficient (0-based: ``index=0`` is c1).
    unbalanced : bool
        Take ``α = F_kᴴ α̃`` (:func:`spurig_core.physics.unbalance_coefficients`) first.

    Returns
    -------
    ndarray, shape (x, y), complex64
    """
    c = coefficients[..., z]
    if unbalanced:
        c = unbalance_coefficients(c)
    return c[index].detach().cpu().numpy().astype(np.complex64)


def _ordered_columns(rows: Mapping[str, Mapping[str, Any]]) -> list[str]:
    found = {m for per in rows.values() for m in per}
    return sorted(
        found,
        key=lambda m: (_COLUMN_ORDER.index(m) if m in _COLUMN_ORDER else len(_COLUMN_ORDER), m),
    )


def _panel_grid(rows: Mapping[str, Mapping[str, Any]], extra_w: float, title: str) -> tuple:
    from matplotlib.figure import Figure

    if not rows:
        raise InputError("figure: no reconstructions given")
    cols = ["reference", *_ordered_columns(rows)]
    nr, nc = len(rows), len(cols)
    top = 0.4 if title else 0.25
    fig = Figure(figsize=(LEFT_IN + PANEL_IN * nc + extra_w, PANEL_IN * nr + top), dpi=DPI)
    w, h = fig.get_size_inches()
    axes = {}
    for i, rlab in enumerate(rows):
        y0 = 1 - (top + (i + 1) * PANEL_IN) / h
        fig.text(
            0.5 * LEFT_IN / w,
            y0 + 0.5 * PANEL_IN / h,
            rlab,
            rotation=90,
            ha="center",
            va="center",
            fontsize=8,
        )
        for j, clab in enumerate(cols):
            ax = fig.add_axes(
                ((LEFT_IN + j * PANEL_IN) / w, y0, PANEL_IN / w * 0.98, PANEL_IN / h * 0.98)
            )
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(_NAMES.get(clab, clab), fontsize=8, pad=2)
            axes[(rlab, clab)] = ax
    if title:
        fig.suptitle(title, fontsize=9, y=1 - 0.05 / h)
    return fig, cols, axes


def _overlay_error(ax: Any, err: np.ndarray, vmax: float, cmap: str, magnify: float) -> Any:
    """Draw ``magnify · err`` over the top-right quadrant of a panel (display coordinates)."""
    from matplotlib.patches import Rectangle

    nx, ny = err.shape
    x0, y0 = nx // 2, ny // 2
    quad = magnify * err[x0:, y0:]
    im = ax.imshow(
        quad.T,
        origin="lower",
        cmap=cmap,
        vmin=0.0,
        vmax=vmax,
        interpolation="nearest",
        extent=(x0 - 0.5, nx - 0.5, y0 - 0.5, ny - 0.5),
    )
    ax.add_patch(
        Rectangle(
            (x0 - 0.5, y0 - 0.5), nx - x0, ny - y0, fill=False, edgecolor="white", linewidth=0.6
        )
    )
    ax.text(x0 + 0.5, ny - 1.5, f"×{magnify:g}", color="white", fontsize=6, va="top")
    ax.set_xlim(-0.5, nx - 0.5)
    ax.set_ylim(-0.5, ny - 0.5)
    return im


def _method_panels(
    rows: Mapping[str, Mapping[str, Any]],
    cols: list[str],
    axes: dict[tuple[str, str], Any],
    ref: np.ndarray,
    draw_reference: Callable[[Any], None],
    *,
    magnitude: bool,
) -> Iterator[tuple[Any, np.ndarray]]:
    """Walk the panels of :func:`_panel_grid` row by row: yield ``(axis, slice)`` of each method.

    The reference panel of the first row is drawn by ``draw_reference(axis)``; the reference
    column of later rows and the methods a row lacks are left blank.  Slices are float64
    (magnitudes with ``magnitude``) and must have the reference's shape.
    """
    first = next(iter(rows))
    for rlab, per in rows.items():
        for clab in cols:
            ax = axes[(rlab, clab)]
            if clab == "reference" and rlab == first:
                draw_reference(ax)
            elif clab == "reference" or clab not in per:
                ax.set_axis_off()
            else:
                img = _np2d(per[clab], f"{rlab}/{clab}")
                img = (np.abs(img) if magnitude else img).astype(np.float64)
                if img.shape != ref.shape:
                    raise InputError(
                        f"{rlab}/{clab}: slice {img.shape} differs from the reference {ref.shape}"
                    )
                yield ax, img


def _corner_text(ax: Any, text: str, color: str) -> None:
    """Return a small boxed label in the bottom-right corner of a panel."""
    ax.text(
        0.98,
        0.02,
        text,
        transform=ax.transAxes,
        ha="right",
        va="bottom",
        color=color,
        fontsize=6,
        bbox=_TEXT_BOX,
    )


def coefficient_figure(
    reference: Any,
    rows: Mapping[str, Mapping[str, Any]],
    out_path: str | Path,
    *,
    peak: float | None = None,
    magnify: float = 5,
    title: str = "",
) -> Path:
    """Paper Figure 2: one coefficient slice per duration (rows) and method (columns).

    Parameters
    ----------
    reference : ndarray or Tensor, shape (x, y), complex or real
        The reference slice (magnitude taken).
    rows : mapping row label -> mapping method -> ndarray, shape (x, y)
        E.g. ``{"2min": {"adjoint": a, "spurig": b, "llr": c}, "30s": {...}}``; rows in the
        mapping's order, columns: ``reference`` (first row only), then ``adjoint`` (``A^H b``),
        ``spurig``, ``hybrid``, ``llr``, ``llr-nufft``, then any other method.
    out_path : path-like
        The PNG to write.
    peak : float, optional
        Top of the intensity scale and PSNR/SSIM peak (default: the slice's reference maximum;
        :func:`spurig_core.metrics.evaluate` uses the volume maximum).
    magnify : float
        Error magnification (paper: 5 or 10).
    title : str
        Figure title.

    Returns
    -------
    Path
        ``out_path``; ``0.3 + 2·(1 + methods)`` × ``2·rows + 0.25`` inches (``+ 0.4`` with a
        title) at 100 dpi.
    """
    ref = np.abs(_np2d(reference, "reference")).astype(np.float64)
    vmax = float(peak) if peak is not None else float(ref.max())
    if not vmax > 0:
        raise InputError("reference: the slice is zero everywhere; give peak=")
    fig, cols, axes = _panel_grid(rows, 0.0, title)

    def draw_reference(ax: Any) -> None:
        ax.imshow(ref.T, origin="lower", cmap="gray", vmin=0, vmax=vmax, interpolation="nearest")

    for ax, img in _method_panels(rows, cols, axes, ref, draw_reference, magnitude=True):
        ax.imshow(img.T, origin="lower", cmap="gray", vmin=0, vmax=vmax, interpolation="nearest")
        _overlay_error(ax, np.abs(img - ref), vmax, "inferno", magnify)
        p, s = psnr(img, ref, vmax), _ssim(img, ref, vmax)
        _corner_text(ax, f"{p:.1f} dB\n{s:.3f}", "yellow")
    return _save(fig, out_path)


def maps_figure(
    reference: Any,
    rows: Mapping[str, Mapping[str, Any]],
    out_path: str | Path,
    *,
    parameter: str = "T1",
    mask: Any = None,
    error_mask: Any = None,
    vmax: float | None = None,
    magnify: float = 5,
    title: str = "",
) -> Path:
    """Paper Figure 3: T1 or T2 map slices per duration (rows) and method (columns).

    Parameters
    ----------
    reference : ndarray or Tensor, shape (x, y), float
        Reference map in ms.
    rows : mapping row label -> mapping method -> ndarray, shape (x, y)
        Estimated maps in ms (layout as :func:`coefficient_figure`).
    out_path : path-like
    parameter : {"T1", "T2"}
        Chooses the colormap and default range (module notes).
    mask : ndarray, shape (x, y), bool, optional
        Where the maps are shown (others black); default: reference > 0.
    error_mask : ndarray, shape (x, y), bool, optional
        Voxels over which the mean relative error printed in each panel is taken (default
        ``mask``; :class:`SubjectPanels` passes grey and white matter, as in Table 2).
    vmax : float, optional
        Top of the colour scale in ms.
    magnify : float
        Magnification of the ``|T − T_ref|`` overlay (same ms scale).
    title : str

    Returns
    -------
    Path
        ``out_path``; ``0.3 + 2·(1 + methods) + 1`` inches wide (colour bars), ``2·rows + 0.25``
        (``+ 0.4`` with a title) high, at 100 dpi.
    """
    if parameter not in _MAP_DEFAULTS:
        raise InputError(f"parameter: expected 'T1' or 'T2', got {parameter!r}")
    import matplotlib

    cmap_name, default_vmax = _MAP_DEFAULTS[parameter]
    cmap = matplotlib.colormaps[cmap_name].with_extremes(bad="black")
    top = float(vmax) if vmax is not None else default_vmax
    ref = _np2d(reference, "reference").astype(np.float64)
    m = (ref > 0) if mask is None else _np2d(mask, "mask").astype(bool)
    em = m if error_mask is None else _np2d(error_mask, "error_mask").astype(bool)
    fig, cols, axes = _panel_grid(rows, 1.0, title)
    maps: list[Any] = []  # the images drawn with the map colour scale
    im_err = None

    def draw_map(ax: Any, img: np.ndarray) -> None:
        masked = np.ma.masked_where(~m, img).T
        maps.append(
            ax.imshow(masked, origin="lower", cmap=cmap, vmin=0, vmax=top, interpolation="nearest")
        )

    for ax, img in _method_panels(
        rows, cols, axes, ref, lambda ax: draw_map(ax, ref), magnitude=False
    ):
        draw_map(ax, img)
        im_err = _overlay_error(ax, np.where(m, np.abs(img - ref), 0), top, "gray", magnify)
        sel = em & (ref > 0)
        if sel.any():
            rel = float(np.mean(np.abs(img[sel] - ref[sel]) / ref[sel]))
            _corner_text(ax, f"{100 * rel:.1f} %", "white")
    im_map = maps[-1] if maps else None
    w = fig.get_size_inches()[0]
    if im_map is not None:
        cax = fig.add_axes((1 - 0.85 / w, 0.55, 0.12 / w, 0.35))
        fig.colorbar(im_map, cax=cax).set_label(f"{parameter} (ms)", fontsize=7)
        cax.tick_params(labelsize=6)
    if im_err is not None:
        cax = fig.add_axes((1 - 0.85 / w, 0.1, 0.12 / w, 0.35))
        cb = fig.colorbar(im_err, cax=cax)
        cb.set_label(f"|error| ×{magnify:g} (ms)", fontsize=7)
        cax.tick_params(labelsize=6)
    return _save(fig, out_path)


class SubjectPanels:
    """Collect one axial slice of each result of one subject; draw its Figures 2 and 3.

    Only the shown slice of each result is kept (2D arrays), so many results fit in memory.

    Parameters
    ----------
    reference : Reference
        The subject's ground truth (maps and tissue, shape (x, y, z)).
    reference_coefficients : Tensor, shape (basis, x, y, z), complex
        :func:`spurig_core.metrics.reference_coefficients` for the results' basis.
    z : int, optional
        The axial slice; default the middle one of the brain slices.
    name : str
        Used in titles and file names.
    """

    def __init__(
        self,
        reference: Reference,
        reference_coefficients: torch.Tensor,
        *,
        z: int | None = None,
        name: str = "subject",
    ) -> None:
        if z is None:
            sl = brain_slices(reference.tissue)
            z = int(sl[len(sl) // 2]) if sl.size else reference.tissue.shape[-1] // 2
        self.z = int(z)
        self.name = name
        ref = reference_coefficients
        self._k3 = min(2, ref.shape[0] - 1)  # the third unbalanced coefficient (0-based 2)
        tissue = reference.tissue[..., self.z].numpy()
        self.reference = {
            "c1": coefficient_slice(ref, self.z, index=0),
            "u3": coefficient_slice(ref, self.z, index=self._k3, unbalanced=True),
            "t1": reference.t1_ms[..., self.z].numpy(),
            "t2": reference.t2_ms[..., self.z].numpy(),
        }
        self.mask = tissue > 0
        self.error_mask = np.isin(tissue, QUANT_LABELS)
        self.peaks = {
            "c1": float(ref[0].abs().max()),
            "u3": float(unbalance_coefficients(ref)[self._k3].abs().max()),
        }
        self.rows: dict[str, dict[str, dict[str, np.ndarray]]] = {
            "c1": {},
            "u3": {},
            "t1": {},
            "t2": {},
        }

    def add(self, result: Result, *, row: str | None = None, column: str | None = None) -> None:
        """Keep the slice of ``result`` (row: its duration; column: its method by default)."""
        if tuple(result.matrix[:2]) != self.mask.shape or result.matrix[2] <= self.z:
            raise InputError(
                f"{self.name}: result matrix {result.matrix} does not fit the reference"
            )
        r = row or duration_name(result.groups) or f"{result.groups} groups"
        c = column or result.method
        coeffs = result.coefficients
        self.rows["c1"].setdefault(r, {})[c] = coefficient_slice(coeffs, self.z, index=0)
        self.rows["u3"].setdefault(r, {})[c] = coefficient_slice(
            coeffs, self.z, index=self._k3, unbalanced=True
        )
        if result.t1_ms is not None and result.t2_ms is not None:
            self.rows["t1"].setdefault(r, {})[c] = result.t1_ms[..., self.z].numpy()
            self.rows["t2"].setdefault(r, {})[c] = result.t2_ms[..., self.z].numpy()

    def draw(self, out_dir: str | Path) -> list[Path]:
        """Write this subject's figure 2 (and, with maps, figure 3) PNGs into ``out_dir``.

        The files are ``fig2_<name>_c1.png``, ``fig2_<name>_u3.png`` and, with maps,
        ``fig3_<name>_t1.png`` and ``fig3_<name>_t2.png``; returns their paths.
        """
        out_dir = Path(out_dir)
        out = []
        for key, label, mag in (("c1", "balanced c1", 5), ("u3", "unbalanced c3", 10)):
            if self.rows[key]:
                out.append(
                    coefficient_figure(
                        self.reference[key],
                        self.rows[key],
                        out_dir / f"fig2_{self.name}_{key}.png",
                        peak=self.peaks[key],
                        magnify=mag,
                        title=f"{self.name}: {label}, slice {self.z}",
                    )
                )
        for key in ("t1", "t2"):
            if self.rows[key]:
                out.append(
                    maps_figure(
                        self.reference[key],
                        self.rows[key],
                        out_dir / f"fig3_{self.name}_{key}.png",
                        parameter=key.upper(),
                        mask=self.mask,
                        error_mask=self.error_mask,
                        title=f"{self.name}: {key.upper()}, slice {self.z} (error % over GM+WM)",
                    )
                )
        return out
