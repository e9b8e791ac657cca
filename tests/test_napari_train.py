"""Train widget driven as a user would: live loss curve, cancel with the checkpoint kept, resume.

The tiny prepared cohort comes from the training tests' own helpers (``tests/test_training.py``), so
the real training stages run (a few optimiser steps of a tiny network).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.gui


@pytest.fixture(autouse=True)
def own_settings(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Keep napari settings in ``tmp_path``: the widgets set reader preferences, not the user's."""
    from napari import settings

    monkeypatch.setattr(settings, "_SETTINGS", None)
    return settings.get_settings(tmp_path_factory.mktemp("napari") / "settings.yaml")


TIMEOUT_MS = 240_000


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


def test_train_widget_refuses_missing_config(
    qtbot: Any, tmp_path: Path, notifications: list[Any]
) -> None:
    from napari.components import ViewerModel

    from napari_spurig._widgets import TrainWidget

    w = TrainWidget(ViewerModel())
    qtbot.addWidget(w.native)
    w.stage.value = "GLEAM"
    w.config.value = tmp_path / "absent.toml"
    w.run_button.native.click()
    assert w.runner.worker is None
    assert any("absent.toml" in str(n.message) for n in notifications)
    assert w.canvas is not None and w.history.losses == []


# ----------------------------------------------------------------------------------------------
# training (a tiny prepared cohort made with the training tests' own helpers)
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tt = pytest.importorskip("test_training")
    root = tmp_path_factory.mktemp("napari_cohort")
    for seed, split in ((0, "train"), (1, "train"), (2, "val")):
        tt.save_example(tt._example(seed), root / split / f"s{seed}")
    return root


def test_train_widget_live_loss_cancel_and_resume(qtbot: Any, cohort: Path, tmp_path: Path) -> None:
    import csv

    from napari.components import ViewerModel

    from napari_spurig._widgets import TrainWidget

    tt = pytest.importorskip("test_training")
    out = tmp_path / "pre"
    cfg = tt._write(tmp_path / "pre.toml", tt._pre_cfg(cohort, out, epochs=3, steps_per_epoch=1))
    w = TrainWidget(ViewerModel())
    qtbot.addWidget(w.native)
    w.stage.value = "pretrain"
    w.config.value = cfg
    w.run_button.native.click()
    # cancel once the first epoch's checkpoint is on disk
    qtbot.waitUntil(
        lambda: (out / "last.pt").exists() and len(w.history.losses) >= 2, timeout=TIMEOUT_MS
    )
    w.cancel_button.native.click()
    _wait_idle(qtbot, w.runner)
    assert w.runner.cancelled and (out / "last.pt").exists()
    assert not (out / "model.pt").exists() or w.runner.cancelled
    n_before = len(w.history.losses)
    assert 2 <= n_before < 3
    x, y = w.line.get_data()
    assert list(y) == w.history.losses and list(x) == w.history.steps
    # resume finishes the remaining epochs
    w.resume.value = True
    w.run_button.native.click()
    _wait_idle(qtbot, w.runner)
    assert w.runner.error is None, w.runner.error
    assert Path(w.checkpoint) == out / "model.pt" and (out / "model.pt").exists()
    rows = list(csv.DictReader(open(out / "loss.csv")))
    assert len(rows) == 3


def test_train_widget_writes_config_from_fields(qtbot: Any, tmp_path: Path) -> None:
    import tomllib

    from napari.components import ViewerModel

    from napari_spurig._widgets import TrainWidget

    w = TrainWidget(ViewerModel())
    qtbot.addWidget(w.native)
    w.stage.value = "fine-tune"
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    w.data_dir.value = cohort
    w.out_dir.value = tmp_path / "ft"
    w.epochs.value = 7
    w.duration.value = "30s"
    p = w.config_path()
    assert p == tmp_path / "ft" / "gui-finetune.toml"
    cfg = tomllib.loads(p.read_text())
    assert cfg["epochs"] == 7 and cfg["duration"] == "30s"
    assert Path(cfg["data_dir"]) == cohort.resolve()
    from spurig_core.training.stages import load_stage_config

    assert load_stage_config("finetune", p).epochs == 7  # the engine accepts what we wrote
