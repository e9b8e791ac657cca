"""ISMRMRD out: a spurig scan as an ISMRMRD file, and the header an imported scan keeps.

The layout is the one :mod:`spurig_core.io_ismrmrd` documents and reads by default (so a written
file imports back unchanged).  ``ismrmrd`` is imported inside the functions.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .data import Scan
from .errors import InputError
from .io import write_scan
from .io_ismrmrd import HEADER_ATTR
from .outputs import atomic_path, deferred_signals

__all__ = ["scan_header_xml", "subject_info", "write_imported_scan", "write_ismrmrd"]

PathLike = str | os.PathLike[str]

# acquisition flags (ismrmrd.constants)
_FIRST_IN_REPETITION, _LAST_IN_REPETITION = 13, 14
_CALIB, _LAST_IN_MEASUREMENT = 20, 25


# ----------------------------------------------------------------------------------------------
# identifiers (for DICOM export)
# ----------------------------------------------------------------------------------------------
def scan_header_xml(path: PathLike) -> str | None:
    """Return the ISMRMRD header XML an imported spurig scan carries (``None`` when it has none)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            v = f.attrs.get(HEADER_ATTR)
    except OSError:
        return None
    if isinstance(v, bytes):
        v = v.decode("utf-8", "replace")
    return None if v is None else str(v)


def subject_info(header_xml: str | None) -> dict[str, str]:
    """Patient and study identifiers of an ISMRMRD header (keys as DICOM keywords, text values).

    Returns ``PatientName``, ``PatientID``, ``PatientBirthDate``, ``PatientSex``,
    ``StudyInstanceUID``, ``StudyID``, ``AccessionNumber``, ``StudyDate``, ``StudyTime``,
    ``StudyDescription``, ``ProtocolName``, whichever the header carries (an empty dict for
    ``None`` or an unreadable header).
    """
    if not header_xml:
        return {}
    from ismrmrd.xsd import CreateFromDocument

    try:
        h = CreateFromDocument(header_xml)
    except Exception:  # an unreadable header carries no identifiers
        return {}
    out: dict[str, str] = {}
    pairs = []
    if h.subjectInformation is not None:
        s = h.subjectInformation
        pairs += [
            ("PatientName", s.patientName),
            ("PatientID", s.patientID),
            ("PatientBirthDate", s.patientBirthdate),
            ("PatientSex", s.patientGender),
        ]
    if h.studyInformation is not None:
        s = h.studyInformation
        pairs += [
            ("StudyInstanceUID", s.studyInstanceUID),
            ("StudyID", s.studyID),
            ("AccessionNumber", s.accessionNumber),
            ("StudyDate", s.studyDate),
            ("StudyTime", s.studyTime),
            ("StudyDescription", s.studyDescription),
        ]
    if h.measurementInformation is not None:
        pairs.append(("ProtocolName", h.measurementInformation.protocolName))
    for key, value in pairs:
        if value is not None and str(value).strip():
            out[key] = str(value).strip()
    for key in ("PatientBirthDate", "StudyDate"):
        if key in out:
            out[key] = out[key].replace("-", "")[:8]
    if "StudyTime" in out:
        out["StudyTime"] = out["StudyTime"].replace(":", "")[:6]
    return out


# ----------------------------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------------------------
def write_imported_scan(scan: Scan, path: PathLike, header_xml: str) -> Path:
    """:func:`spurig_core.io.write_scan` plus the ISMRMRD header it came from (atomically).

    The header is kept as the root attribute :data:`HEADER_ATTR` (ignored by
    :func:`~spurig_core.io.load_scan`), for the patient and study identifiers of a DICOM export.
    """
    import h5py

    final = Path(path)
    with atomic_path(final) as tmp:
        write_scan(scan, tmp)
        with h5py.File(tmp, "a") as f, deferred_signals():  # a string attribute: see write_scan
            f.attrs[HEADER_ATTR] = header_xml
    return final


def _space(xsd: Any, m: tuple[int, ...], fov: tuple[float, ...]) -> Any:
    return xsd.encodingSpaceType(
        matrixSize=xsd.matrixSizeType(x=m[0], y=m[1], z=m[2]),
        fieldOfView_mm=xsd.fieldOfViewMm(x=fov[0], y=fov[1], z=fov[2]),
    )


