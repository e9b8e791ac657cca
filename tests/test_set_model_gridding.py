"""tools/set_model_gridding.py: a shipped model's reconstruction gridding (issue 14, session 28).

Round trip on a copy of a shipped model and its card: the file reads back (``load_model``, which
checks the card's sha256) with the new settings, the training data's settings kept beside them,
and nothing written when any input is bad.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

from spurig_core.io import load_checkpoint
from spurig_core.recon.trained import MODELS_DIR
from spurig_core.recon.unrolled_io import load_model

_spec = importlib.util.spec_from_file_location(
    "set_model_gridding", Path(__file__).resolve().parents[1] / "tools" / "set_model_gridding.py"
)
assert _spec is not None and _spec.loader is not None
tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tool)

TABLE = "[gridding]\nhidden = 64\nfourier_features = 64\nsteps = 1000\ngrid_batch = 4096\n"


@pytest.fixture
def shipped(tmp_path: Path) -> tuple[Path, dict]:
    """Return a copy of the shipped 30-s model (with its card) and its training gridding."""
    src = MODELS_DIR / "spurig-30s.pt"
    dst = tmp_path / "spurig-30s.pt"
    shutil.copyfile(src, dst)
    shutil.copyfile(src.with_suffix(".md"), dst.with_suffix(".md"))
    state = load_checkpoint(dst)
    return dst, dict(state.get("training_gridding") or state["gridding"])


def test_sets_the_gridding_and_keeps_the_training_record(shipped, tmp_path) -> None:
    model, training = shipped
    (tmp_path / "g.toml").write_text(TABLE)
    rc = tool.main([str(model), "--gridding", str(tmp_path / "g.toml"), "--note", "why"])
    assert rc == 0
    _, meta = load_model(model)  # the card's sha256 matches the rewritten file
    assert meta["card"] is not None
    want = {**training, "hidden": 64, "fourier_features": 64, "steps": 1000}
    assert meta["gridding"] == want  # grid_batch is not a data field: not recorded
    state = load_checkpoint(model)
    assert state["training_gridding"] == training and state["gridding_note"] == "why"
    card = model.with_suffix(".md").read_text()
    assert f"{tool.USED_PREFIX}`" in card and '"hidden": 64' in card and "(why)." in card
    assert f"{tool.TRAINING_PREFIX}: `" in card and f'"hidden": {training["hidden"]}' in card
    # a second change keeps the first record of the training data
    (tmp_path / "g2.toml").write_text("[gridding]\nhidden = 32\n")
    assert tool.main([str(model), "--gridding", str(tmp_path / "g2.toml")]) == 0
    state = load_checkpoint(model)
    assert state["training_gridding"] == training and state["gridding"]["hidden"] == 32
    assert model.with_suffix(".md").read_text().count("- Gridding") == 2
    load_model(model)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("[gridding]\nhidden = 0\n", "gridding.hidden = 0 is out of range"),
        ("[gridding]\nhiden = 64\n", "hiden"),
        ("[encoding]\ndensity_compensation = 0.5\n", "no [gridding] table"),
    ],
)
def test_bad_table_writes_nothing(shipped, tmp_path, capsys, table, message) -> None:
    model, _ = shipped
    before = model.read_bytes(), model.with_suffix(".md").read_text()
    (tmp_path / "g.toml").write_text(table)
    assert tool.main([str(model), "--gridding", str(tmp_path / "g.toml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert (model.read_bytes(), model.with_suffix(".md").read_text()) == before


def test_a_bad_file_among_several_writes_none(shipped, tmp_path, capsys) -> None:
    model, _ = shipped
    before = model.read_bytes()
    other = tmp_path / "other.pt"
    other.write_bytes(b"not a checkpoint")
    (tmp_path / "g.toml").write_text(TABLE)
    rc = tool.main([str(model), str(other), "--gridding", str(tmp_path / "g.toml")])
    assert rc == 2 and "other.pt" in capsys.readouterr().err
    assert model.read_bytes() == before
    missing = tmp_path / "none.toml"
    assert tool.main([str(model), "--gridding", str(missing)]) == 2
    assert "none.toml: no such file" in capsys.readouterr().err


def test_a_card_without_gridding_line_writes_nothing(shipped, tmp_path, capsys) -> None:
    model, _ = shipped
    before = model.read_bytes()
    other = tmp_path / "b" / "spurig-30s.pt"
    other.parent.mkdir()
    shutil.copyfile(model, other)
    card = model.with_suffix(".md").read_text().split("\n")
    other.with_suffix(".md").write_text("\n".join(ln for ln in card if "Gridding" not in ln))
    (tmp_path / "g.toml").write_text(TABLE)
    rc = tool.main([str(model), str(other), "--gridding", str(tmp_path / "g.toml")])
    assert rc == 2 and "no gridding line" in capsys.readouterr().err
    assert model.read_bytes() == before and other.read_bytes() == before
