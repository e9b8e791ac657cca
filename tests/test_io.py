"""Round trips and atomicity of the file formats (HDF5 scans, zarr results, NIfTI, checkpoints)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from spurig_core.data import FispSequence, Reference, Result, Scan
from spurig_core.errors import InputError
from spurig_core.io import (
    atomic_path,
    load_checkpoint,
    load_result,
    load_scan,
    save_checkpoint,
    write_nifti,
    write_scan,
)


def _scan(rng: torch.Generator, *, with_ref: bool = True) -> Scan:
    m = (8, 8, 6)
    ref = None
    if with_ref:
        ref = Reference(
            t1_ms=torch.rand(m, generator=rng) * 1000,
            t2_ms=torch.rand(m, generator=rng) * 100,
            pd=torch.randn(m, dtype=torch.complex64, generator=rng),
            tissue=torch.randint(0, 5, m, generator=rng, dtype=torch.uint8),
        )
    return Scan(
        kspace=torch.randn(3, 2, 5, 7, dtype=torch.complex64, generator=rng),
        trajectory=(torch.rand(2, 5, 7, 3, generator=rng) - 0.5) * 6,
        sequence=FispSequence(np.linspace(5, 60, 5)),
        matrix=m,
        fov_mm=(200.0, 200.0, 150.0),
        calibration=torch.randn(3, 4, 4, 4, dtype=torch.complex64, generator=rng),
        coil_maps=torch.randn(3, *m, dtype=torch.complex64, generator=rng),
        b1=torch.rand(m, generator=rng) + 0.5,
        reference=ref,
    )


def test_scan_round_trip(tmp_path: Path, rng: torch.Generator) -> None:
    scan = _scan(rng)
    path = write_scan(scan, tmp_path / "s.h5")
    back = load_scan(path)
    for name in ("kspace", "trajectory", "calibration", "coil_maps", "b1"):
        assert torch.equal(getattr(scan, name), getattr(back, name)), name
    assert back.matrix == scan.matrix and back.fov_mm == scan.fov_mm
    assert back.sequence.same_as(scan.sequence)
    assert back.reference is not None and scan.reference is not None
    assert torch.equal(back.reference.tissue, scan.reference.tissue)
    assert back.voxel_size_mm == (25.0, 25.0, 25.0)
    assert back.sha256 is not None and len(back.sha256) == 64
    assert back.first_groups(1).kspace.shape == (3, 1, 5, 7)
    with pytest.raises(InputError, match="groups"):
        back.first_groups(3)


def test_scan_rejections(tmp_path: Path, rng: torch.Generator) -> None:
    path = write_scan(_scan(rng), tmp_path / "s.h5")
    with pytest.raises(InputError, match="no such file"):
        load_scan(tmp_path / "missing.h5")
    bad = tmp_path / "bad.h5"
    bad.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(InputError, match=r"truncated|HDF5"):
        load_scan(bad)
    with h5py.File(path, "a") as f:
        f["kspace"][0, 0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN or Inf"):
        load_scan(path)


def test_result_round_trip_and_overwrite_is_atomic(tmp_path: Path, rng: torch.Generator) -> None:
    res = Result(
        coefficients=torch.randn(5, 6, 7, 8, dtype=torch.complex64, generator=rng),
        basis=torch.randn(20, 5, dtype=torch.complex64, generator=rng),
        method="adjoint",
        groups=4,
        runtime_s=1.5,
        voxel_size_mm=(1.0, 2.0, 3.0),
        iterations=torch.randn(2, 5, 6, 7, 8, dtype=torch.complex64, generator=rng),
        t1_ms=torch.rand(6, 7, 8, generator=rng),
        config={"a": {"b": 1}},
    )
    out = tmp_path / "r.zarr"
    res.save(out)
    back = load_result(out)
    assert torch.equal(back.coefficients, res.coefficients)
    assert back.iterations is not None and back.iterations.shape == (2, 5, 6, 7, 8)
    assert back.voxel_size_mm == (1.0, 2.0, 3.0) and back.config == {"a": {"b": 1}}
    assert back.t2_ms is None and back.t1_ms is not None

    class Boom(RuntimeError):
        pass

    # A failing write leaves the existing store untouched and no temporary behind.
    with pytest.raises(Boom), atomic_path(out, directory=True) as tmp:
        tmp.mkdir()
        (tmp / "junk").write_text("x")
        raise Boom
    assert torch.equal(load_result(out).coefficients, res.coefficients)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.zarr"]


def test_result_rejects_other_schema(tmp_path: Path) -> None:
    import zarr

    g = zarr.open_group(str(tmp_path / "x.zarr"), mode="w")
    g.attrs["schema"] = "other/9"
    with pytest.raises(InputError, match="unsupported schema"):
        load_result(tmp_path / "x.zarr")


def test_nifti_affine(tmp_path: Path) -> None:
    import nibabel as nib

    vol = np.arange(4 * 6 * 8, dtype=np.float32).reshape(4, 6, 8)
    write_nifti(vol, tmp_path / "v.nii.gz", (2.0, 2.0, 3.0))
    img = nib.load(tmp_path / "v.nii.gz")
    np.testing.assert_array_equal(np.asarray(img.dataobj), vol)
    assert img.header.get_zooms() == (2.0, 2.0, 3.0)
    # voxel r sits at (r - shape//2) * voxel size
    np.testing.assert_allclose(img.affine @ [2, 3, 4, 1], [0, 0, 0, 1])


def test_checkpoint_round_trip_and_rejection(tmp_path: Path) -> None:
    save_checkpoint({"kind": "test", "w": torch.ones(3)}, tmp_path / "c.pt")
    assert torch.equal(load_checkpoint(tmp_path / "c.pt")["w"], torch.ones(3))
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "broken.pt")
    save_checkpoint({"w": 1}, tmp_path / "nokind.pt")
    with pytest.raises(InputError, match="not a spurig checkpoint"):
        load_checkpoint(tmp_path / "nokind.pt")
