"""The acquisition simulator: a digital subject scanned with 3D SPI FISP-MRF (paper 2.4, SPEC §3).

By topic, in the order of the data flow:

- :mod:`.phantom`: digital subjects (anatomy, T1/T2/PD, phase, B1);
- :mod:`.coils`: the simulated head receive array (Biot–Savart loops, SVD-compressed);
- :mod:`.trajectory`: the 3D SPI trajectory with tiny-golden-angle shuffling;
- :mod:`.scan_config`: :class:`SimulationConfig`, which ties them together;
- :mod:`.signals`: the true per-voxel time series (EPG) and its high-rank SVD;
- :mod:`.kspace`: the NUFFT forward model of SPEC §3 and the Cartesian calibration;
- :mod:`.scan`: a whole scan in memory (reference maps, noise);
- :mod:`.writers`: scans on disk (``spurig simulate``, ``spurig simulate-cohort``);
- :mod:`.sample`: the sample scan (README, ``spurig demo``, the napari sample).

The public names are re-exported here (``from spurig_core.simulation import simulate_scan``).
"""

from __future__ import annotations

from .coils import CoilConfig
from .kspace import calibration_data, nufft_forward
from .phantom import PhantomConfig, Subject
from .sample import sample_scan_path
from .scan import acquire_scan, effective_reference, scan_of_subject, scan_seeds, simulate_scan
from .scan_config import SimulationConfig
from .signals import signal_subspace
from .trajectory import TrajectoryConfig, spi_trajectory
from .writers import simulate, simulate_cohort

__all__ = [
    "CoilConfig",
    "PhantomConfig",
    "SimulationConfig",
    "Subject",
    "TrajectoryConfig",
    "acquire_scan",
    "calibration_data",
    "effective_reference",
    "nufft_forward",
    "sample_scan_path",
    "scan_of_subject",
    "scan_seeds",
    "signal_subspace",
    "simulate",
    "simulate_cohort",
    "simulate_scan",
    "spi_trajectory",
]
