"""DICOM: quantitative maps as Parametric Map objects (``highdicom``), and reading them back.

Format knowledge only; ``highdicom`` and ``pydicom`` are imported inside the functions
(``pip install "spurig[scanner]"``).

An export folder (what :func:`write_dicom_maps` writes, one series per file, one study and one
frame of reference):

- ``T1.dcm``, ``T2.dcm``, ``PD.dcm`` — Parametric Map objects.  Stored values are ``uint16``;
  the real-world value mapping (slope, intercept 0) turns them into ms for T1 and T2 and into
  arbitrary units for PD, quantity coded as DCM 113063 T1, 113065 T2, 113058 Proton Density.
  A VOI window covers the map's range.  The series description names the map, the
  reconstruction method and the scan duration, e.g. ``T1 map (ms), spurig, 2min (16 groups)``.
- ``image.dcm`` — a Legacy Converted Enhanced MR Image of the MRF magnitude image (the
  root-sum-of-squares of the subspace coefficients), the source image the maps are derived from
  and reference.  MRF raw data have no DICOM images of their own, so this one is made here.

Geometry agrees with the NIfTI export (:func:`spurig_core.io.nifti_affine`): voxel ``(i, j, k)``
of an ``(x, y, z)`` map sits at RAS ``((i − x//2)·dx, (j − y//2)·dy, (k − z//2)·dz)`` mm, i.e. LPS
``(−(i − x//2)·dx, −(j − y//2)·dy, (k − z//2)·dz)``.  Frames are axial slices along image axis 2
in the standard orientation ``ImageOrientationPatient = [1, 0, 0, 0, 1, 0]``: stored pixel
``(row r, column c)`` of frame ``k`` is voxel ``(x−1−c, y−1−r, k)``.  The frame of reference is new
(the scanner's patient coordinates are not carried through the raw scan), so viewers do not
overlay the maps on other series of the study by mistake.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError
from .outputs import atomic_path

__all__ = [
    "MAPS",
    "DicomVolume",
    "frames_to_volume",
    "plane_geometry",
    "read_dicom_folder",
    "volume_to_frames",
    "write_dicom_maps",
]

PathLike = str | os.PathLike[str]

#: Map name → (file stem, label, unit keyword for UCUM, DCM quantity keyword).
MAPS: dict[str, tuple[str, str, str, str]] = {
    "t1_ms": ("T1", "T1 map (ms)", "Millisecond", "T1"),
    "t2_ms": ("T2", "T2 map (ms)", "Millisecond", "T2"),
    "pd": ("PD", "PD map (a.u.)", "ArbitraryUnit", "ProtonDensity"),
}

_PM_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.30"
_LCE_MR_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.4.4"
_MR_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.4"


# ----------------------------------------------------------------------------------------------
# geometry
# ----------------------------------------------------------------------------------------------
def volume_to_frames(volume: np.ndarray) -> np.ndarray:
    """``(x, y, z)`` → ``(z, y, x)`` frames with ``frames[k, r, c] = volume[x−1−c, y−1−r, k]``."""
    return np.ascontiguousarray(np.asarray(volume)[::-1, ::-1, :].transpose(2, 1, 0))


def plane_geometry(
    voxel_size_mm: tuple[float, float, float], shape: tuple[int, int, int]
) -> tuple[list[float], list[float], list[list[float]]]:
    """``ImageOrientationPatient``, ``PixelSpacing`` and each frame's ``ImagePositionPatient``.

    For the frames of :func:`volume_to_frames`; LPS mm, as laid out in the module doc.
    """
    dx, dy, dz = (float(v) for v in voxel_size_mm)
    nx, ny, nz = shape
    x0 = -(nx - 1 - nx // 2) * dx
    y0 = -(ny - 1 - ny // 2) * dy
    positions = [[x0, y0, (k - nz // 2) * dz] for k in range(nz)]
    return [1.0, 0.0, 0.0, 0.0, 1.0, 0.0], [dy, dx], positions


def _duration(groups: int) -> str:
    from .durations import duration_name

    name = duration_name(groups)
    return f"{name} ({groups} groups)" if name else f"{groups} groups"


def _quantise(values: np.ndarray) -> tuple[np.ndarray, float]:
    """``uint16`` stored values and the slope that maps them back (``values ≈ stored · slope``)."""
    v = np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    v = np.maximum(v, 0.0)
    peak = float(v.max())
    slope = peak / 65535.0 if peak > 0 else 1.0
    return np.rint(v / slope).astype(np.uint16), slope


# ----------------------------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Common:
    """What every instance of one export shares."""

    ids: dict[str, str]
    study_uid: str
    frame_uid: str
    voxel: tuple[float, float, float]
    shape: tuple[int, int, int]
    method: str
    duration: str
    software: str


def _source_image(image: np.ndarray, common: _Common, series_number: int) -> Any:
    """Return the MRF magnitude image as a Legacy Converted Enhanced MR Image (the maps' source)."""
    import highdicom as hd
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    stored, _ = _quantise(image / max(float(np.max(image)), 1e-30) * 4095.0)
    frames = volume_to_frames(stored)
    iop, spacing, positions = plane_geometry(common.voxel, common.shape)
    series_uid, legacy = hd.UID(), []
    today = datetime.date.today().strftime("%Y%m%d")
    for k, frame in enumerate(frames):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = _MR_SOP_CLASS, hd.UID()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = common.study_uid, series_uid
        ds.FrameOfReferenceUID = common.frame_uid
        for key, value in common.ids.items():
            setattr(ds, key, value)
        ds.ReferringPhysicianName = ""
        ds.Modality, ds.Manufacturer = "MR", "spurig"
        ds.SeriesNumber, ds.InstanceNumber = series_number, k + 1
        ds.SeriesDescription = f"MRF image, {common.method}, {common.duration}"[:64]
        ds.ContentDate = ds.SeriesDate = today
        ds.ImageType = ["DERIVED", "PRIMARY", "MRF", "MAGNITUDE"]
        ds.ImageOrientationPatient, ds.PixelSpacing = iop, spacing
        ds.ImagePositionPatient = positions[k]
        ds.SliceThickness = ds.SpacingBetweenSlices = common.voxel[2]
        ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions = "RM", "NONE", ""
        ds.MRAcquisitionType = "3D"
        ds.Rows, ds.Columns = frame.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.WindowCenter, ds.WindowWidth = 2048, 4096
        ds.PixelData = frame.tobytes()
        legacy.append(ds)
    return hd.legacy.LegacyConvertedEnhancedMRImage(
        legacy_datasets=legacy,
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
    )


def _parametric_map(
    name: str, values: np.ndarray, source: Any, common: _Common, series_number: int
) -> Any:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    stem, label, unit, quantity = MAPS[name]
    stored, slope = _quantise(values)
    iop, spacing, positions = plane_geometry(common.voxel, common.shape)
    inside = stored[stored > 0]
    hi = float(np.percentile(inside, 99.5)) if inside.size else 1.0
    description = f"{label}, {common.method}, {common.duration}"[:64]
    return hd.pm.ParametricMap(
        source_images=[source],
        pixel_array=volume_to_frames(stored),
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="spurig",
        manufacturer_model_name="spurig MRF reconstruction",
        software_versions=common.software,
        device_serial_number="none",
        contains_recognizable_visual_features=True,
        real_world_value_mappings=[
            hd.pm.RealWorldValueMapping(
                lut_label=stem,
                lut_explanation=label,
                unit=getattr(codes.UCUM, unit),
                value_range=(0, 65535),
                slope=slope,
                intercept=0.0,
                quantity_definition=getattr(codes.DCM, quantity),
            )
        ],
        voi_lut_transformations=[
            hd.VOILUTTransformation(window_center=hi / 2, window_width=max(hi, 1.0))
        ],
        content_description=description,
        content_label=f"{stem}_MAP",
        pixel_measures=hd.PixelMeasuresSequence(
            pixel_spacing=spacing,
            slice_thickness=common.voxel[2],
            spacing_between_slices=common.voxel[2],
        ),
        plane_orientation=hd.PlaneOrientationSequence("PATIENT", iop),
        plane_positions=[hd.PlanePositionSequence("PATIENT", p) for p in positions],
        series_description=description,
    )


def write_dicom_maps(
    maps: dict[str, np.ndarray],
    image: np.ndarray,
    out_dir: PathLike,
    *,
    voxel_size_mm: tuple[float, float, float],
    method: str,
    groups: int,
    identifiers: dict[str, str] | None = None,
    series_number: int = 100,
) -> list[Path]:
    """Write T1, T2 and PD maps as Parametric Maps and their source image (module doc).

    Parameters
    ----------
    maps : dict of str to ndarray, shape (x, y, z)
        ``t1_ms``, ``t2_ms`` (ms) and ``pd``, whichever are given.
    image : ndarray, shape (x, y, z), float
        The MRF magnitude image (source of the maps).
    out_dir : path-like
        Folder the files are written into (each file atomically).
    voxel_size_mm : tuple of 3 float
    method : str
        Reconstruction method (for the series descriptions).
    groups : int
        Groups used (the scan duration, for the series descriptions).
    identifiers : dict of str to str, optional
        DICOM keywords ``PatientName``, ``PatientID``, ``PatientBirthDate``, ``PatientSex``,
        ``StudyInstanceUID``, ``StudyID``, ``AccessionNumber``, ``StudyDate``, ``StudyTime``,
        ``StudyDescription``; missing ones get anonymous defaults and a new study UID.
    series_number : int
        Number of the source image series; the maps follow it (``+1``, ``+2``, …).

    Returns
    -------
    list of Path
        ``image.dcm`` then one file per map.
    """
    import highdicom as hd

    from . import __version__

    ids = dict(identifiers or {})
    study_uid = ids.pop("StudyInstanceUID", None) or hd.UID()
    ids.setdefault("PatientName", "Anonymous^")
    ids.setdefault("PatientID", "anonymous")
    for key in ("PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "StudyDate"):
        ids.setdefault(key, "")
    ids.setdefault("StudyTime", "")
    shape = tuple(int(s) for s in np.shape(image))
    common = _Common(
        ids=ids,
        study_uid=str(study_uid),
        frame_uid=hd.UID(),
        voxel=tuple(float(v) for v in voxel_size_mm),  # type: ignore[arg-type]
        shape=shape,  # type: ignore[arg-type]
        method=method,
        duration=_duration(groups),
        software=f"spurig {__version__}",
    )
    source = _source_image(np.asarray(image, dtype=np.float64), common, series_number)
    objects = [("image", source)]
    for n, name in enumerate(m for m in MAPS if m in maps):
        pm = _parametric_map(name, maps[name], source, common, series_number + 1 + n)
        objects.append((MAPS[name][0], pm))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for stem, ds in objects:
        with atomic_path(out / f"{stem}.dcm") as tmp:
            ds.save_as(tmp, enforce_file_format=True)
        written.append(out / f"{stem}.dcm")
    return written


# ----------------------------------------------------------------------------------------------
# reading
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DicomVolume:
    """A volume read back from a DICOM file, in spurig's ``(x, y, z)`` voxel order.

    Attributes
    ----------
    data : ndarray, shape (x, y, z), float32
        Real-world values (ms for T1 and T2) or the stored image.
    voxel_size_mm : tuple of 3 float
    kind : str
        ``"t1"``, ``"t2"``, ``"pd"`` or ``"image"``.
    description : str
        The series description.
    """

    data: np.ndarray
    voxel_size_mm: tuple[float, float, float]
    kind: str
    description: str


def _item(ds: Any, frame: int, name: str) -> Any:
    """Return a functional group ``name`` of one frame (per-frame first, then shared)."""
    for seq in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
        groups = getattr(ds, seq, None)
        if groups:
            g = groups[frame if seq.startswith("PerFrame") else 0]
            if name in g:
                return g[name].value[0]
    raise InputError(f"{getattr(ds, 'filename', 'DICOM')}: frame {frame} has no {name}")


def frames_to_volume(ds: Any, frames: np.ndarray) -> tuple[np.ndarray, tuple[float, ...]]:
    """Frames ``(n, rows, columns)`` of a multi-frame object as an RAS-ordered ``(x, y, z)`` volume.

    Uses the per-frame geometry (``ImageOrientationPatient``, ``ImagePositionPatient``,
    ``PixelSpacing``) of any axis-aligned orientation; returns the volume and its voxel size.
    """
    import nibabel as nib

    iop = np.asarray(_item(ds, 0, "PlaneOrientationSequence").ImageOrientationPatient, float)
    spacing = np.asarray(_item(ds, 0, "PixelMeasuresSequence").PixelSpacing, float)
    pos = np.array(
        [_item(ds, f, "PlanePositionSequence").ImagePositionPatient for f in range(len(frames))],
        dtype=float,
    )
    normal = np.cross(iop[:3], iop[3:])
    order = np.argsort(pos @ normal)
    frames, pos = frames[order], pos[order]
    step = pos[1] - pos[0] if len(pos) > 1 else normal * float(spacing[0])
    aff = np.eye(4)
    aff[:3, 0] = iop[:3] * spacing[1]  # along a row: increasing column index
    aff[:3, 1] = iop[3:] * spacing[0]  # along a column: increasing row index
    aff[:3, 2] = step
    aff[:3, 3] = pos[0]
    aff = np.diag([-1.0, -1.0, 1.0, 1.0]) @ aff  # LPS → RAS
    vol = np.transpose(frames, (2, 1, 0))  # (columns, rows, frames)
    ornt = nib.orientations.io_orientation(aff)
    data = nib.orientations.apply_orientation(vol, ornt)
    zooms = np.sqrt((aff[:3, :3] ** 2).sum(axis=0))
    voxel = tuple(float(zooms[int(a)]) for a in np.argsort(ornt[:, 0]))
    return np.ascontiguousarray(data), voxel


def _read_one(path: Path) -> DicomVolume | None:
    import pydicom

    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:  # pydicom raises several types for a broken file
        raise InputError(f"{path}: not a readable DICOM file ({type(exc).__name__})") from None
    sop = str(getattr(ds, "SOPClassUID", ""))
    if sop not in (_PM_SOP_CLASS, _LCE_MR_SOP_CLASS):
        return None
    frames = np.asarray(ds.pixel_array, dtype=np.float64)
    if frames.ndim == 2:
        frames = frames[None]
    kind = "image"
    if sop == _PM_SOP_CLASS:
        rwvm = _item(ds, 0, "RealWorldValueMappingSequence")
        frames = frames * float(rwvm.RealWorldValueSlope) + float(rwvm.RealWorldValueIntercept)
        label = str(getattr(rwvm, "LUTLabel", "")).lower()
        kind = label if label in ("t1", "t2", "pd") else "pd"
    data, voxel = frames_to_volume(ds, frames)
    return DicomVolume(
        data=data.astype(np.float32),
        voxel_size_mm=voxel,  # type: ignore[arg-type]
        kind=kind,
        description=str(getattr(ds, "SeriesDescription", path.stem)),
    )


def read_dicom_folder(path: PathLike) -> list[DicomVolume]:
    """Read the Parametric Maps and enhanced MR images of a folder or of one ``*.dcm`` file.

    A folder is read as :func:`write_dicom_maps` writes it.

    Raises
    ------
    InputError
        When there is no such object or a ``*.dcm`` file cannot be read.
    """
    p = Path(path)
    files = sorted(p.glob("*.dcm")) if p.is_dir() else [p]
    volumes = [v for v in map(_read_one, files) if v is not None]
    if not volumes:
        raise InputError(f"{p}: no DICOM Parametric Map or enhanced MR image (*.dcm) found")
    return volumes
