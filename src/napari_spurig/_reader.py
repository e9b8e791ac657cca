"""npe2 reader contributions: raw scans (``*.h5``), result stores (``*.zarr``) and NIfTI maps.

Each ``get_*_reader`` returns a reader function for paths it handles and ``None`` for the others
(e.g. an HDF5 file of another schema), so napari can offer other plugins.  A file of our schema that
is corrupt (or a ``*.zarr`` store whose ``zarr.json`` is damaged) makes the reader show an error
notification with one line naming the problem and raise it as
:class:`spurig_core.errors.InputError`; nothing else (``RuntimeError``, ``JSONDecodeError``, codec
errors) escapes.  NaN/Inf coefficients and a scan without reference maps give a warning.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ._layers import LayerDataTuple, is_result_store, is_scan_file, nifti_layers, result_layers
from ._layers import scan_layers as _scan_layers

__all__ = ["get_nifti_reader", "get_result_reader", "get_scan_reader", "read_scan"]

ReaderFunction = Callable[[str | list[str]], list[LayerDataTuple]]


def _single(path: str | list[str]) -> str | None:
    if isinstance(path, list):
        return str(path[0]) if len(path) == 1 else None
    return str(path)


def unreadable(path: str | list[str], exc: Exception) -> Exception:
    """Show, and return as a one-line ``InputError``, a library's error on reading ``path``.

    For any reader of the plugin: a damaged file must not surface as a raw library error.
    """
    from napari.utils.notifications import show_error

    from spurig_core.errors import InputError

    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
    msg = f"{_single(path) or path}: cannot be read ({type(exc).__name__}: {first})"
    show_error(msg)
    return InputError(msg)


def _notifying(fn: ReaderFunction) -> ReaderFunction:
    """``fn`` whose errors become an error notification and one-line InputError."""
    from functools import wraps

    @wraps(fn)
    def reader(path: str | list[str]) -> list[LayerDataTuple]:
        from napari.utils.notifications import show_error

        from spurig_core.errors import InputError

        from ._view import follow_current_viewer

        follow_current_viewer()  # axial slices and colorbars in the viewer the layers go to
        try:
            return fn(path)
        except InputError as exc:
            show_error(str(exc))
            raise
        except Exception as exc:
            raise unreadable(path, exc) from None

    return reader


@_notifying
def read_scan(path: str | list[str]) -> list[LayerDataTuple]:
    """Return a raw scan's reference maps; ``[(None,)]`` (napari's "nothing to show") if none."""
    p = _single(path)
    assert p is not None
    layers = _scan_layers(p)
    if not layers:
        from napari.utils.notifications import show_warning

        show_warning(
            f"{p}: no reference maps (reference/, b1); use the Reconstruct widget "
            "(method adjoint) for A^H b"
        )
        return [(None,)]  # type: ignore[list-item]
    return layers


@_notifying
def _read_results(path: str | list[str]) -> list[LayerDataTuple]:
    paths = path if isinstance(path, list) else [path]
    return [lay for p in paths for lay in result_layers(p)]


@_notifying
def _read_nifti(path: str | list[str]) -> list[LayerDataTuple]:
    paths = path if isinstance(path, list) else [path]
    return [lay for p in paths for lay in nifti_layers(p)]


def _raise(message: str) -> ReaderFunction:
    from spurig_core.errors import InputError

    def reader(path: str | list[str]) -> list[LayerDataTuple]:
        raise InputError(message)

    return _notifying(reader)


def get_scan_reader(path: str | list[str]) -> ReaderFunction | None:
    """Reader for one ``spurig-raw/1`` HDF5 scan, else ``None``."""
    from spurig_core.errors import InputError

    p = _single(path)
    if p is None or not p.lower().endswith((".h5", ".hdf5")):
        return None
    try:
        return read_scan if is_scan_file(p) else None
    except InputError as exc:  # an unreadable .h5: say so instead of failing silently
        return _raise(str(exc))


def get_result_reader(path: str | list[str]) -> ReaderFunction | None:
    """Reader for ``spurig-result/1`` zarr stores (one or several), else ``None``."""
    paths = path if isinstance(path, list) else [path]
    if not paths or not all(str(p).rstrip("/").lower().endswith(".zarr") for p in paths):
        return None
    for p in paths:
        if not Path(p).exists():
            return None
        if not is_result_store(p):
            from spurig_core._readers import check_store_json
            from spurig_core.errors import InputError

            try:
                check_store_json(Path(p))
            except InputError as exc:
                return _raise(str(exc))  # a damaged store: say so, do not stay silent
            from spurig_core.io import file_schema

            schema = file_schema(p)  # None: not a zarr group, leave it to other plugins
            if schema is not None and schema.startswith("spurig-result/"):
                return _raise(str(InputError(f"{p}: unsupported schema {schema!r}")))
            return None
    return _read_results


def get_nifti_reader(path: str | list[str]) -> ReaderFunction | None:
    """Reader for NIfTI files (``*.nii``, ``*.nii.gz``), else ``None``."""
    paths = path if isinstance(path, list) else [path]
    if not paths or not all(str(p).lower().endswith((".nii", ".nii.gz")) for p in paths):
        return None
    return _read_nifti
