"""Reconstruct dock widget: a thin magicgui form over :func:`.._models.reconstruct_job`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from magicgui.types import FileDialogMode
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, Label, PushButton, SpinBox

from .._layers import result_layers
from .._models import DURATION_CHOICES, METHODS, ReconstructParams, reconstruct_job
from ._common import JobRunner, add_layers, optional_path

__all__ = ["ReconstructWidget", "layer_scan_paths"]


def layer_scan_paths(viewer: Any) -> list[tuple[str, str]]:
    """``(layer name, scan path)`` of the layers that came from a raw scan."""
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for layer in viewer.layers:
        path = (layer.metadata.get("spurig") or {}).get("scan_path")
        if path is None and layer.source.path and str(layer.source.path).endswith((".h5", ".hdf5")):
            path = str(layer.source.path)
        if path and path not in seen:
            seen.add(path)
            out.append((f"{layer.name} ({Path(path).name})", path))
    return out


def _voxel_size(scan_path: Path) -> tuple[float, float, float]:
    import h5py

    try:
        with h5py.File(scan_path, "r") as f:
            m = np.asarray(f.attrs["matrix"], dtype=float).reshape(-1)
            fov = np.asarray(f.attrs["fov_mm"], dtype=float).reshape(-1)
        return (fov[0] / m[0], fov[1] / m[1], fov[2] / m[2])
    except Exception:  # the job reports unreadable scans; the live layer just uses unit voxels
        return (1.0, 1.0, 1.0)


class ReconstructWidget(Container):
    """Reconstruct a raw scan with SPUR-iG, hybrid, LLR, LLR-NUFFT or the adjoint ``A^H b``.

    Runs in a background thread with a progress bar per stage and a Cancel button (stops at the
    next iteration, writes nothing); each iterate is streamed into one ``(live)`` layer; the result
    is saved to the chosen ``.zarr`` store and opened lazily when done.

    Parameters
    ----------
    napari_viewer : napari.Viewer or napari.components.ViewerModel
    """

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.scan = FileEdit(
            label="scan (.h5)",
            mode=FileDialogMode.EXISTING_FILE,
            filter="*.h5 *.hdf5",
            nullable=True,
        )
        self.scan_layer = ComboBox(label="or from layer", choices=self._scan_choices, nullable=True)
        self.method = ComboBox(label="method", choices=list(METHODS), value="SPUR-iG")
        self.duration = ComboBox(label="duration", choices=list(DURATION_CHOICES), value="all")
        self.groups = SpinBox(label="groups", min=1, max=10_000, value=48, enabled=False)
        self.model = FileEdit(
            label="model (.pt)",
            mode=FileDialogMode.EXISTING_FILE,
            filter="*.pt *.pth",
            nullable=True,
        )
        self.device = ComboBox(label="device", choices=["cpu", "cuda"], value="cpu")
        self.save_iterations = CheckBox(label="save iterations", value=False)
        self.output = FileEdit(
            label="output (.zarr)",
            mode=FileDialogMode.OPTIONAL_FILE,
            filter="*.zarr",
            nullable=True,
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
        self.duration.changed.connect(lambda v: setattr(self.groups, "enabled", v == "groups"))
        self.scan_layer.changed.connect(self._scan_from_layer)
        self.run_button.changed.connect(self.start)
        self.cancel_button.changed.connect(self.request_cancel)
        for ev in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            ev.connect(lambda e: self.scan_layer.reset_choices())
        self.runner = JobRunner(
            "reconstruction", on_event=self._on_event, on_done=self._on_done, on_stop=self._on_stop
        )
        self.live_layer: Any = None
        self.output_path: Path | None = None
        #: ``"model NAME sha256 HEX"`` of the model the last run loaded (shown with the result)
        self.model_line = ""
        self._voxel = (1.0, 1.0, 1.0)

    # -- form ----------------------------------------------------------------------------------
    def _scan_choices(self, widget: Any = None) -> list[tuple[str, str]]:
        return layer_scan_paths(self.viewer)

    def _scan_from_layer(self, value: str | None) -> None:
        if value:
            self.scan.value = Path(value)

    def params(self) -> ReconstructParams:
        """The form as :class:`ReconstructParams` (output defaults to a name beside the scan).

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
