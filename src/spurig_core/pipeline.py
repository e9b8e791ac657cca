"""simulate / reconstruct / match / evaluate / train / bench / export / demo: the one entry point
used by the command line and the napari plugin.

Functions here compose the topic modules; they own file handling (read, validate, write
atomically), device selection and progress reporting, nothing else.  Every entry that writes
checks its outputs first (:func:`spurig_core.outputs.check_output`: not an input, writable, not
an existing path of another kind unless ``overwrite=True``).  Heavy modules are imported
inside the functions so that ``import spurig_core`` stays fast.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from . import _checks
from .data import DURATIONS, Result, Scan, groups_for
from .errors import InputError
from .operators.base import LinearOperator
from .operators.grid import GriddedData
from .outputs import check_output
from .overrides import check_overrides, read_overrides
from .progress import Callback, emit

__all__ = [
    "METHODS",
    "bench",
    "demo",
    "evaluate",
    "evaluate_cohort",
    "evaluate_file",
    "export",
    "export_dicom",
    "export_ismrmrd",
    "format_metrics",
    "import_ismrmrd",
    "launch_gui",
    "match",
    "match_file",
    "prepare_training",
    "recon_cohort",
    "recon_file",
    "reconstruct",
    "reference_coefficients",
    "resolve_device",
    "simulate",
    "simulate_cohort",
    "train",
]

#: Reconstruction methods of ``spurig recon --method``.
METHODS = ("spurig", "hybrid", "llr", "llr-nufft", "adjoint")


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
def resolve_device(device: str | torch.device) -> torch.device:
    """Validate a device name; ``cuda`` without a GPU is a clear error, not a crash."""
    name = str(device)
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise InputError(f"unknown device {name!r}: choose cpu or cuda")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device cuda requested but no CUDA device is available")
    return torch.device(name)


def _resolve_groups(scan: Scan, groups: int | None, duration: str | None) -> int:
    if groups is not None and duration is not None:
        raise InputError("give either groups or duration, not both")
    if duration is not None:
        groups = groups_for(duration)
    if groups is None:
        return scan.n_groups
    if not 1 <= groups <= scan.n_groups:
        raise InputError(f"cannot use {groups} groups: the scan has {scan.n_groups}")
    return groups


def _duration_name(groups: int) -> str:
    """The named duration closest to ``groups`` (for LLR thresholds and model choice)."""
    return min(DURATIONS, key=lambda d: abs(DURATIONS[d] - groups))


def _coil_maps(scan: Scan, device: torch.device, callback: Callback | None) -> torch.Tensor:
    if scan.coil_maps is not None:
        return scan.coil_maps.to(device)
    if scan.calibration is None:
        raise InputError(
            f"{scan.path}: neither 'coil_maps' nor 'calibration' present; cannot get coil maps"
        )
    from .operators.coils import espirit

    emit(callback, "espirit", 0, 1, "estimating coil maps (ESPIRiT)")
    maps = espirit(scan.calibration, scan.matrix).to(device)
    emit(callback, "espirit", 1, 1)
    return maps


def _scan_basis(scan: Scan, device: torch.device) -> torch.Tensor:
    from .physics import default_basis

    basis = default_basis(scan.sequence)
    if basis.shape[0] != scan.n_tr:
        raise InputError(
            f"basis has {basis.shape[0]} time points but the scan has {scan.n_tr} repetitions"
        )
    return basis.to(device)


# ----------------------------------------------------------------------------------------------
# simulation
# ----------------------------------------------------------------------------------------------
def simulate(
    out_path: str | Path,
    *,
    matrix: int = 64,
    coils: int = 10,
    groups: int = 48,
    noise: float | None = None,
    seed: int = 0,
    phantom: str = "brain",
    callback: Callback | None = None,
    overwrite: bool = False,
) -> Path:
    """Simulate a digital subject scanned with the full acquisition (``spurig simulate``)."""
    from . import simulation

    _checks.simulate_args(out_path, matrix, coils, groups, noise, seed, phantom, callback)
    check_output(out_path, kind="h5", overwrite=overwrite)
    return simulation.simulate(
        out_path,
        matrix=matrix,
        coils=coils,
        groups=groups,
        noise=noise,
        seed=seed,
        phantom=phantom,
        callback=callback,
    )


def simulate_cohort(
    out_dir: str | Path,
    *,
    subjects: int,
    split: str,
    matrix: int,
    coils: int,
    groups: int,
    noise: float | None,
    seed: int,
    callback: Callback | None = None,
    overwrite: bool = False,
    workers: int | None = None,
    scheduler: str | None = None,
) -> list[Path]:
    """Train/val/test subjects with different seeds (``spurig simulate-cohort``); with
    ``workers`` or ``scheduler``, one task per subject on a dask cluster (:mod:`.cohort`)."""
    from . import simulation

    check_output(out_dir, kind="dir", overwrite=overwrite)
    if workers is not None or scheduler:
        from .cohort import cluster
        from .cohort_jobs import simulate_cohort as cohort_tasks

        with cluster(workers, scheduler) as client:
            return cohort_tasks(
                out_dir,
                subjects=subjects,
                split=split,
                matrix=matrix,
                coils=coils,
                groups=groups,
                noise=noise,
                seed=seed,
                client=client,
                callback=callback,
            )
    return simulation.simulate_cohort(
        out_dir,
        subjects=subjects,
        split=split,
        matrix=matrix,
        coils=coils,
        groups=groups,
        noise=noise,
        seed=seed,
        callback=callback,
    )


# ----------------------------------------------------------------------------------------------
# reconstruction
# ----------------------------------------------------------------------------------------------
def reconstruct(
    scan: Scan | str | Path,
    *,
    method: str,
    groups: int | None = None,
    model: str | Path | None = None,
    device: str = "cpu",
    save_iterations: bool = False,
    callback: Callback | None = None,
    duration: str | None = None,
    config: dict[str, Any] | None = None,
    gridded: GriddedData | None = None,
    on_bad_gridding: str = "warn",
) -> Result:
    """Reconstruct balanced subspace coefficients from a scan (``spurig recon``).

    Parameters
    ----------
    scan : Scan or path-like
        A scan, or the path of one (read with :func:`spurig_core.io.load_scan`).
    method : str
        ``"spurig"``, ``"hybrid"`` (trained models), ``"llr"`` (FISTA-LLR on iGROG-gridded data),
        ``"llr-nufft"`` (FISTA-LLR with finufft) or ``"adjoint"`` (scaled ``A^H b``).
    groups : int, optional
        Use the first ``groups`` groups (default: all); or give ``duration``.
    model : path, optional
        Checkpoint for ``spurig``/``hybrid`` (default: the shipped model for the duration).
    device : str
        ``"cpu"`` or ``"cuda"``.
    save_iterations : bool
        Keep the initialisation and every iterate in ``Result.iterations``.
    callback : callable, optional
        Receives :class:`~spurig_core.progress.ProgressEvent` s; may raise ``Cancelled``.
    config : dict, optional
        Overrides: ``{"gridding": {...}, "encoding": {...}, "llr": {...}}`` fields of the stage
        configs.
    gridded : GriddedData, optional
        The scan already gridded by :func:`~spurig_core.operators.igrog.grid_scan` (at least
        ``groups`` groups): reused instead of training a kernel and gridding again, e.g. to
        compare several methods and durations on one scan.  ``runtime_s`` then excludes gridding
        and ``timings["gridding_reused"]`` is 1.
    on_bad_gridding : {"warn", "fallback", "error"}
        What a gridded method does when the iGROG self-check fails
        (:mod:`spurig_core.operators.igrog_check`): print one warning line and go on, use the
        NUFFT data term instead (``llr`` becomes ``llr-nufft``; ``spurig``/``hybrid`` run their
        network on it), or stop with an error.  The check is kept in ``config["gridding_check"]``.

    Returns
    -------
    Result
        Coefficients ``(basis, x, y, z)``; ``runtime_s`` covers gridding and the algorithm but not
        iGROG kernel training (paper 3.5).
    """
    scan = _checks.reconstruct_args(  # every argument's type and value, and the memory needed
        scan,
        method=method,
        groups=groups,
        duration=duration,
        model=model,
        device=device,
        save_iterations=save_iterations,
        callback=callback,
        config=config,
    )
    if method not in METHODS:
        raise InputError(f"unknown method {method!r}: choose one of {', '.join(METHODS)}")
    if on_bad_gridding not in ("warn", "fallback", "error"):
        raise InputError(f"--on-bad-gridding: {on_bad_gridding!r} is not warn, fallback or error")
    dev = resolve_device(device)
    n_groups = _resolve_groups(scan, groups, duration)
    sub = scan.first_groups(n_groups)
    config = check_overrides(config)  # every table and value, before any work
    ckpt = None
    if method in ("spurig", "hybrid"):  # fail before any gridding work when no model fits
        from .recon.models import resolve_model

        ckpt = resolve_model(model, method=method, duration=_duration_name(n_groups))
    basis = _scan_basis(scan, dev)
    maps = _coil_maps(scan, dev, callback)
    kspace = sub.kspace.to(dev)
    timings: dict[str, float] = {}
    model_info = None
    iterations = None
    cfg_record: dict[str, Any] = {"method": method, "groups": n_groups}

    b: torch.Tensor | None
    op: LinearOperator
    if method in ("adjoint", "llr-nufft"):
        from .config import from_dict, to_dict
        from .operators.encoding import GriddedEncodingConfig, SubspaceNUFFTEncoding

        # the same density-compensated data term as the gridded methods (weights from the
        # samples' nearest points of the same oversampled grid)
        ecfg = from_dict(GriddedEncodingConfig, config.get("encoding") or {}, where="encoding")
        t0 = time.perf_counter()
        nop = SubspaceNUFFTEncoding(
            sub.trajectory.to(dev),
            maps,
            basis,
            density_compensation=ecfg.density_compensation,
            grid_oversampling=float((config.get("gridding") or {}).get("grid_oversampling", 1.5)),
        )
        b = nop.data_values(kspace)
        ahb = nop.adjoint(b)
        op = nop
        cfg_record["encoding"] = to_dict(ecfg)
    else:
        from .config import from_dict, to_dict
        from .operators.encoding import GriddedEncodingConfig, GriddedSubspaceEncoding
        from .operators.igrog import GriddingConfig, grid_scan

        gcfg = from_dict(
            GriddingConfig, {"device": dev.type, **(config.get("gridding") or {})}, where="gridding"
        )
        if gridded is None:
            gridded, grid_times = grid_scan(sub, config=gcfg, callback=callback)
        else:
            if gridded.index.shape[0] < n_groups or tuple(gridded.matrix) != tuple(scan.matrix):
                raise InputError(
                    f"gridded data: {gridded.index.shape[0]} groups of a {gridded.matrix} matrix "
                    f"do not cover {n_groups} groups of this {tuple(scan.matrix)} scan"
                )
            gridded = gridded.first_groups(n_groups)
            grid_times = {"gridding_s": 0.0, "kernel_training_s": 0.0, "gridding_reused": 1.0}
        timings.update(grid_times)
        # The paper's runtime includes gridding but not kernel training (section 3.5).
        t0 = time.perf_counter() - grid_times.get("gridding_s", 0.0)
        enc: dict[str, Any] = {}
        if ckpt is not None:  # a trained model brings the data term it was trained with
            from .recon.models import model_encoding

            enc = model_encoding(ckpt)
        enc.update(config.get("encoding") or {})
        ecfg = from_dict(GriddedEncodingConfig, enc, where="encoding")
        from .operators.igrog_check import apply_gridding_check, nufft_encoding

        bad = apply_gridding_check(gridded, method, on_bad_gridding, cfg_record, callback)
        if bad:  # the self-check failed: the NUFFT data term replaces the gridded one
            method = "llr-nufft" if method == "llr" else method
            op, b, ahb = nufft_encoding(
                sub.trajectory.to(dev),
                maps,
                basis,
                kspace,
                density_compensation=ecfg.density_compensation,
                grid_oversampling=gcfg.grid_oversampling,
            )
        else:
            gop = GriddedSubspaceEncoding(gridded.to(dev), maps, basis, config=ecfg)
            b = None  # the gridded encoding takes its data (and ‖b‖) from its own gridded values
            ahb = gop.adjoint_data()
            op = gop
        cfg_record["gridding"] = to_dict(gcfg)
        cfg_record["encoding"] = to_dict(ecfg)

    if method == "adjoint":
        from .recon.classical import adjoint_recon

        coeffs = adjoint_recon(op, b, ahb=ahb)
        if save_iterations:
            iterations = coeffs[None].clone()
    elif method in ("llr", "llr-nufft"):
        from .recon.classical import llr_recon

        out = llr_recon(
            op,
            b,
            ahb=ahb,
            duration=_duration_name(n_groups),
            overrides=config.get("llr"),
            save_iterations=save_iterations,
            callback=callback,
        )
        coeffs, iterations, cfg_record["llr"] = out.coefficients, out.iterations, out.config
    else:
        from .recon.models import run_unrolled

        assert ckpt is not None
        b_norm = gop.data_norm() if b is None else float(torch.linalg.vector_norm(b))
        unrolled = run_unrolled(
            ckpt,
            op,
            ahb,
            method=method,
            scan=scan,
            basis=basis,
            b_norm=b_norm,
            device=dev,
            save_iterations=save_iterations,
            callback=callback,
        )
        coeffs, iterations = unrolled.coefficients, unrolled.iterations
        model_info = unrolled.model_info
        cfg_record["unroll"] = unrolled.config
        if unrolled.warning:
            cfg_record["warning"] = unrolled.warning
    runtime = time.perf_counter() - t0

    source = None
    if scan.path is not None:
        source = {"path": str(scan.path), "sha256": scan.sha256 or ""}
    return Result(
        coefficients=coeffs.detach().to("cpu", torch.complex64),
        basis=basis.detach().cpu(),
        method=method,
        groups=n_groups,
        runtime_s=runtime,
        device=dev.type,
        voxel_size_mm=scan.voxel_size_mm,
        model=model_info,
        source=source,
        config=cfg_record,
        iterations=None if iterations is None else iterations.detach().cpu(),
        timings=timings,
    )


def recon_file(
    scan_path: str | Path,
    out_path: str | Path,
    *,
    method: str,
    groups: int | None = None,
    duration: str | None = None,
    model: str | Path | None = None,
    device: str = "cpu",
    save_iterations: bool = False,
    config: str | Path | None = None,
    callback: Callback | None = None,
    overwrite: bool = False,
    on_bad_gridding: str = "warn",
) -> Result:
    """``spurig recon``: read and validate, reconstruct, write the zarr result atomically."""
    from .io import load_scan

    out = Path(out_path)
    if out.suffix != ".zarr":
        raise InputError(f"{out}: the result must be a .zarr directory")
    check_output(out, kind="zarr", inputs=(scan_path, model, config), overwrite=overwrite)
    overrides = read_overrides(config)
    if model is not None and not Path(model).exists():
        raise InputError(f"model {model}: no such file")
    scan = load_scan(scan_path)
    result = reconstruct(
        scan,
        method=method,
        groups=groups,
        duration=duration,
        model=model,
        device=device,
        save_iterations=save_iterations,
        callback=callback,
        config=overrides,
        on_bad_gridding=on_bad_gridding,
    )
    result.save(out)
    return result


# ----------------------------------------------------------------------------------------------
# matching and evaluation
# ----------------------------------------------------------------------------------------------
def match(
    result: Result | str | Path,
    scan: Scan | str | Path | None = None,
    *,
    device: str = "cpu",
    callback: Callback | None = None,
) -> Result:
    """B1-corrected dictionary matching: the result with ``t1_ms``, ``t2_ms`` and ``pd`` added.

    The scan supplies the B1 map (when it has one) and the sequence; without a scan the default
    sequence and B1 = 1 are used.  ``result`` and ``scan`` may be paths (they are loaded).
    """
    from .data import Sequence
    from .matching import match_maps

    result, scan = _checks.match_args(result, scan, device)
    dev = resolve_device(device)
    b1 = scan.b1 if scan is not None else None
    sequence = scan.sequence if scan is not None else Sequence.default()
    maps = match_maps(
        result.coefficients, result.basis, b1=b1, sequence=sequence, device=dev, callback=callback
    )
    return result.replace(t1_ms=maps.t1_ms.cpu(), t2_ms=maps.t2_ms.cpu(), pd=maps.pd.cpu())


def match_file(
    result_path: str | Path,
    *,
    scan: str | Path | None = None,
    device: str = "cpu",
    callback: Callback | None = None,
) -> Result:
    """``spurig match``: add T1/T2/PD maps to a result store (rewritten atomically)."""
    from .io import load_result, load_scan

    result = load_result(result_path)
    check_output(result_path, kind="zarr", inputs=(scan,))  # rewritten in place
    scan_obj = None
    if scan is not None:
        scan_obj = load_scan(scan)
    elif result.source and Path(result.source.get("path", "")).exists():
        scan_obj = load_scan(result.source["path"])
    matched = match(result, scan_obj, device=device, callback=callback)
    matched.save(result_path)
    return matched


def reference_coefficients(scan: Scan) -> torch.Tensor:
    """Reference coefficients ``Φ̃^H (pd · signal(t1, t2, b1))`` of a simulated scan (SPEC §5)."""
    from .metrics import reference_coefficients as _ref

    if scan.reference is None:
        raise InputError(f"{scan.path}: the scan has no reference/ (ground truth)")
    return _ref(
        scan.reference, _scan_basis(scan, torch.device("cpu")), b1=scan.b1, sequence=scan.sequence
    )


def evaluate(result: Result | str | Path, scan: Scan | str | Path) -> dict[str, Any]:
    """The metrics of SPEC §5 for ``result`` against the scan's reference (paths are loaded)."""
    from .metrics import evaluate as _evaluate

    return _evaluate(*_checks.evaluate_args(result, scan))


