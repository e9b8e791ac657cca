"""Metrics of SPEC §5: PSNR/SSIM per coefficient, reference coefficients, T1/T2 errors, statistics.

Oracles: hand-computed PSNR values, an independent numpy SSIM, direct per-voxel EPG projections,
the exact Wilcoxon null distribution and scipy itself.
"""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
from scipy.ndimage import uniform_filter

from spurig_core.data import FispSequence, Reference, Result, Scan
from spurig_core.errors import InputError
from spurig_core.io import load_scan, write_scan
from spurig_core.metrics import (
    brain_slices,
    coefficient_metrics,
    evaluate,
    format_metrics,
    psnr,
    quantitative_errors,
    reference_coefficients,
)
from spurig_core.metrics_stats import paired_tests, wilcoxon_p
from spurig_core.physics import simulate_signals, unbalance_coefficients

N = 12  # matrix edge of the small phantoms
N_TR = 60  # short sequences keep EPG cheap


def _short_sequence(n_tr: int = N_TR) -> FispSequence:
    fa = 10 + 50 * np.sin(np.pi * np.arange(n_tr) / n_tr)
    return FispSequence(fa.astype(np.float32))


def _phantom(seed: int = 0) -> Reference:
    """Return a 12³ block phantom: WM shell, GM core, CSF centre, 'other' slab, empty end slices."""
    g = torch.Generator().manual_seed(seed)
    tis = torch.zeros(N, N, N, dtype=torch.uint8)
    tis[2:10, 2:10, 3:9] = 3
    tis[4:8, 4:8, 4:8] = 2
    tis[5:7, 5:7, 5:7] = 1
    tis[2:10, 2:10, 10] = 4  # 'other tissue' only: not a brain slice
    base1 = torch.tensor([0.0, 4000.0, 1400.0, 850.0, 1200.0])
    base2 = torch.tensor([0.0, 1800.0, 80.0, 50.0, 40.0])
    vary = 1 + 0.1 * (torch.rand(N, N, N, generator=g) - 0.5)
    t1 = base1[tis.long()] * vary
    t2 = base2[tis.long()] * vary
    phase = torch.exp(1j * 0.3 * torch.rand(N, N, N, generator=g))
    pd = ((tis > 0).float() * (0.8 + 0.2 * torch.rand(N, N, N, generator=g))) * phase
    return Reference(t1.float(), t2.float(), pd.to(torch.complex64), tis)


def _basis(n_tr: int = N_TR, k: int = 5, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n_tr, k, dtype=torch.complex128, generator=g))
    return q.to(torch.complex64)


def _scan(ref: Reference | None, seq: FispSequence, b1: torch.Tensor | None = None) -> Scan:
    return Scan(
        kspace=torch.zeros(1, 1, seq.n_tr, 4, dtype=torch.complex64),
        trajectory=torch.zeros(1, seq.n_tr, 4, 3),
        sequence=seq,
        matrix=(N, N, N),
        fov_mm=(24.0, 24.0, 24.0),
        b1=b1,
        reference=ref,
    )


# ----------------------------------------------------------------------------------------------
# PSNR and slice selection
# ----------------------------------------------------------------------------------------------
def test_psnr_of_known_mse():
    ref = np.zeros((4, 4))
    img = ref + 0.1  # MSE = 0.01
    assert psnr(img, ref, 2.0) == pytest.approx(10 * math.log10(4.0 / 0.01), abs=1e-9)
    assert psnr(ref, ref, 1.0) == math.inf


def test_brain_slices_only_labels_1_to_3():
    ref = _phantom()
    np.testing.assert_array_equal(brain_slices(ref.tissue), np.arange(3, 9))
    tis = torch.zeros(4, 4, 5, dtype=torch.uint8)
    tis[0, 0, 1] = 1  # CSF only counts
    tis[1, 1, 3] = 4  # other tissue does not
    np.testing.assert_array_equal(brain_slices(tis), [1])


