"""Fuzz table of issue #15, part 1: the inputs every case starts from, raw HDF5 scans, zarr results.

Each :class:`Case` makes its inputs under the case's folder (a mutated copy of the valid base
scan or result) and returns either the ``spurig`` command line to run or an API call;
``tests/test_fuzz.py`` runs them all and checks the one-line refusal (see its docstring).  Add
a row for every new field or reader.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from spurig_core.data import Result, Scan


@dataclasses.dataclass(frozen=True)
class Base:
    """The valid inputs every case starts from (made once per session)."""

    scan: Path  # 16³, 2 coils, 2 groups, 6 TRs, 32 samples, with coil maps, B1, reference
    result: Path  # adjoint reconstruction of it, with iterates and T1/T2/PD maps
    big: Path  # 256³, 16 coils, calibration only: ESPIRiT needs > 2 GB
    scan_obj: Scan
    result_obj: Result


# ----------------------------------------------------------------------------------------------
# cases
# ----------------------------------------------------------------------------------------------
Call = list[Any] | Callable[[], Any]
Make = Callable[[Path, Base], Call]


@dataclasses.dataclass(frozen=True)
class Case:
    area: str
    name: str
    make: Make
    expect: str
    env: tuple[tuple[str, str], ...] = ()


def _tree(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (folders as ``"dir"``)."""
    return {
        str(p.relative_to(root)): "dir"
        if p.is_dir()
        else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
    }


def _copy(src: Path, dst: Path) -> Path:
    (shutil.copytree if src.is_dir() else shutil.copy)(src, dst)
    return dst


def _mkdir(p: Path) -> Path:
    p.mkdir()
    return p


# ----------------------------------------------------------------------------------------------
# raw HDF5 scans
# ----------------------------------------------------------------------------------------------
def _scan_cmd(cmd: str, scan: Path, tmp: Path, base: Base) -> list[str]:
    if cmd == "export-ismrmrd":
        return ["export-ismrmrd", str(scan), str(tmp / "raw.h5")]
    if cmd == "recon":
        return ["recon", str(scan), str(tmp / "out.zarr"), "--method", "adjoint"]
    if cmd == "bench":
        return ["bench", "--scan", str(scan), "--methods", "adjoint", "--groups", "1"]
    result = tmp / "r.zarr"
    shutil.copytree(base.result, result)
    if cmd == "evaluate":
        return ["evaluate", str(result), "--reference", str(scan), "--json", str(tmp / "m.json")]
    return ["match", str(result), "--scan", str(scan)]


def h5(mutate: Callable[[h5py.File], None], cmd: str = "recon") -> Make:
    """Return a copy of the base scan changed by ``mutate`` (in HDF5), run through ``cmd``."""

    def make(tmp: Path, base: Base) -> Call:
        p = tmp / "scan.h5"
        shutil.copy(base.scan, p)
        with h5py.File(p, "r+") as f:
            mutate(f)
        return _scan_cmd(cmd, p, tmp, base)

    return make


def raw_bytes(fn: Callable[[bytes], bytes], cmd: str = "recon") -> Make:
    """Return a scan file whose bytes are ``fn(base bytes)``."""

    def make(tmp: Path, base: Base) -> Call:
        p = tmp / "scan.h5"
        p.write_bytes(fn(base.scan.read_bytes()))
        return _scan_cmd(cmd, p, tmp, base)

    return make


def root(name: str, value: Any) -> Callable[[h5py.File], None]:
    return lambda f: f.attrs.__setitem__(name, value)


def seq(name: str, value: Any) -> Callable[[h5py.File], None]:
    return lambda f: f["sequence/flip_angle_deg"].attrs.__setitem__(name, value)


def dataset(name: str, fn: Callable[[np.ndarray], np.ndarray]) -> Callable[[h5py.File], None]:
    """Replace dataset ``name`` by ``fn(its data)``, keeping its attributes."""

    def mutate(f: h5py.File) -> None:
        attrs = dict(f[name].attrs)
        data = fn(f[name][()])
        del f[name]
        f.create_dataset(name, data=data)
        f[name].attrs.update(attrs)

    return mutate


def put(name: str, index: Any, value: Any) -> Callable[[h5py.File], None]:
    """Set ``dataset[index] = value``."""

    def fn(a: np.ndarray) -> np.ndarray:
        a = a.copy()
        a[index] = value
        return a

    return dataset(name, fn)


def link(name: str, target: Any) -> Callable[[h5py.File], None]:
    def mutate(f: h5py.File) -> None:
        del f[name]
        f[name] = target

    return mutate


