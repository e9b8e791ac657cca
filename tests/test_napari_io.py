"""napari plugin without a display: manifest, readers, writer, layer functions, headless models.

Files are written by the engine's own writers (``spurig_core.io``) in ``tmp_path``; nothing here
needs a display.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from spurig_core.data import FispSequence, Reference, Result, Scan
from spurig_core.errors import Cancelled, InputError
from spurig_core.io import save_result, write_nifti, write_scan
from spurig_core.progress import emit

MATRIX = (16, 14, 12)
FOV_MM = (32.0, 28.0, 36.0)  # voxel (2, 2, 3) mm: checks that scale follows the file
VOXEL = (2.0, 2.0, 3.0)


def make_scan(path: Path, *, reference: bool = True, seed: int = 0) -> Path:
    """Return a small but schema-complete raw scan (random k-space; smooth reference maps)."""
    g = torch.Generator().manual_seed(seed)
    coils, groups, tr, samples = 2, 4, 6, 20
    ksp = torch.randn(coils, groups, tr, samples, generator=g, dtype=torch.complex64)
    half = torch.tensor(MATRIX, dtype=torch.float32) / 2
    traj = (torch.rand(groups, tr, samples, 3, generator=g) * 2 - 1) * (half - 1)
    ref = None
    if reference:
        x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in MATRIX], indexing="ij")
        r = np.sqrt(x**2 + y**2 + z**2)
        tissue = np.where(r < 0.3, 1, np.where(r < 0.6, 2, np.where(r < 0.9, 3, 0))).astype(
            np.uint8
        )
        t1 = np.choose(tissue, [0.0, 4000.0, 1400.0, 850.0]).astype(np.float32)
        t2 = np.choose(tissue, [0.0, 1800.0, 80.0, 50.0]).astype(np.float32)
        pd = ((tissue > 0) * (0.7 + 0.3 * np.cos(3 * x)) * np.exp(1j * y)).astype(np.complex64)
        ref = Reference(
            t1_ms=torch.from_numpy(t1),
            t2_ms=torch.from_numpy(t2),
            pd=torch.from_numpy(pd),
            tissue=torch.from_numpy(tissue),
        )
    scan = Scan(
        kspace=ksp,
        trajectory=traj,
        sequence=FispSequence(np.linspace(5, 60, tr)),
        matrix=MATRIX,
        fov_mm=FOV_MM,
        reference=ref,
    )
    return write_scan(scan, path)


def make_result(path: Path, *, seed: int = 0, iterations: int = 0, maps: bool = False) -> Path:
    """Return a result store of random balanced coefficients (and optionally iterates and maps)."""
    g = torch.Generator().manual_seed(seed)
    k = 5
    coeffs = torch.randn(k, *MATRIX, generator=g, dtype=torch.complex64)
    its = None
    if iterations:
        its = torch.stack([coeffs * (i + 1) / iterations for i in range(iterations)])
    kw = {}
    if maps:
        kw = {
            "t1_ms": torch.rand(MATRIX, generator=g) * 2000,
            "t2_ms": torch.rand(MATRIX, generator=g) * 150,
            "pd": torch.rand(MATRIX, generator=g),
        }
    res = Result(
        coefficients=coeffs,
        basis=torch.randn(6, k, generator=g, dtype=torch.complex64),
        method="adjoint",
        groups=4,
        voxel_size_mm=VOXEL,
        iterations=its,
        **kw,
    )
    return save_result(res, path)


# ----------------------------------------------------------------------------------------------
def test_manifest_is_valid_and_discovered() -> None:
    npe2 = Path(sys.executable).with_name("npe2")
    out = subprocess.run(
        [str(npe2), "validate", "spurig"], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "valid" in out.stdout
    from npe2 import PluginManager

    pm = PluginManager.instance()
    pm.discover()
    mf = pm.get_manifest("spurig")
    assert {w.display_name for w in mf.contributions.widgets} == {
        "Reconstruct",
        "Train",
        "Quantitative maps",
        "Compare",
    }
    assert {s.key for s in mf.contributions.sample_data} == {"scan", "result", "scan48"}


def test_no_qt_at_import() -> None:
    code = (
        "import sys, napari_spurig, napari_spurig._reader, napari_spurig._writer, "
        "napari_spurig._layers, napari_spurig._jobs, napari_spurig._sample_data;"
        "bad=[m for m in sys.modules if m.split('.')[0] in ('PyQt6','PyQt5','qtpy','napari')];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def test_scan_reader_reference_maps(tmp_path: Path) -> None:
    from napari_spurig._reader import get_scan_reader

    p = make_scan(tmp_path / "subj.h5")
    reader = get_scan_reader(str(p))
    assert reader is not None
    layers = reader(str(p))
    by_name = {meta["name"]: (data, meta, kind) for data, meta, kind in layers}
    # T1 last (napari draws it on top) and the only visible layer; units in the names
    assert [m["name"] for _, m, _ in layers] == [
        "subj tissue",
        "subj reference |PD| [a.u.]",
        "subj reference T2 [ms]",
        "subj reference T1 [ms]",
    ]
    assert [m.get("visible", True) for _, m, _ in layers] == [False, False, False, True]
    t1, meta, kind = by_name["subj reference T1 [ms]"]
    assert kind == "image" and t1.dtype == np.float32 and t1.shape == MATRIX
    assert meta["colormap"] == "inferno" and meta["contrast_limits"] == (0.0, 3000.0)
    assert meta["scale"] == pytest.approx(VOXEL) and meta["units"] == ("mm", "mm", "mm")
    assert by_name["subj reference T2 [ms]"][1]["contrast_limits"] == (0.0, 200.0)
    tissue, tmeta, tkind = by_name["subj tissue"]
    assert tkind == "labels" and tissue.dtype == np.uint8 and set(np.unique(tissue)) <= {0, 1, 2, 3}
    pd = by_name["subj reference |PD| [a.u.]"][0]
    assert pd.dtype == np.float32 and pd.min() >= 0
    assert tmeta["metadata"]["spurig"]["scan_path"] == str(p.resolve())


def test_scan_reader_declines_other_schema_and_flags_corrupt(tmp_path: Path) -> None:
    import h5py

    from napari_spurig._reader import get_scan_reader

    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.attrs["schema"] = "someone-else/3"
        f["x"] = np.zeros(3)
    assert get_scan_reader(str(other)) is None
    assert get_scan_reader(str(tmp_path / "notes.txt")) is None
    good = make_scan(tmp_path / "good.h5")
    broken = tmp_path / "broken.h5"
    broken.write_bytes(good.read_bytes()[:200])
    reader = get_scan_reader(str(broken))
    assert reader is not None
    with pytest.raises(InputError, match=r"broken\.h5"):
        reader(str(broken))


def test_scan_without_reference_gives_no_layers(tmp_path: Path) -> None:
    from napari_spurig._layers import scan_layers

    p = make_scan(tmp_path / "noref.h5", reference=False)
    assert scan_layers(p) == []


def test_result_reader_is_lazy_and_channel_stacked(tmp_path: Path) -> None:
    import dask.array as da

    from napari_spurig._reader import get_result_reader

    p = make_result(tmp_path / "r.zarr", iterations=3, maps=True)
    reader = get_result_reader(str(p))
    assert reader is not None
    layers = reader(str(p))
    names = [m["name"] for _, m, _ in layers]
    assert names == ["r iterations |α̃|", "r |α̃|", "r PD [a.u.]", "r T2 [ms]", "r T1 [ms]"]
    # a matched result opens on its T1 map (on top); the rest is there, hidden
    assert [m.get("visible", True) for _, m, _ in layers] == [False, False, False, False, True]
    coeffs, meta, kind = layers[1]
    assert kind == "image" and isinstance(coeffs, da.Array)
    assert coeffs.shape == (5, *MATRIX) and coeffs.dtype == np.float32
    assert meta["scale"] == pytest.approx((1.0, *VOXEL))
    assert meta["units"] == ("pixel", "mm", "mm", "mm")
    assert meta["axis_labels"] == ("coefficient", "x", "y", "z")
    its = layers[0][0]
    assert isinstance(its, da.Array) and its.shape == (3, 5, *MATRIX)
    assert layers[0][1]["axis_labels"][0] == "iteration"
    t1 = layers[4]
    assert isinstance(t1[0], da.Array) and t1[1]["colormap"] == "inferno"
    assert t1[1]["contrast_limits"] == (0.0, 3000.0)
    # values agree with the store, read independently through zarr
    import zarr

    z = zarr.open_group(str(p), mode="r")
    np.testing.assert_allclose(
        np.asarray(coeffs[2, :, :, 5]), np.abs(z["coefficients"][2, :, :, 5]), rtol=1e-6
    )
    np.testing.assert_allclose(np.asarray(its[1, 0]), np.abs(z["iterations"][1, 0]), rtol=1e-6)


def test_large_results_are_multiscale(tmp_path: Path) -> None:
    """From ``multiscale_min`` voxels a side every image layer is a lazy 2× block-mean pyramid.

    Below it, not. The threshold is lowered here so a 16 × 14 × 12 store stands in for ≥ 128³.
    """
    import dask.array as da
    import zarr

    from napari_spurig._layers import result_layers
    from napari_spurig._pyramid import MULTISCALE_MIN_SIZE

    assert MULTISCALE_MIN_SIZE == 128
    p = make_result(tmp_path / "m.zarr", iterations=2, maps=True)
    assert not any(m.get("multiscale") for _, m, _ in result_layers(p))  # 16 < 128
    layers = result_layers(p, multiscale_min=16)
    assert all(m.get("multiscale") is True for _, m, _ in layers)
    z = zarr.open_group(str(p), mode="r")
    names = [m["name"] for _, m, _ in layers]
    levels, meta, _ = layers[names.index("m |α̃|")]
    assert [tuple(lv.shape) for lv in levels] == [(5, 16, 14, 12), (5, 8, 7, 6)]  # to ≤ 16 / 2
    assert all(isinstance(lv, da.Array) and lv.dtype == np.float32 for lv in levels)
    mag = np.abs(z["coefficients"][...])
    level1 = mag.reshape(5, 8, 2, 7, 2, 6, 2).mean(axis=(2, 4, 6))
    np.testing.assert_allclose(np.asarray(levels[1]), level1, rtol=1e-5)
    assert meta["contrast_limits"] == result_layers(p)[1][1]["contrast_limits"]  # from level 0
    t1 = layers[names.index("m T1 [ms]")][0]
    t1_1 = z["t1_ms"][...].reshape(8, 2, 7, 2, 6, 2).mean(axis=(1, 3, 5))
    np.testing.assert_allclose(np.asarray(t1[1]), t1_1, rtol=1e-5)
    assert [lv.shape[:2] for lv in layers[0][0]] == [(2, 5), (2, 5)]  # leading axes kept
    assert not any(m.get("multiscale") for _, m, _ in result_layers(p, multiscale_min=None))


def test_result_reader_declines_foreign_and_flags_wrong_schema(tmp_path: Path) -> None:
    import zarr

    from napari_spurig._reader import get_result_reader

    foreign = tmp_path / "foreign.zarr"
    zarr.open_group(str(foreign), mode="w").attrs["schema"] = "ome-zarr"
    assert get_result_reader(str(foreign)) is None
    future = tmp_path / "future.zarr"
    zarr.open_group(str(future), mode="w").attrs["schema"] = "spurig-result/9"
    reader = get_result_reader(str(future))
    assert reader is not None
    with pytest.raises(InputError, match="spurig-result/9"):
        reader(str(future))
    assert get_result_reader(str(tmp_path / "missing.zarr")) is None


def test_unbalanced_matches_explicit_dft_matrix() -> None:
    import dask.array as da

    from napari_spurig._layers import unbalance

    rng = np.random.default_rng(3)
    k = 5
    alpha = rng.standard_normal((k, 4, 3, 2)) + 1j * rng.standard_normal((k, 4, 3, 2))
    m = np.arange(k)
    f = np.exp(-2j * np.pi * np.outer(m, m) / k) / np.sqrt(k)  # unitary DFT F_k (SPEC §4)
    balanced = np.einsum("mn,nxyz->mxyz", f, alpha)  # α̃ = F_k α
    np.testing.assert_allclose(unbalance(balanced), alpha, atol=1e-5)
    lazy = unbalance(da.from_array(balanced, chunks=(1, 4, 3, 2)))
    assert isinstance(lazy, da.Array)
    np.testing.assert_allclose(lazy.compute(), alpha, atol=1e-10)


def test_result_layers_unbalanced(tmp_path: Path) -> None:
    import zarr

    from napari_spurig._layers import result_layers

    p = make_result(tmp_path / "u.zarr")
    ((data, meta, _),) = result_layers(p, unbalanced=True)
    assert meta["name"] == "u |α|"
    coeffs = zarr.open_group(str(p), mode="r")["coefficients"][...]
    np.testing.assert_allclose(
        np.asarray(data), np.abs(np.fft.ifft(coeffs, axis=0, norm="ortho")), rtol=1e-5, atol=1e-6
    )


def test_nifti_reader_scale_from_header(tmp_path: Path) -> None:
    import dask.array as da

    from napari_spurig._reader import get_nifti_reader

    rng = np.random.default_rng(0)
    vol = rng.random(MATRIX).astype(np.float32) * 1000
    p = write_nifti(vol, tmp_path / "sub_t1.nii.gz", (1.5, 2.0, 2.5))
    reader = get_nifti_reader(str(p))
    assert reader is not None
    ((data, meta, kind),) = reader(str(p))
    assert isinstance(data, da.Array) and kind == "image"
    assert meta["name"] == "sub_t1 [ms]" and meta["colormap"] == "inferno"
    assert meta["visible"] and meta["units"] == ("mm", "mm", "mm")
    assert meta["scale"] == pytest.approx((1.5, 2.0, 2.5))
    np.testing.assert_allclose(np.asarray(data), vol, rtol=1e-6)
    four = write_nifti(rng.random((*MATRIX, 5)).astype(np.float32), tmp_path / "c.nii", VOXEL)
    ((d4, m4, _),) = get_nifti_reader(str(four))(str(four))  # type: ignore[misc]
    assert d4.shape == (5, *MATRIX) and m4["scale"] == pytest.approx((1.0, *VOXEL))
    assert get_nifti_reader(str(tmp_path / "x.h5")) is None
    bad = tmp_path / "bad.nii"
    bad.write_bytes(b"not nifti")
    with pytest.raises(InputError, match=r"bad\.nii"):
        get_nifti_reader(str(bad))(str(bad))  # type: ignore[misc]


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_writer_round_trips_through_nibabel(tmp_path: Path, suffix: str) -> None:
    import nibabel as nib

    from napari_spurig._writer import write_image

    rng = np.random.default_rng(1)
    data = rng.standard_normal((5, *MATRIX)) + 1j * rng.standard_normal((5, *MATRIX))
    out = write_image(
        str(tmp_path / f"coef{suffix}"),
        data.astype(np.complex64),
        {"scale": (1.0, *VOXEL), "name": "coef"},
    )
    img = nib.load(out[0])
    assert img.shape == (*MATRIX, 5)
    assert img.header.get_zooms()[:3] == pytest.approx(VOXEL)
    expected = np.diag([*VOXEL, 1.0])
    expected[:3, 3] = [-(n // 2) * v for n, v in zip(MATRIX, VOXEL, strict=True)]
    np.testing.assert_allclose(img.affine, expected)
    np.testing.assert_allclose(np.asarray(img.dataobj), np.moveaxis(np.abs(data), 0, -1), rtol=1e-6)
    vol = rng.random(MATRIX).astype(np.float32)
    out3 = write_image(str(tmp_path / f"t2{suffix}"), vol, {"scale": VOXEL})
    np.testing.assert_allclose(np.asarray(nib.load(out3[0]).dataobj), vol)
    with pytest.raises(InputError):
        write_image(str(tmp_path / f"flat{suffix}"), np.zeros((4, 4)), {"scale": (1, 1)})
    assert not (tmp_path / f"flat{suffix}").exists()


def test_shipped_sample_data_opens_on_a_fresh_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    """The two quick sample entries read files committed in sample_data/ (no simulation)."""
    from napari_spurig import _sample_data
    from spurig_core.io import load_result

    monkeypatch.delenv("SPURIG_SAMPLE_DIR", raising=False)
    scan = _sample_data.sample_path("scan")
    assert scan.name == _sample_data.SMALL_NAME and scan.stat().st_size <= 25 * 2**20
    layers = _sample_data.sample_scan()
    assert layers[-1][1]["name"].endswith("reference T1 [ms]") and layers[-1][1]["visible"]
    res = _sample_data.sample_result()
    kinds = [m["metadata"]["spurig"]["kind"] for _, m, _ in res]
    assert kinds[-1] == "t1" and "coefficients" in kinds
    stored = load_result(_sample_data.sample_path("result"), lazy=True)
    assert stored.matrix == (32, 32, 32) and stored.t1_ms is not None
    # 0 outside the object (SPEC §5): most of the 32³ grid is air around the head
    t1 = stored.t1_ms.numpy()
    assert 0.05 < float((t1 > 0).mean()) < 0.6


# ----------------------------------------------------------------------------------------------
# headless models
# ----------------------------------------------------------------------------------------------
def _iterative(
    n: int, *, callback, started: threading.Event | None = None, gate: threading.Event | None = None
) -> str:
    """Run a small iterative computation that reports like the engine does (for job plumbing)."""
    x = np.zeros(3)
    for i in range(1, n + 1):
        x = x + i
        if started is not None and i == 2:
            started.set()
            assert gate is not None
            gate.wait(5)
        emit(callback, "iterate", i, n, f"iteration {i}", data=torch.from_numpy(x.copy()))
    return f"sum={x[0]:g}"


def test_run_engine_streams_events_and_returns() -> None:
    from napari_spurig._jobs import run_engine

    cancel = threading.Event()
    gen = run_engine(_iterative, 4, cancel=cancel)
    events = []
    try:
        while True:
            events.append(next(gen))
    except StopIteration as stop:
        value = stop.value
    assert value == "sum=10"
    assert [e.step for e in events] == [1, 2, 3, 4]
    np.testing.assert_allclose(events[-1].data.numpy(), 10.0)


def test_run_engine_cancel_stops_at_next_step() -> None:
    from napari_spurig._jobs import run_engine

    cancel, started, gate = threading.Event(), threading.Event(), threading.Event()
    gen = run_engine(_iterative, 50, cancel=cancel, started=started, gate=gate)
    first = next(gen)
    assert first.step == 1
    assert started.wait(5)
    cancel.set()
    gate.set()
    with pytest.raises(Cancelled):
        for _ in gen:
            pass


def test_run_engine_reraises_engine_errors() -> None:
    from napari_spurig._jobs import run_engine

    def broken(*, callback) -> None:
        emit(callback, "x", 1, 2)
        raise InputError("scan.h5: kspace contains 3 NaN values")

    with pytest.raises(InputError, match="NaN"):
        list(run_engine(broken, cancel=threading.Event()))


def test_reconstruct_params_validation(tmp_path: Path) -> None:
    from napari_spurig._jobs import ReconstructParams

    scan = make_scan(tmp_path / "s.h5")
    ok = ReconstructParams(
        scan_path=scan, output_path=tmp_path / "o.zarr", method="llr", duration="30s"
    )
    ok.validate()
    assert ok.n_groups() == 4
    assert ReconstructParams(scan, tmp_path / "o.zarr", duration="groups", groups=3).n_groups() == 3
    assert ReconstructParams(scan, tmp_path / "o.zarr").n_groups() is None  # default: all groups
    for bad, match in [
        ({"scan_path": tmp_path / "nope.h5"}, "nope.h5"),
        ({"method": "magic"}, "magic"),
        ({"duration": "5min"}, "5min"),
        ({"output_path": tmp_path / "o.h5"}, ".zarr"),
        ({"model_path": tmp_path / "m.pt"}, "m.pt"),
    ]:
        from dataclasses import replace

        with pytest.raises(InputError, match=match):
            replace(ok, **bad).validate()


def test_loss_history_records_only_losses() -> None:
    from napari_spurig._jobs import LossHistory
    from spurig_core.progress import ProgressEvent

    h = LossHistory()
    assert h.add(ProgressEvent("train", 1, 3, metrics={"loss": 0.5}))
    assert not h.add(ProgressEvent("train", 2, 3))
    assert h.add(ProgressEvent("train", 3, 3, metrics={"loss": 0.25}))
    assert h.steps == [1, 3] and h.losses == [0.5, 0.25]


def test_closing_the_job_cancels_the_engine() -> None:
    from napari_spurig._jobs import run_engine

    cancel = threading.Event()
    before = threading.active_count()
    gen = run_engine(_iterative, 1000, cancel=cancel)
    assert next(gen).step == 1
    gen.close()  # what happens when a napari worker is quit
    assert cancel.is_set()
    assert threading.active_count() == before  # the engine thread has stopped


def test_sample_48_entry_opens_an_existing_demo_scan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The 48³ entry opens the demo scan where the engine keeps it (a small stand-in here)."""
    from napari_spurig import _sample_data
    from spurig_core import pipeline
    from spurig_core.simulation.sample import SAMPLE_NAME

    monkeypatch.setenv("SPURIG_SAMPLE_DIR", str(tmp_path))
    scan_path = pipeline.simulate(tmp_path / SAMPLE_NAME, matrix=12, coils=1, groups=2, seed=2)
    assert _sample_data.sample_path("scan48") == scan_path
    layers = _sample_data.sample_scan_48()
    assert layers[-1][1]["name"] == f"{scan_path.stem} reference T1 [ms]"
