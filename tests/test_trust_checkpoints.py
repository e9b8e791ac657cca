"""Model, training and data files never run code (issue #15 part 1).

A crafted ``.pt`` whose pickle calls ``exec`` (writing a marker file, the way to see that the
payload ran) goes through every path that reads a model or checkpoint: ``spurig recon --method
spurig|hybrid --model F``, ``spurig train --resume``, ``init = F`` in a training config, an
``example.pt`` in the training data, ``prepare-training`` with ``[inputs] llr_from``,
``recon.unrolled_io.load_model`` and the napari Reconstruct widget.  Each ends with one line naming
the file, and the marker never appears.  Also: a shipped model with a payload added, NaN weights, a
model of the wrong kind or network, architecture fields that do not fit its weights, and the sha256
a model card states.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from spurig_core import cli
from spurig_core.config import dump_toml
from spurig_core.data import FispSequence
from spurig_core.errors import InputError
from spurig_core.io import load_checkpoint, save_checkpoint
from spurig_core.recon.networks import UNetConfig
from spurig_core.recon.trained import MODELS_DIR, check_card, resolve_model
from spurig_core.recon.unrolled import UnrollConfig, UnrolledRecon
from spurig_core.recon.unrolled_io import load_model, model_state
from spurig_core.training.datasets import Example, save_example
from spurig_core.training.stages import PretrainConfig

REFUSED = "refused: the file contains Python objects other than tensors and plain data"
TR = 6
SEQ = FispSequence(np.linspace(5, 60, TR).astype(np.float32))
SHIPPED = MODELS_DIR / "spurig-30s.pt"


class _Payload:
    """Unpickling this runs ``exec`` of code that writes ``marker`` (what an attacker would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (f"open({str(self.marker)!r}, 'w').write('payload ran')",))


def _with_payload(state: dict[str, Any], path: Path, marker: Path) -> Path:
    """``state`` plus a payload entry, written with plain ``torch.save`` (as an attacker would)."""
    torch.save({**state, "extra": {"note": _Payload(marker)}}, path)
    return path


