"""Shipped models: each loads, fits the default sequence, has a card and records its data term."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from spurig_core import physics
from spurig_core.recon.trained import model_encoding, resolve_model, shipped_models
from spurig_core.recon.unrolled_io import load_model

MODELS = shipped_models()


def test_the_four_models_of_issue_5_ship() -> None:
    names = {m.stem for m in MODELS}
    assert {"spurig-2min", "spurig-1min", "spurig-30s", "hybrid-2min"} <= names


@pytest.mark.parametrize("path", MODELS, ids=lambda p: p.stem)
def test_shipped_model_loads_fits_and_has_a_card(path: Path) -> None:
    method, duration = path.stem.split("-", 1)
    basis = physics.default_basis().to(torch.complex64)
    _model, meta = load_model(path, basis=basis)
    assert meta["warning"] is None  # trained for the default sequence
    assert meta["config"].network.dim == (3 if method == "spurig" else 2)
    # the staged recipe's last stage, or one run of the v3 recipe (issue 13)
    assert meta["duration"] == duration and meta["stage"] in ("finetune", "recipe")
    # the unrolled models' data term converges within six steps (γ = 0.75, RESULTS-models.md)
    assert model_encoding(path)["density_compensation"] == 0.75
    assert resolve_model(None, method=method, duration=duration) == path
    card = path.with_suffix(".md").read_text(encoding="utf-8")
    assert "## Measured on the held-out test subjects" in card and "| LLR" in card
    assert path.stat().st_size < 10e6  # the repository stays small


def test_a_reconstruction_reads_its_model_file_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """``load_method_model`` reads the file once and reports the data term it was trained with.

    Issue #14: reading a 7 MB model file a second time for its ``encoding`` entry cost 0.3 s of a
    64³ SPUR-iG reconstruction.
    """
    import spurig_core.io as io
    from spurig_core.recon.trained import load_method_model

    path = resolve_model(None, method="spurig", duration="2min")
    reads: list[str] = []
    real = io.load_checkpoint

    def counted(p: object) -> dict:
        reads.append(str(p))
        return real(p)  # type: ignore[arg-type]

    monkeypatch.setattr(io, "load_checkpoint", counted)
    loaded = load_method_model(None, method="spurig", duration="2min")
    assert reads == [str(path)]
    assert loaded.encoding == model_encoding(path) and loaded.encoding["density_compensation"]
