"""``spurig bench``'s time breakdown per method (issue #14): stages present, counted and adding up.

The worker of one method runs in this process on a tiny simulated scan; the call counts are the
oracle (FISTA: one gram and one prox per iteration; the unroll: one gram and one denoiser per
step, one power iteration), and the stage seconds must add up to the measured runtime.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from spurig_core import benchmark
from spurig_core.benchmark import StageClock, format_table
from spurig_core.recon import classical, unrolled
from spurig_core.simulation import simulate

NO_KERNEL = {"gridding": {"learned_kernel": False, "n_sources": 1}, "llr": {"iterations": 4}}


@pytest.fixture(scope="module")
def tiny_scan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("scan") / "tiny.h5"
    return simulate(path, matrix=16, coils=3, groups=4, seed=5, phantom="analytic")


def _check_sums(row: dict) -> None:
    stages = sum(row[k] for k in ("step_size_s", "scale_s", "dc_s", "denoiser_s"))
    algorithm = row["runtime_s"] - row["gridding_s"]
    assert 0 < stages <= algorithm + 1e-6
    assert row["other_s"] == pytest.approx(algorithm - stages, abs=1e-6)
    assert row["matching_s"] > 0


def test_llr_breakdown_counts_and_sums(tiny_scan: Path) -> None:
    row = benchmark._worker(str(tiny_scan), "llr", 4, "cpu", None, config=NO_KERNEL)
    calls = row["stage_calls"]
    assert calls["step_size"] == 1 and calls["scale"] == 1
    assert calls["dc"] == 4 and calls["denoiser"] == 4  # one gram and one prox per iteration
    assert row["step_size_s"] > 0 and row["dc_s"] > 0 and row["denoiser_s"] > 0
    _check_sums(row)
    table = format_table(
        {
            "date": "d",
            "matrix": 16,
            "groups": 4,
            "device": "cpu",
            "machine": {"torch": "t"},
            "rows": [row],
        }
    )
    assert "Where the time goes" in table and f"| llr | {row['kernel_training_s']:.1f} |" in table


def test_unrolled_breakdown_counts_and_sums(tiny_scan: Path) -> None:
    row = benchmark._worker(str(tiny_scan), "spurig", 4, "cpu", None, config=NO_KERNEL)
    assert "error" not in row
    calls = row["stage_calls"]
    assert calls["step_size"] == 1 and calls["scale"] == 1
    from spurig_core.recon.trained import load_method_model

    # per unrolled step: the model's DC steps (2 per block in the v3 models) and one UNet pass;
    # the first DC step takes its gram from the scale's (A^H A x0 = s · A^H A A^H b, issue #14)
    dc_steps = load_method_model(None, method="spurig", duration="30s").network.cfg.dc_steps
    assert calls["dc"] == dc_steps * calls["denoiser"] - 1 and calls["denoiser"] >= 1
    _check_sums(row)


def test_stage_clock_restores_the_functions() -> None:
    before = (unrolled.estimate_lipschitz, classical.lipschitz_constant)
    with StageClock():
        assert unrolled.estimate_lipschitz is not before[0]
    assert (unrolled.estimate_lipschitz, classical.lipschitz_constant) == before
