"""``spurig bench``: the reconstruction methods on one scan, side by side, in one run.

Each method runs in a fresh worker process (``python -m spurig_core.benchmark``) so that its peak
memory is its own and no method profits from another's warm caches; the workers run one after the
other on the same scan.  Reported per method: reconstruction seconds (gridding included, iGROG
kernel training shown separately, as in paper 3.5), peak resident memory (and peak CUDA memory),
and speed-up ratios against LLR-NUFFT and LLR, and where the time goes (:class:`StageClock`: step
size, norm-matching scale, DC grams, denoiser, the rest, and the dictionary matching after the
timed part; issue #14).  A micro-benchmark of one gram application
(NUFFT vs iGROG-gridded FFT) is included, as issue #4 asks.

The iGROG kernel is trained and the scan gridded once per grid, in a worker of its own: the
models' methods (``spurig``, ``hybrid``, ``dc-only``) and the gram micro-benchmark take the
models' gridding, LLR its own 2× grid with the same kernel settings
(:func:`~spurig_core.recon.trained.gridding_groups`).  Their reconstruction seconds are the
algorithm's plus their gridding's measured seconds, and each gridding's own peak memory is
reported on its own line.  (Training the kernel once instead of per
method saves most of a 64³ benchmark's wall time; kernel training is excluded from the runtimes in
either case.)
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ._checks import _opt_int
from .errors import InputError
from .memory import peak_rss_mb
from .progress import Callback, emit
from .recon.methods import METHODS, gridded_names

__all__ = ["GRIDDED_KIND", "bench", "format_table", "load_gridded", "machine_info", "save_gridded"]


def machine_info(device: str = "cpu") -> dict[str, Any]:
    """Describe what the benchmark ran on: CPU model and cores, memory, torch version, GPU name."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as f:
            info["memory_gib"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


#: Methods that reconstruct from the iGROG-gridded scan (they share one gridding).
GRIDDED_METHODS = gridded_names()
#: ``kind`` of a cached gridding (:func:`save_gridded`).
GRIDDED_KIND = "spurig-gridded"


def save_gridded(path: str | Path, gridded: Any, times: dict[str, float]) -> Path:
    """Cache a :class:`~spurig_core.operators.grid.GriddedData` and its timings as plain data.

    Written atomically with :func:`~spurig_core.io.save_checkpoint` (kind ``spurig-gridded``), so
    that :func:`load_gridded` reads it back weights-only.
    """
    from .io import save_checkpoint

    state = {
        "kind": GRIDDED_KIND,
        "values": gridded.values.cpu(),
        "index": gridded.index.cpu(),
        "grid": [int(v) for v in gridded.grid],
        "matrix": [int(v) for v in gridded.matrix],
        "times": {str(k): float(v) for k, v in times.items()},
        # step sizes ‖A^H A‖₂ by operators.step_size.step_key (issue #14; absent in older files)
        "lipschitz": {str(k): float(v) for k, v in getattr(gridded, "lipschitz", {}).items()},
        # the settings that made it (absent in older files)
        "settings": dict(getattr(gridded, "settings", None) or {}),
    }
    return save_checkpoint(state, path)


def load_gridded(path: str | Path) -> tuple[Any, dict[str, float]]:
    """Read :func:`save_gridded`'s file: ``(GriddedData, times)``.

    Raises
    ------
    InputError
        When the file is not a cached gridding (or is refused by ``io.load_checkpoint``).
    """
    from .io import load_checkpoint
    from .operators.grid import GriddedData

    st = load_checkpoint(path)
    if st.get("kind") != GRIDDED_KIND:
        raise InputError(f"{path}: a {st.get('kind')!r} file, not a cached gridding")
    lip = {str(k): float(v) for k, v in dict(st.get("lipschitz") or {}).items()}
    g = GriddedData(
        st["values"],
        st["index"],
        tuple(st["grid"]),
        tuple(st["matrix"]),
        lipschitz=lip,
        settings=dict(st.get("settings") or {}) or None,
    )
    return g, {str(k): float(v) for k, v in dict(st["times"]).items()}


def _grid_worker(
    scan_path: str,
    groups: int,
    device: str,
    out_path: str,
    config: dict[str, Any] | None = None,
    methods: list[str] | None = None,
    model: str | None = None,
    gridding: dict[str, Any] | None = None,
) -> dict:
    """Train the iGROG kernel and grid the scan's first ``groups`` groups; save to ``out_path``.

    The gridding is ``gridding`` when given (one group of
    :func:`~.recon.trained.gridding_groups`, the user's overrides included), else the first
    group's of the gridded ``methods`` (default: all).  The step sizes ``‖A^H A‖₂`` that
    ``methods`` will read on it — the models' encodings and LLR's
    (:func:`~.operators.step_size.step_plan`) — are computed here too and saved with the
    gridding; their seconds are ``step_size_s`` (the Lanczos runs: each method's process builds
    the operator again for its data term, as ``spurig recon`` builds it once for both) and
    ``step_size_wall_s`` (with the operators' construction here).
    """
    from .config import from_dict, to_dict
    from .durations import nearest_duration
    from .io import load_scan
    from .operators.coil_maps import virtual_coils
    from .operators.igrog import GriddingConfig, grid_scan
    from .operators.step_size import attach_for_scan, step_plan
    from .recon.trained import gridding_groups

    scan = load_scan(scan_path).first_groups(groups)
    base_rss = peak_rss_mb()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    # gridded as the model's training data was (where a method has one), on the method's grid
    names: tuple[str, ...] = tuple(methods or GRIDDED_METHODS)
    if gridding is None:
        found = gridding_groups(names, nearest_duration(groups), model, overrides=config)
        gridding, names = found[0] if found else ((config or {}).get("gridding") or {}, ())
    gcfg = from_dict(GriddingConfig, {"device": device, **gridding}, where="gridding")
    scan = virtual_coils(scan, gcfg.max_coils)  # as reconstruct() will (issue #20)
    gridded, times = grid_scan(scan, config=gcfg)
    plan = step_plan(names, (groups,), overrides=config, model=model)
    times.update(attach_for_scan(gridded, scan, plan, device=device))
    save_gridded(out_path, gridded, times)
    out = {
        "kernel_training_s": float(times.get("kernel_training_s", 0.0)),
        "gridding_s": float(times.get("gridding_s", 0.0)),
        **{k: float(v) for k, v in times.items() if k.startswith("step_size")},
        "peak_rss_mb": peak_rss_mb(),
        "scan_rss_mb": base_rss,
        "gridding_config": to_dict(gcfg),
        "methods": list(names),
    }
    if device.startswith("cuda"):
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


#: Stages of a reconstruction timed by :class:`StageClock`: (stage, module, owner, attribute).
STAGES = (
    ("step_size", "spurig_core.recon.unrolled", None, "estimate_lipschitz"),
    ("step_size", "spurig_core.recon.classical", None, "lipschitz_constant"),
    ("step_size", "spurig_core.operators.step_size", None, "step_size_of"),
    ("step_size", "spurig_core.operators.step_size", None, "gram_norm"),
    ("scale", "spurig_core.recon.classical", None, "norm_matching"),
    ("dc", "spurig_core.operators.encoding", "GriddedSubspaceEncoding", "_gram"),
    ("dc", "spurig_core.operators.encoding", "SubspaceNUFFTEncoding", "_gram"),
    ("denoiser", "spurig_core.recon.networks", "Denoiser", "forward"),
    ("denoiser", "spurig_core.recon.dc_only", "IdentityDenoiser", "forward"),
    ("denoiser", "spurig_core.recon.llr", "LocallyLowRank", "__call__"),
)


class StageClock:
    """Seconds per stage of a reconstruction (``spurig bench``'s breakdown, issue #14).

    Inside the ``with`` block the functions of :data:`STAGES` are wrapped (in this process only,
    restored on exit) so that each call's wall time is added to its stage; a timed function called
    from inside another one counts for the outer stage (the grams of the power iteration are
    ``step_size``, the gram of the norm-matching scale is ``scale``).  On CUDA each timed
    call synchronises, so that the seconds belong to the stage that queued the work.

    Attributes
    ----------
    seconds : dict of str to float
        ``step_size``, ``scale``, ``dc``, ``denoiser`` (LLR: the prox).
    calls : dict of str to int
    """

    def __init__(self) -> None:
        self.seconds = {stage: 0.0 for stage, *_ in STAGES}
        self.calls = {stage: 0 for stage, *_ in STAGES}
        self._undo: list[tuple[Any, str, Any]] = []
        self._active = False  # a timed call is running

    def _sync(self) -> None:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()

    def _wrap(self, stage: str, fn: Any) -> Any:
        clock = self

        def timed(*args: Any, **kwargs: Any) -> Any:
            if clock._active:  # nested in a timed call: its time stays with the outer stage
                return fn(*args, **kwargs)
            clock._sync()
            clock._active = True
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                clock._sync()
                clock.seconds[stage] += time.perf_counter() - t0
                clock.calls[stage] += 1
                clock._active = False

        return timed

    def __enter__(self) -> StageClock:
        import importlib
        import inspect

        for stage, module, owner, attr in STAGES:
            obj: Any = importlib.import_module(module)
            if owner is not None:
                obj = getattr(obj, owner)
            own = attr in vars(obj) if owner is not None else True
            fn = inspect.getattr_static(obj, attr)  # the plain function, even if inherited
            self._undo.append((obj, attr, fn if own else None))
            setattr(obj, attr, self._wrap(stage, fn))
        return self

    def __exit__(self, *exc: object) -> None:
        for obj, attr, fn in reversed(self._undo):
            if fn is None:
                delattr(obj, attr)  # it was inherited
            else:
                setattr(obj, attr, fn)
        self._undo.clear()


def _match_seconds(result: Any, scan: Any, device: str) -> float:
    """Seconds of the dictionary matching of ``result`` (reported, not part of the runtime)."""
    from .pipeline import match

    t0 = time.perf_counter()
    match(result, scan, device=device)
    return time.perf_counter() - t0


def _worker(
    scan_path: str,
    method: str,
    groups: int,
    device: str,
    model: str | None,
    config: dict[str, Any] | None = None,
    gridded: str | None = None,
) -> dict:
    """Run one method once (in this process) and return its measurements.

    With ``gridded`` (a file of :func:`_grid_worker`) a gridded method reuses that gridding and its
    measured gridding seconds are added to the runtime.
    """
    from .io import load_scan
    from .pipeline import reconstruct

    scan = load_scan(scan_path)
    shared = None
    times: dict[str, float] = {}
    if gridded is not None and method in GRIDDED_METHODS:
        shared, times = load_gridded(gridded)
        shared = shared.to(device)
    base_rss = peak_rss_mb()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    with StageClock() as clock:
        result = reconstruct(
            scan,
            method=method,
            groups=groups,
            device=device,
            model=model,
            config=config,
            gridded=shared,
        )
    wall = time.perf_counter() - t0
    grid_s = float(times.get("gridding_s", result.timings.get("gridding_s", 0.0)))
    runtime = result.runtime_s + (grid_s if shared is not None else 0.0)
    # a step size stored with the shared gridding (issue #14): its seconds were spent there (the
    # part for this method's density exponent, else all of it)
    step_shared = 0.0
    if shared is not None and result.timings.get("step_size_s", -1.0) == 0.0:
        gamma = (result.config.get("encoding") or {}).get("density_compensation")
        step_shared = float(
            times.get(f"step_size_s:{float(gamma):g}", times.get("step_size_s", 0.0))
            if gamma is not None
            else times.get("step_size_s", 0.0)
        )
    runtime += step_shared
    clock.seconds["step_size"] += step_shared
    out: dict[str, Any] = {
        "method": method,
        # a reused gridding is excluded from result.runtime_s: add the measured seconds back
        "runtime_s": runtime,
        "wall_s": wall,
        "kernel_training_s": float(
            times.get("kernel_training_s", result.timings.get("kernel_training_s", 0.0))
        ),
        "gridding_s": grid_s,
        "gridding_shared": shared is not None,
        "peak_rss_mb": peak_rss_mb(),
        "scan_rss_mb": base_rss,
        # breakdown (issue #14): seconds per stage (StageClock); "other_s" is the rest of the
        # algorithm (operator and A^H b set-up, LLR/FISTA bookkeeping, moving data)
        **{f"{k}_s": v for k, v in clock.seconds.items()},
        "stage_calls": dict(clock.calls),
    }
    out["other_s"] = max(0.0, runtime - grid_s - sum(clock.seconds.values()))
    if device.startswith("cuda"):
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    out["matching_s"] = _match_seconds(result, scan, device)  # after the timed part
    if scan.reference is not None:  # quality next to speed (after the timed part)
        from .metrics import evaluate

        metrics = evaluate(result, scan, per_voxel=False)
        out["psnr"] = float(sum(metrics["psnr"]) / len(metrics["psnr"]))
        out["ssim"] = float(sum(metrics["ssim"]) / len(metrics["ssim"]))
    return out


def _gram_worker(
    scan_path: str,
    groups: int,
    device: str,
    config: dict[str, Any] | None = None,
    repeats: int = 3,
    gridded: str | None = None,
) -> dict:
    """Seconds of one gram application: NUFFT operator vs iGROG-gridded operator."""
    from .config import from_dict
    from .io import load_scan
    from .operators.coil_maps import virtual_coils
    from .operators.encoding import GriddedSubspaceEncoding, SubspaceNUFFTEncoding
    from .operators.igrog import GriddingConfig, grid_scan
    from .recon.data_term import coil_maps as _coil_maps
    from .recon.data_term import scan_basis as _scan_basis

    dev = torch.device(device)
    gcfg = from_dict(GriddingConfig, (config or {}).get("gridding", {}), where="gridding")
    scan = virtual_coils(load_scan(scan_path).first_groups(groups), gcfg.max_coils)
    basis = _scan_basis(scan, dev)
    maps = _coil_maps(scan, dev, None)
    if gridded is not None:
        grid_data, _ = load_gridded(gridded)
    else:
        grid_data, _ = grid_scan(scan, config=gcfg)
    ops = {
        "nufft": SubspaceNUFFTEncoding(scan.trajectory.to(dev), maps, basis),
        "gridded": GriddedSubspaceEncoding(grid_data.to(dev), maps, basis),
    }
    x = torch.randn(
        basis.shape[1],
        *scan.matrix,
        dtype=torch.complex64,
        generator=torch.Generator().manual_seed(0),
    ).to(dev)
    for op in ops.values():
        op.gram(x)  # warm-up (plans, kernels, buffers)
    # interleaved, so that both operators meet the same state of a shared or drifting machine
    # (issue #14, session 29: back-to-back blocks put the same code at 29× and 57×)
    times: dict[str, list[float]] = {name: [] for name in ops}
    for _ in range(repeats):
        for name, op in ops.items():
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            op.gram(x)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t0)
    return {f"gram_{name}_s": sorted(t)[len(t) // 2] for name, t in times.items()}


def _run_worker(args: list[str]) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "spurig_core.benchmark", *args],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["worker failed"])[-1]
        return {"error": last}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench(
    *,
    matrix: int = 64,
    groups: int = 16,
    device: str = "cpu",
    scan: str | Path | None = None,
    methods: tuple[str, ...] = ("adjoint", "llr", "llr-nufft", "spurig"),
    model: str | Path | None = None,
    gram: bool = True,
    config: dict[str, Any] | None = None,
    share_gridding: bool = True,
    callback: Callback | None = None,
    gram_repeats: int = 3,
) -> dict[str, Any]:
    """Time the methods on one scan, each in a fresh process, one after the other.

    Parameters
    ----------
    matrix, groups : int
        Size of the simulated scan (when ``scan`` is not given) and groups to reconstruct.
    device : str
        ``"cpu"`` or ``"cuda"``.
    scan : path, optional
        A scan to use instead of simulating one.
    methods : tuple of str
        Methods to run (``spurig``/``hybrid`` need a shipped or given model).
    gram : bool
        Also time one gram application, NUFFT vs gridded.
    gram_repeats : int
        Timed applications of each operator, interleaved (the median is reported), 0–20; 0
        skips the gram micro-benchmark as ``gram=False`` does.
    config : dict, optional
        Overrides passed to every reconstruction (``{"gridding": {...}, "llr": {...}}``).
    share_gridding : bool
        Train the kernel and grid once for the gridded methods of each grid (see the module
        notes); ``False`` grids inside every method's worker.

    Returns
    -------
    dict
        ``{"machine": ..., "scan": ..., "rows": [...], "gram": {...}}``, plus ``"griddings"``
        (per shared gridding: its methods, kernel training and gridding seconds, peak memory;
        methods on different grids, such as LLR's 2× grid, do not share one) and ``"gridding"``
        (the first of them) when the gridding is shared.
    """
    for m in methods:
        if m not in METHODS:
            raise InputError(f"unknown method {m!r}: choose from {', '.join(METHODS)}")
    _opt_int(gram_repeats, "gram repeats", none=False)
    if not 0 <= gram_repeats <= 20:
        raise InputError(f"gram repeats: {gram_repeats} is outside 0–20 (0 skips the gram)")
    gram = gram and gram_repeats > 0
    if scan is not None:  # a bad scan is one line and exit 2 here, not an error row per worker
        from .io import load_scan

        matrix = int(load_scan(scan).matrix[0])  # the table's header names the scan's size
    tmp = tempfile.TemporaryDirectory(prefix="spurig-bench-")
    work = Path(tmp.name)
    if scan is None:
        from .simulation import simulate

        emit(callback, "bench", 0, len(methods) + 2, f"simulating a {matrix}³ scan")
        scan = simulate(work / "bench.h5", matrix=matrix, coils=10, groups=groups, seed=0)
    try:
        report: dict[str, Any] = {
            "machine": machine_info(device),
            "scan": str(scan),
            "matrix": matrix,
            "groups": groups,
            "device": device,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "rows": [],
        }
        total = len(methods) + (1 if gram else 0)
        files: dict[str, str | None] = {}  # method -> its shared gridding's file
        if share_gridding:
            base = {
                "scan_path": str(scan),
                "groups": groups,
                "device": device,
                "config": config,
                "model": None if model is None else str(model),
            }
            report["griddings"] = _shared_griddings(
                base,
                methods,
                gram,
                work,
                files,
                lambda what: emit(callback, "bench", 0, total, what),
            )
            if report["griddings"]:
                report["gridding"] = report["griddings"][0]
        for i, m in enumerate(methods):
            emit(callback, "bench", i, total, f"running {m}")
            job = {
                "scan_path": str(scan),
                "method": m,
                "groups": groups,
                "device": device,
                "model": None if model is None else str(model),
                "config": config,
                "gridded": files.get(m),
            }
            row = _run_worker(["worker", json.dumps(job)])
            row.setdefault("method", m)
            report["rows"].append(row)
        if gram:
            emit(callback, "bench", len(methods), total, "gram micro-benchmark")
            job = {
                "scan_path": str(scan),
                "groups": groups,
                "device": device,
                "config": config,
                "repeats": gram_repeats,
                "gridded": files.get("gram"),
            }
            report["gram"] = _run_worker(["gram", json.dumps(job)])
        emit(callback, "bench", total, total)
    finally:
        tmp.cleanup()
    return report


