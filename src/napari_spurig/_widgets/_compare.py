"""Compare dock widget: a QA view of results against the reference of a simulated scan."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from magicgui.types import FileDialogMode
from magicgui.widgets import (
    ComboBox,
    Container,
    FileEdit,
    Label,
    PushButton,
    Select,
    Slider,
    Table,
)

from .._compare_job import VIEWS, CompareOutput, compare_job, difference_layers
from .._view import add_layers, select_view, set_slice, show_compare
from ._common import (
    JobRunner,
    SpurigWidget,
    layer_result_paths,
    layer_scan_paths,
    optional_path,
)

__all__ = ["TABLE_COLUMNS", "TISSUES", "CompareWidget", "table_rows"]

#: Tissues of the per-tissue error columns (SPEC §3 labels).
TISSUES = ("WM", "GM", "CSF")
TABLE_COLUMNS = [
    "result",
    "method",
    "groups",
    "PSNR dB",
    "SSIM",
    "T1 err %",
    "T2 err %",
    *[f"T1 {t} %" for t in TISSUES],
    *[f"T2 {t} %" for t in TISSUES],
]


def _fmt(value: Any, scale: float = 1.0, digits: int = 1) -> str:
    return "–" if value is None else f"{float(value) * scale:.{digits}f}"


def table_rows(output: CompareOutput) -> list[list[str]]:
    """Return the rows of the metrics table.

    Mean PSNR/SSIM over coefficients; T1/T2 errors in % (GM+WM, then per tissue).  Shown with the
    decimals that matter: PSNR 2 (dB), SSIM 3, errors 1 (%); the table sorts them as numbers
    (:func:`_numeric_item`).
    """
    rows = []
    for r in output.rows:
        tissue = r.get("per_tissue") or {}
        rows.append(
            [
                r["name"],
                str(r["method"]),
                str(r["groups"]),
                _fmt(r["psnr_mean"], digits=2),
                _fmt(r["ssim_mean"], digits=3),
                _fmt(r["t1_rel_error"], 100.0),
                _fmt(r["t2_rel_error"], 100.0),
                *[_fmt((tissue.get(t) or {}).get("t1"), 100.0) for t in TISSUES],
                *[_fmt((tissue.get(t) or {}).get("t2"), 100.0) for t in TISSUES],
            ]
        )
    return rows


class CompareWidget(SpurigWidget):
    """Compare results with the reference of a simulated scan: which method is better, where.

    Views (selector ``view``), each a napari grid of titled panels on one camera:

    - ``coefficients``: reference and results ``|α̃|`` on top, errors magnified ×5/×10 below;
    - ``T1/T2``: T1 [ms], ΔT1 [%], T2 [ms], ΔT2 [%] (relative errors) rows (matched results);
    - ``difference``: result A − result B (``|α̃|``, T1, T2; green where A is larger);
    - ``iterations``: each result's saved iterates (SPUR-iG unroll steps, LLR FISTA iterates)
      side by side on the ``iteration`` slider, errors below; the PSNR of each step is plotted.

    The ``slice`` slider picks the axial slice of every panel.  The metrics table (sortable:
    click a header) has PSNR/SSIM means over the balanced coefficients and T1/T2 errors overall
    (GM+WM) and per tissue, computed by :func:`spurig_core.pipeline.evaluate`, so the numbers
    agree with ``spurig evaluate``.

    Parameters
    ----------
    napari_viewer : napari.Viewer or napari.components.ViewerModel
    """

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__(napari_viewer, labels=False)
        self._extra: list[tuple[str, str]] = []
        self.form: Container[Any] = Container(labels=True)
        self.scan = FileEdit(
            label="reference scan",
            mode=FileDialogMode.EXISTING_FILE,
            filter="*.h5 *.hdf5",
            nullable=True,
            tooltip="A simulated scan with reference/ ground truth (filled from open layers)",
        )
        self.results = Select(
            label="results", choices=self._choices, tooltip="Result stores to compare"
        )
        self.add_store = FileEdit(
            label="add result",
            mode=FileDialogMode.EXISTING_DIRECTORY,
            nullable=True,
            tooltip="Another result store (.zarr) to offer in the list",
        )
        self.add_button = PushButton(text="Add result")
        self.factor = ComboBox(
            label="error ×", choices=[5, 10], value=5, tooltip="Magnification of the error maps"
        )
        self.run_button = PushButton(text="Compare")
        self.view = ComboBox(
            label="view", choices=list(VIEWS), value="coefficients", tooltip="What to tile"
        )
        self.diff_a = ComboBox(label="A", choices=self._compared, tooltip="Difference: A − B")
        self.diff_b = ComboBox(label="B", choices=self._compared, tooltip="Difference: A − B")
        self.slice = Slider(
            label="slice (z)", min=0, max=1, value=0, tooltip="Axial slice of every panel"
        )
        self.status = Label(value="")
        self.form.extend(
            [
                self.scan,
                self.results,
                self.add_store,
                self.add_button,
                self.factor,
                self.run_button,
                self.view,
                self.diff_a,
                self.diff_b,
                self.slice,
                self.status,
            ]
        )
        self.table = Table(value={"data": [], "columns": TABLE_COLUMNS, "index": []})
        self.extend([self.form, self.table])
        self._setup_table()
        self._make_plot()
        self.output: CompareOutput | None = None
        self._table_dock: Any = None
        self.compare_layers: list[Any] = []
        self.add_button.changed.connect(self._add)
        self.run_button.changed.connect(self.start)
        self.view.changed.connect(self.show_view)
        self.diff_a.changed.connect(lambda v: self._diff_changed())
        self.diff_b.changed.connect(lambda v: self._diff_changed())
        self.slice.changed.connect(self._slice_changed)
        for ev in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            ev.connect(lambda e: self._refresh())
        self.runner = JobRunner(
            "comparison",
            on_done=self._on_done,
            on_stop=lambda: setattr(self.run_button, "enabled", True),
        )
        self._refresh()

    # -- layout --------------------------------------------------------------------------------
    def _setup_table(self) -> None:
        """Set up the metrics table: read-only, columns sized to their contents.

        Numbers are sorted as numbers and shown as :func:`table_rows` formats them (magicgui's
        delegate would pad every number to 4 decimals: "22.4300").
        """
        from qtpy.QtCore import Qt
        from qtpy.QtWidgets import QAbstractItemView, QHeaderView, QStyledItemDelegate

        t = self.table.native
        if type(t.itemDelegate()) is not QStyledItemDelegate:
            t.setItemDelegate(QStyledItemDelegate(t))
        t.verticalHeader().setVisible(False)  # the "result" column names the rows
        for r in range(t.rowCount()):
            for c in range(t.columnCount()):
                item = t.item(r, c)
                if item is not None and _number(item.text()) is not None:
                    new = _numeric_item(item.text())
                    new.setData(Qt.ItemDataRole.UserRole, item.data(Qt.ItemDataRole.UserRole))
                    t.setItem(r, c, new)
        t.setSortingEnabled(True)
        t.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        t.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        t.setMinimumHeight(120)

    def _dock_table(self) -> None:
        """Move the metrics table into a bottom dock that spans the window (once)."""
        window = getattr(self.viewer, "window", None)
        if window is None or self._table_dock is not None:
            return
        self.remove(self.table)
        self._table_dock = window.add_dock_widget(self.table, name="Compare metrics", area="bottom")
        self.table.native.setMinimumHeight(110)

    def _make_plot(self) -> None:
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(3.5, 2.0), tight_layout=True)
        self.axes = fig.add_subplot(1, 1, 1)
        self.axes.set_xlabel("iteration / unroll step")
        self.axes.set_ylabel("PSNR dB")
        self.canvas = FigureCanvasQTAgg(fig)
        self.canvas.setMinimumHeight(140)
        self.canvas.setVisible(False)
        self.native.layout().addWidget(self.canvas)

    # -- choices -------------------------------------------------------------------------------
    def _choices(self, widget: Any = None) -> list[tuple[str, str]]:
        seen = {p for _, p in self._extra}
        return list(self._extra) + [c for c in layer_result_paths(self.viewer) if c[1] not in seen]

    def _compared(self, widget: Any = None) -> list[tuple[str, int]]:
        out = getattr(self, "output", None)
        return [] if out is None else [(lab, i) for i, lab in enumerate(out.labels)]

    def _refresh(self) -> None:
        chosen = list(self.results.value or [])
        self.results.reset_choices()
        valid = {p for _, p in self._choices()}
        self.results.value = [p for p in chosen if p in valid]
        if optional_path(self.scan.value) is None:
            scans = layer_scan_paths(self.viewer)
            if scans:
                self.scan.value = Path(scans[0][1])

    def add_result(self, path: str | Path) -> None:
        """Offer ``path`` (a result store) in the list and select it."""
        p = str(Path(path).resolve())
        if p not in {q for _, q in self._extra}:
            self._extra.append((Path(p).name, p))
        chosen = [*list(self.results.value or []), p]
        self.results.reset_choices()
        self.results.value = list(dict.fromkeys(chosen))

    def _add(self, *_: Any) -> None:
        p = optional_path(self.add_store.value)
        if p is not None:
            self.add_result(p)

    # -- actions -------------------------------------------------------------------------------
    def start(self, *_: Any) -> Any:
        """Start the comparison; missing inputs become notifications."""
        from napari.utils.notifications import show_error

        if self.runner.running:
            return None
        scan = optional_path(self.scan.value)
        results = list(self.results.value or [])
        problem = None
        if scan is None or not scan.is_file():
            problem = "reference scan: choose a simulated scan (.h5) with reference/"
        elif not results:
            problem = "results: choose at least one result store"
        if problem:
            show_error(problem)
            self.status.value = problem
            return None
        self.run_button.enabled = False
        self.status.value = "comparing…"
        return self.runner.start(compare_job, scan, results, factor=float(self.factor.value))

    def _on_done(self, output: CompareOutput) -> None:
        self.output = output
        self.compare_layers = show_compare(
            self.viewer, output, previous=self.compare_layers, view="coefficients"
        )
        if self.view.value != "coefficients":
            self.show_view(self.view.value)
        rows = table_rows(output)
        self.table.native.setSortingEnabled(False)  # Qt would sort half-filled rows
        self.table.value = {"data": rows, "columns": TABLE_COLUMNS, "index": [r[0] for r in rows]}
        self._setup_table()
        self._dock_table()
        nz = int(self.compare_layers[0].data.shape[-1])
        self.slice.max = nz - 1
        self.slice.value = nz // 2
        self.diff_a.reset_choices()
        self.diff_b.reset_choices()
        if len(output.labels) > 1:
            self.diff_a.value, self.diff_b.value = 0, 1
        self._plot_steps()
        notes = f" ({'; '.join(output.notes)})" if output.notes else ""
        self.status.value = f"compared {len(rows)} result(s); errors ×{self.factor.value}{notes}"

    def _plot_steps(self) -> None:
        assert self.output is not None
        self.axes.clear()
        self.axes.set_xlabel("iteration / unroll step")
        self.axes.set_ylabel("PSNR dB")
        for lab, values in self.output.step_psnr.items():
            self.axes.plot(range(len(values)), values, "o-", ms=3, lw=1.2, label=lab)
        if self.output.step_psnr:
            self.axes.legend(fontsize=7)
        self.canvas.setVisible(bool(self.output.step_psnr))
        self.canvas.draw_idle()

    def show_view(self, view: str | None = None) -> list[Any]:
        """Tile the layers of ``view`` (default: the selector's); returns them."""
        view = view or self.view.value
        if self.output is None:
            return []
        if view == "difference":
            self._make_difference()
        shape = self._grid_of(view)
        shown = select_view(self.viewer, self.compare_layers, view, shape)
        self._slice_changed(self.slice.value)
        return shown

    def _grid_of(self, view: str) -> tuple[int, int]:
        assert self.output is not None
        if view == "difference":
            n = sum(1 for lay in self.compare_layers if _view(lay) == "difference")
            return (1, max(1, n))
        return self.output.grids.get(view, (1, 1))

    def _diff_changed(self) -> None:
        if self.output is not None and self.view.value == "difference":
            self.show_view("difference")

    def _make_difference(self) -> None:
        assert self.output is not None
        a, b = self.diff_a.value, self.diff_b.value
        old = [lay for lay in self.compare_layers if _view(lay) == "difference"]
        for lay in old:
            self.compare_layers.remove(lay)
            if lay in self.viewer.layers:
                self.viewer.layers.remove(lay)
        if a is None or b is None or a == b:
            self.status.value = "difference: choose two different results A and B"
            return
        from .._view import _tag

        self.compare_layers += add_layers(
            self.viewer, _tag(difference_layers(self.output, int(a), int(b)), "difference")
        )

    def _slice_changed(self, value: int) -> None:
        if self.compare_layers:
            set_slice(self.viewer, int(value), float(self.compare_layers[0].scale[-1]))


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None  # "–" (not matched) and text columns


def _numeric_item(text: str) -> Any:
    """Return a table item that sorts by its number ("–" after every number)."""
    from qtpy.QtWidgets import QTableWidgetItem

    class NumericItem(QTableWidgetItem):
        def __lt__(self, other: Any) -> bool:
            a, b = _number(self.text()), _number(other.text())
            if a is None or b is None:
                return a is not None
            return a < b

    return NumericItem(text)


def _view(layer: Any) -> str | None:
    return ((layer.metadata or {}).get("spurig") or {}).get("view")
