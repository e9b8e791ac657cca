"""Reconstruct dock widget: a thin magicgui form over :func:`.._jobs.reconstruct_job`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from magicgui.types import FileDialogMode
from magicgui.widgets import CheckBox, ComboBox, FileEdit, Label, PushButton, SpinBox

from .._jobs import DURATION_CHOICES, METHODS, ReconstructParams, reconstruct_job
from .._layers import result_layers
from ._common import JobRunner, SpurigWidget, add_layers, layer_scan_paths, optional_path

__all__ = ["ReconstructWidget", "offer_model"]

_INSTANCES: list[Any] = []  # weak references to the open Reconstruct widgets

#: Tooltips of the form's fields.
TIPS = {
    "scan": "A raw scan (spurig-raw/1 HDF5: `spurig simulate`, `spurig import-ismrmrd`)",
    "scan_layer": "Use the scan an open layer came from (filled in when you open a scan)",
    "method": "SPUR-iG / hybrid: trained unrolled networks; LLR, LLR-NUFFT: FISTA with locally "
    "low-rank regularisation; adjoint: scaled A^H b",
    "duration": "Scan time used: the first groups of the acquisition (6min = all 48)",
    "groups": "Number of leading groups (duration 'groups')",
    "model": "Trained model (.pt); empty: the shipped model for the duration",
    "device": "cpu, or cuda when a GPU is available",
    "save_iterations": "Keep every unroll step / FISTA iterate in the result (Compare › "
    "iterations)",
    "output": "Result store (.zarr); empty: <scan>_<method>_<duration>.zarr beside the scan",
}


def offer_model(viewer: Any, model: Path, duration: str) -> bool:
    """Put a trained model into the Reconstruct widgets of ``viewer`` (method, duration, model).

    Returns
    -------
    bool
        Whether a Reconstruct widget of that viewer took it.
    """
    used = False
    for ref in list(_INSTANCES):
        w = ref()
        if w is None:
            _INSTANCES.remove(ref)
            continue
        if w.viewer is viewer:
            w.model.value = Path(model)
            if w.method.value not in ("SPUR-iG", "hybrid"):
                w.method.value = "SPUR-iG"
            if duration in w.duration.choices:
                w.duration.value = duration
            used = True
    return used


def _voxel_size(scan_path: Path) -> tuple[float, float, float]:
    from spurig_core.errors import InputError
    from spurig_core.io import scan_voxel_size

    try:
        return scan_voxel_size(scan_path)
    except (InputError, OSError):  # the job reports unreadable scans; the live layer: unit voxels
        return (1.0, 1.0, 1.0)


class ReconstructWidget(SpurigWidget):
    """Reconstruct a raw scan with SPUR-iG, hybrid, LLR, LLR-NUFFT or the adjoint ``A^H b``.

    Runs in a background thread with a progress bar per stage and a Cancel button (stops at the
    next iteration, writes nothing); each iterate is streamed into one ``(live)`` layer; the result
    is saved to the chosen ``.zarr`` store and opened lazily when done.

    Parameters
    ----------
    napari_viewer : napari.Viewer or napari.components.ViewerModel
    """

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__(napari_viewer)
        self.scan = FileEdit(
            label="scan (.h5)",
            mode=FileDialogMode.EXISTING_FILE,
            filter="*.h5 *.hdf5",
            nullable=True,
            tooltip=TIPS["scan"],
        )
        self.scan_layer = ComboBox(
            label="or from layer",
            choices=self._scan_choices,
            nullable=True,
            tooltip=TIPS["scan_layer"],
        )
        self.method = ComboBox(
            label="method", choices=list(METHODS), value="SPUR-iG", tooltip=TIPS["method"]
        )
        self.duration = ComboBox(
            label="duration",
            choices=list(DURATION_CHOICES),
            value="all",
            tooltip=TIPS["duration"],
        )
        self.groups = SpinBox(
            label="groups", min=1, max=10_000, value=48, visible=False, tooltip=TIPS["groups"]
        )
        self.model = FileEdit(
            label="model (.pt)",
            mode=FileDialogMode.EXISTING_FILE,
            filter="*.pt *.pth",
            nullable=True,
            tooltip=TIPS["model"],
        )
        self.device = ComboBox(
            label="device", choices=["cpu", "cuda"], value="cpu", tooltip=TIPS["device"]
        )
        self.save_iterations = CheckBox(
            label="save iterations", value=False, tooltip=TIPS["save_iterations"]
        )
        self.output = FileEdit(
            label="output (.zarr)",
            mode=FileDialogMode.OPTIONAL_FILE,
            filter="*.zarr",
            nullable=True,
            tooltip=TIPS["output"],
        )
        self.run_button = PushButton(text="Reconstruct")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.status = Label(value="")
        self.extend(
            [
                self.scan,
                self.scan_layer,
                self.method,
                self.duration,
                self.groups,
                self.model,
                self.device,
                self.save_iterations,
                self.output,
                self.run_button,
                self.cancel_button,
                self.status,
            ]
        )
        self.duration.changed.connect(lambda v: setattr(self.groups, "visible", v == "groups"))
        self.scan_layer.changed.connect(self._scan_from_layer)
        self.run_button.changed.connect(self.start)
        self.cancel_button.changed.connect(self.request_cancel)
        for ev in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            ev.connect(lambda e: self._layers_changed())
        self.runner = JobRunner(
            "reconstruction", on_event=self._on_event, on_done=self._on_done, on_stop=self._on_stop
        )
        self.live_layer: Any = None
        self.output_path: Path | None = None
        #: ``"model NAME sha256 HEX"`` of the model the last run loaded (shown with the result)
        self.model_line = ""
        self._voxel = (1.0, 1.0, 1.0)
        import weakref

        _INSTANCES.append(weakref.ref(self))
        self._layers_changed()

    # -- form ----------------------------------------------------------------------------------
    def _layers_changed(self) -> None:
        """Refresh the layer choices; an empty scan field takes the first open scan."""
        self.scan_layer.reset_choices()
        if optional_path(self.scan.value) is None:
            scans = layer_scan_paths(self.viewer)
            if scans:
                self.scan_layer.value = scans[0][1]
                self.scan.value = Path(scans[0][1])

    def _scan_choices(self, widget: Any = None) -> list[tuple[str, str]]:
        return layer_scan_paths(self.viewer)

    def _scan_from_layer(self, value: str | None) -> None:
        if value:
            self.scan.value = Path(value)

    def params(self) -> ReconstructParams:
        """Return the form as :class:`ReconstructParams` (the output defaults to beside the scan).

        Raises
        ------
        InputError
            When a field is missing or invalid.
        """
        from spurig_core.errors import InputError

        scan = optional_path(self.scan.value)
        if scan is None:
            raise InputError("scan: choose a raw scan file (.h5) or a layer opened from one")
        method = METHODS[self.method.value]
        out = optional_path(self.output.value)
        if out is None:
            dur = (
                f"{self.groups.value}g" if self.duration.value == "groups" else self.duration.value
            )
            stem = scan.name.removesuffix(".hdf5").removesuffix(".h5")
            out = scan.with_name(f"{stem}_{method}_{dur}.zarr")
        params = ReconstructParams(
            scan_path=scan,
            output_path=out,
            method=method,
            duration=self.duration.value,
            groups=int(self.groups.value),
            model_path=optional_path(self.model.value),
            device=self.device.value,
            save_iterations=bool(self.save_iterations.value),
        )
        params.validate()
        return params

    # -- actions -------------------------------------------------------------------------------
    def start(self, *_: Any) -> Any:
        """Validate the form and start the reconstruction; errors become notifications."""
        from napari.utils.notifications import show_error

        from spurig_core.errors import SpurigError

        if self.runner.running:
            return None
        try:
            params = self.params()
        except SpurigError as exc:
            show_error(str(exc))
            self.status.value = str(exc)
            return None
        self.output_path = Path(params.output_path)
        self._voxel = _voxel_size(Path(params.scan_path))
        self.run_button.enabled = False
        self.cancel_button.enabled = True
        self.status.value = f"running {self.method.value}…"
        self.model_line = ""
        return self.runner.start(reconstruct_job, params)

    def request_cancel(self, *_: Any) -> None:
        """Stop at the next iteration; nothing is written."""
        self.runner.request_cancel()
        self.status.value = "cancelling…"

    # -- worker signals (GUI thread) -----------------------------------------------------------
    def _on_event(self, event: Any) -> None:
        if not self.runner.running:  # a progress signal delivered after the job's end
            return  # must not overwrite the final status ("failed: …", "saved …")
        if event.message:
            self.status.value = event.message
        if event.stage == "model":
            self.model_line = event.message
        if event.data is None:
            return
        mag = np.asarray(event.data, dtype=np.float32)
        if self.live_layer is None or self.live_layer not in self.viewer.layers:
            name = f"{self.output_path.name.removesuffix('.zarr') if self.output_path else 'recon'}"
            hi = float(np.percentile(mag, 99.5)) or 1.0
            self.live_layer = self.viewer.add_image(
                mag,
                name=f"{name} (live)",
                scale=(1.0, *self._voxel),
                contrast_limits=(0.0, hi),
                axis_labels=("coefficient", "x", "y", "z"),
                units=("pixel", "mm", "mm", "mm"),
                metadata={"spurig": {"kind": "live"}},
            )
        else:
            self.live_layer.data = mag
        self.live_layer.metadata["iteration"] = int(event.step)

    def _on_done(self, path: Path) -> None:
        self._drop_live()
        add_layers(self.viewer, result_layers(path))
        self.status.value = f"saved {path}" + (f"; {self.model_line}" if self.model_line else "")

    def _on_stop(self) -> None:
        if self.runner.error is not None or self.runner.cancelled:
            self._drop_live()
            self.status.value = (
                "cancelled" if self.runner.cancelled else f"failed: {self.runner.error}"
            )
        self.run_button.enabled = True
        self.cancel_button.enabled = False

    def _drop_live(self) -> None:
        if self.live_layer is not None and self.live_layer in self.viewer.layers:
            self.viewer.layers.remove(self.live_layer)
        self.live_layer = None
