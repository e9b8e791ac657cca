"""Train dock widget: cohort, stage, duration, start model; live loss, ETA, cancel, resume."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from magicgui.types import FileDialogMode
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    FileEdit,
    FloatSpinBox,
    Label,
    PushButton,
    SpinBox,
)

from spurig_core.durations import MODEL_DURATIONS

from .._jobs import STAGES, LossHistory, train_job, write_train_config
from ._common import JobRunner, SpurigWidget, optional_path

__all__ = ["TrainWidget", "format_eta", "written_files"]

#: Tooltips of the form's fields (also the README's field reference).
TIPS = {
    "stage": "pretrain (stage 1), GLEAM (stage 2, unrolled with memory-efficient gradients) or "
    "fine-tune (stage 3, end to end); paper 2.3.2",
    "data_dir": "A prepared training cohort (`spurig prepare`): train/ and val/ subject folders",
    "out_dir": "Where checkpoints (last.pt), loss.csv and the model (model.pt) go; created if "
    "missing. Empty: <cohort>/../runs/<stage>-<duration>",
    "duration": "Scan duration the model is for (groups used from each subject)",
    "epochs": "Passes over the training subjects",
    "lr": "Adam's initial learning rate (5e-3 in the paper's appendix A.1)",
    "device": "cpu, or cuda when a GPU is available",
    "init": "Model file to start from (e.g. the pretrain model for GLEAM, or a shipped model); "
    "empty: random initialisation",
    "config": "Optional TOML config; when given it is used instead of the fields above",
    "resume": "Continue from last.pt in the output dir (after a cancel)",
}


def format_eta(seconds: float) -> str:
    """``"1 h 02 min"``, ``"3 min 05 s"`` or ``"42 s"``."""
    s = max(0, round(seconds))
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    if s >= 60:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s} s"


def written_files(out_dir: Path | None) -> list[str]:
    """Names of the files a training run left in ``out_dir`` (sorted; empty when none)."""
    if out_dir is None or not out_dir.is_dir():
        return []
    return sorted(p.name for p in out_dir.iterdir() if p.is_file())


def _file(label: str, mode: FileDialogMode, tip: str, **kw: Any) -> FileEdit:
    return FileEdit(label=label, mode=mode, nullable=True, tooltip=tip, **kw)


class TrainWidget(SpurigWidget):
    """Run a training stage (pretrain, GLEAM, fine-tune) from the form or a TOML config.

    The form's fields (cohort and output directories, stage, duration, epochs, learning rate,
    device and the model to start from) are written to ``<out_dir>/gui-<stage>.toml`` and that
    file is used, so the run is reproducible (``spurig train <stage> <that file>``); every other
    field keeps the engine's default.  A config file, when chosen, is used instead.

    The loss of every optimiser step is drawn live with the step count and an ETA.  Cancel stops
    at the next step and says which files were kept; "resume" continues from ``last.pt``.  When
    the stage finishes, its model is put into the Reconstruct widget of the same viewer (method,
    duration and model), ready to run.

    Parameters
    ----------
    napari_viewer : napari.Viewer or napari.components.ViewerModel
    """

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__(napari_viewer)
        D = FileDialogMode
        self.stage = ComboBox(
            label="stage", choices=list(STAGES), value="pretrain", tooltip=TIPS["stage"]
        )
        self.data_dir = _file("cohort dir", D.EXISTING_DIRECTORY, TIPS["data_dir"])
        self.out_dir = _file("output dir", D.EXISTING_DIRECTORY, TIPS["out_dir"])
        self.duration = ComboBox(
            label="duration",
            choices=list(MODEL_DURATIONS[::-1]),
            value="1min",
            tooltip=TIPS["duration"],
        )
        self.epochs = SpinBox(label="epochs", min=1, max=100_000, value=100, tooltip=TIPS["epochs"])
        self.lr = FloatSpinBox(
            label="learning rate", min=1e-6, max=1.0, step=1e-4, value=5e-3, tooltip=TIPS["lr"]
        )
        self.device = ComboBox(
            label="device", choices=["cpu", "cuda"], value="cpu", tooltip=TIPS["device"]
        )
        self.init = _file("start from model", D.EXISTING_FILE, TIPS["init"], filter="*.pt *.pth")
        self.config = _file("or config (.toml)", D.EXISTING_FILE, TIPS["config"], filter="*.toml")
        self.resume = CheckBox(label="resume", value=False, tooltip=TIPS["resume"])
        self.run_button = PushButton(text="Train", tooltip="Start the stage in the background")
        self.cancel_button = PushButton(
            text="Cancel", enabled=False, tooltip="Stop at the next step; checkpoints are kept"
        )
        self.status = Label(value="")
        self.extend(
            [
                self.stage,
                self.data_dir,
                self.out_dir,
                self.duration,
                self.epochs,
                self.lr,
                self.device,
                self.init,
                self.config,
                self.resume,
                self.run_button,
                self.cancel_button,
                self.status,
            ]
        )
        self.history = LossHistory()
        self.checkpoint: Any = None
        self.run_out_dir: Path | None = None
        self._run_duration = "1min"
        self._t0 = 0.0
        self._make_canvas()
        self.run_button.changed.connect(self.start)
        self.cancel_button.changed.connect(self.request_cancel)
        self.runner = JobRunner(
            "training",
            on_event=self._on_event,
            on_done=self._on_done,
            on_stop=self._on_stop,
            cancel_message=self._cancel_message,
        )

    def _make_canvas(self) -> None:
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(3.5, 2.2), tight_layout=True)
        self.axes = fig.add_subplot(1, 1, 1)
        self.axes.set_xlabel("optimiser step")
        self.axes.set_ylabel("training loss")
        (self.line,) = self.axes.plot([], [], "-", lw=1.2)
        self.canvas = FigureCanvasQTAgg(fig)
        self.canvas.setMinimumHeight(160)
        self.native.layout().addWidget(self.canvas)

    def start(self, *_: Any) -> Any:
        """Validate and start the training stage; errors become notifications."""
        from napari.utils.notifications import show_error

        from spurig_core.errors import SpurigError

        if self.runner.running:
            return None
        try:
            cfg = self.config_path()
            self.run_out_dir, self._run_duration = self._stage_of(cfg)
        except SpurigError as exc:
            show_error(str(exc))
            self.status.value = str(exc)
            return None
        self.history = LossHistory()
        self._redraw()
        self.run_button.enabled = False
        self.cancel_button.enabled = True
        self.status.value = f"training ({self.stage.value})…"
        self._t0 = time.monotonic()
        return self.runner.start(
            train_job, STAGES[self.stage.value], cfg, resume=bool(self.resume.value)
        )

    def _default_out(self, data: Path) -> Path:
        return data.resolve().parent / "runs" / f"{STAGES[self.stage.value]}-{self.duration.value}"

    def config_path(self) -> Path:
        """Return the chosen config file, or one written from the form's fields.

        Raises
        ------
        InputError
            When the config file is missing, or without one the cohort dir is missing, or the
            model to start from does not exist.
        """
        from spurig_core.errors import InputError

        cfg = optional_path(self.config.value)
        if cfg is not None:
            if not cfg.is_file():
                raise InputError(f"config {cfg}: no such file")
            return cfg
        data = optional_path(self.data_dir.value)
        if data is None or not data.is_dir():
            raise InputError(
                f"cohort dir {data or '(empty)'}: choose a prepared cohort folder "
                "(train/ and val/, from `spurig prepare`) or a config (.toml)"
            )
        out = optional_path(self.out_dir.value) or self._default_out(data)
        init = optional_path(self.init.value)
        if init is not None and not init.is_file():
            raise InputError(f"start from model {init}: no such file")
        out.mkdir(parents=True, exist_ok=True)
        fields: dict[str, Any] = {
            "data_dir": str(data.resolve()),
            "out_dir": str(out.resolve()),
            "duration": self.duration.value,
            "epochs": int(self.epochs.value),
            "lr": float(self.lr.value),
            "device": self.device.value,
        }
        if init is not None:
            fields["init"] = str(init.resolve())
        return write_train_config(fields, out / f"gui-{STAGES[self.stage.value]}.toml")

    def _stage_of(self, cfg: Path) -> tuple[Path, str]:
        """Output dir and duration of the stage config ``cfg`` (checked by the engine)."""
        from spurig_core.training.stages import load_stage_config

        stage_cfg = load_stage_config(STAGES[self.stage.value], cfg)
        out = Path(stage_cfg.out_dir)
        return (out if out.is_absolute() else cfg.parent / out), str(stage_cfg.duration)

    def request_cancel(self, *_: Any) -> None:
        """Stop at the next step; checkpoints written so far stay."""
        self.runner.request_cancel()
        self.status.value = "cancelling at the next step (checkpoints kept)…"

    def _cancel_message(self) -> str:
        kept = written_files(self.run_out_dir)
        if not kept:
            return "training cancelled; nothing was written"
        return (
            f"training cancelled; kept in {self.run_out_dir}: {', '.join(kept)} "
            "(tick resume to continue from last.pt)"
        )

    def _on_event(self, event: Any) -> None:
        if not self.history.add(event):
            return
        self._redraw()
        step, total = int(event.step), int(event.total or 0)
        eta = ""
        if total and step:
            left = (time.monotonic() - self._t0) / step * (total - step)
            eta = f", ETA {format_eta(left)}"
        self.status.value = f"step {step}/{total}: loss {self.history.losses[-1]:.4g}{eta}"

    def _redraw(self) -> None:
        self.line.set_data(self.history.steps, self.history.losses)
        self.axes.relim()
        self.axes.autoscale_view()
        self.canvas.draw_idle()

    def _on_done(self, path: Any) -> None:
        from napari.utils.notifications import show_info

        from ._reconstruct import offer_model

        self.checkpoint = path
        used = offer_model(self.viewer, Path(path), self._run_duration)
        where = "; set as the Reconstruct widget's model" if used else ""
        self.status.value = f"model {path}{where}"
        show_info(f"training finished: {path}{where}")

    def _on_stop(self) -> None:
        if self.runner.cancelled:
            self.status.value = self._cancel_message()
        elif self.runner.error is not None:
            self.status.value = f"failed: {self.runner.error}"
        self.run_button.enabled = True
        self.cancel_button.enabled = False
