"""The one entry point used by the command line and the napari plugin.

simulate / reconstruct / match / evaluate / train / bench / export / demo.

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
from .data import Result, Scan
from .durations import MODEL_DURATIONS, groups_for, nearest_duration, resolve_groups
from .errors import InputError
from .operators.grid import GriddedData
from .outputs import check_output
from .overrides import check_overrides, read_overrides, read_prepare_config
from .progress import Callback
from .recon.data_term import coil_maps, scan_basis
from .recon.methods import NAMES

__all__ = [
    "METHODS",
    "bench",
    "demo",
    "evaluate",
    "evaluate_cohort",
    "evaluate_file",
    "export",
    "format_metrics",
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

#: Reconstruction methods of ``spurig recon --method`` (the registry's names, SPEC §2 order).
METHODS = NAMES


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
    """Simulate train/val/test subjects with different seeds (``spurig simulate-cohort``).

    One task per subject, serially or, with ``workers`` or ``scheduler``, on a dask cluster
    (:mod:`.cohort`); either way each task runs with the same pinned threads, so both give the
    same bits.
    """
    from .cohort import cluster
    from .cohort_jobs import simulate_cohort as cohort_tasks

    check_output(out_dir, kind="dir", overwrite=overwrite)
    with cluster(workers, scheduler) as client:
        return cohort_tasks(
            out_dir,
            client=client,
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

    The steps: check every argument; read the model once (methods with a model); build the data
    term the method asks for (:func:`~spurig_core.recon.data_term.build_data_term`: grid or
    reuse a gridding, self-check, operator, ``A^H b``, ``‖b‖``); run the method's registry entry
    (:mod:`spurig_core.recon.methods`); wrap the result.

    Parameters
    ----------
    scan : Scan or path-like
        A scan, or the path of one (read with :func:`spurig_core.io.load_scan`).
    method : str
        A name of :data:`spurig_core.recon.methods.METHODS`: ``"spurig"``, ``"hybrid"`` (trained
        models), ``"dc-only"`` (the SPUR-iG unroll's DC steps, identity denoiser), ``"llr"``
        (FISTA-LLR on iGROG-gridded data), ``"llr-nufft"`` (FISTA-LLR with finufft) or
        ``"adjoint"`` (scaled ``A^H b``).
    groups : int, optional
        Use the first ``groups`` groups (default: all); or give ``duration``.
    model : path, optional
        Checkpoint for ``spurig``/``hybrid``/``dc-only`` (default: the shipped model of the
        method's family for the duration nearest ``groups``).
    device : str
        ``"cpu"`` or ``"cuda"``.
    save_iterations : bool
        Keep the initialisation and every iterate in ``Result.iterations``.
    callback : callable, optional
        Receives :class:`~spurig_core.progress.ProgressEvent` s; may raise ``Cancelled``.
    duration : str, optional
        A named duration instead of ``groups``.
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
        NUFFT data term instead (``llr`` becomes ``llr-nufft``; ``spurig``/``hybrid``/``dc-only``
        run on it), or stop with an error.  The check is kept in ``config["gridding_check"]``.

    Returns
    -------
    Result
        Coefficients ``(basis, x, y, z)``; ``runtime_s`` covers gridding and the algorithm but not
        iGROG kernel training (paper 3.5).
    """
    from .recon.data_term import RunContext, build_data_term, virtual_coils_for
    from .recon.methods import get_method, method_gridding
    from .recon.trained import load_method_model

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
    entry = get_method(method)
    if on_bad_gridding not in ("warn", "fallback", "error"):
        raise InputError(f"--on-bad-gridding: {on_bad_gridding!r} is not warn, fallback or error")
    dev = resolve_device(device)
    n_groups = resolve_groups(scan.n_groups, groups, duration)
    named = nearest_duration(n_groups)
    config = check_overrides(config)  # every table and value, before any work
    acquired = scan  # its path and checksum go into the result
    scan, coil_record = virtual_coils_for(scan, config, callback)  # > 16 channels (issue #20)
    basis = scan_basis(scan, dev)
    loaded = None  # the model is read once, and checked before any gridding work
    if entry.needs_model:
        loaded = load_method_model(
            model,
            method=entry.name,
            duration=named,
            basis=basis,
            sequence=scan.sequence,
            flips=int(config.get("denoiser", {}).get("flips", 0)),
        )
        _domain_warning(loaded, scan, named, n_groups)
    maps = coil_maps(scan, dev, callback)
    term = build_data_term(
        entry.data_term,
        scan.first_groups(n_groups),
        maps,
        basis,
        overrides=config,
        encoding=None if loaded is None else loaded.encoding,
        # the method's own grid, then the model's training data's settings (the user's on top)
        gridding={**method_gridding(entry.name), **((loaded and loaded.gridding) or {})},
        gridded=gridded,
        method=entry.name,
        on_bad_gridding=on_bad_gridding,
        callback=callback,
    )
    if entry.gridded and term.kind != "gridded":  # the self-check failed: NUFFT fallback
        entry = get_method(entry.fallback or entry.name)
    ctx = RunContext(named, config, loaded, scan, basis, dev, save_iterations, callback)
    from .recon.inference import network_autocast  # bf16 UNet where native (issue #14)

    with network_autocast(dev, enabled=entry.needs_model):
        out = entry.runner()(term, ctx)
    runtime = time.perf_counter() - term.started
    record = {"method": method, "groups": n_groups, **coil_record, **term.record, **out.record}
    return out.to_result(
        acquired, entry.name, n_groups, basis, dev.type, runtime, record, term.timings
    )


