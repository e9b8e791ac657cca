"""ISMRMRD in and out (issue #17): round trip, an independent reader, a scanner-converter layout.

The independent reader is the ``ismrmrd`` package's own ``Dataset`` API, checked field by field:
mrpro (whose ``KData.from_file`` would be the natural one) installs with the pinned torch but does
not import with its CPU build (mrpro imports torchvision, whose only wheels here are CUDA builds:
"operator torchvision::nms does not exist").  The converter-style file is built in the test with
the same ``Dataset`` API, as ``siemens_to_ismrmrd``-like converters do, one acquisition at a time.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import ismrmrd
import numpy as np
import pytest
import torch
from ismrmrd import xsd

from spurig_core import exchange, pipeline
from spurig_core.data import FispSequence, Scan
from spurig_core.errors import InputError
from spurig_core.io import load_scan
from spurig_core.io_ismrmrd_out import write_ismrmrd

MATRIX = 16


def _spurig(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "spurig_core.cli", *args], capture_output=True, text=True
    )


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Return a simulated 16³ subject: 4 coils, 2 groups of 500 TRs, with calibration data."""
    out = tmp_path_factory.mktemp("sim") / "subject.h5"
    return pipeline.simulate(out, matrix=MATRIX, coils=4, groups=2, seed=5)