def test_coefficient_metrics_hand_computed_and_peak_over_volume():
    tis = torch.zeros(8, 8, 6, dtype=torch.uint8)
    tis[2:6, 2:6, 1:4] = 2
    ref = torch.zeros(2, 8, 8, 6, dtype=torch.complex64)
    ref[:, 2:6, 2:6, 1:4] = 1.0
    ref[:, 0, 0, 5] = 4.0  # the volume maximum lies in a non-brain slice
    rec = ref.clone()
    rec[0, :, :, 2] += 0.5  # error in one brain slice of c1 only
    rec[1] = rec[1] * torch.exp(torch.tensor(1j * 0.7))  # phase only: magnitudes unchanged
    rec[0, :, :, 5] += 3.0  # huge error in a non-brain slice: must not count
    m = coefficient_metrics(rec, ref, tis)
    assert m["slices"] == [1, 2, 3]
    assert m["peak"] == pytest.approx([4.0, 4.0])
    # slice 2 of c1: every voxel off by 0.5 in magnitude (|1.5| vs 1 inside, |0.5| vs 0 outside)
    expected = 10 * math.log10(16.0 / 0.25)
    assert m["psnr_slices"][0][0] == math.inf and m["psnr_slices"][0][2] == math.inf
    assert m["psnr_slices"][0][1] == pytest.approx(expected, abs=1e-6)
    assert m["psnr_slices"][1] == [math.inf] * 3
    assert m["ssim_slices"][1] == pytest.approx([1.0] * 3)
    assert m["psnr"][0] == math.inf  # mean over slices
    assert len(m["ssim"]) == 2 and len(m["psnr_std"]) == 2


def _ssim_numpy(x: np.ndarray, y: np.ndarray, data_range: float, win: int = 7) -> float:
    """Wang et al. 2004 SSIM with a uniform window and sample covariances (independent oracle)."""
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    npts = win * win
    cov = npts / (npts - 1)
    ux, uy = uniform_filter(x, win), uniform_filter(y, win)
    vx = cov * (uniform_filter(x * x, win) - ux * ux)
    vy = cov * (uniform_filter(y * y, win) - uy * uy)
    vxy = cov * (uniform_filter(x * y, win) - ux * uy)
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    pad = (win - 1) // 2
    return float(s[pad:-pad, pad:-pad].mean())


def test_ssim_matches_independent_numpy_ssim():
    rng = np.random.default_rng(3)
    ref = np.abs(rng.normal(size=(1, 16, 14, 3))) + 0.5
    rec = ref + 0.2 * rng.normal(size=ref.shape)
    tis = np.full((16, 14, 3), 3, dtype=np.uint8)
    m = coefficient_metrics(rec.astype(np.complex64), ref.astype(np.complex64), tis)
    peak = float(np.abs(ref.astype(np.complex64)).max())
    for z in range(3):
        oracle = _ssim_numpy(
            np.abs(rec[0, :, :, z].astype(np.complex64)).astype(np.float64),
            np.abs(ref[0, :, :, z].astype(np.complex64)).astype(np.float64),
            peak,
        )
        assert m["ssim_slices"][0][z] == pytest.approx(oracle, abs=1e-6)


def test_coefficient_metrics_rejects_bad_input():
    tis = torch.zeros(8, 8, 4, dtype=torch.uint8)
    ref = torch.ones(5, 8, 8, 4, dtype=torch.complex64)
    with pytest.raises(InputError, match="no axial slice contains brain"):
        coefficient_metrics(ref, ref, tis)
    with pytest.raises(InputError, match="does not match"):
        coefficient_metrics(ref[:, :4], ref, tis)


# ----------------------------------------------------------------------------------------------
# reference coefficients
# ----------------------------------------------------------------------------------------------
def test_reference_coefficients_against_direct_projection():
    seq = _short_sequence()
    ref = _phantom()
    basis = _basis()
    g = torch.Generator().manual_seed(5)
    b1 = (0.8 + 0.4 * torch.rand(N, N, N, generator=g)).float()
    c = reference_coefficients(ref, basis, b1=b1, sequence=seq, chunk=37)
    assert c.shape == (5, N, N, N) and c.dtype == torch.complex64
    assert torch.all(c[:, ref.tissue == 0] == 0)
    for r in [(5, 5, 5), (3, 3, 3), (6, 4, 4), (2, 9, 10), (7, 7, 8)]:
        sig = simulate_signals(
            ref.t1_ms[r].item(), ref.t2_ms[r].item(), b1[r].item(), seq, dtype=torch.float64
        )[0]
        direct = basis.to(torch.complex128).conj().T @ (ref.pd[r].to(torch.complex128) * sig)
        torch.testing.assert_close(
            c[(slice(None), *r)].to(torch.complex128), direct, rtol=1e-4, atol=1e-6
        )


def test_reference_coefficients_shape_errors():
    ref = _phantom()
    with pytest.raises(InputError, match="time points"):
        reference_coefficients(ref, _basis(n_tr=30), sequence=_short_sequence())
    with pytest.raises(InputError, match="b1"):
        reference_coefficients(ref, _basis(), b1=torch.ones(3, 3, 3), sequence=_short_sequence())


