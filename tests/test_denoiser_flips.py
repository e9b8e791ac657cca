"""``[denoiser] flips``: a trained model's denoisers averaged over axis flips at reconstruction.

Contract: a recon config's ``[denoiser]`` table reaches the network (the result records it and
the coefficients change), a count the network cannot take is one line before any work (the API,
and ``spurig recon --config`` with exit status 2), and a 2D (hybrid) model refuses any flips.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from spurig_core.errors import InputError
from spurig_core.pipeline import reconstruct
from spurig_core.recon.trained import load_method_model
from spurig_core.simulation import simulate


@pytest.fixture(scope="module")
def scan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("flips")
    return simulate(root / "s.h5", matrix=16, coils=2, groups=4, seed=1, phantom="analytic")


def test_flips_reach_the_shipped_network_and_change_the_result(scan: Path) -> None:
    plain = reconstruct(scan, method="spurig", duration="30s")
    two = reconstruct(scan, method="spurig", duration="30s", config={"denoiser": {"flips": 2}})
    assert plain.config["unroll"]["network"]["flips"] == 1  # the file's own setting
    assert two.config["unroll"]["network"]["flips"] == 2
    diff = (two.coefficients - plain.coefficients).abs().max()
    assert float(diff) > 1e-3 * float(plain.coefficients.abs().max())
    assert bool(torch.isfinite(torch.view_as_real(two.coefficients)).all())


def test_the_loaded_network_takes_the_count_and_2d_refuses_it() -> None:
    loaded = load_method_model(None, method="spurig", duration="30s", flips=4)
    assert loaded.network.cfg.network.flips == 4
    assert {d.cfg.flips for d in loaded.network.denoisers} == {4}
    assert loaded.meta["config"].network.flips == 4
    with pytest.raises(InputError, match=r"\[denoiser\].*flips: must be 1 \(2D\)"):
        load_method_model(None, method="hybrid", duration="2min", flips=2)


@pytest.mark.parametrize("bad", [3, -1, 16, 2.5, "2"])
def test_a_bad_count_is_refused_before_any_work(scan: Path, bad: object) -> None:
    with pytest.raises(InputError, match="flips"):
        reconstruct(scan, method="spurig", duration="30s", config={"denoiser": {"flips": bad}})


RECON_ARGS = ("--method", "spurig", "--duration", "30s", "--config")


def test_the_cli_refuses_a_bad_count_with_one_line(scan: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[denoiser]\nflips = 3\n")
    out = tmp_path / "o.zarr"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "spurig_core.cli",
            "recon",
            str(scan),
            str(out),
            *RECON_ARGS,
            str(cfg),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "flips" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists()