@pytest.fixture(scope="module")
def exported(sim: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("raw") / "raw.h5"
    run = _spurig("export-ismrmrd", str(sim), str(out))
    assert run.returncode == 0, run.stderr
    return out


# ----------------------------------------------------------------------------------------------
# round trip and the independent reader
# ----------------------------------------------------------------------------------------------
def test_round_trip_is_identical(sim: Path, exported: Path, tmp_path: Path) -> None:
    out = tmp_path / "back.h5"
    run = _spurig("import-ismrmrd", str(exported), str(out))
    assert run.returncode == 0, run.stderr
    assert "parallel-calibration" in run.stdout and "not pre-whitened" in run.stdout
    a, b = load_scan(sim), load_scan(out)
    assert torch.equal(a.kspace, b.kspace)
    assert torch.equal(a.trajectory, b.trajectory)
    assert a.calibration is not None and b.calibration is not None
    assert torch.equal(a.calibration, b.calibration)
    assert a.sequence.same_as(b.sequence, rtol=0)
    assert (a.matrix, a.fov_mm) == (b.matrix, b.fov_mm)
    # coil maps have no place in ISMRMRD raw data: both sides estimate them from calibration
    ra = pipeline.reconstruct(dataclasses.replace(a, coil_maps=None), method="adjoint")
    rb = pipeline.reconstruct(b, method="adjoint")
    assert torch.allclose(ra.coefficients, rb.coefficients, rtol=1e-5, atol=1e-6)


def test_independent_reader_dataset_api(sim: Path, exported: Path) -> None:
    scan = load_scan(sim)
    assert scan.calibration is not None
    coils, cx, cy, cz = scan.calibration.shape
    ds = ismrmrd.Dataset(str(exported), "dataset", create_if_needed=False, mode="r")
    try:
        hdr = xsd.CreateFromDocument(ds.read_xml_header())
        enc = hdr.encoding[0]
        ms, fov = enc.encodedSpace.matrixSize, enc.encodedSpace.fieldOfView_mm
        assert (ms.x, ms.y, ms.z) == scan.matrix
        assert (fov.x, fov.y, fov.z) == pytest.approx(scan.fov_mm)
        sp = hdr.sequenceParameters
        assert sp.TR == [pytest.approx(scan.sequence.tr_ms)]
        assert sp.TE == [pytest.approx(scan.sequence.te_ms)]
        assert sp.TI == [pytest.approx(scan.sequence.ti_ms)]
        np.testing.assert_allclose(sp.flipAngle_deg, scan.sequence.flip_angle_deg, rtol=1e-6)
        rest = {p.name: p.value for p in hdr.userParameters.userParameterDouble}["rest_s"]
        assert rest == pytest.approx(scan.sequence.rest_s)
        n_cal = cy * cz
        n = ds.number_of_acquisitions()
        assert n == n_cal + scan.n_groups * scan.n_tr
        for i in range(n_cal):  # calibration lines: readout along axis 0, lines along 1 and 2
            acq = ds.read_acquisition(i)
            assert acq.is_flag_set(ismrmrd.ACQ_IS_PARALLEL_CALIBRATION)
            assert (acq.trajectory_dimensions, acq.center_sample) == (0, cx // 2)
            j, l = acq.idx.kspace_encode_step_1, acq.idx.kspace_encode_step_2
            np.testing.assert_array_equal(acq.data, scan.calibration[:, :, j, l].numpy())
        seen = set()
        for i in range(n_cal, n, 97):  # imaging: every 97th acquisition, field by field
            acq = ds.read_acquisition(i)
            g, t = acq.idx.repetition, acq.idx.kspace_encode_step_1
            seen.add(g)
            assert not acq.is_flag_set(ismrmrd.ACQ_IS_PARALLEL_CALIBRATION)
            assert acq.active_channels == coils and acq.trajectory_dimensions == 3
            np.testing.assert_array_equal(acq.data, scan.kspace[:, g, t].numpy())
            np.testing.assert_array_equal(acq.traj, scan.trajectory[g, t].numpy())
        assert seen == set(range(scan.n_groups))
        assert ds.read_acquisition(n - 1).is_flag_set(ismrmrd.ACQ_LAST_IN_MEASUREMENT)
    finally:
        ds.close()


# ----------------------------------------------------------------------------------------------
# a file laid out as a scanner converter writes it
# ----------------------------------------------------------------------------------------------
def _converter_header(scan: Scan, cal_shape: tuple[int, int, int], rest: bool) -> str:
    m, fov = scan.matrix, scan.fov_mm
    seq = scan.sequence

    def space(mm: tuple[int, ...], f: tuple[float, ...]) -> object:
        return xsd.encodingSpaceType(
            matrixSize=xsd.matrixSizeType(x=mm[0], y=mm[1], z=mm[2]),
            fieldOfView_mm=xsd.fieldOfViewMm(x=f[0], y=f[1], z=f[2]),
        )

    cx, cy, cz = cal_shape
    hdr = xsd.ismrmrdHeader(
        subjectInformation=xsd.subjectInformationType(patientID="P-0042", patientName="Doe^Jo"),
        experimentalConditions=xsd.experimentalConditionsType(H1resonanceFrequency_Hz=123_200_000),
        encoding=[
            xsd.encodingType(
                encodedSpace=space(m, fov),
                reconSpace=space(m, fov),
                encodingLimits=xsd.encodingLimitsType(),
                trajectory=xsd.trajectoryType.SPIRAL,
            ),
            xsd.encodingType(  # readout oversampled twice, line counters offset by 100
                encodedSpace=space((2 * cx, cy, cz), (2 * fov[0], fov[1], fov[2])),
                reconSpace=space((cx, cy, cz), fov),
                encodingLimits=xsd.encodingLimitsType(
                    kspace_encoding_step_1=xsd.limitType(
                        minimum=100, maximum=100 + cy - 1, center=100 + cy // 2
                    ),
                    kspace_encoding_step_2=xsd.limitType(
                        minimum=100, maximum=100 + cz - 1, center=100 + cz // 2
                    ),
                ),
                trajectory=xsd.trajectoryType.CARTESIAN,
            ),
        ],
        sequenceParameters=xsd.sequenceParametersType(
            TR=[seq.tr_ms] * 3,
            TE=[seq.te_ms],
            TI=[seq.ti_ms],
            flipAngle_deg=[float(v) for v in seq.flip_angle_deg],
        ),
        userParameters=xsd.userParametersType(
            userParameterDouble=[xsd.userParameterDoubleType(name="rest_s", value=seq.rest_s)]
            if rest
            else []
        ),
    )
    return xsd.ToXML(hdr)


def _acq(data: np.ndarray, traj: np.ndarray | None = None) -> ismrmrd.Acquisition:
    a = ismrmrd.Acquisition.from_array(np.ascontiguousarray(data, dtype=np.complex64), traj)
    return a


def write_converter_file(
    scan: Scan,
    path: Path,
    *,
    noise: np.ndarray,
    rest: bool = False,
    traj: bool = True,
    drop: int | None = None,
    seed: int = 0,
) -> None:
    """Write a scanner-converter layout of a simulated scan.

    Noise scan first, an oversampled Cartesian calibration block, then the MRF arms in shuffled
    order with group = ``set`` (+3), time point = ``user[1]`` (+5), a navigator in between, 2
    samples of ADC dead time (``discard_pre``), k in radians.
    """
    rng = np.random.default_rng(seed)
    ksp = scan.kspace.numpy()
    k = scan.trajectory.numpy()
    assert scan.calibration is not None
    cal = scan.calibration.numpy()
    coils, groups, tr, _ = ksp.shape
    _, cx, cy, cz = cal.shape
    ds = ismrmrd.Dataset(str(path), "dataset", create_if_needed=True)
    ds.write_xml_header(_converter_header(scan, (cx, cy, cz), rest))
    for block in np.split(noise, 2, axis=1):
        a = _acq(block)
        a.set_flag(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)
        ds.append_acquisition(a)
    for l in range(cz):
        for j in range(cy):
            line = rng.standard_normal((coils, 2 * cx)) + 1j * rng.standard_normal((coils, 2 * cx))
            line[:, ::2] = cal[:, :, j, l]  # even samples: integer frequencies of the FOV
            a = _acq(line)
            a.set_flag(ismrmrd.ACQ_IS_PARALLEL_CALIBRATION)
            a.encoding_space_ref, a.center_sample = 1, cx  # 2·(cx//2) for even cx
            a.idx.kspace_encode_step_1, a.idx.kspace_encode_step_2 = 100 + j, 100 + l
            ds.append_acquisition(a)
    order = [(g, t) for g in range(groups) for t in range(tr)]
    for n, i in enumerate(rng.permutation(len(order))):
        g, t = order[i]
        if n == drop:
            continue
        data = np.concatenate([np.zeros((coils, 2)), ksp[:, g, t]], axis=1)
        kk = np.concatenate([np.zeros((2, 3)), k[g, t]]) * 2 * np.pi / scan.matrix[0]
        a = _acq(data, kk.astype(np.float32) if traj else None)
        a.discard_pre = 2
        a.idx.set, a.idx.user[1] = 3 + g, 5 + t
        a.idx.kspace_encode_step_1 = g * tr + t  # the arm's interleave number
        ds.append_acquisition(a)
        if n == 7:
            nav = _acq(rng.standard_normal((coils, 8)))
            nav.set_flag(ismrmrd.ACQ_IS_NAVIGATION_DATA)
            ds.append_acquisition(nav)
    ds.close()


def _noise(coils: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Correlated noise samples and the whitening matrix computed here (inverse Cholesky)."""
    mix = np.eye(coils) + 0.3 * (
        rng.standard_normal((coils, coils)) + 1j * rng.standard_normal((coils, coils))
    )
    n = mix @ (rng.standard_normal((coils, 4000)) + 1j * rng.standard_normal((coils, 4000)))
    psi = n @ n.conj().T / n.shape[1]
    return n.astype(np.complex64), np.linalg.inv(np.linalg.cholesky(psi))


def test_converter_layout_imports_with_map_and_traj_scale(sim: Path, tmp_path: Path) -> None:
    scan = load_scan(sim)
    assert scan.calibration is not None
    noise, white = _noise(scan.n_coils, np.random.default_rng(1))
    raw = tmp_path / "vendor.h5"
    write_converter_file(scan, raw, noise=noise)
    side = tmp_path / "seq.json"
    side.write_text(json.dumps({"rest_s": scan.sequence.rest_s}))
    out = tmp_path / "scan.h5"
    scale = f"{MATRIX / (2 * np.pi)!r}"
    args = ["import-ismrmrd", str(raw), str(out), "--map", "group=set,tr=user_1"]
    run = _spurig(*args, "--traj-scale", scale, "--sequence", str(side))
    assert run.returncode == 0, run.stderr
    assert "pre-whitened with the covariance of 4000 noise samples" in run.stdout
    assert "skipped 1 navigation acquisitions" in run.stdout
    assert f"rest_s from {side}" in run.stdout
    got = load_scan(out)
    want = np.tensordot(white, scan.kspace.numpy(), axes=(1, 0))
    np.testing.assert_allclose(got.kspace.numpy(), want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    np.testing.assert_allclose(got.trajectory.numpy(), scan.trajectory.numpy(), atol=1e-4)
    cal = np.tensordot(white, scan.calibration.numpy(), axes=(1, 0))
    assert got.calibration is not None
    np.testing.assert_allclose(
        got.calibration.numpy(), cal, rtol=1e-4, atol=1e-5 * np.abs(cal).max()
    )
    assert got.sequence.same_as(scan.sequence)

    # --coils 2: an orthonormal projection onto the two strongest directions of the calibration
    out2 = tmp_path / "scan2.h5"
    exchange.import_ismrmrd(
        raw,
        out2,
        mapping="group=set,tr=user_1",
        traj_scale=MATRIX / (2 * np.pi),
        sequence=side,
        coils=2,
    )
    small = load_scan(out2)
    assert small.n_coils == 2 and small.calibration is not None
    sv = np.linalg.svd(cal.reshape(scan.n_coils, -1), compute_uv=False)
    sv2 = np.linalg.svd(small.calibration.numpy().reshape(2, -1), compute_uv=False)
    np.testing.assert_allclose(sv2, sv[:2], rtol=1e-4)
    proj = small.calibration.numpy().reshape(2, -1) @ np.linalg.pinv(cal.reshape(scan.n_coils, -1))
    np.testing.assert_allclose(proj @ proj.conj().T, np.eye(2), atol=1e-4)
    np.testing.assert_allclose(
        small.kspace.numpy(), np.tensordot(proj, want, axes=(1, 0)), atol=1e-4 * np.abs(want).max()
    )


def test_gridded_calibration_when_there_is_none(sim: Path, tmp_path: Path) -> None:
    scan = dataclasses.replace(load_scan(sim), calibration=None, coil_maps=None)
    raw = write_ismrmrd(scan, tmp_path / "nocal.h5")  # imaging acquisitions only
    out = tmp_path / "scan.h5"
    report = exchange.import_ismrmrd(raw, out)
    assert "gridded from the centre of the non-Cartesian data" in report.calibration
    got = load_scan(out)
    assert got.calibration is not None
    n = got.calibration.shape[1]
    assert got.calibration.shape == (scan.n_coils, n, n, n) and 8 <= n <= MATRIX
    # each Cartesian point is the average of the samples nearest to it, e.g. the origin
    k = np.rint(scan.trajectory.numpy().reshape(-1, 3))
    for f in ((0, 0, 0), (1, -2, 3)):
        near = (k == f).all(axis=1)
        mean = scan.kspace.numpy().reshape(scan.n_coils, -1)[:, near].mean(axis=1)
        got_f = got.calibration[:, f[0] + n // 2, f[1] + n // 2, f[2] + n // 2].numpy()
        np.testing.assert_allclose(got_f, mean, rtol=1e-4)
    rec = pipeline.reconstruct(got, method="adjoint")  # ESPIRiT runs on the gridded cube
    assert torch.isfinite(rec.coefficients).all()


# ----------------------------------------------------------------------------------------------
# bad files: one line, exit status 2, nothing written
# ----------------------------------------------------------------------------------------------
def _fails(tmp_path: Path, raw: Path, *extra: str) -> str:
    out = tmp_path / "never.h5"
    run = _spurig("import-ismrmrd", str(raw), str(out), *extra)
    assert run.returncode == 2, run.stdout + run.stderr
    assert "Traceback" not in run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("spurig: error: "), run.stderr
    assert not out.exists() and not list(tmp_path.glob(".never.h5*"))
    return lines[0]


def tiny_scan(seed: int = 0) -> Scan:
    """2 coils, 2 groups of 6 repetitions, 20 samples, an 8³ calibration: fast to write."""
    g = torch.Generator().manual_seed(seed)
    traj = (torch.rand(2, 6, 20, 3, generator=g) * 2 - 1) * (MATRIX / 2 - 1)
    return Scan(
        kspace=torch.randn(2, 2, 6, 20, generator=g, dtype=torch.complex64),
        trajectory=traj,
        sequence=FispSequence(np.linspace(5, 60, 6)),
        matrix=(MATRIX,) * 3,
        fov_mm=(200.0,) * 3,
        calibration=torch.randn(2, 8, 8, 8, generator=g, dtype=torch.complex64),
    )


def test_bad_files_one_line_nothing_written(sim: Path, tmp_path: Path) -> None:
    text = tmp_path / "notes.h5"
    text.write_text("not hdf5")
    assert "not an ISMRMRD file" in _fails(tmp_path, text)
    assert "not an ISMRMRD file" in _fails(tmp_path, sim)  # a spurig scan, not ISMRMRD

    scan = tiny_scan()
    noise, _ = _noise(scan.n_coils, np.random.default_rng(2))
    vendor = tmp_path / "vendor.h5"
    write_converter_file(scan, vendor, noise=noise)
    m = ["--map", "group=set,tr=user_1", "--traj-scale", f"{MATRIX / (2 * np.pi)!r}"]
    msg = _fails(tmp_path, vendor, *m)  # no rest_s in the header, no sidecar
    assert "'rest_s'" in msg and "--sequence SEQ.json" in msg and '"rest_s": 1.2' in msg

    def refused(path: Path, text: str, **options: object) -> None:
        out = tmp_path / "never.h5"
        with pytest.raises(InputError, match=text) as info:
            exchange.import_ismrmrd(path, out, **options)  # type: ignore[arg-type]
        assert "\n" not in str(info.value) and not out.exists()

    conv = {"mapping": "group=set,tr=user_1", "traj_scale": MATRIX / (2 * np.pi)}
    no_traj = tmp_path / "notraj.h5"
    write_converter_file(scan, no_traj, noise=noise, traj=False, rest=True)
    refused(no_traj, "carry no trajectory", **conv)
    missing = tmp_path / "missing.h5"
    write_converter_file(scan, missing, noise=noise, rest=True, drop=4)
    refused(missing, "1 of 12 \\(group, tr\\) acquisitions are missing", **conv)
    twice = tmp_path / "twice.h5"
    write_converter_file(scan, twice, noise=noise, rest=True)
    refused(twice, "'segment'.*occurs 6 times", mapping="group=segment,tr=set")
    ok = tmp_path / "ok.h5"
    write_converter_file(scan, ok, noise=noise, rest=True)
    refused(ok, "'flip_angle_deg'.*it has 6 values, the data 12 repetitions", traj_scale=2.5)
    refused(ok, "looks like other units.*--traj-scale", mapping=conv["mapping"])
    refused(ok, "outside \\[-matrix/2, matrix/2\\)", **{**conv, "traj_scale": 30.0})
    assert exchange.import_ismrmrd(ok, tmp_path / "fine.h5", **conv).shape == (2, 2, 6, 20)


def test_option_errors_before_any_reading(exported: Path, tmp_path: Path) -> None:
    out = tmp_path / "x.h5"
    for kwargs, text in (
        ({"mapping": "grp=set"}, "--map"),
        ({"mapping": "group=set,tr=set"}, "both name"),
        ({"traj_scale": "0"}, "--traj-scale"),
        ({"traj_scale": "1,2"}, "--traj-scale"),
        ({"coils": 0}, "--coils"),
        ({"coils": 99}, "the file has 4 channels"),
    ):
        with pytest.raises(InputError, match=text):
            exchange.import_ismrmrd(exported, out, **kwargs)
        assert not out.exists()
    bad = tmp_path / "seq.json"
    bad.write_text(json.dumps({"rest": 1.0}))
    with pytest.raises(InputError, match="unknown key 'rest'"):
        exchange.import_ismrmrd(exported, out, sequence=bad)
    with pytest.raises(InputError, match="refusing to overwrite an input"):
        exchange.import_ismrmrd(exported, exported)


# ----------------------------------------------------------------------------------------------
# napari: scanner file → scan → maps without the CLI
# ----------------------------------------------------------------------------------------------
def test_napari_readers_tell_ismrmrd_from_spurig_scans(sim: Path, exported: Path) -> None:
    from napari_spurig._reader import get_scan_reader
    from napari_spurig._reader_scanner import get_ismrmrd_reader

    assert get_ismrmrd_reader(str(exported)) is not None and get_scan_reader(str(exported)) is None
    assert get_ismrmrd_reader(str(sim)) is None and get_scan_reader(str(sim)) is not None


def test_napari_opens_an_ismrmrd_file(make_napari_viewer: Any, tmp_path: Path) -> None:
    from napari_spurig._widgets._common import layer_scan_paths

    scan = tiny_scan(seed=4)
    raw = write_ismrmrd(scan, tmp_path / "scanner.h5")
    viewer = make_napari_viewer()
    layers = viewer.open(str(raw), plugin="spurig")
    assert len(layers) == 1
    meta = layers[0].metadata["spurig"]
    imported = Path(meta["scan_path"])
    assert imported == (tmp_path / "scanner.spurig.h5").resolve()
    got = load_scan(imported)  # went through the importer: the same data, ready for recon
    assert torch.equal(got.kspace, scan.kspace) and torch.equal(got.trajectory, scan.trajectory)
    assert np.asarray(layers[0].data).shape == (8, 8, 8)  # the calibration image
    assert tuple(layers[0].scale) == pytest.approx((200.0 / 8,) * 3)
    assert str(imported) in [path for _, path in layer_scan_paths(viewer)]  # Reconstruct offers it
