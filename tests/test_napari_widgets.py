"""napari plugin widgets driven as a user would (qtbot, Xvfb via pytest-xvfb).

A tiny scan is simulated once per module with the engine; reconstructions, comparisons and
screenshots run through the real pipeline.  Widget logic runs against ``ViewerModel`` (no OpenGL);
the screenshot and ``spurig gui`` tests use a real, shown viewer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from spurig_core.data import Result
from spurig_core.io import load_result, load_scan, save_result

pytestmark = pytest.mark.gui


@pytest.fixture(autouse=True)
def own_settings(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Keep napari settings in ``tmp_path``: the widgets set reader preferences, not the user's."""
    from napari import settings

    monkeypatch.setattr(settings, "_SETTINGS", None)
    return settings.get_settings(tmp_path_factory.mktemp("napari") / "settings.yaml")


GROUPS = 2
TIMEOUT_MS = 240_000


@pytest.fixture(scope="module")
def tiny_scan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Return a 12³ simulated subject, one coil, two groups (the smallest the physics allows)."""
    from spurig_core import pipeline

    out = tmp_path_factory.mktemp("napari_scan") / "tiny.h5"
    return pipeline.simulate(out, matrix=12, coils=1, groups=GROUPS, seed=3)


@pytest.fixture(scope="module")
def two_results(tiny_scan: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two result stores: the reference coefficients with seeded noise of two levels."""
    from spurig_core import pipeline

    scan = load_scan(tiny_scan)
    ref = pipeline.reference_coefficients(scan)
    g = torch.Generator().manual_seed(11)
    basis = torch.linalg.qr(
        torch.randn(scan.n_tr, ref.shape[0], generator=g, dtype=torch.complex64)
    )[0]
    d = tmp_path_factory.mktemp("napari_results")
    out = []
    for name, level in (("low_noise", 0.02), ("high_noise", 0.1)):
        noise = torch.randn(ref.shape, generator=g, dtype=torch.complex64) * level * ref.abs().max()
        res = Result(
            coefficients=(ref + noise).to(torch.complex64),
            basis=basis,
            method="llr",
            groups=GROUPS,
            voxel_size_mm=scan.voxel_size_mm,
            source={"path": str(tiny_scan), "sha256": scan.sha256 or ""},
        )
        out.append(save_result(res, d / f"{name}.zarr"))
    return out


@pytest.fixture
def notifications() -> Any:
    """Collect napari notifications shown during the test."""
    from napari.utils.notifications import notification_manager

    seen: list[Any] = []
    notification_manager.notification_ready.connect(seen.append)
    yield seen
    notification_manager.notification_ready.disconnect(seen.append)


def _wait_idle(qtbot: Any, runner: Any) -> None:
    qtbot.waitUntil(lambda: runner.worker is not None and not runner.running, timeout=TIMEOUT_MS)


# ----------------------------------------------------------------------------------------------
def test_reconstruct_adjoint_saves_and_opens_result(
    qtbot: Any, tiny_scan: Path, tmp_path: Path
) -> None:
    import dask.array as da
    from napari.components import ViewerModel

    from napari_spurig._widgets import ReconstructWidget

    viewer = ViewerModel()
    w = ReconstructWidget(viewer)
    qtbot.addWidget(w.native)
    w.scan.value = tiny_scan
    w.method.value = "adjoint"
    w.duration.value = "groups"
    w.groups.value = GROUPS
    out = tmp_path / "adj.zarr"
    w.output.value = out
    w.run_button.native.click()
    assert w.runner.worker is not None
    _wait_idle(qtbot, w.runner)
    assert w.runner.error is None, w.runner.error
    assert out.is_dir()
    res = load_result(out)
    assert res.method == "adjoint" and res.groups == GROUPS
    assert res.coefficients.shape == (5, 12, 12, 12)
    assert torch.isfinite(res.coefficients.abs()).all() and res.coefficients.abs().max() > 0
    layer = viewer.layers["adj |α̃|"]
    assert isinstance(layer.data, da.Array)
    np.testing.assert_allclose(
        np.asarray(layer.data[:, :, :, 6]), res.coefficients.abs().numpy()[:, :, :, 6], rtol=1e-6
    )
    assert tuple(layer.scale[1:]) == pytest.approx(load_scan(tiny_scan).voxel_size_mm)
    assert all("(live)" not in lay.name for lay in viewer.layers)
    assert w.status.value.startswith("saved")


