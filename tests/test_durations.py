"""One duration table (``spurig_core.durations``) read by the CLI, configs, DICOM and plugin."""

from __future__ import annotations

import subprocess
import sys

import pytest

from spurig_core.durations import (
    DURATIONS,
    MODEL_DURATIONS,
    SPEC_DURATIONS,
    duration_name,
    groups_for,
    resolve_groups,
)
from spurig_core.errors import InputError


def test_the_table_and_its_inverse() -> None:
    assert DURATIONS == {"6min": 48, "2min": 16, "1min": 8, "30s": 4, "15s": 2, "7.5s": 1}
    # SPEC §2 / paper 2.4 name the first four; 15 s and 7.5 s (issue 13) add to them, change none
    spec = {"6min": 48, "2min": 16, "1min": 8, "30s": 4}
    assert {d: DURATIONS[d] for d in SPEC_DURATIONS} == spec
    assert list(DURATIONS) == sorted(DURATIONS, key=DURATIONS.__getitem__, reverse=True)
    for name, groups in DURATIONS.items():
        assert groups_for(name) == groups
        assert duration_name(groups) == name
    assert duration_name(12) is None  # exact names only; nearest_duration is the "nearest" rule
    assert set(MODEL_DURATIONS) < set(DURATIONS)
    with pytest.raises(InputError, match="unknown duration '3min'"):
        groups_for("3min")


def test_resolve_groups() -> None:
    assert resolve_groups(48, None, None) == 48
    assert resolve_groups(48, 10, None) == 10
    assert resolve_groups(48, None, "1min") == 8
    with pytest.raises(InputError, match="not both"):
        resolve_groups(48, 4, "30s")
    with pytest.raises(InputError, match="the scan has 8"):
        resolve_groups(8, None, "2min")


def test_every_consumer_reads_the_table() -> None:
    from spurig_core.cli import _parser
    from spurig_core.config import RANGES
    from spurig_core.io_dicom import _duration
    from spurig_core.recon.domain import SHIPPED_DOMAIN

    parser = _parser()
    recon = parser.parse_args(
        ["recon", "s.h5", "o.zarr", "--method", "adjoint", "--duration", "30s"]
    )
    assert recon.duration == "30s"
    cohort = parser.parse_args(["recon-cohort", "c", "o"])
    assert tuple(cohort.durations.split(",")) == MODEL_DURATIONS
    prep = parser.parse_args(["prepare-training", "c", "o"])
    assert tuple(prep.durations.split(",")) == MODEL_DURATIONS[::-1]
    assert set(RANGES["_Common"]["duration"]) == set(DURATIONS)
    assert set(RANGES["RecipeConfig"]["duration"]) == set(DURATIONS)
    assert SHIPPED_DOMAIN["durations"] == list(MODEL_DURATIONS)
    assert _duration(16) == "2min (16 groups)" and _duration(5) == "5 groups"


def test_the_plugin_reads_the_table_without_torch() -> None:
    code = (
        "import sys\n"
        "from napari_spurig._jobs import DURATION_CHOICES, ReconstructParams\n"
        "from spurig_core.durations import DURATIONS\n"
        "assert DURATION_CHOICES == ('all', *DURATIONS, 'groups'), DURATION_CHOICES\n"
        "assert 'torch' not in sys.modules\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