def _tiny_cfg() -> UnrollConfig:
    return UnrollConfig(steps=2, network=UNetConfig(base_width=8))


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(["-q", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def _assert_one_line(code: int, err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("spurig: error: "), err
    for n in needles:
        assert n in lines[0], (n, lines[0])


@pytest.fixture(scope="module")
def scan16(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Return a 16³ simulated subject, two coils, two groups."""
    from spurig_core import pipeline

    out = tmp_path_factory.mktemp("trust_scan") / "s16.h5"
    return pipeline.simulate(out, matrix=16, coils=2, groups=2, seed=4)


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "PAYLOAD_RAN"


@pytest.fixture
def payload(tmp_path: Path, marker: Path) -> Path:
    """Return a real model file (kind, config, weights) with a payload added."""
    state = model_state(
        UnrolledRecon(_tiny_cfg()), sequence=SEQ, basis=torch.eye(TR, 5, dtype=torch.complex64)
    )
    return _with_payload(state, tmp_path / "evil.pt", marker)


def _example(seed: int) -> Example:
    g = torch.Generator().manual_seed(seed)

    def vol() -> torch.Tensor:
        return torch.randn(5, 16, 16, 16, dtype=torch.complex64, generator=g)

    inputs = {k: vol() for k in ("adjoint-2min", "llr-30s", "llr-1min", "llr-2min")}
    tissue = torch.randint(0, 4, (16, 16, 16), generator=g).to(torch.uint8)
    basis = torch.linalg.qr(torch.randn(TR, 5, dtype=torch.complex64, generator=g))[0]
    return Example(f"s{seed}", vol(), tissue, basis, SEQ, inputs)


def _training_run(tmp_path: Path, **kw: Any) -> Path:
    """Prepare a one-subject cohort and a pretrain config for it; return the config path."""
    save_example(_example(0), tmp_path / "data" / "train" / "s0")
    cfg = PretrainConfig(
        data_dir=str(tmp_path / "data"),
        out_dir=str(tmp_path / "run"),
        duration="2min",
        model=_tiny_cfg(),
        epochs=1,
        batch_size=1,
        crop=8,
        steps_per_epoch=1,
        **kw,
    )
    path = tmp_path / "pre.toml"
    path.write_text(dump_toml(cfg))
    return path


# ----------------------------------------------------------------------------------------------
def test_the_payload_is_real(payload: Path, marker: Path) -> None:
    """Control: the crafted file does run its payload when loaded the unsafe way."""
    torch.load(payload, weights_only=False)
    assert marker.read_text() == "payload ran"


def test_load_model_and_load_checkpoint_refuse_the_payload(payload: Path, marker: Path) -> None:
    for load in (load_model, load_checkpoint):
        with pytest.raises(InputError) as info:
            load(payload)
        msg = str(info.value)
        assert "\n" not in msg and msg.startswith(f"{payload}: {REFUSED}")
        assert "global exec is not allowed" in msg and "never runs code" in msg
    assert not marker.exists()


def test_legacy_format_payload_is_refused(tmp_path: Path, marker: Path) -> None:
    """The pre-zip torch format is read weights-only too (no fallback)."""
    path = tmp_path / "legacy.pt"
    state = {"kind": "spurig-model", "x": _Payload(marker)}
    torch.save(state, path, _use_new_zipfile_serialization=False)
    with pytest.raises(InputError, match=REFUSED):
        load_model(path)
    assert not marker.exists()


def test_an_old_format_resume_checkpoint_is_refused_not_unpickled(tmp_path: Path) -> None:
    """Trainer states written before plain-data checkpoints held numpy arrays: refused, one line."""
    old = {"kind": "spurig-train", "rng": {"numpy_global": np.random.get_state()}}  # noqa: NPY002
    torch.save(old, tmp_path / "last.pt")
    with pytest.raises(InputError, match=REFUSED) as info:
        load_checkpoint(tmp_path / "last.pt")
    assert "numpy" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("method", ["spurig", "hybrid"])
def test_cli_recon_refuses_the_payload(
    method: str, scan16: Path, payload: Path, marker: Path, tmp_path: Path, capsys: Any
) -> None:
    out = tmp_path / "out.zarr"
    code, _, err = _cli(
        capsys, "recon", str(scan16), str(out), "--method", method, "--model", str(payload)
    )
    _assert_one_line(code, err, str(payload), REFUSED)
    assert not marker.exists() and not out.exists()


def test_a_shipped_model_with_a_payload_added_is_refused(
    scan16: Path, tmp_path: Path, marker: Path, capsys: Any
) -> None:
    state = torch.load(SHIPPED, map_location="cpu", weights_only=True)  # shipped: loads safely
    evil = _with_payload(state, tmp_path / "spurig-30s.pt", marker)
    out = tmp_path / "out.zarr"
    code, _, err = _cli(
        capsys, "recon", str(scan16), str(out), "--method", "spurig", "--model", str(evil)
    )
    _assert_one_line(code, err, REFUSED)
    assert not marker.exists() and not out.exists()


def test_train_resume_refuses_a_payload_last_checkpoint(
    tmp_path: Path, payload: Path, marker: Path, capsys: Any
) -> None:
    cfg = _training_run(tmp_path)
    (tmp_path / "run").mkdir()
    shutil.copyfile(payload, tmp_path / "run" / "last.pt")
    code, _, err = _cli(capsys, "train", "--stage", "pretrain", "--config", str(cfg), "--resume")
    _assert_one_line(code, err, "last.pt", REFUSED)
    assert not marker.exists() and not (tmp_path / "run" / "model.pt").exists()


def test_train_init_refuses_a_payload_model(
    tmp_path: Path, payload: Path, marker: Path, capsys: Any
) -> None:
    cfg = _training_run(tmp_path, init=str(payload))
    code, _, err = _cli(capsys, "train", "--stage", "pretrain", "--config", str(cfg))
    _assert_one_line(code, err, "evil.pt", REFUSED)
    assert not marker.exists() and not (tmp_path / "run").exists()


def test_train_refuses_a_payload_example(tmp_path: Path, marker: Path, capsys: Any) -> None:
    cfg = _training_run(tmp_path)
    example = tmp_path / "data" / "train" / "s0" / "example.pt"
    _with_payload(load_checkpoint(example), example, marker)
    code, _, err = _cli(capsys, "train", "--stage", "pretrain", "--config", str(cfg))
    _assert_one_line(code, err, "example.pt", REFUSED)
    assert not marker.exists() and not (tmp_path / "run").exists()


def test_prepare_training_refuses_payload_llr_inputs(
    scan16: Path, tmp_path: Path, marker: Path, capsys: Any
) -> None:
    (tmp_path / "cohort" / "train").mkdir(parents=True)
    shutil.copyfile(scan16, tmp_path / "cohort" / "train" / "s16.h5")
    old = tmp_path / "old" / "train" / "s16"
    save_example(_example(1), old)
    _with_payload(load_checkpoint(old / "example.pt"), old / "example.pt", marker)
    cfg = tmp_path / "prepare.toml"
    cfg.write_text('[inputs]\nllr_from = "old"\n')
    code, _, err = _cli(
        capsys,
        "prepare-training",
        str(tmp_path / "cohort"),
        str(tmp_path / "prepared"),
        "--splits",
        "train",
        "--durations",
        "30s",
        "--config",
        str(cfg),
    )
    _assert_one_line(code, err, "example.pt", REFUSED)
    assert not marker.exists() and not (tmp_path / "prepared" / "train" / "s16").exists()


def test_reconstruct_widget_refuses_the_payload(
    make_napari_viewer: Any, qtbot: Any, scan16: Path, payload: Path, marker: Path, tmp_path: Path
) -> None:
    from napari.utils.notifications import notification_manager

    from napari_spurig._widgets import ReconstructWidget

    seen: list[Any] = []
    notification_manager.notification_ready.connect(seen.append)
    try:
        viewer = make_napari_viewer()
        w = ReconstructWidget(viewer)
        viewer.window.add_dock_widget(w)
        w.scan.value = scan16
        w.method.value = "SPUR-iG"
        w.duration.value = "groups"
        w.groups.value = 2
        w.model.value = payload
        out = tmp_path / "gui.zarr"
        w.output.value = out
        w.run_button.native.click()
        qtbot.waitUntil(
            lambda: w.runner.worker is not None and not w.runner.running, timeout=120_000
        )
        # the status label and the notification follow the worker's end through Qt signals
        try:
            qtbot.waitUntil(lambda: w.status.value.startswith("failed: "), timeout=10_000)
        except Exception as exc:  # say what the label shows instead
            raise AssertionError(f"status {w.status.value!r}, error {w.runner.error!r}") from exc
        qtbot.waitUntil(lambda: any(REFUSED in str(n.message) for n in seen), timeout=10_000)
    finally:
        notification_manager.notification_ready.disconnect(seen.append)
    assert isinstance(w.runner.error, InputError) and REFUSED in str(w.runner.error)
    assert w.status.value.startswith("failed: ") and REFUSED in w.status.value
    shown = [str(n.message) for n in seen if REFUSED in str(n.message)]
    assert len(shown) == 1 and "\n" not in shown[0] and "evil.pt" in shown[0]
    assert not marker.exists() and not out.exists()
    assert w.run_button.enabled


# ----------------------------------------------------------------------------------------------
def test_nan_weights_are_refused_naming_the_parameter(tmp_path: Path) -> None:
    state = torch.load(SHIPPED, map_location="cpu", weights_only=True)
    name = next(k for k, v in sorted(state["model"].items()) if k.endswith(".weight"))
    state["model"][name] = state["model"][name].clone()
    state["model"][name].view(-1)[3] = float("nan")
    save_checkpoint(state, tmp_path / "nan.pt")
    with pytest.raises(InputError, match=rf"refused: tensor 'model\.{name}' contains NaN or Inf"):
        load_model(tmp_path / "nan.pt")
    state["model"][name].view(-1)[3] = float("inf")
    save_checkpoint(state, tmp_path / "inf.pt")
    with pytest.raises(InputError, match="contains NaN or Inf"):
        resolve_model(tmp_path / "inf.pt", method="spurig", duration="30s")


def test_a_model_of_the_wrong_kind_is_refused(tmp_path: Path) -> None:
    hybrid = MODELS_DIR / "hybrid-2min.pt"
    with pytest.raises(InputError, match=r"2D slice-wise \(hybrid\) network; --method spurig "):
        resolve_model(hybrid, method="spurig", duration="2min")
    with pytest.raises(InputError, match=r"expects a 2D slice-wise \(hybrid\) model of kind"):
        resolve_model(SHIPPED, method="hybrid", duration="30s")
    state = torch.load(SHIPPED, map_location="cpu", weights_only=True)
    save_checkpoint({**state, "kind": "spurig-train"}, tmp_path / "last.pt")
    with pytest.raises(
        InputError, match=r"training-resume checkpoint .* expects kind 'spurig-model'"
    ):
        resolve_model(tmp_path / "last.pt", method="spurig", duration="30s")
    save_checkpoint({**state, "stage": "pretrain"}, tmp_path / "pre.pt")
    with pytest.raises(InputError, match=r"pretrain-stage .* expects kind 'spurig-model'"):
        resolve_model(tmp_path / "pre.pt", method="spurig", duration="30s")
    save_checkpoint({"kind": "spurig-dc"}, tmp_path / "dc.pt")
    with pytest.raises(InputError, match="not a SPUR-iG model \\('spurig-model'\\)"):
        resolve_model(tmp_path / "dc.pt", method="spurig", duration="30s")
    # as a training stage's init, resume files and pretrained denoisers are fine
    _, meta = load_model(tmp_path / "pre.pt")
    assert meta["stage"] == "pretrain"


def test_cli_names_the_expected_kind(scan16: Path, tmp_path: Path, capsys: Any) -> None:
    out = tmp_path / "out.zarr"
    code, _, err = _cli(
        capsys,
        "recon",
        str(scan16),
        str(out),
        "--method",
        "spurig",
        "--model",
        str(MODELS_DIR / "hybrid-2min.pt"),
    )
    _assert_one_line(code, err, "hybrid-2min.pt", "expects a 3D (spurig) model of kind")
    assert not out.exists()


def test_architecture_fields_must_fit_the_weights(tmp_path: Path) -> None:
    state = torch.load(SHIPPED, map_location="cpu", weights_only=True)
    no_net = {**state, "config": {k: v for k, v in state["config"].items() if k != "network"}}
    save_checkpoint(no_net, tmp_path / "a.pt")
    with pytest.raises(InputError, match=r"lacks its architecture field.* network"):
        load_model(tmp_path / "a.pt")
    net = {k: v for k, v in state["config"]["network"].items() if k != "base_width"}
    save_checkpoint({**state, "config": {**state["config"], "network": net}}, tmp_path / "b.pt")
    with pytest.raises(InputError, match=r"network\.base_width"):
        load_model(tmp_path / "b.pt")
    wider = {**state["config"]["network"], "base_width": 24}
    save_checkpoint({**state, "config": {**state["config"], "network": wider}}, tmp_path / "c.pt")
    with pytest.raises(InputError, match=r"weights do not fit the stored config: '.*' has shape"):
        load_model(tmp_path / "c.pt")
    fewer = dict(state["model"])
    dropped = sorted(fewer)[-1]
    del fewer[dropped]
    save_checkpoint({**state, "model": fewer}, tmp_path / "d.pt")
    with pytest.raises(InputError, match=rf"1 missing \(e\.g\. '{dropped}'\)"):
        load_model(tmp_path / "d.pt")


def test_sha256_is_reported_and_checked_against_the_card(tmp_path: Path) -> None:
    sha = hashlib.sha256(SHIPPED.read_bytes()).hexdigest()
    card = SHIPPED.with_suffix(".md").read_text()
    assert f"sha256 `{sha}`" in card  # the shipped card states the file's sha256
    _, meta = load_model(SHIPPED, method="spurig")
    assert meta["sha256"] == sha and meta["card"] == SHIPPED.with_suffix(".md")
    assert meta["line"] == f"model spurig-30s.pt sha256 {sha} (matches its model card)"
    # a copy beside a card that states another file's sha256 is refused
    shutil.copyfile(SHIPPED, tmp_path / "m.pt")
    other = hashlib.sha256(b"another file").hexdigest()
    (tmp_path / "m.md").write_text(card.replace(sha, other))
    with pytest.raises(InputError, match=r"m\.pt: sha256 .* differs from .* its model card m\.md"):
        resolve_model(tmp_path / "m.pt", method="spurig", duration="30s")
    (tmp_path / "m.md").unlink()
    assert check_card(tmp_path / "m.pt") == {
        "sha256": sha,
        "card": None,
        "line": f"model m.pt sha256 {sha}",
    }


def test_every_shipped_model_loads_weights_only_and_matches_its_card() -> None:
    models = sorted(MODELS_DIR.glob("*.pt"))
    assert len(models) >= 4
    for path in models:
        state = torch.load(path, map_location="cpu", weights_only=True)
        assert state["kind"] == "spurig-model"
        method = path.stem.split("-")[0]
        _, meta = load_model(path, method=method)
        assert meta["card"] is not None, path


def test_save_checkpoint_refuses_what_would_not_load_safely(tmp_path: Path) -> None:
    for bad in (np.zeros(3), np.float64(1.0), SEQ, {1.5: "x"}, {"s": {1, 2}}):
        with pytest.raises(TypeError, match="checkpoint entry"):
            save_checkpoint({"kind": "x", "v": bad}, tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()


@pytest.mark.slow
def test_cli_recon_prints_the_model_sha256(scan16: Path, tmp_path: Path, capsys: Any) -> None:
    """A good model reconstructs and the CLI prints which file ran, by content."""
    out = tmp_path / "ok.zarr"
    code, stdout, _ = _cli(
        capsys, "recon", str(scan16), str(out), "--method", "spurig", "--model", str(SHIPPED)
    )
    sha = hashlib.sha256(SHIPPED.read_bytes()).hexdigest()
    assert code == 0 and out.is_dir()
    assert f"model spurig-30s.pt sha256 {sha}" in stdout.splitlines()