def test_reconstruct_spurig_with_the_shipped_model(
    qtbot: Any, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """SPUR-iG from the widget: the shipped 30 s model, every unrolled step saved and shown."""
    from spurig_core import pipeline

    # iGROG needs a calibration region larger than the kernel's reach: 16³ rather than 12³
    scan = pipeline.simulate(
        tmp_path_factory.mktemp("spurig_scan") / "s16.h5", matrix=16, coils=2, groups=2, seed=4
    )
    from napari.components import ViewerModel

    from napari_spurig._widgets import ReconstructWidget
    from spurig_core.recon.trained import MODELS_DIR, load_method_model

    viewer = ViewerModel()
    w = ReconstructWidget(viewer)
    qtbot.addWidget(w.native)
    w.scan.value = scan
    w.method.value = "SPUR-iG"
    w.duration.value = "groups"
    w.groups.value = GROUPS
    w.model.value = MODELS_DIR / "spurig-30s.pt"
    w.save_iterations.value = True
    out = tmp_path / "spurig.zarr"
    w.output.value = out
    w.run_button.native.click()
    _wait_idle(qtbot, w.runner)
    assert w.runner.error is None, w.runner.error
    res = load_result(out)
    assert res.method == "spurig" and res.model is not None
    assert res.model["file"] == "spurig-30s.pt"
    steps = load_method_model(None, method="spurig", duration="30s").meta["config"].steps
    assert res.iterations is not None and res.iterations.shape == (1 + steps, 5, 16, 16, 16)
    assert torch.isfinite(res.coefficients.abs()).all()
    assert (res.config or {}).get("encoding", {}).get("density_compensation") == 0.75


def test_reconstruct_streams_iterations_and_cancel_leaves_nothing(
    qtbot: Any, tiny_scan: Path, tmp_path: Path
) -> None:
    from napari.components import ViewerModel

    from napari_spurig._widgets import ReconstructWidget

    viewer = ViewerModel()
    w = ReconstructWidget(viewer)
    qtbot.addWidget(w.native)
    w.scan.value = tiny_scan
    w.method.value = "LLR-NUFFT"
    w.duration.value = "groups"
    w.groups.value = GROUPS
    out = tmp_path / "llr.zarr"
    w.output.value = out
    w.run_button.native.click()
    assert not w.run_button.enabled and w.cancel_button.enabled
    # an iterate streamed into one live layer, updated in place
    qtbot.waitUntil(
        lambda: w.live_layer is not None and w.live_layer.metadata.get("iteration", 0) >= 2,
        timeout=TIMEOUT_MS,
    )
    live = w.live_layer
    assert live.data.shape == (5, 12, 12, 12) and live.data.dtype == np.float32
    assert sum("(live)" in lay.name for lay in viewer.layers) == 1
    w.cancel_button.native.click()
    _wait_idle(qtbot, w.runner)
    assert w.runner.cancelled and w.runner.error is None
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary or half-written store either
    assert live not in viewer.layers
    assert w.run_button.enabled and not w.cancel_button.enabled


def test_reconstruct_bad_input_notifies_without_crash(
    qtbot: Any, tmp_path: Path, notifications: list[Any]
) -> None:
    from napari.components import ViewerModel

    from napari_spurig._widgets import ReconstructWidget

    viewer = ViewerModel()
    w = ReconstructWidget(viewer)
    qtbot.addWidget(w.native)
    w.run_button.native.click()  # no scan chosen: refused at once
    assert w.runner.worker is None
    assert any("scan" in str(n.message) for n in notifications)
    bad = tmp_path / "broken.h5"
    bad.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)
    w.scan.value = bad
    w.method.value = "adjoint"
    w.output.value = tmp_path / "never.zarr"
    w.run_button.native.click()
    _wait_idle(qtbot, w.runner)
    assert w.runner.error is not None
    assert any("broken.h5" in str(n.message) for n in notifications)
    assert not (tmp_path / "never.zarr").exists()
    assert w.run_button.enabled


