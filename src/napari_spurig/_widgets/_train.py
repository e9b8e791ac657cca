"""Train dock widget: stage, config, resume; progress, a live loss curve and cancel."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from magicgui.types import FileDialogMode
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    PushButton,
    SpinBox,
)

from .._models import STAGES, LossHistory, train_job, write_train_config
from ._common import JobRunner, optional_path

__all__ = ["TrainWidget"]


class TrainWidget(Container):
    """Run a training stage (pretrain, GLEAM, fine-tune) from a TOML config.

    Without a config file, the main fields (cohort and output directories, duration, epochs,
    learning rate, device) are written to ``<out_dir>/gui-<stage>.toml`` and that file is used, so
    the run stays reproducible; every other field keeps the engine's default.

    The loss of every reported step is drawn live (matplotlib canvas in the dock).  Cancel stops at
    the next step; checkpoints the engine already wrote are kept, so "resume" continues from them.

    Parameters
    ----------
    napari_viewer : napari.Viewer or napari.components.ViewerModel
    """

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.stage = ComboBox(label="stage", choices=list(STAGES), value="pretrain")
        self.config = FileEdit(
            label="config (.toml)",
            mode=FileDialogMode.EXISTING_FILE,
            filter="*.toml",
            nullable=True,
        )
        self.data_dir = FileEdit(
            label="or cohort dir", mode=FileDialogMode.EXISTING_DIRECTORY, nullable=True
        )
        self.out_dir = FileEdit(
            label="output dir", mode=FileDialogMode.EXISTING_DIRECTORY, nullable=True
        )
        self.duration = ComboBox(label="duration", choices=["30s", "1min", "2min"], value="1min")
        self.epochs = SpinBox(label="epochs", min=1, max=100_000, value=100)
        self.lr = FloatSpinBox(label="learning rate", min=1e-6, max=1.0, step=1e-4, value=5e-3)
        self.device = ComboBox(label="device", choices=["cpu", "cuda"], value="cpu")
        self.resume = CheckBox(label="resume", value=False)
        self.run_button = PushButton(text="Train")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.status = Label(value="")
        self.extend(
            [self.stage, self.config, self.resume, self.run_button, self.cancel_button, self.status]
        )
        self.history = LossHistory()
        self.checkpoint: Any = None
        self._make_canvas()
        self.run_button.changed.connect(self.start)
        self.cancel_button.changed.connect(self.request_cancel)
        self.runner = JobRunner(
            "training", on_event=self._on_event, on_done=self._on_done, on_stop=self._on_stop
        )

    def _make_canvas(self) -> None:
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(3.5, 2.2), tight_layout=True)
        self.axes = fig.add_subplot(1, 1, 1)
        self.axes.set_xlabel("step")
        self.axes.set_ylabel("loss")
        (self.line,) = self.axes.plot([], [], "-", lw=1.2)
        self.canvas = FigureCanvasQTAgg(fig)
        self.canvas.setMinimumHeight(160)
        self.native.layout().addWidget(self.canvas)

    def start(self, *_: Any) -> Any:
        """Validate and start the training stage; errors become notifications."""
        from napari.utils.notifications import show_error

        from spurig_core.errors import InputError

        if self.runner.running:
            return None
        try:
            cfg = self.config_path()
        except InputError as exc:
            show_error(str(exc))
            self.status.value = str(exc)
            return None
        self.history = LossHistory()
        self._redraw()
        self.run_button.enabled = False
        self.cancel_button.enabled = True
        self.status.value = f"training ({self.stage.value})…"
        return self.runner.start(
            train_job, STAGES[self.stage.value], cfg, resume=bool(self.resume.value)
        )

    def config_path(self) -> Path:
        """The chosen config file, or one written from the main fields.

        Raises
        ------
        InputError
            When neither an existing config nor the cohort and output directories are given.
        """
        from spurig_core.errors import InputError

        cfg = optional_path(self.config.value)
        if cfg is not None:
            if not cfg.is_file():
                raise InputError(f"config {cfg}: no such file")
            return cfg
        data, out = optional_path(self.data_dir.value), optional_path(self.out_dir.value)
        if data is None or out is None or not data.is_dir():
            raise InputError("config: choose a training config (.toml) or a cohort and output dir")
        out.mkdir(parents=True, exist_ok=True)
        fields = {
            "data_dir": str(data.resolve()),
            "out_dir": str(out.resolve()),
            "duration": self.duration.value,
            "epochs": int(self.epochs.value),
            "lr": float(self.lr.value),
            "device": self.device.value,
        }
        return write_train_config(fields, out / f"gui-{STAGES[self.stage.value]}.toml")

    def request_cancel(self, *_: Any) -> None:
        """Stop at the next step; checkpoints written so far stay."""
        self.runner.request_cancel()
        self.status.value = "cancelling (checkpoints kept)…"

    def _on_event(self, event: Any) -> None:
        if self.history.add(event):
            self._redraw()
            self.status.value = (
                f"step {event.step}/{event.total}: loss {self.history.losses[-1]:.4g}"
            )

    def _redraw(self) -> None:
        self.line.set_data(self.history.steps, self.history.losses)
        self.axes.relim()
        self.axes.autoscale_view()
        self.canvas.draw_idle()

    def _on_done(self, path: Any) -> None:
        from napari.utils.notifications import show_info

        self.checkpoint = path
        self.status.value = f"checkpoint {path}"
        show_info(f"training finished: {path}")

    def _on_stop(self) -> None:
        if self.runner.cancelled:
            self.status.value = "cancelled (resume to continue from the last checkpoint)"
        elif self.runner.error is not None:
            self.status.value = f"failed: {self.runner.error}"
        self.run_button.enabled = True
        self.cancel_button.enabled = False
