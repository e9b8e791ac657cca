"""The cohort commands as :class:`~spurig_core.cohort.Task` s: simulate, prepare, reconstruct.

Each function takes an optional ``client`` (a ``distributed.Client`` from
:func:`spurig_core.cohort.cluster`; ``None`` runs serially), makes tasks only for outputs that do
not exist yet (reruns skip finished work), and returns the outputs.  ``evaluate-cohort`` is
:func:`spurig_core.report.evaluate_cohort` with the same ``client``.

``recon-cohort`` layout
-----------------------
Every ``*.h5`` scan under ``DIR`` (any depth, sorted) is one subject, named by its file stem.  For
each subject: ``OUT/<subject>/gridded.pt`` (the whole scan gridded once with iGROG, one task,
shared by the gridded methods on the default grid, ``spurig``, ``hybrid``, ``dc-only``; LLR's 2×
grid is ``gridded-os2.pt``; a shorter duration takes its first groups, as in
``tools/evaluate_models.py``) and one task per method writing
``OUT/<subject>/<method>-<duration>.zarr`` for every duration, matched (T1, T2, PD) unless
``match=False``.  Runtimes in these stores exclude the shared gridding (``timings`` says so);
``spurig bench`` measures runtimes.  ``spurig evaluate-cohort OUT`` makes Tables 1–2 from them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .cohort import Task, run_tasks
from .durations import DURATIONS, groups_for
from .errors import InputError
from .progress import Callback
from .recon.methods import METHODS

__all__ = ["gridded_name", "prepare_cohort", "recon_cohort", "scan_memory", "simulate_cohort"]


def scan_memory(path: Path, method: str, groups: int) -> float:
    """Estimate the peak bytes of reconstructing the scan at ``path``; 0 if it is unreadable.

    The estimate is for ``groups`` groups with ``method``
    (:func:`spurig_core.memory.recon_estimates`, from the file's shapes alone).
    """
    import h5py

    from .memory import recon_estimates

    try:
        with h5py.File(path, "r") as f:
            coils, _, tr, samples = (int(n) for n in f["kspace"].shape)
            matrix = [int(n) for n in f.attrs["matrix"]]
            espirit = "coil_maps" not in f
    except (OSError, KeyError, ValueError, TypeError):
        return 0.0  # the task itself reports the unreadable file, naming it
    steps = recon_estimates(
        method=method,
        matrix=matrix,
        coils=coils,
        groups=groups,
        tr=tr,
        samples=samples,
        espirit=espirit,
    )
    return max(need for _, need in steps)


# ----------------------------------------------------------------------------------------------
# simulate-cohort
# ----------------------------------------------------------------------------------------------
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
    client: Any = None,
    callback: Callback | None = None,
) -> list[Path]:
    """:func:`spurig_core.simulation.simulate_cohort` with one task per subject."""
    from .simulation import writers

    counts = writers._split(split, subjects)  # the same check and layout as serially
    parts = zip(("train", "val", "test"), counts, strict=True)
    names = [part for part, n in parts for _ in range(n)]
    out = Path(out_dir)
    paths: list[Path] = []
    tasks: list[Task] = []
    options = {"matrix": matrix, "coils": coils, "groups": groups, "noise": noise}
    for i, part in enumerate(names):
        path = out / part / f"subj{i:03d}.h5"
        paths.append(path)
        if not path.exists():
            kw = {**options, "seed": seed + i}
            tasks.append(Task(f"{part}/{path.stem}", writers.simulate, (path,), kw))
    run_tasks(tasks, client, callback=callback, stage="cohort")
    return paths


# ----------------------------------------------------------------------------------------------
# prepare-training
# ----------------------------------------------------------------------------------------------
def _prepare_one(
    scan_path: Path,
    dest: Path,
    durations: tuple[str, ...],
    configs: tuple[Any, Any, Any],
    llr_from: Path | None,
) -> Path:
    from .training.datasets import load_example, prepare_subject

    if (dest / "example.pt").exists():
        return dest
    reuse = None
    if llr_from is not None:
        old = load_example(llr_from)
        reuse = {k: v for k, v in old.inputs.items() if k.startswith("llr-")}
    gridding, llr, encoding = configs
    return prepare_subject(
        scan_path,
        dest,
        durations,
        gridding=gridding,
        llr=llr,
        encoding=encoding,
        llr_inputs=reuse,
    )


def prepare_cohort(
    scans: list[tuple[str, Path]],
    out_dir: str | Path,
    *,
    durations: tuple[str, ...],
    configs: tuple[Any, Any, Any],
    llr_from: Path | None = None,
    client: Any = None,
    callback: Callback | None = None,
) -> list[Path]:
    """One task per subject of ``spurig prepare-training`` (``example.pt`` is written last).

    Parameters
    ----------
    scans : list of (split, scan path)
    out_dir : path-like
    durations : tuple of str
    configs : (GriddingConfig, LLRConfig, EncodingConfig)
    llr_from : Path, optional
        An earlier prepared folder whose ``llr-<duration>`` inputs are reused.
    """
    longest = max(groups_for(d) for d in durations)
    done: list[Path] = []
    tasks: list[Task] = []
    for split, scan_path in scans:
        dest = Path(out_dir) / split / scan_path.stem
        done.append(dest)
        if (dest / "example.pt").exists():
            continue
        reuse = llr_from / split / scan_path.stem if llr_from is not None else None
        tasks.append(
            Task(
                f"{split}/{scan_path.stem}",
                _prepare_one,
                (scan_path, dest, durations, configs, reuse),
                memory=scan_memory(scan_path, "llr", longest),
            )
        )
    run_tasks(tasks, client, callback=callback, stage="prepare")
    return done


# ----------------------------------------------------------------------------------------------
# recon-cohort
# ----------------------------------------------------------------------------------------------
def _grid_one(
    scan_path: Path,
    cache: Path,
    gridding: dict[str, Any],
    steps: tuple[tuple[str, ...], tuple[str, ...], dict[str, Any]] | None = None,
) -> Path:
    """Grid the whole scan once and cache it (atomically) for the subject's gridded methods.

    ``steps = (methods, durations, overrides)``: the step sizes those reconstructions read
    (:func:`~.operators.step_size.step_plan`) are computed and cached with the gridding.
    """
    from .benchmark import save_gridded
    from .config import from_dict
    from .io import load_scan
    from .operators.coil_maps import virtual_coils
    from .operators.igrog import GriddingConfig, grid_scan
    from .operators.step_size import attach_for_scan, step_plan

    if cache.exists():
        return cache
    gcfg = from_dict(GriddingConfig, {"device": "cpu", **gridding}, where="gridding")
    scan = virtual_coils(load_scan(scan_path), gcfg.max_coils)  # as reconstruct() will
    gridded, times = grid_scan(scan, config=gcfg)
    if steps is not None:  # ‖A^H A‖₂ of every gridded term to come, kept in the cache (#14)
        methods, durations, overrides = steps
        plan = step_plan(methods, [groups_for(d) for d in durations], overrides=overrides)
        times.update(attach_for_scan(gridded, scan, plan))
    cache.parent.mkdir(parents=True, exist_ok=True)
    return save_gridded(cache, gridded, times)


def gridded_name(settings: dict[str, Any]) -> str:
    """``gridded.pt`` for the default grid, ``gridded-os2.pt`` for a 2× grid, and so on."""
    from .operators.grid import GRID_OVERSAMPLING

    over = float(settings.get("grid_oversampling", GRID_OVERSAMPLING))
    return "gridded.pt" if over == GRID_OVERSAMPLING else f"gridded-os{over:g}.pt"


def _recon_one(
    cache: Path | None,
    scan_path: Path,
    method: str,
    todo: list[tuple[str, Path]],
    overrides: dict[str, Any],
    match: bool,
) -> list[Path]:
    """Reconstruct one subject with one method at every duration of ``todo``."""
    from .benchmark import load_gridded
    from .io import load_scan
    from .pipeline import match as match_maps
    from .pipeline import reconstruct

    scan = load_scan(scan_path)
    gridded = load_gridded(cache)[0] if cache is not None else None
    written = []
    for duration, store in todo:
        if store.exists():
            continue
        res = reconstruct(scan, method=method, duration=duration, config=overrides, gridded=gridded)
        if match:
            res = match_maps(res, scan)
        res.save(store)
        written.append(store)
    return written


def _find_scans(cohort_dir: Path, out_dir: Path) -> list[Path]:
    if not cohort_dir.is_dir():
        raise InputError(f"{cohort_dir}: no such folder")
    out = out_dir.resolve()
    scans = [
        p
        for p in sorted(cohort_dir.rglob("*.h5"))
        if p.is_file() and not p.name.startswith(".") and out not in p.resolve().parents
    ]
    if not scans:
        raise InputError(f"{cohort_dir}: no *.h5 scans (run spurig simulate-cohort)")
    stems: dict[str, Path] = {}
    for p in scans:
        if p.stem in stems:
            raise InputError(f"{p}: same subject name as {stems[p.stem]} (rename one)")
        stems[p.stem] = p
    return scans


def _check_methods(methods: tuple[str, ...], durations: tuple[str, ...]) -> None:
    from .recon.trained import resolve_model

    if not methods or not durations:
        raise InputError("--methods and --durations: give at least one of each")
    for m in methods:
        if m not in METHODS:
            raise InputError(f"--methods: unknown method {m!r} (choose from {', '.join(METHODS)})")
    for d in durations:
        if d not in DURATIONS:
            raise InputError(f"--durations: unknown duration {d!r} ({', '.join(DURATIONS)})")
    for m in methods:
        if METHODS[m].needs_model:
            for d in durations:
                resolve_model(None, method=m, duration=d)  # fails before any work


def recon_cohort(
    cohort_dir: str | Path,
    out_dir: str | Path,
    *,
    methods: tuple[str, ...],
    durations: tuple[str, ...],
    overrides: dict[str, Any] | None = None,
    match: bool = True,
    client: Any = None,
    callback: Callback | None = None,
) -> list[Path]:
    """``spurig recon-cohort``: every scan × method × duration (layout in the module notes).

    Returns
    -------
    list of Path
        Every result store of the cohort (finished before or now).
    """
    from .recon.trained import gridding_groups

    _check_methods(methods, durations)
    overrides = dict(overrides or {})
    out = Path(out_dir)
    longest = max(groups_for(d) for d in durations)
    stores: list[Path] = []
    tasks: list[Task] = []
    # one gridding per distinct grid (LLR's is finer than the models'), default kernel settings
    groups = gridding_groups(methods, durations[0], overrides=overrides, base={})
    for scan_path in _find_scans(Path(cohort_dir), out):
        subject = scan_path.stem
        for m in methods:
            todo = [(d, out / subject / f"{m}-{d}.zarr") for d in durations]
            stores += [s for _, s in todo]
            todo = [(d, s) for d, s in todo if not s.exists()]
            if not todo:
                continue
            needs: tuple[str, ...] = ()
            first: tuple[Any, ...] = (None,)
            group = next(((g, names) for g, names in groups if m in names), None)
            if group is not None:
                settings, names = group
                cache = out / subject / gridded_name(settings)
                grid_key = f"{subject} {cache.stem.replace('gridded', 'gridding')}"
                if not cache.exists():
                    if not any(t.key == grid_key for t in tasks):
                        steps = (names, tuple(durations), overrides)
                        grid = (scan_path, cache, settings, steps)
                        mem = scan_memory(scan_path, "llr", longest)
                        tasks.append(Task(grid_key, _grid_one, grid, memory=mem))
                    needs, first = (grid_key,), ()
                else:
                    first = (cache,)
            args = (*first, scan_path, m, todo, overrides, match)
            mem = scan_memory(scan_path, m, longest)
            tasks.append(Task(f"{subject} {m}", _recon_one, args, needs=needs, memory=mem))
    run_tasks(tasks, client, callback=callback, stage="recon-cohort")
    return stores