def test_compare_table_agrees_with_evaluate(
    qtbot: Any, tiny_scan: Path, two_results: list[Path]
) -> None:
    from napari.components import ViewerModel

    from napari_spurig._widgets import CompareWidget
    from napari_spurig._widgets._compare import TABLE_COLUMNS
    from spurig_core import pipeline

    viewer = ViewerModel()
    w = CompareWidget(viewer)
    qtbot.addWidget(w.native)
    w.scan.value = tiny_scan
    for p in two_results:
        w.add_store.value = p
        w.add_button.native.click()
    assert len(w.results.value) == 2
    w.factor.value = 10
    w.run_button.native.click()
    _wait_idle(qtbot, w.runner)
    assert w.runner.error is None, w.runner.error
    scan = load_scan(tiny_scan)
    data = w.table.data.to_list()
    assert list(w.table.column_headers) == TABLE_COLUMNS
    for r, (row, p) in enumerate(zip(data, two_results, strict=True)):
        m = pipeline.evaluate(load_result(p), scan)
        assert row[0] == p.name.removesuffix(".zarr")
        assert float(row[3]) == pytest.approx(np.mean(m["psnr"]), abs=0.006)
        assert float(row[4]) == pytest.approx(np.mean(m["ssim"]), abs=6e-4)  # 3 decimals
        # the cells' text: PSNR 2 decimals, SSIM 3, errors in % 1 ("–" where not matched)
        text = [w.table.native.item(r, c).text() for c in range(len(TABLE_COLUMNS))]
        assert [len(v.partition(".")[2]) for v in text[3:5]] == [2, 3]
        assert all(v == "–" or len(v.partition(".")[2]) == 1 for v in text[5:])
    # more noise → lower PSNR, and the table shows it
    assert float(data[0][3]) > float(data[1][3])
    names = [lay.name for lay in viewer.layers if lay.visible]
    assert names == [
        "reference · coefficients",
        "low_noise · coefficients",
        "high_noise · coefficients",
        "reference tissue",
        "low_noise · error ×10",
        "high_noise · error ×10",
    ]
    grid = viewer.canvas.grid if hasattr(viewer, "canvas") else viewer.grid
    assert grid.enabled and tuple(grid.shape) == (2, 3)
    ref = pipeline.reference_coefficients(scan).abs().numpy()
    low = load_result(two_results[0]).coefficients.abs().numpy()
    np.testing.assert_allclose(
        viewer.layers["low_noise · error ×10"].data, 10 * np.abs(low - ref), rtol=1e-5, atol=1e-6
    )
    viewer.layers["low_noise · coefficients"].contrast_limits = (0.0, 0.123)
    assert viewer.layers["reference · coefficients"].contrast_limits == pytest.approx((0.0, 0.123))
    assert viewer.layers["high_noise · error ×10"].contrast_limits == pytest.approx((0.0, 0.123))


def test_reader_errors_reach_the_user_without_crash(
    make_napari_viewer: Any, tmp_path: Path
) -> None:
    viewer = make_napari_viewer()
    bad = tmp_path / "truncated.h5"
    bad.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 16)
    with pytest.raises(Exception, match=r"truncated\.h5: not a readable HDF5 file"):
        viewer.open(str(bad), plugin="spurig")
    assert len(viewer.layers) == 0


def test_make_viewer_docks_widgets_and_opens_files(
    make_napari_viewer: Any, tiny_scan: Path, two_results: list[Path], notifications: list[Any]
) -> None:
    import napari_spurig

    viewer = napari_spurig.make_viewer(
        [str(tiny_scan), str(two_results[0]), "/nonexistent/x.zarr"], viewer=make_napari_viewer()
    )
    docked = set(viewer.window.dock_widgets)
    assert {"Reconstruct", "Quantitative maps", "Compare", "Train"} <= docked
    names = [lay.name for lay in viewer.layers]
    assert "tiny reference T1 [ms]" in names and "low_noise |α̃|" in names
    t1 = viewer.layers["tiny reference T1 [ms]"]
    assert t1.colormap.name == "inferno"
    assert tuple(t1.contrast_limits) == (0.0, 3000.0)
    assert tuple(t1.scale) == pytest.approx(load_scan(tiny_scan).voxel_size_mm)
    assert any("nonexistent" in str(n.message) for n in notifications)


