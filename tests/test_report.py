"""Cohort tables (Tables 1–2), report.md, cohort evaluation end to end, and NIfTI export."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy.stats import wilcoxon

from spurig_core.data import FispSequence, Reference, Result, Scan
from spurig_core.errors import InputError
from spurig_core.io import write_scan
from spurig_core.metrics import reference_coefficients
from spurig_core.report import (
    Section,
    Table,
    evaluate_cohort,
    export_result,
    runtime_table,
    table1,
    table2,
    write_report,
)

METHODS = {"spurig": 1.0, "hybrid": 0.5, "llr": 0.0}  # PSNR offsets of the synthetic cohort


def _synthetic_evals(seed: int = 0, worse_c5: bool = False) -> list[dict]:
    """2 subjects × 2 durations × 3 methods, 12 slices and 40 voxels each."""
    rng = np.random.default_rng(seed)
    evals = []
    for subject in ("s1", "s2"):
        base = 30 + rng.normal(size=(5, 12))
        vox = np.abs(rng.normal(0.08, 0.03, size=40))
        for groups, duration in ((16, "2min"), (4, "30s")):
            for method, off in METHODS.items():
                p = base + off - (4 if groups == 4 else 0) + 0.05 * rng.normal(size=base.shape)
                if worse_c5 and method == "spurig":
                    p[4] -= 3.0
                s = 0.8 + 0.01 * p
                e1 = vox * (1.5 - off) + 0.001 * rng.random(40)
                evals.append(
                    {
                        "subject": subject,
                        "method": method,
                        "groups": groups,
                        "duration": duration,
                        "runtime_s": {"spurig": 2.0, "hybrid": 1.8, "llr": 60.0}[method],
                        "psnr_slices": p.tolist(),
                        "ssim_slices": s.tolist(),
                        "psnr": p.mean(1).tolist(),
                        "ssim": s.mean(1).tolist(),
                        "t1_rel_error": float(e1.mean()),
                        "t2_rel_error": float(e1.mean()),
                        "t1_rel_error_voxels": e1.tolist(),
                        "t2_rel_error_voxels": (e1 * 1.1).tolist(),
                    }
                )
    return evals


def _records(table: Table) -> list[dict]:
    return list(csv.DictReader(io.StringIO(table.to_csv())))


def test_table1_values_and_significance():
    evals = _synthetic_evals(worse_c5=True)
    t = table1(evals)
    md = t.to_markdown()
    assert len(t.rows) == 6 and t.rows[0][:2] == ("2min", "SPUR-iG (ours)")
    assert len(t.header) == 2 + 10
    recs = _records(t)
    assert len(recs) == 2 * 2 * 5 * 3
    # pooled mean ± std across the slices of both subjects
    pooled = np.concatenate(
        [
            np.asarray(e["psnr_slices"][0])
            for e in evals
            if e["method"] == "llr" and e["duration"] == "30s"
        ]
    )
    r = next(
        x
        for x in recs
        if x["method"] == "llr"
        and x["duration"] == "30s"
        and x["metric"] == "psnr"
        and x["coefficient"] == "c1"
    )
    assert float(r["mean"]) == pytest.approx(pooled.mean())
    assert float(r["std"]) == pytest.approx(pooled.std())
    assert int(r["n"]) == 24
    ours = np.concatenate(
        [
            np.asarray(e["psnr_slices"][0])
            for e in evals
            if e["method"] == "spurig" and e["duration"] == "30s"
        ]
    )
    assert float(r["p_vs_spurig"]) == pytest.approx(wilcoxon(ours, pooled).pvalue)
    # SPUR-iG is better in c1–c4 (bold) but worse in c5 (not bold)
    row = t.rows[0]
    assert all(c.startswith("**") for c in row[2:6]) and not row[6].startswith("**")
    # SSIM follows PSNR in this cohort: bold for c1–c4, not for c5
    assert all(c.startswith("**") for c in row[7:11]) and not row[11].startswith("**")
    assert "**" not in "".join(t.rows[1] + t.rows[2])  # baselines never bold
    assert md.count("\n|---") == 1 and "Wilcoxon" in md


def test_table1_not_bold_without_enough_evidence():
    evals = [e for e in _synthetic_evals() if e["subject"] == "s1"]
    for e in evals:  # only 2 slices: a Wilcoxon test cannot reach p < 0.05
        e["psnr_slices"] = [v[:2] for v in e["psnr_slices"]]
        e["ssim_slices"] = [v[:2] for v in e["ssim_slices"]]
    t = table1(evals)
    assert "**" not in t.to_markdown()
    with pytest.raises(InputError):
        table1([])


def test_table2_percent_and_pvalues():
    evals = _synthetic_evals()
    t = table2(evals)
    assert t.header == ("method", "2min T1 (%)", "2min T2 (%)", "30s T1 (%)", "30s T2 (%)")
    assert [r[0] for r in t.rows] == ["SPUR-iG (ours)", "Hybrid 2D/3D", "LLR (iGROG)"]
    recs = _records(t)
    llr = np.concatenate(
        [
            e["t1_rel_error_voxels"]
            for e in evals
            if e["method"] == "llr" and e["duration"] == "2min"
        ]
    )
    ours = np.concatenate(
        [
            e["t1_rel_error_voxels"]
            for e in evals
            if e["method"] == "spurig" and e["duration"] == "2min"
        ]
    )
    r = next(
        x
        for x in recs
        if x["method"] == "llr" and x["duration"] == "2min" and x["parameter"] == "T1"
    )
    assert float(r["mean_percent"]) == pytest.approx(100 * llr.mean())
    assert float(r["std_percent"]) == pytest.approx(100 * llr.std())
    assert float(r["p_vs_spurig"]) == pytest.approx(wilcoxon(ours, llr).pvalue)
    assert t.rows[0][1] == f"**{100 * ours.mean():.1f} ± {100 * ours.std():.1f}**"
    with pytest.raises(InputError, match="match"):
        table2([{k: v for k, v in e.items() if "rel_error" not in k} for e in evals])


def test_runtime_table_ratios():
    t = runtime_table({"2min": {"llr-nufft": 100.0, "spurig": 4.0}, "30s": {"spurig": 2.0}})
    assert t.rows[0] == ("2min", "4.00", "100.00", "×25.0", "×1.0")
    assert t.rows[1] == ("30s", "2.00", "–", "–", "–")
    recs = _records(t)
    assert float(recs[0]["speedup_vs_llr_nufft"]) == pytest.approx(25.0)
    # rows longest first, as Tables 1-2, whatever order the results were read in
    t = runtime_table({"15s": {"spurig": 1.0}, "1min": {"spurig": 3.0}, "2min": {"spurig": 4.0}})
    assert [r[0] for r in t.rows] == ["2min", "1min", "15s"]


def test_write_report_links_relative(tmp_path):
    fig = tmp_path / "figs" / "a.png"
    fig.parent.mkdir()
    fig.write_bytes(b"png")
    t = Table(("a", "b"), (("1", "2"),), caption="cap")
    p = write_report(
        tmp_path / "report.md",
        Section("Tables", "some text", tables=(t,)),
        ("Timings", "- grid: 1.0 s"),
        Section("Figures", figures=(fig,)),
        title="demo",
        intro="hello",
    )
    text = p.read_text()
    assert text.startswith("# demo\n\nhello\n\n## Tables\n\nsome text\n\n| a | b |")
    assert "![a](figs/a.png)" in text and "## Timings" in text and "cap" in text


# ----------------------------------------------------------------------------------------------
# NIfTI export
# ----------------------------------------------------------------------------------------------
def test_export_round_trip(tmp_path):
    g = torch.Generator().manual_seed(0)
    coeffs = torch.randn(5, 6, 8, 10, dtype=torch.complex64, generator=g)
    t1 = torch.rand(6, 8, 10, generator=g) * 2000
    res = Result(
        coeffs,
        torch.zeros(20, 5, dtype=torch.complex64),
        method="spurig",
        groups=8,
        voxel_size_mm=(1.5, 2.0, 2.5),
        t1_ms=t1,
        t2_ms=t1 / 10,
        pd=t1 / 1000,
    )
    store = res.save(tmp_path / "r.zarr")
    files = export_result(store, tmp_path / "nii")
    assert [f.name for f in files] == [
        "t1_ms.nii.gz",
        "t2_ms.nii.gz",
        "pd.nii.gz",
        "coefficients_abs.nii.gz",
    ]
    expected_affine = np.array(
        [[1.5, 0, 0, -3 * 1.5], [0, 2.0, 0, -4 * 2.0], [0, 0, 2.5, -5 * 2.5], [0, 0, 0, 1]]
    )
    img = nib.load(files[0])
    assert img.shape == (6, 8, 10)
    assert img.header.get_zooms() == pytest.approx((1.5, 2.0, 2.5))
    np.testing.assert_allclose(img.affine, expected_affine)
    np.testing.assert_allclose(img.get_fdata(), t1.numpy(), rtol=1e-6)
    # voxel (3, 4, 5) = matrix//2 sits at the origin
    np.testing.assert_allclose(img.affine @ [3, 4, 5, 1], [0, 0, 0, 1])
    four = nib.load(files[3])
    assert four.shape == (6, 8, 10, 5)
    np.testing.assert_allclose(four.affine, expected_affine)
    np.testing.assert_allclose(four.get_fdata()[..., 2], coeffs[2].abs().numpy(), rtol=1e-6)
    # without maps only the coefficients are written
    only = export_result(res.replace(t1_ms=None, t2_ms=None, pd=None), tmp_path / "nii2")
    assert [f.name for f in only] == ["coefficients_abs.nii.gz"]


# ----------------------------------------------------------------------------------------------
# cohort evaluation end to end
# ----------------------------------------------------------------------------------------------
def _write_subject(path, seed: int) -> tuple[Scan, Reference]:
    n, n_tr = 12, 40
    seq = FispSequence((10 + 50 * np.sin(np.pi * np.arange(n_tr) / n_tr)).astype(np.float32))
    g = torch.Generator().manual_seed(seed)
    tis = torch.zeros(n, n, n, dtype=torch.uint8)
    tis[2:10, 2:10, 3:9] = 3
    tis[4:8, 4:8, 4:8] = 2
    tis[5:7, 5:7, 5:7] = 1
    t1 = torch.tensor([0.0, 4000, 1400, 850])[tis.long()] * (
        1 + 0.05 * torch.rand(n, n, n, generator=g)
    )
    t2 = torch.tensor([0.0, 1800, 80, 50])[tis.long()] * (
        1 + 0.05 * torch.rand(n, n, n, generator=g)
    )
    ref = Reference(t1.float(), t2.float(), (tis > 0).to(torch.complex64), tis)
    scan = Scan(
        torch.zeros(1, 16, n_tr, 2, dtype=torch.complex64),
        torch.zeros(16, n_tr, 2, 3),
        seq,
        (n, n, n),
        (24.0, 24.0, 24.0),
        reference=ref,
    )
    write_scan(scan, path)
    return scan, ref


def test_evaluate_cohort_end_to_end(tmp_path):
    results = tmp_path / "results"
    q, _ = torch.linalg.qr(
        torch.randn(40, 5, dtype=torch.complex64, generator=torch.Generator().manual_seed(3))
    )
    g = torch.Generator().manual_seed(4)
    noise = {"spurig": 0.002, "llr": 0.006, "adjoint": 0.02}
    for s in ("subjA", "subjB"):
        scan_path = tmp_path / "scans" / f"{s}.h5"
        scan_path.parent.mkdir(exist_ok=True)
        scan, ref = _write_subject(scan_path, seed=len(s) + ord(s[-1]))
        coeffs = reference_coefficients(ref, q, sequence=scan.sequence)
        for groups, dur in ((16, "2min"), (4, "30s")):
            for m, sd in noise.items():
                sd = sd * (2 if groups == 4 else 1)
                c = coeffs + sd * torch.randn(coeffs.shape, dtype=torch.complex64, generator=g)
                maps = {}
                if m != "adjoint":
                    maps = {"t1_ms": ref.t1_ms * (1 + 20 * sd), "t2_ms": ref.t2_ms * (1 - 30 * sd)}
                # subjB's scans are recorded under an old path: found beside the results instead
                src = str(scan_path) if s == "subjA" else f"/nonexistent/{s}.h5"
                Result(
                    c,
                    q,
                    method=m,
                    groups=groups,
                    runtime_s={"spurig": 2, "llr": 50, "adjoint": 1}[m],
                    source={"path": src},
                    voxel_size_mm=(2.0, 2.0, 2.0),
                    **maps,
                ).save(results / s / f"{m}_{dur}.zarr")
    (results / "subjB" / "subjB.h5").write_bytes((tmp_path / "scans" / "subjB.h5").read_bytes())
    events = []
    report = evaluate_cohort(results, tmp_path / "out", callback=events.append)
    out = tmp_path / "out"
    assert report == out / "report.md"
    for name in (
        "table1.md",
        "table1.csv",
        "table2.md",
        "table2.csv",
        "runtimes.md",
        "evaluations.json",
    ):
        assert (out / name).is_file(), name
    evals = json.loads((out / "evaluations.json").read_text())
    assert len(evals) == 12 and {e["subject"] for e in evals} == {"subjA", "subjB"}
    assert all("t1_rel_error_voxels" not in e for e in evals)
    spur = [e for e in evals if e["method"] == "spurig" and e["duration"] == "2min"]
    assert all(e["t1_rel_error"] == pytest.approx(0.04, rel=1e-3) for e in spur)
    t1md = (out / "table1.md").read_text()
    assert "SPUR-iG (ours)" in t1md and "A^H b" in t1md and "**" in t1md
    text = report.read_text()
    pngs = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert pngs == [
        "fig2_subjA_c1.png",
        "fig2_subjA_u3.png",
        "fig2_subjB_c1.png",
        "fig2_subjB_u3.png",
        "fig3_subjA_t1.png",
        "fig3_subjA_t2.png",
        "fig3_subjB_t1.png",
        "fig3_subjB_t2.png",
        "fig8_speedup.png",
    ]
    assert "](figures/fig2_subjA_c1.png)" in text
    assert events[-1].step == events[-1].total == 12
    # the PSNR order follows the noise levels
    psnr = {(e["subject"], e["duration"], e["method"]): np.mean(e["psnr"]) for e in evals}
    assert (
        psnr[("subjA", "30s", "spurig")]
        > psnr[("subjA", "30s", "llr")]
        > psnr[("subjA", "30s", "adjoint")]
    )
    assert not math.isnan(psnr[("subjB", "2min", "llr")])


def test_evaluate_cohort_errors(tmp_path):
    with pytest.raises(InputError, match="no such directory"):
        evaluate_cohort(tmp_path / "missing", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"no \*\.zarr"):
        evaluate_cohort(tmp_path / "empty", tmp_path / "out")
    res = Result(
        torch.zeros(5, 4, 4, 4, dtype=torch.complex64),
        torch.zeros(10, 5, dtype=torch.complex64),
        method="llr",
        groups=4,
    )
    res.save(tmp_path / "r" / "x.zarr")
    with pytest.raises(InputError, match="source"):
        evaluate_cohort(tmp_path / "r", tmp_path / "out")


def test_variant_figures_for_ablations_and_steps(tmp_path: Path) -> None:
    """Figure 4 when a duration has several labelled variants, Figure 5 when steps differ."""
    from PIL import Image

    from spurig_core.report import _variant_figures

    def ev(label: str | None, steps: int, subject: str, level: float) -> dict:
        e = {
            "method": "spurig",
            "groups": 8,
            "duration": "1min",
            "subject": subject,
            "unroll_steps": steps,
            "psnr_slices": [[level, level + 1.0]] * 5,
            "ssim_slices": [[0.5, 0.6]] * 5,
        }
        if label:
            e["label"] = label
        return e

    evals = [
        ev(None, 6, "a", 20.0),
        ev(None, 6, "b", 21.0),
        ev("GLEAM only", 6, "a", 19.0),
        ev("GLEAM 2 steps", 2, "a", 18.0),
        {"method": "llr", "groups": 8, "duration": "1min", "psnr_slices": [[25.0]] * 5},
    ]
    paths = _variant_figures(evals, tmp_path)
    assert sorted(p.name for p in paths) == ["fig4_ablation_1min.png", "fig5_steps_1min.png"]
    for p in paths:
        assert Image.open(p).size == (800, 350)
    assert _variant_figures([ev(None, 6, "a", 20.0)], tmp_path / "none") == []


def test_steps_sweep_keeps_the_shipped_model_out_of_swept_step_counts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shipped model is not pooled with a labelled steps sweep at the same step count.

    It fills in only a step count the sweep lacks (the sweep: one network stopped after K steps).
    """
    import spurig_core.figures_charts as charts
    from spurig_core.report import _variant_figures

    seen: dict[int, float] = {}

    def fake_steps(groups: dict, out: Path, title: str = "") -> Path:
        seen.update({n: float(e["psnr_slices"][0][0]) for n, e in groups.items()})
        return out

    monkeypatch.setattr(charts, "steps_figure", fake_steps)

    def ev(label: str | None, steps: int, level: float) -> dict:
        e = {
            "method": "spurig",
            "groups": 16,
            "duration": "2min",
            "subject": "a",
            "unroll_steps": steps,
            "psnr_slices": [[level]] * 5,
            "ssim_slices": [[0.5]] * 5,
        }
        return {**e, "label": label} if label else e

    _variant_figures(
        [
            ev(None, 2, 30.0),
            ev(None, 3, 31.0),
            ev("v3, 2 steps", 2, 20.0),
            ev("v3, 6 steps", 6, 22.0),
        ],
        tmp_path,
    )
    assert seen == {2: 20.0, 3: 31.0, 6: 22.0}
    variants: list[str] = []
    monkeypatch.setattr(
        charts, "ablation_figure", lambda v, out, title="": variants.extend(v) or out
    )
    _variant_figures([ev(None, 2, 30.0), ev("F", 2, 29.0), ev("v3, 6 steps", 6, 22.0)], tmp_path)
    assert variants == ["Full", "F"]  # the sweep is Figure 5's