def one_tr(f: h5py.File) -> None:
    for name, fn in (
        ("kspace", lambda a: a[:, :, :1]),
        ("trajectory", lambda a: a[:, :1]),
        ("sequence/flip_angle_deg", lambda a: a[:1]),
    ):
        dataset(name, fn)(f)


def zero_samples(f: h5py.File) -> None:
    dataset("kspace", lambda a: a[..., :0])(f)
    dataset("trajectory", lambda a: a[:, :, :0])(f)


def huge_kspace(f: h5py.File) -> None:
    """Return a declared 1.2 TB k-space (chunked, nothing written: the file stays small)."""
    del f["kspace"]
    f.create_dataset("kspace", shape=(64, 48, 500, 100_000), dtype=np.complex64, chunks=True)


def sequence_as_dataset(f: h5py.File) -> None:
    del f["sequence"]
    f["sequence"] = np.zeros(6, np.float32)


def kspace_group(f: h5py.File) -> None:
    del f["kspace"]
    f.create_group("kspace")


FLIPS = "sequence/flip_angle_deg"
RAW = [
    Case(
        "raw", "tr_ms string", h5(seq("tr_ms", "abc")), "attribute 'tr_ms' = 'abc' is not a number"
    ),
    Case("raw", "tr_ms array", h5(seq("tr_ms", np.arange(3.0))), "attribute 'tr_ms' = [0.0, 1.0"),
    Case(
        "raw", "tr_ms bytes", h5(seq("tr_ms", np.bytes_(b"12"))), "'tr_ms' = b'12' is not a number"
    ),
    Case("raw", "tr_ms bool", h5(seq("tr_ms", True)), "'tr_ms' = True is not a number"),
    Case("raw", "tr_ms zero", h5(seq("tr_ms", 0.0)), "'tr_ms' = 0.0 is outside [1, 100] ms"),
    Case("raw", "tr_ms negative", h5(seq("tr_ms", -5.0)), "'tr_ms' = -5.0 is outside [1, 100] ms"),
    Case("raw", "tr_ms NaN", h5(seq("tr_ms", np.nan)), "'tr_ms' = nan is outside"),
    Case("raw", "te above tr", h5(seq("te_ms", 20.0)), "'te_ms' = 20 must be below 'tr_ms' = 12.5"),
    Case("raw", "te negative", h5(seq("te_ms", -1.0)), "'te_ms' = -1.0 is outside [0, 100] ms"),
    Case("raw", "ti huge", h5(seq("ti_ms", 1e9)), "'ti_ms' = 1000000000.0 is outside"),
    Case("raw", "rest negative", h5(seq("rest_s", -1.0)), "'rest_s' = -1.0 is outside [0, 60] s"),
    Case("raw", "te_ms missing", h5(lambda f: f[FLIPS].attrs.__delitem__("te_ms")), "'te_ms'"),
    Case("raw", "flip 720", h5(put(FLIPS, 3, 720.0)), "'flip_angle_deg' has 1 values above 180"),
    Case("raw", "flip 1e30", h5(put(FLIPS, 0, 1e30)), "'flip_angle_deg' has 1 values above 180"),
    Case("raw", "flips zero", h5(put(FLIPS, slice(None), 0.0)), "'flip_angle_deg' is zero"),
    Case("raw", "flip negative", h5(put(FLIPS, 2, -10.0)), "'flip_angle_deg' has 1 values below 0"),
    Case("raw", "flip NaN", h5(put(FLIPS, 1, np.nan)), "'flip_angle_deg' contains 1 NaN or Inf"),
    Case("raw", "flips float64", h5(dataset(FLIPS, lambda a: a.astype(np.float64))), "float64"),
    Case("raw", "one TR", h5(one_tr), "repetitions = 1 is outside [5, 100000]"),
    Case("raw", "sequence dataset", h5(sequence_as_dataset), "missing dataset 'sequence/flip"),
    Case("raw", "fov 1e300", h5(root("fov_mm", [1e300] * 3)), "1e+300 is outside [1, 1000] mm"),
    Case(
        "raw", "fov strings", h5(root("fov_mm", ["a", "b", "c"])), "'fov_mm' = ['a', 'b', 'c'] is"
    ),
    Case("raw", "fov two values", h5(root("fov_mm", [200.0, 200.0])), "is not 3 numbers"),
    Case("raw", "fov zero", h5(root("fov_mm", [0.0, 200.0, 200.0])), "0.0 is outside [1, 1000]"),
    Case("raw", "matrix 16.7", h5(root("matrix", [16.7, 16, 16])), "16.7 is not an integer"),
    Case("raw", "matrix string", h5(root("matrix", "16")), "attribute 'matrix' = '16' is not 3"),
    Case("raw", "matrix 100000", h5(root("matrix", [100_000] * 3)), "100000.0 is outside [4, 512]"),
    Case("raw", "matrix zero", h5(root("matrix", [0, 16, 16])), "0.0 is outside [4, 512] voxels"),
    Case("raw", "schema array", h5(root("schema", np.arange(3))), "'schema' attribute"),
    Case("raw", "schema other", h5(root("schema", np.bytes_(b"x/1"))), "unsupported schema 'x/1'"),
    Case("raw", "zero samples", h5(zero_samples), "samples = 0 is outside [1, 1000000]"),
    Case("raw", "zero coils", h5(dataset("kspace", lambda a: a[:0])), "coils = 0 is outside"),
    Case(
        "raw",
        "dangling external link",
        h5(link("kspace", h5py.ExternalLink("/nonexistent/x.h5", "/kspace"))),
        "'kspace' cannot be opened (a dangling link?)",
    ),
    Case(
        "raw",
        "dangling soft link",
        h5(link("trajectory", h5py.SoftLink("/nowhere"))),
        "'trajectory' cannot be opened",
    ),
    Case("raw", "kspace group", h5(kspace_group), "'kspace' is not a dataset"),
    Case("raw", "kspace Inf", h5(put("kspace", (0, 1, 2, 3), np.inf)), "'kspace' contains 1 NaN"),
    Case("raw", "kspace 3e38", h5(put("kspace", (1, 0, 0, 0), 3e38)), "exceeds float32's"),
    Case(
        "raw",
        "kspace complex128",
        h5(dataset("kspace", lambda a: a.astype(np.complex128))),
        "'kspace' has dtype complex128, expected complex64",
    ),
    Case("raw", "kspace 1.2 TB", h5(huge_kspace), "needs about 1.2 TB but only"),
    Case(
        "raw", "trajectory range", h5(put("trajectory", (0, 1, 2, 0), 8.0)), "'trajectory' leaves"
    ),
    Case("raw", "b1 zero", h5(put("b1", (3, 3, 3), 0.0)), "'b1' has 1 values at or below 0"),
    Case(
        "raw", "b1 negative", h5(put("b1", slice(None), -1.0)), "'b1' has 4096 values at or below"
    ),
    Case("raw", "b1 above 3", h5(put("b1", (0, 0, 0), 5.0)), "'b1' has 1 values above 3"),
    Case("raw", "b1 NaN", h5(put("b1", (1, 2, 3), np.nan)), "'b1' contains 1 NaN or Inf"),
    Case(
        "raw", "coil maps Inf", h5(put("coil_maps", (0, 1, 1, 1), np.inf)), "'coil_maps' contains"
    ),
    Case("raw", "calibration 3e38", h5(put("calibration", (0, 0, 0, 0), 3e38)), "norms overflow"),
    Case(
        "raw",
        "reference T1 negative",
        h5(put("reference/t1_ms", (8, 8, 8), -100.0), cmd="evaluate"),
        "'reference/t1_ms' has 1 values below 0",
    ),
    Case(
        "raw",
        "reference T2 1e6",
        h5(put("reference/t2_ms", (8, 8, 8), 1e6), cmd="evaluate"),
        "'reference/t2_ms' has 1 values above 5000",
    ),
    Case("raw", "tissue 9", h5(put("reference/tissue", (8, 8, 8), 9)), "labels above 4"),
    Case("raw", "reference pd NaN", h5(put("reference/pd", (2, 2, 2), np.nan)), "'reference/pd'"),
    Case("raw", "truncated", raw_bytes(lambda b: b[: len(b) // 2]), "truncated"),
    Case("raw", "garbage", raw_bytes(lambda b: bytes(range(256)) * 8), "not a readable HDF5 file"),
    Case("raw", "empty file", raw_bytes(lambda b: b""), "not a readable HDF5 file"),
    Case("raw", "NaN scan at bench", h5(put("kspace", (0, 0, 0, 0), np.nan), cmd="bench"), "NaN"),
    Case("raw", "b1 zero at match", h5(put("b1", (3, 3, 3), 0.0), cmd="match"), "'b1' has 1"),
    Case(
        "raw",
        "ESPIRiT memory",
        lambda tmp, b: ["recon", b.big, tmp / "o.zarr", "--method", "adjoint"],
        "ESPIRiT coil maps (16 coils, 256×256×256) needs about",
        env=(("SPURIG_MEMORY_GB", "1"),),
    ),
]


# ----------------------------------------------------------------------------------------------
# zarr results
# ----------------------------------------------------------------------------------------------
def _result_cmd(cmd: str, result: Path, tmp: Path, base: Base) -> list[str]:
    if cmd == "export-dicom":
        return ["export-dicom", str(result), str(tmp / "dicom")]
    if cmd == "export":
        return ["export", str(result), str(tmp / "nifti")]
    scan = tmp / "scan.h5"
    shutil.copy(base.scan, scan)
    if cmd == "evaluate":
        return ["evaluate", str(result), "--reference", str(scan), "--json", str(tmp / "m.json")]
    return ["match", str(result), "--scan", str(scan)]


def zr(mutate: Callable[[Path], None], cmd: str = "export") -> Make:
    """Return a copy of the base result changed by ``mutate`` (given the store's path)."""

    def make(tmp: Path, base: Base) -> Call:
        r = tmp / "r.zarr"
        shutil.copytree(base.result, r)
        mutate(r)
        return _result_cmd(cmd, r, tmp, base)

    return make


_DELETE = object()


def zattr(key: str, value: Any) -> Callable[[Path], None]:
    """Set (or delete) a root attribute by editing ``zarr.json`` (so any JSON value fits)."""

    def mutate(r: Path) -> None:
        meta = json.loads((r / "zarr.json").read_text())
        if value is _DELETE:
            del meta["attributes"][key]
        else:
            meta["attributes"][key] = value
        (r / "zarr.json").write_text(json.dumps(meta))

    return mutate


def zwrite(name: str, index: Any, value: Any) -> Callable[[Path], None]:
    def mutate(r: Path) -> None:
        import zarr

        zarr.open_group(str(r), mode="r+")[name][index] = value

    return mutate


def zreplace(name: str, data: np.ndarray) -> Callable[[Path], None]:
    """Replace array ``name`` by ``data`` (every chunk written)."""

    def mutate(r: Path) -> None:
        import zarr

        g = zarr.open_group(str(r), mode="r+")
        a = g.create_array(
            name,
            shape=data.shape,
            dtype=data.dtype,
            overwrite=True,
            config={"write_empty_chunks": True},
        )
        a[...] = data

    return mutate


def chunk(name: str, op: str) -> Callable[[Path], None]:
    """Delete, truncate or overwrite with garbage the chunk ``c/1/0/0/0`` of array ``name``."""

    def mutate(r: Path) -> None:
        files = sorted(p for p in (r / name / "c").rglob("*") if p.is_file())
        target = files[min(1, len(files) - 1)]
        if op == "delete":
            target.unlink()
        elif op == "truncate":
            target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
        else:
            target.write_bytes(b"\x00garbage" * 64)

    return mutate


def write_text(rel: str, text: str) -> Callable[[Path], None]:
    return lambda r: (r / rel).write_text(text)


def _huge(r: Path) -> None:
    """Coefficients declared (5, 1e5, 1e5, 1e5): metadata only, no chunk is ever written."""
    import zarr

    zarr.open_group(str(r), mode="r+").create_array(
        "coefficients",
        shape=(5, 100_000, 100_000, 100_000),
        chunks=(1, 100_000, 100_000, 100_000),
        dtype=np.complex64,
        overwrite=True,
    )


def _as_file(r: Path) -> None:
    shutil.rmtree(r)
    r.write_bytes(b"not a store")


def _emptied(r: Path) -> None:
    shutil.rmtree(r)
    r.mkdir()


ZARR = [
    Case("zarr", "groups string", zr(zattr("groups", "2")), "attribute 'groups' = '2' is not an"),
    Case("zarr", "groups zero", zr(zattr("groups", 0)), "attribute 'groups' = 0 is outside"),
    Case("zarr", "groups 2.5", zr(zattr("groups", 2.5)), "'groups' = 2.5 is not an integer"),
    Case("zarr", "runtime string", zr(zattr("runtime_s", "fast")), "'runtime_s' = 'fast' is not"),
    Case(
        "zarr",
        "runtime negative",
        zr(zattr("runtime_s", -1)),
        "'runtime_s' = -1 is outside [0, 10000000] s",
    ),
    Case("zarr", "voxel string", zr(zattr("voxel_size_mm", "1mm")), "'voxel_size_mm' = '1mm' is"),
    Case(
        "zarr",
        "voxel NaN at export",
        zr(zattr("voxel_size_mm", [float("nan"), 1.0, 1.0])),
        "'voxel_size_mm' = [nan, 1.0, 1.0]: nan is outside",
    ),
    Case("zarr", "voxel zero", zr(zattr("voxel_size_mm", [0, 1, 1])), "0.0 is outside [0.001"),
    Case("zarr", "config list", zr(zattr("config", [1, 2])), "'config' = [1, 2] is not a mapping"),
    Case("zarr", "timings list", zr(zattr("timings", [1])), "'timings' = [1] is not a mapping"),
    Case("zarr", "timings text", zr(zattr("timings", {"x": "a"})), "entry 'x' = 'a' is not a"),
    Case("zarr", "source number", zr(zattr("source", 5)), "'source' = 5 is not a mapping"),
    Case("zarr", "source path", zr(zattr("source", {"path": 5}), "match"), "entry 'path' = 5"),
    Case("zarr", "method number", zr(zattr("method", 5)), "'method' = 5 is not a string"),
    Case("zarr", "no schema", zr(zattr("schema", _DELETE)), "unsupported schema None"),
    Case("zarr", "future schema", zr(zattr("schema", "spurig-result/9")), "'spurig-result/9'"),
    Case("zarr", "garbage zarr.json", zr(write_text("zarr.json", "{not json")), "not valid JSON"),
    Case(
        "zarr",
        "no zarr.json",
        zr(lambda r: (r / "zarr.json").unlink()),
        "not a readable zarr result store",
    ),
    Case(
        "zarr",
        "garbage array metadata",
        zr(write_text("coefficients/zarr.json", "][")),
        "'coefficients'",
    ),
    Case(
        "zarr",
        "deleted chunk",
        zr(chunk("coefficients", "delete")),
        "array 'coefficients' is missing 1 of its 5 chunks",
    ),
    Case("zarr", "truncated chunk", zr(chunk("coefficients", "truncate")), "cannot be decoded"),
    Case("zarr", "garbage chunk", zr(chunk("t1_ms", "garbage")), "'t1_ms' cannot be decoded"),
    Case(
        "zarr",
        "deleted iterate at match",
        zr(chunk("iterations", "delete"), "match"),
        "array 'iterations' is missing 1 of",
    ),
    Case(
        "zarr",
        "coefficient 3e38 at evaluate",
        zr(zwrite("coefficients", (0, 8, 8, 8), 3e38), "evaluate"),
        "'coefficients' has |value| up to 3e+38",
    ),
    Case("zarr", "coefficient NaN", zr(zwrite("coefficients", (1, 2, 3, 4), np.nan)), "1 NaN"),
    Case(
        "zarr", "basis deleted", zr(lambda r: shutil.rmtree(r / "basis")), "missing array 'basis'"
    ),
    Case(
        "zarr",
        "basis columns",
        zr(zreplace("basis", np.ones((6, 4), np.complex64))),
        "'basis' has 4 columns but 'coefficients' has 5",
    ),
    Case(
        "zarr",
        "coefficients float32",
        zr(zreplace("coefficients", np.ones((5, 16, 16, 16), np.float32))),
        "array 'coefficients' is float32",
    ),
    Case(
        "zarr",
        "T1 negative",
        zr(zwrite("t1_ms", (4, 4, 4), -3.0)),
        "'t1_ms' has 1 values below 0",
    ),
    Case("zarr", "T2 1e9", zr(zwrite("t2_ms", (4, 4, 4), 1e9)), "'t2_ms' has 1 values above 5000"),
    Case(
        "zarr",
        "T1 shape",
        zr(zreplace("t1_ms", np.ones((16, 16, 8), np.float32))),
        "'t1_ms' has shape (16, 16, 8), expected (16, 16, 16)",
    ),
    Case(
        "zarr",
        "iterations shape at match",
        zr(zreplace("iterations", np.ones((2, 5, 16, 16, 8), np.complex64)), "match"),
        "'iterations' has shape (2, 5, 16, 16, 8)",
    ),
    Case(
        "zarr",
        "declared 1e5³",
        zr(_huge),
        "matrix = 100000 is outside [1, 1024] voxels",
    ),
    Case(
        "zarr",
        "basis of another sequence at evaluate",
        zr(zreplace("basis", np.eye(7, 5, dtype=np.complex64)), "evaluate"),
        "basis has 7 time points",
    ),
    Case("zarr", "a file, not a store", zr(_as_file), "is a file, not a .zarr store"),
    Case("zarr", "empty folder", zr(_emptied), "not a readable zarr result store"),
]