def evaluate_file(
    result_path: str | Path,
    scan_path: str | Path,
    *,
    json_path: str | Path | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """``spurig evaluate``: metrics, optionally written as JSON (atomically)."""
    import json

    from .io import atomic_path, load_result, load_scan

    if json_path is not None:
        check_output(json_path, kind="json", inputs=(result_path, scan_path), overwrite=overwrite)
    metrics = evaluate(load_result(result_path, lazy=True), load_scan(scan_path))
    if json_path is not None:
        with atomic_path(json_path) as tmp:
            tmp.write_text(json.dumps(metrics, indent=2))
    return metrics


def format_metrics(metrics: dict[str, Any]) -> str:
    """A printable table of :func:`evaluate`'s metrics."""
    from .metrics import format_metrics as _fmt

    return _fmt(metrics)


def evaluate_cohort(
    results_dir: str | Path,
    *,
    out_dir: str | Path,
    callback: Callback | None = None,
    overwrite: bool = False,
    workers: int | None = None,
    scheduler: str | None = None,
) -> Path:
    """``spurig evaluate-cohort``: Tables 1–2, p-values and figures over many results (with
    ``workers``/``scheduler``: one task per result folder on a dask cluster, :mod:`.cohort`)."""
    from .cohort import cluster
    from .report import evaluate_cohort as _cohort

    check_output(out_dir, kind="dir", inputs=(results_dir,), overwrite=overwrite)
    with cluster(workers, scheduler) as client:
        return _cohort(results_dir, out_dir, callback=callback, client=client)


def recon_cohort(
    cohort_dir: str | Path,
    out_dir: str | Path,
    *,
    methods: tuple[str, ...] = ("spurig", "llr", "adjoint"),
    durations: tuple[str, ...] = ("2min", "1min", "30s"),
    config: str | Path | None = None,
    match: bool = True,
    callback: Callback | None = None,
    overwrite: bool = False,
    workers: int | None = None,
    scheduler: str | None = None,
) -> list[Path]:
    """``spurig recon-cohort``: every scan × method × duration, serially or as dask tasks.

    See :mod:`spurig_core.cohort_jobs` for the layout; returns every result store.
    """
    from .cohort import cluster
    from .cohort_jobs import recon_cohort as _recon

    check_output(out_dir, kind="dir", inputs=(cohort_dir, config), overwrite=overwrite)
    overrides = check_overrides(read_overrides(config))
    with cluster(workers, scheduler) as client:
        return _recon(
            cohort_dir,
            out_dir,
            methods=methods,
            durations=durations,
            overrides=overrides,
            match=match,
            client=client,
            callback=callback,
        )


# ----------------------------------------------------------------------------------------------
# training, benchmark, export, demo, GUI
# ----------------------------------------------------------------------------------------------
def prepare_training(
    cohort_dir: str | Path,
    out_dir: str | Path,
    *,
    durations: tuple[str, ...] = ("30s", "1min", "2min"),
    splits: tuple[str, ...] = ("train", "val", "test"),
    config: str | Path | None = None,
    callback: Callback | None = None,
    overwrite: bool = False,
    workers: int | None = None,
    scheduler: str | None = None,
) -> list[Path]:
    """``spurig prepare-training``: one training example per cohort subject (resumable).

    For every ``COHORT_DIR/<split>/*.h5`` writes ``OUT_DIR/<split>/<stem>/`` (target coefficients,
    tissue, scaled ``A^H b`` and FISTA-LLR inputs per duration, and the gridded DC data), skipping
    subjects already prepared.  ``config`` may hold ``[gridding]``, ``[encoding]`` and ``[llr]``
    tables, and a ``[inputs]`` table whose ``llr_from`` names an earlier prepared directory whose
    ``llr-<duration>`` inputs are reused (relative to the config file): re-preparing a cohort for
    a model with another data term then costs the gridding only.  With ``workers`` or
    ``scheduler`` every subject is a task on a dask cluster (:mod:`.cohort`).
    """
    from .config import from_dict
    from .operators.encoding import GriddedEncodingConfig
    from .operators.igrog import GriddingConfig
    from .recon.llr import LLRConfig

    overrides = read_overrides(config, prepare=True)
    gcfg = from_dict(GriddingConfig, overrides.get("gridding", {}), where="gridding")
    ecfg = from_dict(GriddedEncodingConfig, overrides.get("encoding", {}), where="encoding")
    lcfg = from_dict(LLRConfig, overrides.get("llr", {}), where="llr")
    llr_from: Path | None = None
    if overrides.get("inputs", {}).get("llr_from"):
        llr_from = Path(str(config)).parent / str(overrides["inputs"]["llr_from"])
        if not llr_from.is_dir():
            raise InputError(f"config [inputs] llr_from: {llr_from} is not a directory")
    check_output(out_dir, kind="dir", inputs=(cohort_dir, config, llr_from), overwrite=overwrite)
    for d in durations:
        groups_for(d)
    scans: list[tuple[str, Path]] = []
    for split in splits:
        if split not in ("train", "val", "test"):
            raise InputError(f"--splits: unknown split {split!r} (train, val, test)")
        scans += [(split, p) for p in sorted((Path(cohort_dir) / split).glob("*.h5"))]
    if not scans:
        raise InputError(f"{cohort_dir}: no <split>/*.h5 scans (run spurig simulate-cohort)")
    from .cohort import cluster
    from .cohort_jobs import prepare_cohort

    with cluster(workers, scheduler) as client:
        return prepare_cohort(
            scans,
            out_dir,
            durations=durations,
            configs=(gcfg, lcfg, ecfg),
            llr_from=llr_from,
            client=client,
            callback=callback,
        )


def train(
    stage: str,
    config: str | Path,
    *,
    resume: bool = False,
    callback: Callback | None = None,
    overwrite: bool = False,
) -> Path:
    """``spurig train``: run one training stage from a TOML config (all checked before work)."""
    from .config import read_toml
    from .training.stages import load_stage_config, run_stage

    read_toml(config)  # one line for a missing, folder, binary or non-UTF-8 file
    cfg = load_stage_config(stage, config)  # every key and value
    base = Path(config).parent  # relative paths are relative to the config file
    init = base / cfg.init if cfg.init else None
    inputs = (base / cfg.data_dir, init, config)
    check_output(base / cfg.out_dir, kind="dir", inputs=inputs, overwrite=overwrite)
    return run_stage(stage, config, resume=resume, callback=callback)


def bench(
    *,
    matrix: int,
    groups: int,
    device: str,
    scan: str | Path | None,
    methods: tuple[str, ...],
    out: str | Path | None,
    callback: Callback | None = None,
    overwrite: bool = False,
) -> str:
    """``spurig bench``: the methods on one scan, side by side, as seconds and ratios.

    Returns the Markdown table (also written to ``out`` when given, atomically).
    """
    from .benchmark import bench as _bench
    from .benchmark import format_table
    from .io import atomic_path

    resolve_device(device)
    if out is not None:
        check_output(out, kind="text", inputs=(scan,), overwrite=overwrite)
    report = _bench(
        matrix=matrix, groups=groups, device=device, scan=scan, methods=methods, callback=callback
    )
    table = format_table(report)
    if out is not None:
        with atomic_path(out) as tmp:
            tmp.write_text(table + "\n")
    return table


def export(result_path: str | Path, out_dir: str | Path, *, overwrite: bool = False) -> list[Path]:
    """``spurig export``: NIfTI maps and coefficient magnitudes."""
    from .report import export_result

    check_output(out_dir, kind="dir", inputs=(result_path,), overwrite=overwrite)
    return export_result(result_path, out_dir)


def import_ismrmrd(raw_path: str | Path, out_path: str | Path, **options: Any) -> Any:
    """``spurig import-ismrmrd``: see :func:`spurig_core.exchange.import_ismrmrd`."""
    from . import exchange

    return exchange.import_ismrmrd(raw_path, out_path, **options)


def export_ismrmrd(scan_path: str | Path, out_path: str | Path, **options: Any) -> Path:
    """``spurig export-ismrmrd``: see :func:`spurig_core.exchange.export_ismrmrd`."""
    from . import exchange

    return exchange.export_ismrmrd(scan_path, out_path, **options)


def export_dicom(result_path: str | Path, out_dir: str | Path, **options: Any) -> list[Path]:
    """``spurig export-dicom``: see :func:`spurig_core.exchange.export_dicom`."""
    from . import exchange

    return exchange.export_dicom(result_path, out_dir, **options)


def demo(
    out_dir: str | Path,
    *,
    tiny: bool = False,
    callback: Callback | None = None,
    overwrite: bool = False,
) -> str:
    """``spurig demo``: grid, reconstruct (SPUR-iG and LLR), match, evaluate, figures, report."""
    from .demo import run_demo

    check_output(out_dir, kind="dir", overwrite=overwrite)
    return run_demo(out_dir, tiny=tiny, callback=callback)


def launch_gui(files: list[str]) -> None:
    """``spurig gui``: napari with the plugin's widgets docked and ``files`` opened."""
    from napari_spurig import launch  # raises NotAvailableError without napari or Qt

    launch(files)
