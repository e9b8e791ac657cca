"""Compare dock widget: results side by side against the reference, magnified errors, metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from magicgui.types import FileDialogMode
from magicgui.widgets import ComboBox, Container, FileEdit, Label, PushButton, Select, Table

from .._models import CompareOutput, compare_job
from .._view import show_compare
from ._common import JobRunner, optional_path
from ._maps import layer_result_paths
from ._reconstruct import layer_scan_paths

__all__ = ["TABLE_COLUMNS", "CompareWidget", "table_rows"]

TABLE_COLUMNS = ["result", "method", "groups", "PSNR dB", "SSIM", "T1 err %", "T2 err %"]


def _fmt(value: Any, scale: float = 1.0, digits: int = 2) -> str:
    return "–" if value is None else f"{float(value) * scale:.{digits}f}"


def table_rows(output: CompareOutput) -> list[list[str]]:
    """Rows of the metrics table: means over coefficients of PSNR/SSIM; T1/T2 errors in %."""
    return [
        [
            r["name"],
            str(r["method"]),
            str(r["groups"]),
            _fmt(r["psnr_mean"]),
            _fmt(r["ssim_mean"], digits=4),
            _fmt(r["t1_rel_error"], 100.0),
            _fmt(r["t2_rel_error"], 100.0),
        ]
        for r in output.rows
    ]


class CompareWidget(Container):
    """Compare two or more results with the reference of a simulated scan.

    Shows reference and results side by side in napari's grid mode (one camera, so views are
    linked; contrast limits are linked too), the errors magnified ×5 or ×10 below them, and a table
    of PSNR/SSIM (means over the balanced coefficients) and relative T1/T2 errors computed by
    :func:`spurig_core.pipeline.evaluate`, so the numbers agree with ``spurig evaluate``.

    Parameters
    ----------
    napari_viewer : napari.Viewer or napari.components.ViewerModel
    """

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self._extra: list[tuple[str, str]] = []
        self.scan = FileEdit(
            label="reference scan",
            mode=FileDialogMode.EXISTING_FILE,
            filter="*.h5 *.hdf5",
            nullable=True,
        )
        self.results = Select(label="results", choices=self._choices)
        self.add_store = FileEdit(
            label="add result (.zarr)", mode=FileDialogMode.EXISTING_DIRECTORY, nullable=True
        )
        self.add_button = PushButton(text="Add result")
        self.factor = ComboBox(label="error ×", choices=[5, 10], value=5)
        self.run_button = PushButton(text="Compare")
        self.status = Label(value="")
        self.table = Table(value={"data": [], "columns": TABLE_COLUMNS, "index": []})
        self.extend(
            [
                self.scan,
                self.results,
                self.add_store,
                self.add_button,
                self.factor,
                self.run_button,
                self.status,
                self.table,
            ]
        )
        self.output: CompareOutput | None = None
        self.compare_layers: list[Any] = []
        self.add_button.changed.connect(self._add)
        self.run_button.changed.connect(self.start)
        for ev in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            ev.connect(lambda e: self._refresh())
        self.runner = JobRunner(
            "comparison",
            on_done=self._on_done,
            on_stop=lambda: setattr(self.run_button, "enabled", True),
        )
        self._refresh()

    def _choices(self, widget: Any = None) -> list[tuple[str, str]]:
        seen = {p for _, p in self._extra}
        return list(self._extra) + [c for c in layer_result_paths(self.viewer) if c[1] not in seen]

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
        self.compare_layers = show_compare(self.viewer, output, previous=self.compare_layers)
        rows = table_rows(output)
        self.table.value = {"data": rows, "columns": TABLE_COLUMNS, "index": [r[0] for r in rows]}
        self.status.value = f"compared {len(rows)} result(s); errors ×{self.factor.value}"
