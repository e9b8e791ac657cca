"""npe2 readers for scanner data: ISMRMRD raw files and the DICOM maps of ``spurig export-dicom``.

- An ISMRMRD ``*.h5`` file (told from a ``spurig-raw/1`` scan by its content: an ISMRMRD dataset
  group with a header and acquisitions) is imported with the engine's importer
  (:func:`spurig_core.exchange.import_ismrmrd`, default counter mapping and units) into a scan
  beside it, ``NAME.spurig.h5`` (or, where that folder cannot be written, under the temporary
  folder).  It opens as the low-resolution coil-combined calibration image, whose layer metadata
  name the imported scan, so the Reconstruct widget offers it: scanner file → maps without the CLI.
  A file that needs ``--map``, ``--traj-scale`` or ``--sequence`` says so in the notification;
  import it with ``spurig import-ismrmrd`` then.
- A folder written by ``spurig export-dicom`` (or one ``*.dcm`` file of it) opens as T1, T2 and PD
  layers in ms / a.u. (real-world values) and the MRF image, with the voxel size of the files.

Errors become an error notification and one-line :class:`~spurig_core.errors.InputError`.
"""

from __future__ import annotations

import importlib.util
import tempfile
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any

import numpy as np

from ._layers import LayerDataTuple, magnitude_limits, map_layer
from ._reader import _single, unreadable

__all__ = ["get_dicom_reader", "get_ismrmrd_reader", "read_dicom", "read_ismrmrd"]

ReaderFunction = Callable[[str | list[str]], list[LayerDataTuple]]


def _notifying(fn: ReaderFunction) -> ReaderFunction:
    """``fn`` whose errors become an error notification and one-line InputError."""

    @wraps(fn)
    def reader(path: str | list[str]) -> list[LayerDataTuple]:
        from napari.utils.notifications import show_error

        from spurig_core.errors import InputError, SpurigError

        try:
            return fn(path)
        except SpurigError as exc:
            show_error(str(exc))
            raise InputError(str(exc)) from None
        except Exception as exc:
            raise unreadable(path, exc) from None

    return reader


# ----------------------------------------------------------------------------------------------
# ISMRMRD
# ----------------------------------------------------------------------------------------------
def import_target(raw: Path) -> Path:
    """Where the reader writes the imported scan: beside ``raw``, else in the temporary folder."""
    from spurig_core.errors import InputError
    from spurig_core.outputs import check_output

    stem = raw.name.removesuffix(".hdf5").removesuffix(".h5")
    beside = raw.with_name(f"{stem}.spurig.h5")
    try:
        return check_output(beside, kind="h5", inputs=(raw,))
    except InputError:
        folder = Path(tempfile.gettempdir()) / "spurig-imports"
        return check_output(folder / f"{stem}.spurig.h5", kind="h5", inputs=(raw,))


@_notifying
def read_ismrmrd(path: str | list[str]) -> list[LayerDataTuple]:
    """Import an ISMRMRD file and show its calibration image (metadata: the imported scan)."""
    from napari.utils.notifications import show_info

    from spurig_core import exchange
    from spurig_core.io import load_scan
    from spurig_core.operators.igrog_sources import calibration_image

    p = _single(path)
    assert p is not None
    raw = Path(p)
    report = exchange.import_ismrmrd(raw, import_target(raw))
    show_info(" | ".join(report.lines()[:3]))
    scan = load_scan(report.path)
    assert scan.calibration is not None  # the importer always provides one
    image = calibration_image(scan.calibration).abs().pow(2).sum(0).sqrt().float().numpy()
    c = np.asarray(image.shape, dtype=np.float64)
    m = np.asarray(scan.matrix, dtype=np.float64)
    vox = np.asarray(scan.voxel_size_mm)
    meta = {
        "kind": "scan",
        "scan_path": str(Path(report.path).resolve()),
        "voxel_size_mm": tuple(float(v) for v in vox),
        "ismrmrd_path": str(raw.resolve()),
    }
    stem = raw.name.removesuffix(".hdf5").removesuffix(".h5")
    return [
        (
            image,
            {
                "name": f"{stem} calibration image (ISMRMRD)",
                "scale": tuple(float(v) for v in vox * m / c),
                # voxel r of the cube sits at full-resolution voxel (r - c//2)·m/c + m//2
                "translate": tuple(float(v) for v in (m // 2 - (c // 2) * m / c) * vox),
                "colormap": "gray",
                "contrast_limits": magnitude_limits(image),
                "metadata": {"spurig": meta},
            },
            "image",
        )
    ]


def get_ismrmrd_reader(path: str | list[str]) -> ReaderFunction | None:
    """Reader for one ISMRMRD ``*.h5`` file (not a spurig scan), else ``None``."""
    p = _single(path)
    if p is None or not p.lower().endswith((".h5", ".hdf5")) or not Path(p).is_file():
        return None
    if importlib.util.find_spec("ismrmrd") is None:
        return None
    from spurig_core.io_ismrmrd import is_ismrmrd

    return read_ismrmrd if is_ismrmrd(p) else None


# ----------------------------------------------------------------------------------------------
# DICOM
# ----------------------------------------------------------------------------------------------
@_notifying
def read_dicom(path: str | list[str]) -> list[LayerDataTuple]:
    """Return the maps (and MRF image) of an export-dicom folder or ``*.dcm`` file as layers."""
    from spurig_core.io_dicom import read_dicom_folder

    p = _single(path)
    assert p is not None
    folder = Path(p) if Path(p).is_dir() else Path(p).parent
    layers: list[LayerDataTuple] = []
    for v in read_dicom_folder(p):
        meta: dict[str, Any] = {"kind": "dicom", "path": str(Path(p).resolve())}
        kind = "pd" if v.kind == "image" else v.kind
        layers.append(
            map_layer(
                v.data,
                kind,
                name=f"{folder.name} {v.description}",
                voxel_size_mm=v.voxel_size_mm,
                metadata={**meta, "voxel_size_mm": v.voxel_size_mm},
            )
        )
    return layers


def get_dicom_reader(path: str | list[str]) -> ReaderFunction | None:
    """Reader for a folder holding ``*.dcm`` files, or one ``*.dcm`` file, else ``None``."""
    p = _single(path)
    if p is None or importlib.util.find_spec("pydicom") is None:
        return None
    q = Path(p)
    if q.is_dir():
        return read_dicom if any(q.glob("*.dcm")) else None
    return read_dicom if q.suffix.lower() == ".dcm" and q.is_file() else None
