"""DICOM export (issue #17): values, geometry, identifiers read back with pydicom; napari opens it.

The result stores are written by the engine's own writer (``Result.save``) with known maps, so that
what pydicom reads back can be compared with them exactly (up to the 16-bit quantisation the
real-world value mapping states).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
import torch

from spurig_core import exchange
from spurig_core.data import FispSequence, Result, Scan
from spurig_core.errors import InputError
from spurig_core.io import file_sha256, nifti_affine
from spurig_core.io_ismrmrd_out import write_ismrmrd

SHAPE = (16, 14, 12)
VOXEL = (1.5, 2.0, 2.5)
PM = "1.2.840.10008.5.1.4.1.1.30"


def _spurig(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "spurig_core.cli", *args], capture_output=True, text=True
    )


def known_maps() -> dict[str, np.ndarray]:
    """Smooth, asymmetric maps (so that any flip or transpose shows), 0 outside an ellipsoid."""
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in SHAPE], indexing="ij")
    inside = (x / 0.9) ** 2 + (y / 0.8) ** 2 + (z / 0.95) ** 2 < 1
    t1 = np.where(inside, 900 + 600 * x + 250 * y - 100 * z, 0.0).astype(np.float32)
    t2 = np.where(inside, 60 + 20 * x - 15 * y + 8 * z, 0.0).astype(np.float32)
    pd = np.where(inside, 0.8 + 0.15 * y + 0.05 * x * z, 0.0).astype(np.float32)
    return {"t1_ms": t1, "t2_ms": t2, "pd": pd}


def save_result(path: Path, *, maps: bool = True, source: dict[str, str] | None = None) -> Path:
    g = torch.Generator().manual_seed(3)
    m = known_maps()
    result = Result(
        coefficients=torch.randn(5, *SHAPE, generator=g, dtype=torch.complex64),
        basis=torch.linalg.qr(torch.randn(20, 5, generator=g, dtype=torch.complex64))[0],
        method="spurig",
        groups=16,
        voxel_size_mm=VOXEL,
        source=source,
        **({k: torch.from_numpy(v) for k, v in m.items()} if maps else {}),
    )
    return result.save(path)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("dicom")
    res = save_result(base / "result.zarr")
    out = base / "dicom"
    run = _spurig(
        "export-dicom", str(res), str(out), "--patient-name", "Doe^Jane", "--patient-id", "P-7"
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.count("wrote ") == 4
    return out


def _group(ds: Any, frame: int, name: str) -> Any:
    for seq, i in (
        ("PerFrameFunctionalGroupsSequence", frame),
        ("SharedFunctionalGroupsSequence", 0),
    ):
        item = ds[seq][i]
        if name in item:
            return item[name][0]
    raise KeyError(name)


def test_values_in_ms_and_geometry_equal_nifti(exported: Path) -> None:
    maps = known_maps()
    inv = np.linalg.inv(nifti_affine(VOXEL, SHAPE))
    for stem, key, unit in (("T1", "t1_ms", "ms"), ("T2", "t2_ms", "ms"), ("PD", "pd", "[arb'U]")):
        ds = pydicom.dcmread(exported / f"{stem}.dcm")
        assert ds.SOPClassUID == PM and ds.Modality == "OT"
        rwvm = _group(ds, 0, "RealWorldValueMappingSequence")
        assert rwvm.MeasurementUnitsCodeSequence[0].CodeValue == unit
        slope, icpt = float(rwvm.RealWorldValueSlope), float(rwvm.RealWorldValueIntercept)
        stored = ds.pixel_array.astype(np.float64)  # (frames, rows, columns)
        assert stored.shape == (SHAPE[2], SHAPE[1], SHAPE[0])
        iop = np.asarray(_group(ds, 0, "PlaneOrientationSequence").ImageOrientationPatient, float)
        dr, dc = (float(v) for v in _group(ds, 0, "PixelMeasuresSequence").PixelSpacing)
        rows, cols = np.meshgrid(
            np.arange(stored.shape[1]), np.arange(stored.shape[2]), indexing="ij"
        )
        values, want = [], []
        for f in range(stored.shape[0]):
            ipp = np.asarray(_group(ds, f, "PlanePositionSequence").ImagePositionPatient, float)
            lps = ipp + cols[..., None] * dc * iop[:3] + rows[..., None] * dr * iop[3:]
            ras = lps * np.array([-1.0, -1.0, 1.0])
            ijk = (inv[:3, :3] @ ras.reshape(-1, 3).T).T + inv[:3, 3]
            np.testing.assert_allclose(ijk, np.rint(ijk), atol=1e-4)  # on the NIfTI voxel grid
            ijk = np.rint(ijk).astype(int)
            want.append(maps[key][ijk[:, 0], ijk[:, 1], ijk[:, 2]])
            values.append(stored[f].reshape(-1) * slope + icpt)
        np.testing.assert_allclose(
            np.concatenate(values), np.concatenate(want), atol=slope / 2 + 1e-6
        )


def test_series_study_and_references(exported: Path) -> None:
    image = pydicom.dcmread(exported / "image.dcm")
    assert image.SOPClassUID == "1.2.840.10008.5.1.4.1.1.4.4"  # Legacy Converted Enhanced MR
    seen = {image.SeriesInstanceUID}
    for stem in ("T1", "T2", "PD"):
        ds = pydicom.dcmread(exported / f"{stem}.dcm")
        assert ds.SeriesDescription.startswith(f"{stem} map")
        assert "spurig" in ds.SeriesDescription and "2min (16 groups)" in ds.SeriesDescription
        assert (ds.PatientName, ds.PatientID) == ("Doe^Jane", "P-7")
        assert ds.StudyInstanceUID == image.StudyInstanceUID
        assert ds.FrameOfReferenceUID == image.FrameOfReferenceUID
        assert ds.SeriesInstanceUID not in seen  # one series per map
        seen.add(ds.SeriesInstanceUID)
        refs = {
            item.ReferencedSOPInstanceUID
            for series in ds.ReferencedSeriesSequence
            for item in series.ReferencedInstanceSequence
        }
        assert refs == {image.SOPInstanceUID}  # the source image exists, in the folder
        pm = hd.pm.ParametricMap.from_dataset(ds)  # highdicom parses its own object back
        assert pm.SOPInstanceUID == ds.SOPInstanceUID


def test_identifiers_from_the_imported_header(tmp_path: Path) -> None:
    from ismrmrd import xsd

    g = torch.Generator().manual_seed(0)
    scan = Scan(
        kspace=torch.randn(2, 1, 6, 20, generator=g, dtype=torch.complex64),
        trajectory=(torch.rand(1, 6, 20, 3, generator=g) * 2 - 1) * 7,
        sequence=FispSequence(np.linspace(5, 60, 6)),
        matrix=(16, 16, 16),
        fov_mm=(200.0,) * 3,
        calibration=torch.randn(2, 8, 8, 8, generator=g, dtype=torch.complex64),
    )
    header = xsd.ismrmrdHeader(
        subjectInformation=xsd.subjectInformationType(patientID="MRN-123", patientName="Roe^Ann"),
        studyInformation=xsd.studyInformationType(studyInstanceUID="1.2.826.0.1.3680043.2.1125.7"),
        experimentalConditions=xsd.experimentalConditionsType(H1resonanceFrequency_Hz=1),
        encoding=[],
    )
    raw = write_ismrmrd(scan, tmp_path / "raw.h5", header_xml=xsd.ToXML(header))
    imported = exchange.import_ismrmrd(raw, tmp_path / "scan.h5").path
    res = save_result(
        tmp_path / "r.zarr", source={"path": str(imported), "sha256": file_sha256(imported)}
    )
    files = exchange.export_dicom(res, tmp_path / "out")
    ds = pydicom.dcmread(files[1])
    assert (ds.PatientID, ds.PatientName) == ("MRN-123", "Roe^Ann")
    assert ds.StudyInstanceUID == "1.2.826.0.1.3680043.2.1125.7"
    files = exchange.export_dicom(res, tmp_path / "out2", patient_id="OVERRIDE")  # options win
    assert pydicom.dcmread(files[1]).PatientID == "OVERRIDE"


def test_refusals_one_line_nothing_written(tmp_path: Path) -> None:
    res = save_result(tmp_path / "nomaps.zarr", maps=False)
    out = tmp_path / "out"
    run = _spurig("export-dicom", str(res), str(out))
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines() == [
        f"spurig: error: {res}: has no T1/T2/PD maps; run spurig match {res} first"
    ]
    assert not list(out.glob("*.dcm"))
    good = save_result(tmp_path / "good.zarr")
    with pytest.raises(InputError, match="--study-uid"):
        exchange.export_dicom(good, out, study_uid="not-a-uid")
    with pytest.raises(InputError, match="--patient-id"):
        exchange.export_dicom(good, out, patient_id="x" * 80)
    with pytest.raises(InputError, match="is the input"):
        exchange.export_dicom(good, good)
    assert not list(out.glob("*.dcm"))


# ----------------------------------------------------------------------------------------------
# napari
# ----------------------------------------------------------------------------------------------
def test_reader_contributions_accept_the_folder_and_one_file(exported: Path) -> None:
    from napari_spurig._reader_scanner import get_dicom_reader
    from spurig_core.io_dicom import read_dicom_folder

    assert get_dicom_reader(str(exported)) is not None
    assert get_dicom_reader(str(exported / "T2.dcm")) is not None
    assert get_dicom_reader(str(exported.parent)) is None  # no *.dcm there
    (one,) = read_dicom_folder(exported / "T2.dcm")
    assert one.kind == "t2" and one.voxel_size_mm == pytest.approx(VOXEL)
    np.testing.assert_allclose(
        one.data, known_maps()["t2_ms"], atol=known_maps()["t2_ms"].max() / 65535
    )


def test_napari_opens_the_dicom_folder(make_napari_viewer: Any, exported: Path) -> None:
    viewer = make_napari_viewer()
    layers = viewer.open(str(exported), plugin="spurig")
    names = [layer.name for layer in layers]
    assert len(layers) == 4, names
    maps = known_maps()
    for layer in layers:
        kind = layer.metadata["spurig"]["kind"]
        assert tuple(layer.scale) == pytest.approx(VOXEL)
        if layer.name.split()[1] in ("T1", "T2", "PD"):
            key = {"t1": "t1_ms", "t2": "t2_ms", "pd": "pd"}[kind]
            np.testing.assert_allclose(
                np.asarray(layer.data), maps[key], atol=maps[key].max() / 65535
            )
    t1 = next(layer for layer in layers if " T1 " in f" {layer.name} ")
    assert t1.colormap.name == "inferno"