def _domain_warning(loaded: Any, scan: Scan, duration: str, groups: int | None = None) -> None:
    """Add one line to the model's warning when the scan is outside its training domain."""
    from .recon.domain import check_domain

    vox = tuple(float(f) / int(m) for f, m in zip(scan.fov_mm, scan.matrix, strict=True))
    line = check_domain(
        loaded.meta,
        matrix=scan.matrix,
        voxel_mm=vox,
        duration=duration,
        where=str(loaded.path),
        groups=groups,
    )
    if line:
        old = loaded.meta.get("warning")
        loaded.meta["warning"] = f"{old}; {line}" if old else line


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
    from .data import FispSequence
    from .matching import match_maps

    result, scan = _checks.match_args(result, scan, device)
    dev = resolve_device(device)
    b1 = scan.b1 if scan is not None else None
    sequence = scan.sequence if scan is not None else FispSequence.default()
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
    """Return reference coefficients ``Φ̃^H (pd · signal(t1, t2, b1))`` of a simulated scan."""
    from .metrics import reference_coefficients as _ref

    if scan.reference is None:
        raise InputError(f"{scan.path}: the scan has no reference/ (ground truth)")
    return _ref(
        scan.reference, scan_basis(scan, torch.device("cpu")), b1=scan.b1, sequence=scan.sequence
    )


def evaluate(result: Result | str | Path, scan: Scan | str | Path) -> dict[str, Any]:
    """Return the metrics of SPEC §5 for ``result`` against the scan's reference (paths loaded)."""
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
    """Return a printable table of :func:`evaluate`'s metrics."""
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
    """Make Tables 1–2, p-values and figures over many results (``spurig evaluate-cohort``).

    With ``workers``/``scheduler``: one task per result folder on a dask cluster
    (:mod:`.cohort`).
    """
    from .cohort import cluster
    from .report import evaluate_cohort as _cohort

    check_output(out_dir, kind="dir", inputs=(results_dir,), overwrite=overwrite)
    with cluster(workers, scheduler) as client:
        return _cohort(results_dir, out_dir, callback=callback, client=client)


def recon_cohort(
    cohort_dir: str | Path,
    out_dir: str | Path,
    *,
    methods: tuple[str, ...] = ("spurig", "dc-only", "llr", "adjoint"),
    durations: tuple[str, ...] = MODEL_DURATIONS,
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
# training, benchmark, export, demo (ISMRMRD/DICOM exchange: :mod:`spurig_core.exchange`)
# ----------------------------------------------------------------------------------------------
def prepare_training(
    cohort_dir: str | Path,
    out_dir: str | Path,
    *,
    durations: tuple[str, ...] = MODEL_DURATIONS[::-1],
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
    configs, llr_from = read_prepare_config(config)
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
            configs=configs,
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
    gram_repeats: int = 3,
) -> str:
    """``spurig bench``: the methods on one scan, side by side, as seconds and ratios.

    ``gram_repeats`` timed gram applications per operator (0: no gram micro-benchmark).
    Returns the Markdown table (also written to ``out`` when given, atomically).
    """
    from .benchmark import bench as _bench
    from .benchmark import format_table
    from .io import atomic_path

    resolve_device(device)
    if out is not None:
        check_output(out, kind="text", inputs=(scan,), overwrite=overwrite)
    report = _bench(
        matrix=matrix,
        groups=groups,
        device=device,
        scan=scan,
        methods=methods,
        callback=callback,
        gram_repeats=gram_repeats,
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