def _shared_griddings(
    base: dict[str, Any],
    methods: tuple[str, ...],
    gram: bool,
    work: Path,
    files: dict[str, str | None],
    emit_step: Callable[[str], None],
) -> list[dict[str, Any]]:
    """Grid the scan once per distinct gridding of the gridded ``methods``, each in a worker.

    ``base`` holds the workers' common job fields (``scan_path``, ``groups``, ``device``,
    ``config``, ``model``).  Fills ``files`` (per method name, and ``"gram"`` for the gram
    micro-benchmark: the models' gridding, else the first) and returns the workers' rows, each
    with its ``methods``.
    """
    from .durations import nearest_duration
    from .recon.trained import gridding_groups

    config = base["config"]
    named = nearest_duration(base["groups"])
    found = gridding_groups(methods, named, base["model"], overrides=config)
    if gram and not found:
        found = [(dict((config or {}).get("gridding") or {}), ())]
    rows = []
    for i, (settings, names) in enumerate(found):
        emit_step(f"iGROG kernel training and gridding ({', '.join(names) or 'the gram'})")
        path = str(work / f"gridded-{i}.pt")
        job = {**base, "out_path": path, "methods": list(names), "gridding": settings}
        row = _run_worker(["grid", json.dumps(job)])
        row["methods"] = list(names)
        rows.append(row)
        ok = None if "error" in row else path  # else each method grids for itself
        files.update({name: ok for name in names})
        if "gram" not in files or "spurig" in names:
            files["gram"] = ok
    return rows


