"""Config round trips through TOML and the command line's error contract (exit 2, one line)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from spurig_core.config import dump_toml, from_dict, load_toml, to_dict
from spurig_core.data import FispSequence, default_flip_angles_deg
from spurig_core.durations import groups_for
from spurig_core.errors import InputError


@dataclass(frozen=True)
class Inner:
    a: int = 1
    b: tuple[float, ...] = (1.0, 2.0)


@dataclass(frozen=True)
class Outer:
    name: str = "x"
    lr: float = 1e-3
    inner: Inner = field(default_factory=Inner)
    opt: int | None = None


def test_config_toml_round_trip(tmp_path: Path) -> None:
    cfg = Outer(name="y", lr=2e-3, inner=Inner(a=3, b=(0.5,)))
    p = tmp_path / "c.toml"
    p.write_text(dump_toml(cfg))
    assert load_toml(Outer, p) == cfg
    assert from_dict(Outer, to_dict(cfg)) == cfg


def test_config_rejects_unknown_and_mistyped() -> None:
    with pytest.raises(InputError, match="unknown field 'nme'"):
        from_dict(Outer, {"nme": "x"})
    with pytest.raises(InputError, match="lr: expected a number"):
        from_dict(Outer, {"lr": "fast"})
    with pytest.raises(InputError, match=r"inner\.a: expected an integer"):
        from_dict(Outer, {"inner": {"a": 1.5}})


def test_default_sequence_matches_spec() -> None:
    fa = default_flip_angles_deg()
    n = np.arange(500)
    assert fa.shape == (500,)
    np.testing.assert_allclose(fa[:200], 10 + 20 * np.sin(np.pi * (n[:200] + 1) / 200), atol=1e-4)
    np.testing.assert_allclose(
        fa[200:400], 90 * np.sin(np.pi * (n[200:400] - 199) / 200), atol=1e-4
    )
    np.testing.assert_allclose(fa[400:], 10)
    seq = FispSequence.default()
    assert (seq.tr_ms, seq.te_ms, seq.ti_ms, seq.rest_s) == (12.5, 1.7, 20.0, 1.2)
    assert seq.same_as(FispSequence.from_dict(seq.to_dict()))
    assert groups_for("2min") == 16 and groups_for("30s") == 4
    with pytest.raises(InputError, match="unknown duration"):
        groups_for("5min")


def _spurig(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "spurig_core.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("recon", "missing.h5", "o.zarr", "--method", "llr"), "missing.h5: no such file"),
        (("recon", "x.h5", "o.zarr", "--method", "magic"), "invalid choice: 'magic'"),
        (("frobnicate",), "invalid choice"),
        (("train", "--stage", "pretrain", "--config", "nope.toml"), "nope.toml: no such file"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(args: tuple[str, ...], needle: str) -> None:
    proc = _spurig(*args)
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) <= 2  # argparse adds a usage line
