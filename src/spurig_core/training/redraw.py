"""Training examples whose noise can be re-drawn (issue 13): clean ``A^H b`` plus gridded noise.

A network trained on one noise realisation per subject memorises it (a model trained on 3 fixed
subjects went 23.4 → 28.2 dB on a training subject and peaked at 25.6 held out).  The simulator's
noise is white complex Gaussian in k-space, seeded from the subject's seed
(:func:`spurig_core.simulation.acquire_scan`), so it can be regenerated exactly and removed; iGROG
gridding and ``A^H`` are linear, so

    ``A^H grid(b_clean + n_k) = A^H grid(b_clean) + A^H grid(n_k)``

and a fresh, correctly coloured noise realisation of a subject costs one gridding of ``n_k`` and
one adjoint per duration, done here once for ``draws`` realisations.  White noise added in image
space (measured to hurt) has neither the gridding kernel's nor the density weighting's colour.

On-disk format, next to :mod:`.datasets`' files of the same subject::

    <subject>/noise-<duration>.pt   kind "spurig-noise"
        clean      complex64 (basis, x, y, z)   A^H b of the noise-free data
        draws      complex64 (K, basis, x, y, z) A^H of K gridded noise realisations; draw 0 is
                                                the scan's own noise (clean + draws[0] = the
                                                stored A^H b of dc-<duration>.pt)
        b_norms    float64 (K,)                 ‖W^{1/2} grid(b_clean + n_k)‖₂ (norm matching)
        sigma      float                        the k-space noise standard deviation
        voxel_mm   list of 3 float              the scan's voxel size
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..durations import DURATIONS, groups_for
from ..errors import InputError

__all__ = [
    "NOISE_KIND",
    "NoiseDraws",
    "RedrawConfig",
    "load_noise",
    "prepare_redraw_subject",
    "scan_noise",
]

NOISE_KIND = "spurig-noise"
_CHUNK = 1 << 22  # simulation.scan._add_noise's chunk: the draws must come in the same order


@dataclass(frozen=True)
class RedrawConfig:
    """The ``[redraw]`` table of ``tools/prepare_redraw.py``.

    Attributes
    ----------
    durations : tuple of str
        Durations to prepare (one gridding serves them all).
    draws : int
        Noise realisations per duration (the first is the scan's own).
    seed_base : int
        Seed of ``subj000`` (``simulate-cohort --seed``); subject ``N`` has ``seed_base + N``.
    noise : float
        The cohort's relative noise level (``simulate-cohort --noise``).
    """

    durations: tuple[str, ...] = ("2min", "30s")
    draws: int = 6
    seed_base: int = 1000
    noise: float = 0.02


@dataclass(frozen=True, eq=False)
class NoiseDraws:
    """Clean ``A^H b`` and noise realisations of one subject and duration.

    Attributes
    ----------
    clean : Tensor, shape (basis, x, y, z), complex64
    draws : Tensor, shape (K, basis, x, y, z), complex64
    b_norms : Tensor, shape (K,), float64
    sigma : float
    voxel_mm : list of float, optional
        The scan's voxel size (recorded in the model's training domain).
    gridding : dict, optional
        The GriddingConfig the data were gridded with (recorded in the model, which then grids
        a scan the same way).
    """

    clean: torch.Tensor
    draws: torch.Tensor
    b_norms: torch.Tensor
    sigma: float
    voxel_mm: list[float] | None = None
    gridding: dict[str, Any] | None = None

    def ahb(self, k: int) -> torch.Tensor:
        """``A^H b`` of realisation ``k`` (``k = 0``: the scan's own data)."""
        return self.clean + self.draws[k]


def _unit_draws(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Complex draws of ``simulation.scan._add_noise`` for ``σ = √2`` (unit real/imag parts)."""
    flat = np.empty(int(np.prod(shape)), dtype=np.complex64)
    for i in range(0, flat.size, _CHUNK):
        n = min(_CHUNK, flat.size - i)
        z = rng.standard_normal((2, n), dtype=np.float32)
        flat[i : i + n] = z[0] + 1j * z[1]
    return flat.reshape(shape)


def scan_noise(kspace: torch.Tensor, seed: int, noise: float) -> tuple[torch.Tensor, float]:
    """Return the simulator's own k-space noise of a scan, regenerated from its seed.

    Parameters
    ----------
    kspace : Tensor, shape (coils, groups, tr, samples), complex64
        The noisy k-space of a scan simulated with ``seed`` and relative ``noise``.
    seed : int
        The subject's seed (``simulate-cohort``: base seed + subject number).
    noise : float
        The relative noise level it was simulated with (``SimulationConfig.noise``).

    Returns
    -------
    noise : Tensor, same shape, complex64
    sigma : float
        Its standard deviation per complex sample.
    """
    from ..simulation.scan import scan_seeds

    s_noise = scan_seeds(seed)[2]
    unit = _unit_draws(tuple(kspace.shape), np.random.default_rng(s_noise))
    y0 = kspace[..., 0].numpy().astype(np.complex128)
    u0 = unit[..., 0].astype(np.complex128)
    sigma = noise * float(np.sqrt(np.mean(np.abs(y0) ** 2)))
    for _ in range(4):  # σ is relative to the *clean* centre: a fixed point, 0.02-contractive
        s = np.float32(sigma / math.sqrt(2.0))
        sigma = noise * float(np.sqrt(np.mean(np.abs(y0 - float(s) * u0) ** 2)))
    s = np.float32(sigma / math.sqrt(2.0))
    return torch.from_numpy(unit * s), sigma


def grid_many(
    kspaces: list[torch.Tensor],
    trajectory: torch.Tensor,
    matrix: tuple[int, int, int],
    kernel: Any,
    config: Any,
    extra: int = 0,
    extra_sigma: float = 0.0,
    extra_seed: int = 0,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """:func:`~spurig_core.operators.igrog.grid` of several k-spaces on one trajectory.

    The kernel ``G(d)`` of every sample depends only on the geometry, so it is evaluated once per
    batch of arms and applied to every k-space (and to ``extra`` fresh white-noise k-spaces of
    standard deviation ``extra_sigma``, drawn batch by batch so that they never exist whole):
    the gridding of ``K`` data sets costs about one kernel evaluation instead of ``K``.

    Parameters
    ----------
    kspaces : list of Tensor, shape (coils, groups, tr, samples), complex64
    trajectory : Tensor, shape (groups, tr, samples, 3)
    matrix : tuple of 3 int
    kernel : IGROGKernel
    config : GriddingConfig
    extra : int
        Fresh noise realisations to grid as well.
    extra_sigma : float
        Their standard deviation per complex sample.
    extra_seed : int

    Returns
    -------
    index : Tensor, shape (groups, tr, samples), int64
        Grid point of every sample (as :func:`~spurig_core.operators.igrog.grid`).
    values : list of Tensor, shape (coils, groups, tr, samples), complex64
        The gridded values of ``kspaces``, then of the ``extra`` noise draws.
    """
    from ..operators.grid import grid_shape
    from ..operators.igrog_sources import _flat_arms, find_sources

    coils = int(kspaces[0].shape[0])
    n = kernel.n_sources
    window = int(kernel.config.get("search_window", config.search_window))
    spacing = float(kernel.config.get("source_spacing", 0.0))
    shape = grid_shape(matrix, config.grid_oversampling)
    g_, t_, ns = (int(v) for v in trajectory.shape[:3])
    arms_traj = _flat_arms(trajectory)
    n_arms = arms_traj.shape[0]
    sources = [k.reshape(coils, -1, ns) for k in kspaces]
    index = torch.empty((n_arms, ns), dtype=torch.int64)
    outs = [torch.empty((coils, n_arms, ns), dtype=torch.complex64) for _ in kspaces]
    outs += [torch.empty((coils, n_arms, ns), dtype=torch.complex64) for _ in range(extra)]
    gen = torch.Generator().manual_seed(int(extra_seed))
    per = max(1, config.grid_batch // ns)
    kernel.eval()
    with torch.inference_mode():
        for a0 in range(0, n_arms, per):
            a1 = min(a0 + per, n_arms)
            a = a1 - a0
            idx_b, src, disp = find_sources(
                arms_traj[a0:a1].float(),
                matrix,
                shape,
                n_sources=n,
                search_window=window,
                source_spacing=spacing,
            )
            index[a0:a1] = idx_b
            g = kernel(disp.reshape(-1, n, 3))  # (B, coils, coils·n)
            idx = src.reshape(1, a, -1).expand(coils, -1, -1)
            batches = [k[:, a0:a1] for k in sources]
            batches += [
                torch.randn((coils, a, ns), dtype=torch.complex64, generator=gen) * extra_sigma
                for _ in range(extra)
            ]
            for out, ksp in zip(outs, batches, strict=True):
                gathered = torch.gather(ksp, 2, idx).view(coils, a * ns, n).permute(1, 0, 2)
                val = torch.bmm(g, gathered.reshape(a * ns, -1, 1)).squeeze(-1)
                out[:, a0:a1] = val.T.reshape(coils, a, ns)
    return index.view(g_, t_, ns), [o.view(coils, g_, t_, ns) for o in outs]


def _noise_check(noisy: torch.Tensor, n: torch.Tensor, where: str) -> None:
    """Refuse a regenerated noise that is not the scan's (wrong seed or noise level).

    With the right noise ``‖y‖² − ‖y − n‖² ≈ +‖n‖²``; with an unrelated one ``≈ −‖n‖²``.
    """
    yy = float(torch.linalg.vector_norm(noisy.to(torch.complex128)) ** 2)
    rr = float(torch.linalg.vector_norm((noisy - n).to(torch.complex128)) ** 2)
    nn = float(torch.linalg.vector_norm(n.to(torch.complex128)) ** 2)
    ratio = (yy - rr) / nn if nn > 0 else 0.0
    if not 0.8 < ratio < 1.2:
        raise InputError(
            f"{where}: the regenerated noise does not match the scan (energy ratio {ratio:.2f}, "
            "expected about 1); check --seed and --noise"
        )


def prepare_redraw_subject(
    scan_path: str | Path,
    out_dir: str | Path,
    *,
    seed: int,
    noise: float = 0.02,
    durations: Iterable[str] = ("2min", "30s"),
    draws: int = 6,
    gridding: Any = None,
    encoding: Any = None,
    gridded_out: str | Path | None = None,
) -> dict[str, float]:
    """Prepare one simulated subject with re-drawable noise.

    Writes ``example.pt`` and ``dc-<duration>.pt`` (:mod:`.datasets` format, so the existing stages
    read the subject too; no LLR inputs) and ``noise-<duration>.pt`` (module notes).

    Parameters
    ----------
    scan_path : path-like
        A scan written by ``spurig simulate`` / ``simulate-cohort``.
    out_dir : path-like
        The subject directory.
    seed : int
        The scan's simulation seed.
    noise : float
        Its relative noise level.
    durations : iterable of str
    draws : int
        Noise realisations per duration (the first is the scan's own).
    gridding : GriddingConfig, optional
        iGROG settings (train the kernel once; every duration takes the first groups).  Without
        ``gridded_out`` only the groups of the longest duration are gridded (the noise is still
        regenerated over the whole scan, so it is the scan's own).
    encoding : EncodingConfig, optional
        The DC operator's data term.
    gridded_out : path-like, optional
        Also save the noisy gridded scan there (:func:`spurig_core.benchmark.save_gridded`),
        e.g. ``EVAL/<subject>/gridded.pt`` so that ``tools/evaluate_models.py`` reconstructs the
        test subjects from the same gridding.

    Returns
    -------
    dict
        Timings in seconds: ``kernel_s``, ``grid_s``, ``total_s``.
    """
    from ..config import to_dict
    from ..io import load_scan, save_checkpoint
    from ..metrics import reference_coefficients
    from ..operators.encoding import GriddedSubspaceEncoding
    from ..operators.grid import GriddedData, grid_shape
    from ..operators.igrog import GriddingConfig
    from ..operators.igrog_train import train_kernel
    from ..physics import default_basis
    from ..recon.unrolled import estimate_lipschitz, scaled_init
    from .datasets import DCData, Example, save_example

    t0 = time.perf_counter()
    durs = [str(d) for d in durations]
    for d in durs:
        groups_for(d)
    if draws < 1:
        raise InputError(f"draws: must be at least 1, got {draws}")
    scan = load_scan(scan_path)
    if scan.reference is None or scan.coil_maps is None or scan.calibration is None:
        raise InputError(f"{scan_path}: needs reference/, coil_maps and calibration")
    for d in durs:
        if DURATIONS[d] > scan.n_groups:
            raise InputError(f"{scan_path}: {d} needs {DURATIONS[d]} groups, has {scan.n_groups}")
    gcfg = gridding or GriddingConfig()
    basis = default_basis(scan.sequence).to(torch.complex64)
    target = reference_coefficients(scan.reference, basis, b1=scan.b1, sequence=scan.sequence)
    tissue = scan.reference.tissue.to(torch.uint8)
    n0, sigma = scan_noise(scan.kspace, seed, noise)
    _noise_check(scan.kspace, n0, str(scan_path))
    if 0 < gcfg.max_coils < scan.n_coils:  # compressed as at inference, its noise alike
        from ..operators.coil_maps import compress_scan, compression_matrix

        c = scan.n_coils
        a = compression_matrix(scan.calibration.reshape(c, -1).numpy(), gcfg.max_coils)
        mix = torch.as_tensor(a).to(n0.dtype)
        n0 = (mix @ n0.reshape(c, -1)).reshape(gcfg.max_coils, *n0.shape[1:])
        scan = compress_scan(scan, gcfg.max_coils, matrix=a)
    assert scan.calibration is not None and scan.coil_maps is not None  # compressed, not dropped
    kernel = train_kernel(scan.calibration, scan.trajectory, scan.matrix, config=gcfg)
    need = max(groups_for(d) for d in durs)  # the kernel has seen the whole trajectory, as always
    if gridded_out is None and need < scan.n_groups:  # grid only what the durations take
        scan, n0 = scan.first_groups(need), n0[:, :need]
    assert scan.coil_maps is not None  # first_groups keeps them
    t1 = time.perf_counter()

    index, vals = grid_many(
        [scan.kspace, n0],
        scan.trajectory,
        scan.matrix,
        kernel,
        gcfg,
        extra=draws - 1,
        extra_sigma=sigma,
        extra_seed=int(seed) * 1000 + 13,
    )
    mat = (int(scan.matrix[0]), int(scan.matrix[1]), int(scan.matrix[2]))
    noisy = GriddedData(vals[0], index, grid_shape(mat, gcfg.grid_oversampling), mat)
    clean_vals = vals[0] - vals[1]
    noise_vals = vals[1:]
    t2 = time.perf_counter()
    if gridded_out is not None:
        from ..benchmark import save_gridded

        Path(gridded_out).parent.mkdir(parents=True, exist_ok=True)
        save_gridded(gridded_out, noisy, {"kernel_training_s": t1 - t0, "gridding_s": t2 - t1})
    out = Path(out_dir)
    maps, inputs, dcs = scan.coil_maps, {}, {}
    for d in durs:
        g = groups_for(d)
        sub = noisy.first_groups(g)
        op = GriddedSubspaceEncoding(sub, maps, basis, config=encoding)
        ahb = op.adjoint_data().to(torch.complex64)
        b_norm = op.data_norm()
        x0, s = scaled_init(op, ahb, b_norm)
        lip = estimate_lipschitz(op, ahb, iters=20)
        inputs[f"adjoint-{d}"] = x0
        index = sub.index.to(torch.int32)
        payload = {
            "type": "gridded-subspace",
            "coil_maps": maps,
            "basis": basis,
            "index": index,
            "grid": [int(v) for v in sub.grid],
            "matrix": [int(v) for v in sub.matrix],
            "encoding": to_dict(op.config),
        }
        dcs[d] = DCData(ahb, b_norm, s, lip, payload)
        clean = op.adjoint_data(clean_vals[:, :g]).to(torch.complex64)
        dr = torch.stack([op.adjoint_data(v[:, :g]).to(torch.complex64) for v in noise_vals])
        dr[0] = ahb - clean  # exactly the stored A^H b's noise
        bn = [
            float(
                torch.linalg.vector_norm(
                    op.data_values(clean_vals[:, :g] + v[:, :g]).to(torch.complex128)
                )
            )
            for v in noise_vals
        ]
        out.mkdir(parents=True, exist_ok=True)
        save_checkpoint(
            {
                "kind": NOISE_KIND,
                "version": 1,
                "clean": clean,
                "draws": dr,
                "b_norms": torch.tensor(bn, dtype=torch.float64),
                "sigma": float(sigma),
                # as applied: the kernel above is trained without noise matching
                "gridding": {**to_dict(gcfg), "noise_matched": False},
                "voxel_mm": [
                    float(f) / int(m) for f, m in zip(scan.fov_mm, scan.matrix, strict=True)
                ],
            },
            out / f"noise-{d}.pt",
        )
    ex = Example(
        Path(scan_path).stem,
        target.to(torch.complex64),
        tissue,
        basis,
        scan.sequence,
        inputs,
        dcs,
    )
    save_example(ex, out)
    return {"kernel_s": t1 - t0, "grid_s": t2 - t1, "total_s": time.perf_counter() - t0}


def load_noise(subject_dir: str | Path, duration: str) -> NoiseDraws:
    """Read ``noise-<duration>.pt`` of a subject.

    Raises
    ------
    InputError
        Missing or foreign file, inconsistent shapes.
    """
    from .datasets import load_prepared

    p = Path(subject_dir) / f"noise-{duration}.pt"
    s = load_prepared(p, NOISE_KIND, missing="prepare the subject with tools/prepare_redraw.py")
    clean, dr, bn = s["clean"], s["draws"], s["b_norms"]
    if dr.ndim != 5 or tuple(dr.shape[1:]) != tuple(clean.shape) or bn.shape[0] != dr.shape[0]:
        raise InputError(f"{p}: draws {tuple(dr.shape)} do not fit clean {tuple(clean.shape)}")
    vox = s.get("voxel_mm")
    grid = s.get("gridding")
    # as applied: prepare_redraw_subject trains the kernel without noise matching (files
    # written before it recorded so carry the flag as it was given)
    grid = {**grid, "noise_matched": False} if isinstance(grid, dict) else None
    return NoiseDraws(
        clean, dr, bn, float(s["sigma"]), [float(v) for v in vox] if vox else None, grid
    )
