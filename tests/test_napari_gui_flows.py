"""The plugin's user flows in a real napari viewer (Xvfb via pytest-xvfb, ``make_napari_viewer``).

Drag-and-drop and File › Open call the Qt viewer's ``_qt_open(paths, plugin=None)``, which is
``viewer.open(path, plugin=None)`` plus the "Choose reader" dialog when that raises; it opens
without the dialog only when spurig is the preferred reader, which ``spurig gui`` and every spurig
widget set.  (``viewer.open(path)`` with napari 0.9's default ``plugin="napari"`` asks napari's
built-in reader by name, whatever the preferences.)  napari's settings are redirected to a
temporary file so the user's own are never touched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from spurig_core.data import Result
from spurig_core.io import load_scan, save_result, write_nifti

pytestmark = pytest.mark.gui

TIMEOUT_MS = 300_000


@pytest.fixture(autouse=True)
def own_settings(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Keep napari settings in ``tmp_path`` (never the user's settings file)."""
    from napari import settings

    monkeypatch.setattr(settings, "_SETTINGS", None)
    return settings.get_settings(tmp_path_factory.mktemp("napari") / "settings.yaml")


@pytest.fixture(scope="module")
def scan16(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from spurig_core import pipeline

    out = tmp_path_factory.mktemp("flows") / "head16.h5"
    return pipeline.simulate(out, matrix=16, coils=1, groups=2, seed=5)


@pytest.fixture(scope="module")
def results16(scan16: Path) -> list[Path]:
    """Two matched results with saved iterates: reference + noise (two levels), maps from truth."""
    from spurig_core import pipeline

    scan = load_scan(scan16)
    assert scan.reference is not None
    ref = pipeline.reference_coefficients(scan)
    g = torch.Generator().manual_seed(3)
    basis = pipeline.reconstruct(scan, method="adjoint").basis  # the reference's basis
    inside = scan.reference.tissue > 0
    out = []
    for name, level, steps in (("spurig", 0.02, 4), ("llr", 0.08, 6)):
        noise = torch.randn(ref.shape, generator=g, dtype=torch.cfloat) * level * ref.abs().max()
        final = (ref + noise).to(torch.complex64)
        its = torch.stack([final * (k + 1) / steps for k in range(steps)])
        bias = 1.0 + 4 * level
        res = Result(
            coefficients=final,
            basis=basis,
            method=name,
            groups=2,
            voxel_size_mm=scan.voxel_size_mm,
            iterations=its,
            t1_ms=torch.where(inside, scan.reference.t1_ms * bias, 0.0).float(),
            t2_ms=torch.where(inside, scan.reference.t2_ms * bias, 0.0).float(),
            pd=inside.float(),
            source={"path": str(scan16), "sha256": scan.sha256 or ""},
        )
        out.append(save_result(res, scan16.parent / f"{name}.zarr"))
    return out


def _spurig_layers(viewer: Any) -> list[Any]:
    return [lay for lay in viewer.layers if (lay.metadata.get("spurig") or {})]


# ----------------------------------------------------------------------------------------------
def test_drop_scan_result_and_nifti_open_axial_in_mm(
    make_napari_viewer: Any, scan16: Path, results16: list[Path], tmp_path: Path, own_settings: Any
) -> None:
    import napari_spurig

    viewer = napari_spurig.make_viewer(viewer=make_napari_viewer())
    prefs = dict(own_settings.plugins.extension2reader)
    assert prefs["*.zarr"] == prefs["*.h5"] == prefs["*.nii.gz"] == "spurig"
    # a scan: T1 on top and the only visible map, colorbar, mm, axial (z is the slider)
    drop = viewer.window._qt_viewer._qt_open  # what dropEvent and File › Open call
    drop([str(scan16)], stack=False)
    top = viewer.layers[-1]
    assert top.name == "head16 reference T1 [ms]" and top.visible and top.colorbar.visible
    assert [lay.name for lay in viewer.layers if lay.visible] == [top.name]
    assert all(str(u) == "millimeter" for u in top.units)
    assert tuple(viewer.dims.order) == (2, 1, 0)
    assert viewer.dims.displayed == (1, 0)  # rows y, columns x: an axial slice
    # a result store (a directory) dropped the same way
    drop([str(results16[0])], stack=False)
    assert viewer.layers[-1].name == "spurig T1 [ms]"
    coeff = viewer.layers["spurig |α̃|"]
    assert str(coeff.units[0]) == "pixel" and str(coeff.units[-1]) == "millimeter"
    assert tuple(viewer.dims.order) == (0, 1, 4, 3, 2)  # iteration, coefficient, z sliders
    assert tuple(coeff.contrast_limits) == pytest.approx(tuple(coeff.contrast_limits))
    # a NIfTI map
    nii = write_nifti(np.full((8, 8, 8), 900.0, np.float32), tmp_path / "m_t1.nii.gz", (2, 2, 2))
    viewer.open(str(nii), plugin=None)
    assert viewer.layers[-1].name == "m_t1 [ms]" and viewer.layers[-1].colorbar.visible


def test_large_result_opens_multiscale_axial_with_unit_on_canvas(
    make_napari_viewer: Any, results16: list[Path]
) -> None:
    """A result at or above the multiscale size is a napari multiscale layer.

    The size is lowered to 8 here (for ≥ 128³). The layer is axial, coarsest level in 3D; the T1
    map's unit is written on the canvas.
    """
    import napari_spurig
    from napari_spurig._layers import result_layers
    from napari_spurig._view import add_layers

    viewer = napari_spurig.make_viewer(viewer=make_napari_viewer())
    layers = add_layers(viewer, result_layers(results16[0], multiscale_min=8))
    t1 = viewer.layers["spurig T1 [ms]"]
    assert all(lay.multiscale for lay in layers)
    assert [tuple(s) for s in t1.data.shapes] == [(16, 16, 16), (8, 8, 8), (4, 4, 4)]
    nd = viewer.dims.ndim
    assert tuple(viewer.dims.displayed) == (nd - 2, nd - 3)  # axial: rows y, columns x; z slides
    assert t1.colorbar.visible and t1.name_overlay.visible  # "… T1 [ms]" beside the colorbar
    assert t1.name_overlay.position == t1.colorbar.position
    viewer.dims.ndisplay = 3
    assert t1.data_level == len(t1.data) - 1  # 3D draws the coarsest level


def test_user_reader_choice_is_kept(own_settings: Any) -> None:
    from napari_spurig._view import prefer_spurig_readers

    own_settings.plugins.extension2reader = {"*.h5": "napari"}
    added = prefer_spurig_readers(own_settings)
    assert "*.h5" not in added and own_settings.plugins.extension2reader["*.h5"] == "napari"
    assert own_settings.plugins.extension2reader["*.zarr"] == "spurig"


def test_both_sample_entries_open_on_a_fresh_checkout(
    make_napari_viewer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SPURIG_SAMPLE_DIR", raising=False)
    viewer = make_napari_viewer()
    scan = viewer.open_sample("spurig", "scan")
    assert scan[-1].name == "spurig_sample_32 reference T1 [ms]"
    result = viewer.open_sample("spurig", "result")
    assert result[-1].name == "spurig_sample_32_spurig-30s T1 [ms]"
    assert result[-1].visible and result[-1].colorbar.visible
    t1 = np.asarray(result[-1].data)
    assert (t1 == 0).mean() > 0.4  # the air around the head is 0, not noise


def test_sample_48_is_simulated_in_a_worker_with_progress(
    make_napari_viewer: Any, qtbot: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Missing demo scan: the entry returns at once with a placeholder.

    A worker simulates the scan (here at 12³ instead of 48³, the same code path) and its layers
    replace the placeholder.
    """
    from napari_spurig import _sample_data
    from spurig_core.simulation import sample as simulation

    monkeypatch.setenv("SPURIG_SAMPLE_DIR", str(tmp_path))
    small = {**simulation.SAMPLE, "matrix": 12, "coils": 1, "groups": 2}
    monkeypatch.setattr(simulation, "SAMPLE", small)
    monkeypatch.setattr(simulation, "SAMPLE_NAME", "small_stand_in.h5")
    viewer = make_napari_viewer()
    added = viewer.open_sample("spurig", "scan48")
    assert [lay.name for lay in added] == [_sample_data.PLACEHOLDER]
    qtbot.waitUntil(lambda: _sample_data.PLACEHOLDER not in viewer.layers, timeout=TIMEOUT_MS)
    assert viewer.layers[-1].name == "small_stand_in reference T1 [ms]"
    assert (tmp_path / "small_stand_in.h5").is_file()


# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tt = pytest.importorskip("test_training")
    root = tmp_path_factory.mktemp("gui_cohort")
    for seed, split in ((0, "train"), (1, "train"), (2, "val")):
        tt.save_example(tt._example(seed), root / split / f"s{seed}")
    return root


def test_pretraining_from_the_form_without_a_config(
    make_napari_viewer: Any, cohort: Path, tmp_path: Path, qtbot: Any
) -> None:
    import napari_spurig

    viewer = napari_spurig.make_viewer(viewer=make_napari_viewer())
    train = viewer.window.dock_widgets["Train"]
    recon = viewer.window.dock_widgets["Reconstruct"]
    labels = [w.label for w in train]
    for field in ("cohort dir", "output dir", "duration", "epochs", "learning rate", "device"):
        assert field in labels
    assert all(w.tooltip for w in train if hasattr(w, "tooltip") and w.label)
    train.stage.value = "pretrain"
    train.data_dir.value = cohort
    train.out_dir.value = tmp_path / "run"
    train.duration.value = "1min"  # what the test cohort holds
    train.epochs.value = 1
    train.run_button.native.click()
    qtbot.waitUntil(
        lambda: train.runner.worker is not None and not train.runner.running, timeout=TIMEOUT_MS
    )
    assert train.runner.error is None, train.runner.error
    model = tmp_path / "run" / "model.pt"
    assert Path(train.checkpoint) == model and model.is_file()
    assert (tmp_path / "run" / "gui-pretrain.toml").is_file()
    assert train.history.losses and "ETA" not in train.status.value
    # the model is ready in the Reconstruct form
    assert Path(recon.model.value) == model and recon.duration.value == "1min"


def test_cancel_message_lists_what_was_kept(tmp_path: Path) -> None:
    from napari.components import ViewerModel

    from napari_spurig._widgets import TrainWidget
    from napari_spurig._widgets._train import format_eta

    w = TrainWidget(ViewerModel())
    w.run_out_dir = out = tmp_path / "run"
    assert "nothing was written" in w._cancel_message()
    out.mkdir()
    (out / "last.pt").write_bytes(b"x")
    (out / "loss.csv").write_text("epoch,loss\n")
    msg = w._cancel_message()
    assert "last.pt" in msg and "loss.csv" in msg and "nothing" not in msg
    assert format_eta(3725) == "1 h 02 min" and format_eta(65) == "1 min 05 s"


# ----------------------------------------------------------------------------------------------
def test_compare_views_titles_table_slice_and_iterations(
    make_napari_viewer: Any, scan16: Path, results16: list[Path], qtbot: Any
) -> None:
    from qtpy.QtCore import Qt

    from napari_spurig._widgets import CompareWidget
    from napari_spurig._widgets._compare import TABLE_COLUMNS

    viewer = make_napari_viewer()
    w = CompareWidget(viewer)
    viewer.window.add_dock_widget(w, name="Compare")
    w.scan.value = scan16
    for p in results16:
        w.add_result(p)
    w.run_button.native.click()
    qtbot.waitUntil(
        lambda: w.runner.worker is not None and not w.runner.running, timeout=TIMEOUT_MS
    )
    assert w.runner.error is None, w.runner.error
    grid = viewer.canvas.grid if hasattr(viewer, "canvas") else viewer.grid
    visible = [lay.name for lay in viewer.layers if lay.visible]
    assert visible[:3] == [f"{x} · coefficients" for x in ("reference", "spurig", "llr")]
    assert all(viewer.layers[n].name_overlay.visible for n in visible)  # panel titles
    assert tuple(grid.shape) == (2, 3)
    # T1/T2 view: maps and error rows, in ms and %
    shown = [lay.name for lay in w.show_view("T1/T2")]
    assert "spurig · T1 [ms]" in shown and "llr · ΔT2 [%]" in shown
    assert tuple(grid.shape) == (4, 3)
    err = viewer.layers["llr · ΔT1 [%]"].data
    inside = load_scan(scan16).reference.tissue.numpy() > 0
    assert np.allclose(err[inside], 100 * 4 * 0.08, rtol=1e-3) and (err[~inside] == 0).all()
    # the table: full column set, sortable, per-tissue errors, spurig better than llr
    table = w.table
    assert list(table.column_headers) == TABLE_COLUMNS
    rows = {r[0]: r for r in table.data.to_list()}
    assert float(rows["spurig"][3]) > float(rows["llr"][3])
    assert float(rows["spurig"][7]) == pytest.approx(8.0, abs=0.01)  # T1 WM %
    assert table.native.isSortingEnabled()
    table.native.sortByColumn(3, Qt.SortOrder.AscendingOrder)
    assert table.native.item(0, 0).text() == "llr"
    # numbers are drawn as formatted (PSNR 2 decimals, SSIM 3, % 1), not padded to 4
    from qtpy.QtCore import QLocale

    item = table.native.item(0, 3)
    shown = table.native.itemDelegate().displayText(
        item.data(Qt.ItemDataRole.DisplayRole), QLocale()
    )
    assert shown == item.text() and len(shown.partition(".")[2]) == 2
    # the slice selector moves every panel's axial slice
    w.slice.value = 3
    assert viewer.dims.point[-1] == pytest.approx(3 * load_scan(scan16).voxel_size_mm[2])
    # difference view A − B
    w.diff_a.value, w.diff_b.value = 0, 1
    diff = [lay.name for lay in w.show_view("difference")]
    assert diff == [
        "spurig − llr · coefficients",
        "spurig − llr · T1 [ms]",
        "spurig − llr · T2 [ms]",
    ]
    # iterations: both methods' steps side by side on one slider, PSNR per step rising
    its = w.show_view("iterations")
    assert [lay.name for lay in its][:2] == ["spurig · iterates", "llr · iterates"]
    assert its[0].data.shape[0] == its[1].data.shape[0] == 6  # shorter run padded
    psnr = w.output.step_psnr
    assert set(psnr) == {"spurig", "llr"} and len(psnr["llr"]) == 6
    assert psnr["spurig"][-1] > psnr["spurig"][0]
