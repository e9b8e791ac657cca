"""Figures 2–5 and 8: PNGs of the documented pixel size, drawn without a display."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from spurig_core.data import Reference, Result
from spurig_core.errors import InputError
from spurig_core.figures import (
    SubjectPanels,
    coefficient_figure,
    coefficient_slice,
    maps_figure,
)
from spurig_core.figures_charts import ablation_figure, speedup_figure, steps_figure


def _size(path) -> tuple[int, int]:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def _slices(seed: int = 0, n: int = 24) -> tuple[np.ndarray, dict]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:n, :n]
    ref = np.where((xx - n / 2) ** 2 + (yy - n / 2) ** 2 < (n / 3) ** 2, 1.0, 0.0)
    ref = ref * (1 + 0.2 * np.sin(xx / 3))
    rows = {
        d: {m: ref + s * rng.normal(size=ref.shape) for m in ("llr", "spurig", "adjoint")}
        for d, s in (("2min", 0.02), ("30s", 0.1))
    }
    return ref, rows


def test_import_is_headless_and_lazy():
    code = (
        "import sys, spurig_core.figures, spurig_core.report, spurig_core.metrics; "
        "print('matplotlib' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"MPLBACKEND": "", "DISPLAY": "", "PATH": ""},
    )
    assert out.stdout.strip() == "False"


def test_coefficient_figure_size_and_content(tmp_path):
    ref, rows = _slices()
    p = coefficient_figure(ref, rows, tmp_path / "fig2.png", peak=1.5, magnify=5, title="c1")
    # 0.3 in labels + columns reference, adjoint, spurig, llr × 2 in; rows 2 × 2 in + 0.4 in title
    assert _size(p) == (830, 440)
    arr = np.asarray(Image.open(p).convert("L"), dtype=np.float64)
    assert arr.std() > 10  # something was drawn
    assert not list(tmp_path.glob(".*tmp"))  # atomic write left no temporary file


def test_coefficient_figure_errors(tmp_path):
    ref, rows = _slices()
    rows["30s"]["llr"] = rows["30s"]["llr"][:10]
    with pytest.raises(InputError, match="30s/llr"):
        coefficient_figure(ref, rows, tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()
    with pytest.raises(InputError, match="no reconstructions"):
        coefficient_figure(ref, {}, tmp_path / "bad.png")


def test_coefficient_slice_unbalanced():
    g = torch.Generator().manual_seed(0)
    c = torch.randn(5, 4, 3, 6, dtype=torch.complex64, generator=g)
    np.testing.assert_array_equal(coefficient_slice(c, 2, index=0), c[0, :, :, 2].numpy())
    f = np.fft.fft(np.eye(5), norm="ortho")
    unb = np.einsum("ij,jxy->ixy", f.conj().T, c[..., 2].numpy())
    np.testing.assert_allclose(coefficient_slice(c, 2, index=2, unbalanced=True), unb[2], atol=1e-6)


def test_maps_figure_size(tmp_path):
    rng = np.random.default_rng(1)
    ref = np.full((20, 20), 850.0)
    ref[:4] = 0
    rows = {"1min": {"spurig": ref * (1 + 0.05 * rng.normal(size=ref.shape)), "llr": ref * 1.1}}
    p = maps_figure(ref, rows, tmp_path / "fig3_t1.png", parameter="T1")
    # 0.3 in + 3 columns × 2 in + 1 in for the colour bars; 1 row × 2 in + 0.25 in
    assert _size(p) == (730, 225)
    rows2 = {d: {m: v / 17 for m, v in per.items()} for d, per in rows.items()}
    p2 = maps_figure(
        ref / 17,
        rows2 | {"2min": {"llr": ref / 17}},
        tmp_path / "t2.png",
        parameter="T2",
        title="T2",
    )
    assert _size(p2) == (730, 440)
    with pytest.raises(InputError, match="parameter"):
        maps_figure(ref, rows, tmp_path / "x.png", parameter="PD")


def _eval(psnr_vals, ssim_vals) -> dict:
    return {
        "psnr_slices": [list(psnr_vals)],
        "ssim_slices": [list(ssim_vals)],
        "psnr": [float(np.mean(psnr_vals))],
        "ssim": [float(np.mean(ssim_vals))],
    }


def test_ablation_and_steps_figures(tmp_path):
    rng = np.random.default_rng(2)
    variants = {
        name: _eval(30 + i + rng.normal(size=10), 0.8 + 0.01 * i + 0.01 * rng.normal(size=10))
        for i, name in enumerate(["Full", "GLEAM", "GLEAM (no PT)", "Full (uncond.)"])
    }
    assert _size(ablation_figure(variants, tmp_path / "fig4.png")) == (800, 350)
    steps = {
        s: _eval(28 + np.log(s) + rng.normal(size=8), 0.7 + 0.02 * s + 0 * rng.normal(size=8))
        for s in (1, 2, 4, 6, 8)
    }
    assert _size(steps_figure(steps, tmp_path / "fig5.png")) == (800, 350)
    with pytest.raises(InputError, match="PSNR"):
        ablation_figure({"x": {}}, tmp_path / "bad.png", coefficient=0)


def test_speedup_figure(tmp_path):
    times = {
        "2min": {"llr-nufft": 1758.6, "llr": 241.7, "spurig": 15.8, "hybrid": 15.0},
        "30s": {"llr-nufft": 601.7, "llr": 217.0, "spurig": 11.8, "hybrid": 11.0},
    }
    assert _size(speedup_figure(times, tmp_path / "fig8.png")) == (800, 400)
    with pytest.raises(InputError, match="no time for"):
        speedup_figure({"1min": {"spurig": 1.0}}, tmp_path / "bad.png")
    with pytest.raises(InputError, match="non-positive"):
        speedup_figure({"1min": {"llr-nufft": 1.0, "spurig": 0.0}}, tmp_path / "bad.png")


def test_subject_panels_draw_figures_2_and_3(tmp_path):
    n = 16
    g = torch.Generator().manual_seed(5)
    tis = torch.zeros(n, n, n, dtype=torch.uint8)
    tis[3:13, 3:13, 5:11] = 3
    tis[6:10, 6:10, 6:10] = 2
    t1 = torch.tensor([0.0, 4000, 1400, 850])[tis.long()]
    t2 = torch.tensor([0.0, 1800, 80, 50])[tis.long()]
    ref = Reference(t1, t2, (tis > 0).to(torch.complex64), tis)
    coeffs = torch.randn(5, n, n, n, dtype=torch.complex64, generator=g) * (tis > 0)
    panels = SubjectPanels(ref, coeffs, name="s1")
    assert panels.z == 8  # middle of the brain slices 5..10
    basis = torch.zeros(10, 5, dtype=torch.complex64)
    for groups, scale in ((16, 0.01), (4, 0.05)):
        for method in ("adjoint", "spurig"):
            noisy = coeffs + scale * torch.randn(coeffs.shape, dtype=torch.complex64, generator=g)
            maps = {} if method == "adjoint" else {"t1_ms": t1 * 1.02, "t2_ms": t2 * 0.97}
            panels.add(Result(noisy, basis, method=method, groups=groups, **maps))
    np.testing.assert_array_equal(panels.error_mask, np.isin(tis[..., 8].numpy(), (2, 3)))
    files = panels.draw(tmp_path)
    assert [f.name for f in files] == [
        "fig2_s1_c1.png",
        "fig2_s1_u3.png",
        "fig3_s1_t1.png",
        "fig3_s1_t2.png",
    ]
    assert _size(files[0]) == (630, 440) and _size(files[2]) == (530, 440)
    with pytest.raises(InputError, match="does not fit"):
        panels.add(Result(coeffs[:, :8], basis, method="llr", groups=4))