def _encodings(xsd: Any, scan: Scan) -> list[Any]:
    """Build encoding 0 (the MRF acquisition) and, with calibration data, encoding 1 (Cartesian)."""
    tr, groups = scan.n_tr, scan.n_groups
    units = xsd.userParameterStringType(name="units", value="cycles/FOV")
    out = [
        xsd.encodingType(
            encodedSpace=_space(xsd, scan.matrix, scan.fov_mm),
            reconSpace=_space(xsd, scan.matrix, scan.fov_mm),
            encodingLimits=xsd.encodingLimitsType(
                kspace_encoding_step_1=xsd.limitType(minimum=0, maximum=tr - 1, center=0),
                repetition=xsd.limitType(minimum=0, maximum=groups - 1, center=0),
            ),
            trajectory=xsd.trajectoryType.SPIRAL,
            trajectoryDescription=xsd.trajectoryDescriptionType(
                identifier="spurig 3D spiral projection",
                userParameterString=[units],
                comment="traj[:, d] = spatial frequency along image axis d in cycles per FOV",
            ),
        )
    ]
    if scan.calibration is not None:
        c = tuple(int(v) for v in scan.calibration.shape[1:])
        lim = [xsd.limitType(minimum=0, maximum=n - 1, center=n // 2) for n in c]
        out.append(
            xsd.encodingType(
                encodedSpace=_space(xsd, c, scan.fov_mm),
                reconSpace=_space(xsd, c, scan.fov_mm),
                encodingLimits=xsd.encodingLimitsType(
                    kspace_encoding_step_0=lim[0],
                    kspace_encoding_step_1=lim[1],
                    kspace_encoding_step_2=lim[2],
                ),
                trajectory=xsd.trajectoryType.CARTESIAN,
            )
        )
    return out


def _header(scan: Scan, base_xml: str | None) -> Any:
    """Build the layout's header; subject, study, measurement and conditions kept from ``base``."""
    from ismrmrd import xsd

    base = None
    if base_xml:
        try:
            base = xsd.CreateFromDocument(base_xml)
        except Exception:  # a broken stored header: write a fresh one
            base = None
    seq = scan.sequence
    conditions = xsd.experimentalConditionsType(H1resonanceFrequency_Hz=127_740_000)  # 3 T
    return xsd.ismrmrdHeader(
        subjectInformation=base.subjectInformation if base else None,
        studyInformation=base.studyInformation if base else None,
        measurementInformation=base.measurementInformation if base else None,
        acquisitionSystemInformation=xsd.acquisitionSystemInformationType(
            receiverChannels=scan.n_coils
        ),
        experimentalConditions=base.experimentalConditions if base else conditions,
        encoding=_encodings(xsd, scan),
        sequenceParameters=xsd.sequenceParametersType(
            TR=[seq.tr_ms],
            TE=[seq.te_ms],
            TI=[seq.ti_ms],
            flipAngle_deg=[float(v) for v in seq.flip_angle_deg],
            sequence_type="FISP-MRF",
        ),
        userParameters=xsd.userParametersType(
            userParameterDouble=[xsd.userParameterDoubleType(name="rest_s", value=seq.rest_s)]
        ),
    )


def _acquisitions(scan: Scan) -> list[Any]:
    """Calibration lines, then one acquisition per (group, tr) (layout in the module doc)."""
    import ismrmrd

    out: list[Any] = []
    axes = {"read_dir": (1.0, 0.0, 0.0), "phase_dir": (0.0, 1.0, 0.0), "slice_dir": (0.0, 0.0, 1.0)}

    def orient(a: Any) -> Any:
        for name, v in axes.items():
            getattr(a, name)[:] = v
        a.scan_counter = len(out)
        return a

    if scan.calibration is not None:
        cal = scan.calibration.detach().cpu().numpy().astype(np.complex64)
        _, cx, cy, cz = cal.shape
        for l in range(cz):
            for j in range(cy):
                a = ismrmrd.Acquisition.from_array(np.ascontiguousarray(cal[:, :, j, l]))
                a.center_sample = cx // 2
                a.encoding_space_ref = 1
                a.idx.kspace_encode_step_1, a.idx.kspace_encode_step_2 = j, l
                a.set_flag(_CALIB)
                out.append(orient(a))
    ksp = scan.kspace.detach().cpu().numpy().astype(np.complex64)
    traj = scan.trajectory.detach().cpu().numpy().astype(np.float32)
    for g in range(scan.n_groups):
        for t in range(scan.n_tr):
            a = ismrmrd.Acquisition.from_array(
                np.ascontiguousarray(ksp[:, g, t]), np.ascontiguousarray(traj[g, t])
            )
            a.idx.repetition, a.idx.kspace_encode_step_1 = g, t
            if t == 0:
                a.set_flag(_FIRST_IN_REPETITION)
            if t == scan.n_tr - 1:
                a.set_flag(_LAST_IN_REPETITION)
            out.append(orient(a))
    out[-1].set_flag(_LAST_IN_MEASUREMENT)
    return out


def write_ismrmrd(scan: Scan, path: PathLike, *, header_xml: str | None = None) -> Path:
    """Write ``scan`` as an ISMRMRD file (layout in the module doc), atomically.

    Parameters
    ----------
    scan : Scan
        Its k-space, trajectory, sequence and calibration are written; coil maps, B1 and the
        reference of a simulated scan have no place in ISMRMRD raw data and are left out.
    path : path-like
        Target ``.h5`` file.
    header_xml : str, optional
        An ISMRMRD header whose subject, study, measurement and experimental-conditions sections
        are kept (that of an imported scan).

    Raises
    ------
    InputError
        When the scan has more repetitions, groups or calibration lines than the 16-bit
        encoding counters hold.
    """
    import ismrmrd

    limit = 65535
    sizes = [scan.n_groups, scan.n_tr]
    if scan.calibration is not None:
        sizes += list(scan.calibration.shape[2:])
    if max(sizes) > limit:
        raise InputError(f"{path}: ISMRMRD encoding counters hold at most {limit + 1} values")
    header = _header(scan, header_xml)
    acqs = _acquisitions(scan)
    final = Path(path)
    with atomic_path(final) as tmp:
        f = ismrmrd.File(str(tmp), "w")
        with f:
            cont = f["dataset"]
            with deferred_signals():  # the header is an h5py string, as in write_imported_scan
                cont.header = header
            cont.acquisitions = acqs
    return final