def test_unbalance_inverts_the_balanced_basis():
    rng = np.random.default_rng(0)
    k = 5
    phi = rng.normal(size=(40, k)) + 1j * rng.normal(size=(40, k))
    alpha = rng.normal(size=(k, 3, 2, 2)) + 1j * rng.normal(size=(k, 3, 2, 2))
    f = np.fft.fft(np.eye(k), norm="ortho")  # unitary DFT matrix F_k
    phi_bal = phi @ f.conj().T  # Φ̃ = Φ F_kᴴ
    alpha_bal = np.einsum("ij,j...->i...", f, alpha)  # α̃ = F_k α
    np.testing.assert_allclose(
        np.einsum("tj,j...->t...", phi_bal, alpha_bal),
        np.einsum("tj,j...->t...", phi, alpha),
        atol=1e-12,
    )
    got = unbalance_coefficients(torch.from_numpy(alpha_bal)).numpy()
    np.testing.assert_allclose(got, alpha, atol=1e-12)


def test_unbalance_is_one_rule_for_torch_numpy_and_dask():
    # The engine's single implementation serves metrics/figures (torch, axis 0) and the plugin
    # (numpy or lazy dask, axis -4 of (n, basis, x, y, z)); all must give the same α.
    da = pytest.importorskip("dask.array")
    from napari_spurig._layers import unbalance as plugin_unbalance

    g = torch.Generator().manual_seed(7)
    c = torch.randn(2, 5, 3, 4, 2, dtype=torch.complex64, generator=g)
    f = torch.fft.fft(torch.eye(5, dtype=torch.complex128), norm="ortho")  # F_k
    want = torch.einsum("ij,nj...->ni...", f.conj().T, c.to(torch.complex128))
    got_torch = torch.stack([unbalance_coefficients(v) for v in c])
    torch.testing.assert_close(got_torch.to(torch.complex128), want, atol=1e-6, rtol=0)
    got_np = plugin_unbalance(c.numpy())
    assert got_np.dtype == np.complex64
    np.testing.assert_allclose(got_np, want.numpy(), atol=1e-6)
    lazy = plugin_unbalance(da.from_array(c.numpy(), chunks=(1, 2, 3, 4, 2)))
    assert isinstance(lazy, da.Array)
    np.testing.assert_allclose(lazy.compute(), want.numpy(), atol=1e-6)
    with pytest.raises(InputError, match="basis axis"):
        unbalance_coefficients(c, axis=5)


# ----------------------------------------------------------------------------------------------
# T1/T2 errors
# ----------------------------------------------------------------------------------------------
def test_quantitative_errors_exclude_csf():
    ref = _phantom()
    t1 = ref.t1_ms.clone()
    t2 = ref.t2_ms.clone()
    gm, wm, csf = ref.tissue == 2, ref.tissue == 3, ref.tissue == 1
    t1[gm] *= 1.10  # +10 % in GM
    t2[wm] *= 0.80  # −20 % in WM
    t1[csf] *= 3.0  # CSF: +200 %, must not count
    t2[csf] = 0.0
    q = quantitative_errors(t1, t2, ref)
    n_gm, n_wm = int(gm.sum()), int(wm.sum())
    assert q["n_voxels"] == n_gm + n_wm
    assert q["t1_rel_error"] == pytest.approx(0.10 * n_gm / (n_gm + n_wm), rel=1e-5)
    assert q["t2_rel_error"] == pytest.approx(0.20 * n_wm / (n_gm + n_wm), rel=1e-5)
    assert len(q["t1_rel_error_voxels"]) == n_gm + n_wm
    assert np.std(q["t1_rel_error_voxels"]) == pytest.approx(q["t1_rel_error_std"])
    per = q["per_tissue"]
    assert per["CSF"]["t1"] == pytest.approx(2.0, rel=1e-5)
    assert per["CSF"]["t2"] == pytest.approx(1.0)
    assert per["GM"]["t1"] == pytest.approx(0.10, rel=1e-5) and per["GM"]["t2"] == 0
    assert per["WM"]["t2"] == pytest.approx(0.20, rel=1e-5)
    with pytest.raises(InputError, match="do not match"):
        quantitative_errors(t1[:4], t2, ref)