def format_table(report: dict[str, Any]) -> str:
    """Markdown table of :func:`bench`'s report with ratios against LLR-NUFFT and LLR."""
    rows = report["rows"]
    times = {r["method"]: r["runtime_s"] for r in rows if "runtime_s" in r}
    lines = [
        f"Benchmark {report['date']}: {report['matrix']}³, {report['groups']} groups, "
        f"device {report['device']}; machine: {report['machine'].get('cpu', '?')}, "
        f"{report['machine'].get('cpu_cores')} cores, torch {report['machine']['torch']}"
        + (f", GPU {report['machine']['gpu']}" if "gpu" in report["machine"] else ""),
        "",
        "| method | recon s (gridding incl.) | gridding s | algorithm s | kernel training s "
        "(excluded) | peak RSS MB | × vs LLR-NUFFT | × vs LLR | mean PSNR c1–c5 (dB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    breakdown = [
        "",
        "Where the time goes (s; the algorithm's stages are exclusive and add up to its seconds; "
        "denoiser = UNet for SPUR-iG, LLR prox for FISTA-LLR; matching runs after the timed part):",
        "",
        "| method | kernel training | gridding | step size | scale | DC | denoiser | other | "
        "matching (not in recon s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | n/a: {r['error']} | | | | | | | |")
            continue
        if "dc_s" in r:
            stages = " | ".join(
                f"{r.get(k, 0.0):.2f}"
                for k in ("step_size_s", "scale_s", "dc_s", "denoiser_s", "other_s")
            )
            breakdown.append(
                f"| {r['method']} | {r['kernel_training_s']:.1f} | {r['gridding_s']:.2f} | "
                f"{stages} | {r.get('matching_s', 0.0):.2f} |"
            )
        t = r["runtime_s"]
        vs_nufft = f"{times['llr-nufft'] / t:.1f}" if "llr-nufft" in times else "–"
        vs_llr = f"{times['llr'] / t:.1f}" if "llr" in times else "–"
        mem = f"{r['peak_rss_mb']:.0f}"
        if "peak_cuda_mb" in r:
            mem += f" (GPU {r['peak_cuda_mb']:.0f})"
        quality = f"{r['psnr']:.2f}" if "psnr" in r else "–"
        lines.append(
            f"| {r['method']} | {t:.2f} | {r['gridding_s']:.2f} | {t - r['gridding_s']:.2f} | "
            f"{r['kernel_training_s']:.1f} | {mem} | {vs_nufft} | {vs_llr} | {quality} |"
        )
    if len(breakdown) > 5:  # at least one row
        lines += breakdown
    griddings = report.get("griddings", [report["gridding"]] if "gridding" in report else [])
    for gr in griddings:
        over = (gr.get("gridding_config") or {}).get("grid_oversampling")
        who = (
            "once for all gridded methods"
            if len(griddings) == 1
            else f"for {', '.join(gr.get('methods') or ['the gram'])}"
            + (f" (grid ×{over:g})" if over is not None else "")
        )
        if "error" in gr:
            lines += ["", f"shared gridding ({who}) failed: {gr['error']}"]
            continue
        mem = f"{gr['peak_rss_mb']:.0f}"
        if "peak_cuda_mb" in gr:
            mem += f" (GPU {gr['peak_cuda_mb']:.0f})"
        lines += [
            "",
            f"iGROG, {who}: kernel training {gr['kernel_training_s']:.1f} s "
            f"(excluded from the runtimes), gridding {gr['gridding_s']:.2f} s (included), "
            f"step size ‖AᴴA‖ {gr.get('step_size_s', 0.0):.2f} s of Lanczos grams (included, in "
            f"the step size column of the methods that used it; "
            f"{gr.get('step_size_wall_s', gr.get('step_size_s', 0.0)):.2f} s with building the "
            f"operators, which each method's process builds again for its data term), "
            f"peak RSS {mem} MB.",
        ]
    g = report.get("gram")
    if g and "error" not in g:
        lines += [
            "",
            f"One gram application: NUFFT {g['gram_nufft_s']:.3f} s, gridded "
            f"{g['gram_gridded_s']:.4f} s → {g['gram_nufft_s'] / g['gram_gridded_s']:.0f}×",
        ]
    elif g:
        lines += ["", f"gram micro-benchmark failed: {g['error']}"]
    return "\n".join(lines)


def _main(argv: list[str]) -> int:
    kind, job = argv[0], json.loads(argv[1])
    if kind == "worker":
        out = _worker(**job)
    elif kind == "grid":
        out = _grid_worker(**job)
    elif kind == "gram":
        out = _gram_worker(**job)
    else:
        raise SystemExit(f"unknown worker kind {kind!r}")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":  # pragma: no cover - exercised through bench()
    from .errors import SpurigError

    try:
        sys.exit(_main(sys.argv[1:]))
    except SpurigError as exc:
        print(f"{exc}", file=sys.stderr)
        sys.exit(2)