def test_compare_screenshots_are_not_blank(
    make_napari_viewer: Any, tiny_scan: Path, two_results: list[Path], tmp_path: Path
) -> None:
    import threading

    from napari_spurig._jobs import compare_job
    from napari_spurig._view import render_compare

    gen = compare_job(tiny_scan, two_results, factor=5.0, cancel=threading.Event())
    try:
        while True:
            next(gen)
    except StopIteration as stop:
        output = stop.value
    viewer = make_napari_viewer(show=True)
    png = tmp_path / "compare.png"
    shot2d = render_compare(viewer, output, path=png)
    assert shot2d.ndim == 3 and shot2d.shape[-1] == 4
    assert png.stat().st_size > 1000
    assert shot2d[..., :3].std() > 5 and len(np.unique(shot2d[..., 0])) > 20
    # the grid tiles six panels: each third of the top row shows an image, not background
    h, w = shot2d.shape[:2]
    for col in range(3):
        tile = shot2d[: h // 2, col * w // 3 : (col + 1) * w // 3, :3]
        assert tile.std() > 3, f"panel {col} is blank"
    shot3d = render_compare(viewer, output, ndisplay=3)
    assert shot3d[..., :3].std() > 5 and len(np.unique(shot3d[..., 0])) > 10


@pytest.mark.slow  # builds the matching dictionary (about two minutes on 2 shared cores)
def test_maps_widget_adds_t1_t2_pd(qtbot: Any, tiny_scan: Path, tmp_path: Path) -> None:

    from napari.components import ViewerModel

    from napari_spurig._layers import result_layers
    from napari_spurig._view import add_layers
    from napari_spurig._widgets import MapsWidget
    from spurig_core import pipeline

    scan = load_scan(tiny_scan)
    store = pipeline.reconstruct(scan, method="adjoint", groups=GROUPS).save(tmp_path / "a.zarr")
    viewer = ViewerModel()
    add_layers(viewer, result_layers(store))
    w = MapsWidget(viewer)
    qtbot.addWidget(w.native)
    w.result_layer.value = str(store.resolve())
    assert Path(w.scan.value) == tiny_scan  # taken from the result's source
    w.run_button.native.click()
    _wait_idle(qtbot, w.runner)
    assert w.runner.error is None, w.runner.error
    res = load_result(store)
    assert res.t1_ms is not None and res.t2_ms is not None and res.pd is not None
    for label, cmap in (("T1", "inferno"), ("T2", "viridis"), ("PD", "gray")):
        layer = viewer.layers[f"a {label}"]
        assert layer.colormap.name == cmap
    np.testing.assert_allclose(np.asarray(viewer.layers["a T1"].data), res.t1_ms.numpy())


def test_maps_widget_shows_unbalanced_coefficients(qtbot: Any, two_results: list[Path]) -> None:
    import dask.array as da
    import zarr
    from napari.components import ViewerModel

    from napari_spurig._widgets import MapsWidget

    viewer = ViewerModel()
    w = MapsWidget(viewer)
    qtbot.addWidget(w.native)
    w.result.value = two_results[0]
    w.unbalanced_button.native.click()
    layer = viewer.layers["low_noise |α|"]
    assert isinstance(layer.data, da.Array) and layer.data.shape[0] == 5
    balanced = zarr.open_group(str(two_results[0]), mode="r")["coefficients"][...]
    expected = np.abs(np.fft.ifft(balanced, axis=0, norm="ortho"))  # α = F_k^H α̃ (SPEC §4)
    np.testing.assert_allclose(np.asarray(layer.data), expected, rtol=1e-5, atol=1e-6)
