"""Every TOML under ``configs/`` loads with its loader; ``base`` inheritance and its errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from spurig_core.config import check_tables, merge_tables, read_toml
from spurig_core.errors import InputError

CONFIGS = Path(__file__).parents[1] / "configs"
ALL = sorted(CONFIGS.rglob("*.toml"))


def _load(path: Path) -> Any:
    """Load a config the way its command does (by its kind: stage, prepare, recipe, recon)."""
    from spurig_core.overrides import read_overrides, recon_tables
    from spurig_core.training.recipe import load_recipe_config
    from spurig_core.training.redraw import RedrawConfig
    from spurig_core.training.stages import load_stage_config

    stage = next((s for s in ("pretrain", "gleam", "finetune") if path.stem.startswith(s)), None)
    if stage is not None:
        return load_stage_config(stage, path)
    data = read_toml(path)
    if path.stem.startswith("recipe") or "gleam_updates" in data:  # recipe runs (e.g. arm-E-2min)
        return load_recipe_config(path)
    if "redraw" in data:  # tools/prepare_redraw.py
        tables = {**recon_tables(), "redraw": RedrawConfig}
        return check_tables(data, tables, where=f"config {path}")
    return read_overrides(path, prepare=path.stem == "prepare")


def test_the_config_tree_is_found() -> None:
    assert len(ALL) >= 40
    assert any("base" in p.read_text() for p in ALL)


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.relative_to(CONFIGS).as_posix())
def test_every_config_loads_with_its_loader(path: Path) -> None:
    cfg = _load(path)
    assert cfg is not None
    assert "base" not in read_toml(path)
    if hasattr(cfg, "epochs"):
        assert cfg.epochs >= 1


def test_a_shipped_child_config_resolves_its_base_chain() -> None:
    # configs/cpu48dc/gleam-2min.toml -> configs/cpu48/gleam-2min.toml: the child's values win,
    # the rest (including the nested [model.network] table) comes from the base.
    child = read_toml(CONFIGS / "cpu48dc" / "gleam-2min.toml")
    base = read_toml(CONFIGS / "cpu48" / "gleam-2min.toml")
    assert (child["epochs"], child["lr"], child["accumulation"]) == (10, 1e-3, 1)
    assert (base["epochs"], base["lr"], base["accumulation"]) == (8, 5e-4, 2)
    assert child["out_dir"] == "../../runs/cpu48dc/gleam-2min"
    for key in ("duration", "step_weight_ratio", "ssim_weight", "model"):
        assert child[key] == base[key]
    assert child["model"]["network"] == {"dim": 3, "base_width": 16, "conditioned": True}


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_base_merges_tables_key_by_key_relative_to_the_file(tmp_path: Path) -> None:
    _write(tmp_path / "common" / "a.toml", 'x = 1\ny = "a"\n[t]\np = 1\nq = [1, 2]\n[t.u]\nr = 3\n')
    _write(tmp_path / "mid" / "b.toml", 'base = "../common/a.toml"\ny = "b"\n[t.u]\ns = 4\n')
    c = _write(tmp_path / "c.toml", 'base = "mid/b.toml"\n[t]\nq = [9]\n')
    assert read_toml(c) == {"x": 1, "y": "b", "t": {"p": 1, "q": [9], "u": {"r": 3, "s": 4}}}


def test_merge_tables_leaves_its_inputs_alone() -> None:
    base = {"a": {"b": 1}, "c": 2}
    child = {"a": {"d": 3}}
    assert merge_tables(base, child) == {"a": {"b": 1, "d": 3}, "c": 2}
    assert base == {"a": {"b": 1}, "c": 2} and child == {"a": {"d": 3}}


@pytest.mark.parametrize(
    ("files", "needle"),
    [
        ({"a.toml": 'base = "b.toml"\n', "b.toml": 'base = "a.toml"\n'}, "cycle"),
        ({"a.toml": 'base = "a.toml"\n'}, "cycle"),
        ({"a.toml": 'base = "missing.toml"\n'}, "no such file"),
        ({"a.toml": "base = 3\n"}, "must be the path of a TOML file"),
        ({"a.toml": 'base = "b.toml"\n', "b.toml": "x = [\n"}, "not valid TOML"),
    ],
)
def test_bad_base_chains_are_one_line_errors(
    tmp_path: Path, files: dict[str, str], needle: str
) -> None:
    for name, text in files.items():
        _write(tmp_path / name, text)
    with pytest.raises(InputError) as exc:
        read_toml(tmp_path / "a.toml")
    assert needle in str(exc.value)
    assert len(str(exc.value).splitlines()) == 1
