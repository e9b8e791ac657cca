"""Quantitative-maps dock widget: dictionary matching of a result → T1, T2, PD layers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from magicgui.types import FileDialogMode
from magicgui.widgets import ComboBox, FileEdit, Label, PushButton

from .._jobs import match_job, result_file_layers
from .._layers import result_layers
from ._common import (
    JobRunner,
    SpurigWidget,
    add_layers,
    layer_result_paths,
    optional_path,
    source_scan,
)

__all__ = ["MapsWidget"]


class MapsWidget(SpurigWidget):
    """Match a result's coefficients to the dictionary (B1-corrected when the scan has B1).

    The scan defaults to the result's source scan; without one, the default sequence and B1 = 1.

    The T1/T2/PD maps are written into the result store and shown as layers.

    Parameters
    ----------
    napari_viewer : napari.Viewer or napari.components.ViewerModel
    """

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__(napari_viewer)
        self.result_layer = ComboBox(
            label="result",
            choices=self._choices,
            nullable=True,
            tooltip="A result store an open layer came from",
        )
        self.result = FileEdit(
            label="store",
            mode=FileDialogMode.EXISTING_DIRECTORY,
            nullable=True,
            tooltip="The result store (.zarr) to match; the maps are written into it",
        )
        self.scan = FileEdit(
            label="scan",
            mode=FileDialogMode.EXISTING_FILE,
            filter="*.h5 *.hdf5",
            nullable=True,
            tooltip="The scan (.h5) the result came from: its B1 map and sequence "
            "(default: the result's source scan; none: B1 = 1)",
        )
        self.device = ComboBox(
            label="device",
            choices=["cpu", "cuda"],
            value="cpu",
            tooltip="cpu, or cuda when a GPU is available",
        )
        self.run_button = PushButton(
            text="Match", tooltip="B1-corrected dictionary matching: T1 [ms], T2 [ms], PD"
        )
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.unbalanced_button = PushButton(
            text="Show unbalanced |F_k^H α̃|",
            tooltip="Add the unbalanced coefficients' magnitudes as a layer",
        )
        self.status = Label(value="")
        self.extend(
            [
                self.result_layer,
                self.result,
                self.scan,
                self.device,
                self.run_button,
                self.cancel_button,
                self.unbalanced_button,
                self.status,
            ]
        )
        self.unbalanced_button.changed.connect(self.show_unbalanced)
        self.result_layer.changed.connect(self._pick)
        self.run_button.changed.connect(self.start)
        self.cancel_button.changed.connect(self._cancel)
        for ev in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            ev.connect(lambda e: self.result_layer.reset_choices())
        self.runner = JobRunner("matching", on_done=self._on_done, on_stop=self._on_stop)

    def _choices(self, widget: Any = None) -> list[tuple[str, str]]:
        return layer_result_paths(self.viewer)

    def _pick(self, value: str | None) -> None:
        if value:
            self.result.value = Path(value)
            scan = source_scan(Path(value))
            if scan is not None and optional_path(self.scan.value) is None:
                self.scan.value = scan

    def _cancel(self, *_: Any) -> None:
        self.runner.request_cancel()

    def show_unbalanced(self, *_: Any) -> list[Any]:
        """Add the chosen result's unbalanced coefficient magnitudes ``|F_k^H α̃|`` (lazy)."""
        from napari.utils.notifications import show_error

        from spurig_core.errors import SpurigError

        result = optional_path(self.result.value)
        try:
            if result is None:
                raise SpurigError("result: choose a result store (.zarr)")
            layers = [
                t
                for t in result_layers(result, unbalanced=True, iterations=False)
                if t[1]["metadata"]["spurig"].get("kind") == "coefficients"
            ]
            layers[0][1]["visible"] = True
        except SpurigError as exc:
            show_error(str(exc))
            return []
        return add_layers(self.viewer, layers)

    def start(self, *_: Any) -> Any:
        """Start matching; a missing store or scan becomes a notification."""
        from napari.utils.notifications import show_error

        from spurig_core.errors import InputError

        if self.runner.running:
            return None
        result = optional_path(self.result.value)
        scan = optional_path(self.scan.value)
        if scan is None and result is not None:
            scan = source_scan(result)
        problem = None
        if result is None or not result.is_dir():
            problem = f"result {result or ''}: choose a result store (.zarr)"
        elif scan is not None and not scan.is_file():
            problem = f"scan {scan}: no such file"
        if problem:
            show_error(str(InputError(problem)))
            self.status.value = problem
            return None
        self.run_button.enabled = False
        self.cancel_button.enabled = True
        self.status.value = "matching…"
        return self.runner.start(match_job, result, scan, device=self.device.value)

    def _on_done(self, path: Path) -> None:
        stale = [
            lay
            for lay in self.viewer.layers
            if (lay.metadata.get("spurig") or {}).get("result_path") == str(Path(path).resolve())
            and (lay.metadata.get("spurig") or {}).get("kind") in ("t1", "t2", "pd")
        ]
        for lay in stale:
            self.viewer.layers.remove(lay)
        add_layers(self.viewer, result_file_layers(path, maps_only=True))
        self.status.value = f"maps written into {path}"

    def _on_stop(self) -> None:
        if self.runner.cancelled:
            self.status.value = "cancelled"
        elif self.runner.error is not None:
            self.status.value = f"failed: {self.runner.error}"
        self.run_button.enabled = True
        self.cancel_button.enabled = False