# ----------------------------------------------------------------------------------------------
# statistics
# ----------------------------------------------------------------------------------------------
def test_wilcoxon_exact_small_sample_and_scipy():
    a = [1.2, 2.3, 3.1, 4.8, 5.5]
    b = [1.0, 2.0, 3.0, 4.0, 5.0]
    # all 5 differences positive: exact two-sided p = 2 / 2^5
    assert wilcoxon_p(a, b) == pytest.approx(2 / 32)
    assert wilcoxon_p(a, b, alternative="greater") == pytest.approx(1 / 32)
    # exact null distribution by enumeration for distinct |d| (oracle independent of scipy)
    d = np.array([0.5, -1.1, 2.2, 3.4, -0.2, 1.7, 2.9])
    ranks = np.argsort(np.argsort(np.abs(d))) + 1
    w = ranks[d > 0].sum()
    sums = [
        sum(r for r, s in zip(ranks, signs, strict=True) if s)
        for signs in itertools.product([0, 1], repeat=d.size)
    ]
    mean = ranks.sum() / 2
    p_exact = np.mean([abs(s - mean) >= abs(w - mean) for s in sums])
    assert wilcoxon_p(d, np.zeros_like(d)) == pytest.approx(p_exact)
    from scipy.stats import wilcoxon

    rng = np.random.default_rng(2)
    x, y = rng.normal(size=60), rng.normal(0.3, 1, size=60)
    assert wilcoxon_p(x, y) == pytest.approx(wilcoxon(x, y).pvalue)
    assert math.isnan(wilcoxon_p([1.0, 2.0], [1.0, 2.0]))
    with pytest.raises(InputError):
        wilcoxon_p([1.0], [1.0, 2.0])


# ----------------------------------------------------------------------------------------------
# evaluate
# ----------------------------------------------------------------------------------------------
def test_evaluate_on_a_written_scan(tmp_path):
    seq = _short_sequence()
    ref = _phantom()
    basis = _basis()
    path = write_scan(_scan(ref, seq), tmp_path / "subj01.h5")
    scan = load_scan(path)
    coeffs = reference_coefficients(ref, basis, sequence=seq)
    g = torch.Generator().manual_seed(9)
    noisy = coeffs + 0.002 * torch.randn(coeffs.shape, dtype=torch.complex64, generator=g)
    res = Result(
        noisy,
        basis,
        method="spurig",
        groups=8,
        runtime_s=1.5,
        t1_ms=ref.t1_ms * 1.05,
        t2_ms=ref.t2_ms.clone(),
    )
    m = evaluate(res, scan)
    json.dumps(m)  # JSON-serialisable
    assert m["method"] == "spurig" and m["duration"] == "1min" and m["subject"] == "subj01"
    assert len(m["psnr"]) == 5 and len(m["ssim"]) == 5
    assert all(math.isfinite(p) and p > 20 for p in m["psnr"])
    assert m["slices"] == list(range(3, 9))
    assert m["t1_rel_error"] == pytest.approx(0.05, rel=1e-4) and m["t2_rel_error"] == 0
    # a perfect reconstruction gives infinite PSNR and SSIM 1 in every slice
    perfect = evaluate(res.replace(coefficients=coeffs, t1_ms=None, t2_ms=None), scan)
    assert all(p == math.inf for p in perfect["psnr"])
    assert perfect["ssim"] == pytest.approx([1.0] * 5)
    assert "t1_rel_error" not in perfect
    # paired tests between two methods on the same scan
    worse = evaluate(
        res.replace(coefficients=coeffs + 3 * (noisy - coeffs), t1_ms=ref.t1_ms * 1.08), scan
    )
    tests = paired_tests(m, worse, alternative="greater")
    from scipy.stats import wilcoxon

    for j in range(5):
        expected = wilcoxon(
            m["psnr_slices"][j], worse["psnr_slices"][j], alternative="greater"
        ).pvalue
        assert tests["psnr"][j] == pytest.approx(expected)
        assert tests["psnr"][j] < 0.05
    assert tests["t1_rel_error"] == pytest.approx(
        wilcoxon(
            m["t1_rel_error_voxels"], worse["t1_rel_error_voxels"], alternative="greater"
        ).pvalue
    )
    assert "t2_rel_error" in tests
    text = format_metrics(m)
    assert "PSNR" in text and "T1 relative error" in text and "5.00" in text


def test_evaluate_input_errors():
    seq = _short_sequence()
    ref = _phantom()
    basis = _basis()
    res = Result(torch.zeros(5, N, N, N, dtype=torch.complex64), basis, method="llr", groups=4)
    with pytest.raises(InputError, match="no reference"):
        evaluate(res, _scan(None, seq))
    small = res.replace(coefficients=torch.zeros(5, 8, 8, 8, dtype=torch.complex64))
    with pytest.raises(InputError, match="matrix"):
        evaluate(small, _scan(ref, seq))
    with pytest.raises(InputError, match="time points"):
        evaluate(res, _scan(ref, _short_sequence(40)))
