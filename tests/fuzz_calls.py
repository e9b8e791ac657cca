"""Fuzz table of issue #15, part 2: configs, checkpoints, CLI paths, Python API, exchange formats.

See ``tests/fuzz_files.py`` for the case structure and ``tests/test_fuzz.py`` for the checks.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fuzz_files import Base, Call, Case, Make, _copy, _mkdir, chunk, h5, put, zattr, zr
from spurig_core import pipeline
from spurig_core.data import FispSequence, Scan
from spurig_core.io import load_result, load_scan
from spurig_core.physics import simulate_signals

MODEL = Path(pipeline.__file__).parent / "models" / "spurig-2min.pt"


# ----------------------------------------------------------------------------------------------
# TOML configs
# ----------------------------------------------------------------------------------------------
def toml(content: bytes | str | None, cmd: str = "recon") -> Make:
    """Return a config file with ``content`` (``None``: a folder) passed to ``cmd --config``."""

    def make(tmp: Path, base: Base) -> Call:
        cfg = tmp / "c.toml"
        if content is None:
            cfg.mkdir()
        elif isinstance(content, bytes):
            cfg.write_bytes(content)
        else:
            cfg.write_text(content)
        if cmd == "prepare":
            (tmp / "cohort").mkdir()
            return ["prepare-training", tmp / "cohort", tmp / "prep", "--config", cfg]
        if cmd == "train":
            return ["train", "--stage", "pretrain", "--config", cfg]
        scan = tmp / "scan.h5"
        shutil.copy(base.scan, scan)
        return ["recon", scan, tmp / "out.zarr", "--method", "llr", "--config", cfg]

    return make


CONFIGS = [
    Case("config", "binary", toml(b"\x00\x01\x02PK\x03\x04" * 20), "a binary file, not TOML"),
    Case("config", "folder", toml(None), "is a folder, not a TOML file"),
    Case("config", "not UTF-8", toml(b"[llr]\niterations = 4 # \xff\xfe\n"), "not UTF-8"),
    Case("config", "invalid TOML", toml("[llr\niterations = 4\n"), "not valid TOML"),
    Case(
        "config",
        "oversampling NaN",
        toml("[gridding]\ngrid_oversampling = nan\n"),
        "grid_oversampling = nan",
    ),
    Case(
        "config",
        "oversampling Inf",
        toml("[gridding]\ngrid_oversampling = inf\n"),
        "grid_oversampling = inf",
    ),
    Case(
        "config",
        "oversampling 0.5",
        toml("[gridding]\ngrid_oversampling = 0.5\n"),
        "grid_oversampling = 0.5",
    ),
    Case("config", "unknown table", toml("[foo]\nx = 1\n"), "unknown table [foo]"),
    Case("config", "table as number", toml("llr = 5\n"), "llr = 5 must be a table"),
    Case("config", "iterations text", toml("[llr]\niterations = 'many'\n"), "[llr] iterations"),
    Case("config", "unknown key", toml("[llr]\nbogus = 1\n"), "unknown key 'bogus' in [llr]"),
    Case("config", "iterations zero", toml("[llr]\niterations = 0\n"), "[llr] iterations = 0"),
    Case("config", "block negative", toml("[llr]\nblock = -3\n"), "[llr] block = -3"),
    Case("config", "thresholds number", toml("[llr]\nthresholds = 5\n"), "[llr] thresholds"),
    Case(
        "config",
        "threshold NaN",
        toml("[llr]\nthresholds = { '2min' = nan }\n"),
        "thresholds.2min = nan",
    ),
    Case("config", "steps negative", toml("[gridding]\nsteps = -1\n"), "[gridding] steps = -1"),
    Case(
        "config",
        "compensation 2",
        toml("[encoding]\ndensity_compensation = 2.0\n"),
        "density_compensation = 2.0",
    ),
    Case("config", "missing file", lambda t, b: [*toml("")(t, b)[:-1], t / "no.toml"], "no such"),
    Case("config", "prepare binary", toml(b"\x00\x00", "prepare"), "a binary file"),
    Case("config", "train folder", toml(None, "train"), "is a folder"),
]


# ----------------------------------------------------------------------------------------------
# checkpoints (--model)
# ----------------------------------------------------------------------------------------------
def ckpt(write: Callable[[Path], None]) -> Make:
    """Return a model file made by ``write(path)``, passed to ``recon --method spurig --model``."""

    def make(tmp: Path, base: Base) -> Call:
        scan = tmp / "scan.h5"
        shutil.copy(base.scan, scan)
        model = tmp / "model.pt"
        write(model)
        return ["recon", scan, tmp / "out.zarr", "--method", "spurig", "--model", model]

    return make


def _nan_weights(p: Path) -> None:
    state = torch.load(MODEL, map_location="cpu", weights_only=True)
    name = next(k for k, v in state["model"].items() if v.is_floating_point())
    state["model"][name] = torch.full_like(state["model"][name], float("nan"))
    torch.save(state, p)


CHECKPOINTS = [
    Case(
        "checkpoint",
        "truncated",
        ckpt(lambda p: p.write_bytes(MODEL.read_bytes()[:100_000])),
        "not a readable checkpoint",
    ),
    Case("checkpoint", "not a dict", ckpt(lambda p: torch.save([1, 2, 3], p)), "no 'kind' entry"),
    Case("checkpoint", "NaN weights", ckpt(_nan_weights), "contains NaN or Inf"),
    Case(
        "checkpoint",
        "garbage",
        ckpt(lambda p: p.write_bytes(b"\x80garbage" * 99)),
        "not a readable checkpoint",
    ),
    Case("checkpoint", "folder", ckpt(lambda p: p.mkdir()), "is a directory"),
    Case("checkpoint", "empty", ckpt(lambda p: p.write_bytes(b"")), "not a readable checkpoint"),
    Case(
        "checkpoint",
        "wrong kind",
        ckpt(lambda p: torch.save({"kind": "something-else"}, p)),
        "something-else",
    ),
]


# ----------------------------------------------------------------------------------------------
# paths given on the command line
# ----------------------------------------------------------------------------------------------
def cli_paths(fn: Callable[[Path, Base], list[Any]]) -> Make:
    """``fn`` builds the argument list (creating what it needs under the case's folder)."""
    return lambda tmp, base: [str(a) for a in fn(tmp, base)]


PATHS = [
    Case(
        "cli",
        "recon missing scan",
        cli_paths(lambda t, b: ["recon", t / "no.h5", t / "o.zarr", "--method", "adjoint"]),
        "no such file",
    ),
    Case(
        "cli",
        "recon folder as scan",
        cli_paths(lambda t, b: ["recon", _mkdir(t / "d.h5"), t / "o.zarr", "--method", "adjoint"]),
        "is a directory, not a file",
    ),
    Case(
        "cli",
        "recon store as scan",
        cli_paths(
            lambda t, b: ["recon", _copy(b.result, t / "r.zarr"), t / "o.zarr", "--method", "llr"]
        ),
        "is a directory, not a file",
    ),
    Case(
        "cli",
        "recon output not .zarr",
        cli_paths(
            lambda t, b: ["recon", _copy(b.scan, t / "s.h5"), t / "o.txt", "--method", "adjoint"]
        ),
        ".zarr",
    ),
    Case("cli", "match missing", cli_paths(lambda t, b: ["match", t / "no.zarr"]), "no such file"),
    Case(
        "cli",
        "match folder as scan",
        cli_paths(lambda t, b: ["match", _copy(b.result, t / "r.zarr"), "--scan", _mkdir(t / "s")]),
        "is a directory, not a file",
    ),
    Case(
        "cli",
        "evaluate missing reference",
        cli_paths(lambda t, b: ["evaluate", _copy(b.result, t / "r.zarr"), "--reference", t / "x"]),
        "no such file",
    ),
    Case(
        "cli",
        "evaluate scan as result",
        cli_paths(lambda t, b: ["evaluate", _copy(b.scan, t / "s.h5"), "--reference", t / "s.h5"]),
        "is a file, not a .zarr store directory",
    ),
    Case(
        "cli",
        "export missing",
        cli_paths(lambda t, b: ["export", t / "no.zarr", t / "out"]),
        "no such file",
    ),
    Case(
        "cli",
        "export scan as result",
        cli_paths(lambda t, b: ["export", _copy(b.scan, t / "s.h5"), t / "out"]),
        "is a file, not a .zarr store directory",
    ),
    Case(
        "cli",
        "bench missing scan",
        cli_paths(lambda t, b: ["bench", "--scan", t / "no.h5", "--methods", "adjoint"]),
        "no such file",
    ),
    Case(
        "cli",
        "bench negative gram repeats",
        cli_paths(
            lambda t, b: ["bench", "--scan", _copy(b.scan, t / "s.h5"), "--gram-repeats", "-1"]
        ),
        "gram repeats: -1 is outside 0–20",
    ),
    Case(
        "cli",
        "bench too many gram repeats",
        cli_paths(
            lambda t, b: ["bench", "--scan", _copy(b.scan, t / "s.h5"), "--gram-repeats", "500"]
        ),
        "gram repeats: 500 is outside 0–20",
    ),
]


# ----------------------------------------------------------------------------------------------
# the Python API (SPEC §2b)
# ----------------------------------------------------------------------------------------------
def api(call: Callable[[Path, Base], Any], setup: Callable[[Path], Any] | None = None) -> Make:
    """``call(tmp, base)`` after ``setup(tmp)`` (which runs before the snapshot)."""

    def make(tmp: Path, base: Base) -> Call:
        if setup is not None:
            setup(tmp)
        return lambda: call(tmp, base)

    return make


def _recon(b: Base, **kw: Any) -> Any:
    return pipeline.reconstruct(b.scan_obj, **{"method": "adjoint", **kw})


def _with(obj: Any, **changes: Any) -> Any:
    return dataclasses.replace(obj, **changes)


def _ref(b: Base, **changes: Any) -> Scan:
    assert b.scan_obj.reference is not None
    return _with(b.scan_obj, reference=_with(b.scan_obj.reference, **changes))


_T1 = torch.full((16, 16, 16), -5.0)
_NAN_K = torch.full((2, 2, 6, 32), float("nan"), dtype=torch.complex64)
API = [
    Case(
        "api",
        "reconstruct missing path",
        api(lambda t, b: pipeline.reconstruct(t / "x.h5", method="adjoint")),
        "no such file",
    ),
    Case(
        "api",
        "reconstruct int",
        api(lambda t, b: pipeline.reconstruct(42, method="adjoint")),
        "scan: expected a Scan or the path of a .h5 scan, got int",
    ),
    Case("api", "groups string", api(lambda t, b: _recon(b, groups="2")), "groups: expected an"),
    Case("api", "groups bool", api(lambda t, b: _recon(b, groups=True)), "groups: expected an"),
    Case("api", "groups zero", api(lambda t, b: _recon(b, groups=0)), "cannot use 0 groups"),
    Case("api", "method unknown", api(lambda t, b: _recon(b, method="fast")), "'fast' is not one"),
    Case("api", "method int", api(lambda t, b: _recon(b, method=5)), "method: 5 is not one of"),
    Case("api", "config llr 5", api(lambda t, b: _recon(b, config={"llr": 5})), "must be a table"),
    Case("api", "config list", api(lambda t, b: _recon(b, config=[1])), "config: expected a dict"),
    Case("api", "config table", api(lambda t, b: _recon(b, config={"x": {}})), "unknown table [x]"),
    Case(
        "api",
        "config NaN",
        api(lambda t, b: _recon(b, config={"gridding": {"grid_oversampling": float("nan")}})),
        "grid_oversampling",
    ),
    Case("api", "device int", api(lambda t, b: _recon(b, device=3)), "device: expected"),
    Case("api", "device tpu", api(lambda t, b: _recon(b, device="tpu")), "unknown device 'tpu'"),
    Case("api", "save_iterations", api(lambda t, b: _recon(b, save_iterations="y")), "True or"),
    Case("api", "callback", api(lambda t, b: _recon(b, callback=5)), "callback: expected a"),
    Case("api", "duration", api(lambda t, b: _recon(b, duration=5)), "duration: expected"),
    Case("api", "model int", api(lambda t, b: _recon(b, model=5)), "model: expected a path"),
    Case(
        "api",
        "NaN k-space scan",
        api(
            lambda t, b: pipeline.reconstruct(
                _with(b.scan_obj, kspace=_NAN_K, sha256=None), method="adjoint"
            )
        ),
        "'kspace' contains",
    ),
    Case(
        "api",
        "memory",
        api(lambda t, b: pipeline.reconstruct(str(b.big), method="llr")),
        "needs about",
        env=(("SPURIG_MEMORY_GB", "0.5"),),
    ),
    Case("api", "match int", api(lambda t, b: pipeline.match(42)), "expected a Result or the"),
    Case("api", "match scan int", api(lambda t, b: pipeline.match(b.result_obj, 42)), "a Scan"),
    Case("api", "match missing", api(lambda t, b: pipeline.match(t / "no.zarr")), "no such"),
    Case(
        "api",
        "match B1 zero",
        api(
            lambda t, b: pipeline.match(b.result_obj, _with(b.scan_obj, b1=torch.zeros(16, 16, 16)))
        ),
        "'b1' has 4096 values at or below 0",
    ),
    Case(
        "api",
        "match NaN coefficients",
        api(
            lambda t, b: pipeline.match(
                _with(b.result_obj, coefficients=b.result_obj.coefficients * float("nan"))
            )
        ),
        "NaN",
    ),
    Case(
        "api",
        "evaluate missing",
        api(lambda t, b: pipeline.evaluate(b.result_obj, t / "no.h5")),
        "no such file",
    ),
    Case("api", "evaluate int", api(lambda t, b: pipeline.evaluate(b.result_obj, 1)), "a Scan"),
    Case(
        "api",
        "evaluate T1 negative",
        api(lambda t, b: pipeline.evaluate(b.result_obj, _ref(b, t1_ms=_T1))),
        "'reference/t1_ms' has 4096 values below 0",
    ),
    Case("api", "save txt", api(lambda t, b: b.result_obj.save(t / "x.txt")), "suffix .zarr"),
    Case("api", "save int", api(lambda t, b: b.result_obj.save(42)), "expected a path"),
    Case("api", "load_scan int", api(lambda t, b: load_scan(42)), "expected a path"),
    Case(
        "api",
        "load_scan folder",
        api(lambda t, b: load_scan(t / "d"), lambda t: _mkdir(t / "d")),
        "is a directory",
    ),
    Case(
        "api",
        "load_result file",
        api(lambda t, b: load_result(t / "f.zarr"), lambda t: (t / "f.zarr").write_text("x")),
        "is a file, not a .zarr store",
    ),
    Case("api", "signals text", api(lambda t, b: simulate_signals("abc", 50.0)), "t1_ms: expected"),
    Case(
        "api",
        "signals sequence",
        api(lambda t, b: simulate_signals(1000.0, 50.0, sequence="default")),
        "sequence: expected a FispSequence",
    ),
    Case("api", "signals T1 negative", api(lambda t, b: simulate_signals(-1.0, 50.0)), "t1_ms"),
    Case("api", "sequence 720", api(lambda t, b: FispSequence(np.full(6, 720.0))), "above 180"),
    Case("api", "sequence text", api(lambda t, b: FispSequence("abc")), "not an array of numbers"),
    Case(
        "api", "sequence tr", api(lambda t, b: FispSequence(np.full(6, 20.0), tr_ms=-1)), "'tr_ms'"
    ),
    Case("api", "sequence zero", api(lambda t, b: FispSequence(np.zeros(6))), "zero everywhere"),
    Case(
        "api",
        "simulate matrix text",
        api(lambda t, b: pipeline.simulate(t / "s.h5", matrix="16")),
        "matrix: expected an integer, got '16'",
    ),
]


# ----------------------------------------------------------------------------------------------
# exchange formats (ISMRMRD import/export, DICOM export): the new readers get the same rows
# ----------------------------------------------------------------------------------------------
def _ismrmrd_input(t: Path, b: Base, kind: str) -> Path:
    p = t / "raw.h5"
    if kind == "garbage":
        p.write_bytes(b"garbage" * 10)
    elif kind == "folder":
        p.mkdir()
    elif kind == "spurig scan":
        shutil.copy(b.scan, p)
    return p


def _import(kind: str) -> Make:
    return cli_paths(lambda t, b: ["import-ismrmrd", _ismrmrd_input(t, b, kind), t / "s.h5"])


EXCHANGE = [
    Case("exchange", "import missing", _import("missing"), "no such file"),
    Case("exchange", "import garbage", _import("garbage"), "not an ISMRMRD file"),
    Case("exchange", "import folder", _import("folder"), "is a directory"),
    Case("exchange", "import a spurig scan", _import("spurig scan"), "no group with an 'xml'"),
    Case(
        "exchange",
        "ISMRMRD export of a NaN scan",
        h5(put("kspace", (0, 0, 0, 0), np.nan), cmd="export-ismrmrd"),
        "'kspace' contains 1 NaN or Inf",
    ),
    Case(
        "exchange",
        "ISMRMRD export of TE > TR",
        h5(
            lambda f: f["sequence/flip_angle_deg"].attrs.__setitem__("te_ms", 50.0),
            "export-ismrmrd",
        ),
        "'te_ms' = 50 must be below 'tr_ms'",
    ),
    Case(
        "exchange",
        "DICOM export of a deleted chunk",
        zr(chunk("t1_ms", "delete"), "export-dicom"),
        "array 't1_ms' is missing 1 of its 1 chunks",
    ),
    Case(
        "exchange",
        "DICOM export of a NaN voxel size",
        zr(zattr("voxel_size_mm", [1.0, 1.0, float("nan")]), "export-dicom"),
        "'voxel_size_mm'",
    ),
]
