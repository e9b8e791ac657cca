"""Shared fixtures of the test suite."""

from __future__ import annotations

import os

import pytest
import torch

# Tests run on 2-core machines; keep torch from oversubscribing when several processes run.
torch.set_num_threads(max(1, min(2, int(os.environ.get("SPURIG_TEST_THREADS", "2")))))


@pytest.fixture
def rng() -> torch.Generator:
    """A seeded local torch generator (never the global random state)."""
    return torch.Generator().manual_seed(1234)
