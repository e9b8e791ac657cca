"""Packed model files (4-bit differences of the per-step denoisers): round trip and refusals.

Oracle: each rebuilt weight is within half a quantisation step (its group's largest difference /
7 / 2, plus float16 rounding) of the original; the rebuilt model's output matches the original's;
a file written with packed weights loads through ``load_model`` into the same network.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from spurig_core.data import FispSequence
from spurig_core.errors import InputError
from spurig_core.io import save_checkpoint
from spurig_core.recon.networks import UNetConfig
from spurig_core.recon.unrolled import UnrollConfig, UnrolledRecon
from spurig_core.recon.unrolled_io import load_model, model_state, truncate_unroll
from spurig_core.recon.weight_packing import FORMAT, pack_weights, shared_bases, unpack_weights


def _per_step_model(seed: int = 0, spread: float = 0.08) -> UnrolledRecon:
    """3 steps, a denoiser each: one shared start plus a small per-step change (as continued)."""
    torch.manual_seed(seed)
    cfg = UnrollConfig(steps=3, share_weights=False, network=UNetConfig(base_width=8))
    model = UnrolledRecon(cfg)
    state = model.state_dict()
    for key, value in state.items():
        if key.startswith("denoisers.") and value.is_floating_point():
            _, idx, rest = key.split(".", 2)
            start = state[f"denoisers.0.{rest}"]
            if idx != "0":
                value.copy_(start + spread * start.abs().mean() * torch.randn_like(start))
            if rest.startswith("unet.out.weight") and idx == "2":
                value.normal_(0, 1e-3)  # an output layer that started at zero: far from any base
    model.load_state_dict(state)
    return model.eval()


def _file_state(model: UnrolledRecon) -> dict:
    """Return the model file entries (``model_state``) of ``model``, on a 40-TR sequence."""
    seq = FispSequence(np.linspace(5, 60, 40).astype(np.float32))
    basis = torch.linalg.qr(torch.randn(seq.n_tr, 5, dtype=torch.complex64))[0]
    return model_state(model, sequence=seq, basis=basis)


def _output(model: UnrolledRecon, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.stack([model.denoiser(i)(x, i + 1) for i in range(model.cfg.steps)])


def _x() -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    return torch.complex(
        torch.randn(5, 16, 16, 16, generator=g), torch.randn(5, 16, 16, 16, generator=g)
    )


def test_packed_weights_round_trip_within_half_a_step() -> None:
    model = _per_step_model()
    weights = model.state_dict()
    plain, packed = pack_weights(weights)
    assert packed["format"] == FORMAT
    assert packed["tensors"], "the large per-step tensors are packed"
    assert set(plain).isdisjoint(packed["tensors"])
    assert set(plain) | set(packed["tensors"]) == set(weights)
    # the output layer far from the mean stays float16; small tensors too
    assert "denoisers.2.unet.out.weight" in plain
    assert all(v.numel() >= 4096 for k, v in weights.items() if k in packed["tensors"])
    out = unpack_weights({"model": plain, "packed": packed}, "x")
    for name, entry in packed["tensors"].items():
        w = weights[name].float()
        base = packed["bases"][entry["base"]].float()
        rows = (w - base).reshape(w.shape[0], entry["scale"].shape[1], -1)
        half_step = rows.abs().amax(-1, keepdim=True) / 7 / 2
        err = (out[name] - w).reshape_as(rows).abs()
        assert bool((err <= half_step * 1.01 + 1e-3 * w.abs().max()).all()), name
    for name in plain:
        assert torch.allclose(out[name], weights[name].half().float())


def test_a_packed_file_loads_into_the_same_network(tmp_path: Path) -> None:
    model = _per_step_model()
    state = _file_state(model)
    plain_file = tmp_path / "half.pt"
    save_checkpoint(
        {**state, "model": {k: v.half() for k, v in state["model"].items()}}, plain_file
    )
    plain, packed = pack_weights(state["model"])
    packed_file = tmp_path / "packed.pt"
    save_checkpoint({**state, "model": plain, "packed": packed}, packed_file)
    loaded, meta = load_model(packed_file, method="spurig")
    x = _x()
    ref, got = _output(model, x), _output(loaded, x)
    rel = float((got - ref).abs().pow(2).sum().sqrt() / ref.abs().pow(2).sum().sqrt())
    assert rel < 0.01
    assert rel > 0  # the file really is quantised, not a copy
    # the large per-step tensors take well under half of their float16 bytes
    assert packed_file.stat().st_size < 0.75 * plain_file.stat().st_size
    assert meta["kind"] == "spurig-model"


def test_bases_may_be_given_and_a_shared_model_packs_nothing() -> None:
    model = _per_step_model()
    weights = model.state_dict()
    bases = shared_bases(weights)
    assert set(bases) == {
        "denoisers.*." + k[len("denoisers.0.") :] for k in weights if k.startswith("denoisers.0.")
    }
    plain, packed = pack_weights(weights, bases=bases)
    out = unpack_weights({"model": plain, "packed": packed}, "x")
    for name, entry in packed["tensors"].items():
        assert torch.equal(packed["bases"][entry["base"]], bases[entry["base"]].half())
        if name.startswith("denoisers.0."):  # the base itself: only float16 rounding is left
            w = weights[name]
            assert float((out[name] - w).abs().max()) <= float(w.abs().max()) * 2.0**-11
    shared = UnrolledRecon(UnrollConfig(steps=2, network=UNetConfig(base_width=8)))
    plain, packed = pack_weights(shared.state_dict())
    assert packed["tensors"] == {} and set(plain) == set(shared.state_dict())


def _packed_state() -> dict:
    plain, packed = pack_weights(_per_step_model().state_dict())
    return {"model": plain, "packed": packed}


@pytest.mark.parametrize(
    ("spoil", "needle"),
    [
        (lambda s: s["packed"].update(format="int3-delta/9"), "format 'int3-delta/9'"),
        (lambda s: s["packed"].pop("bases"), "lack their 'bases'"),
        (lambda s: s["packed"]["bases"].clear(), "is missing or of another shape"),
        (lambda s: next(iter(s["packed"]["tensors"].values()))["q"].zero_(), "codes outside 1…15"),
        (
            lambda s: next(iter(s["packed"]["tensors"].values())).update(
                q=torch.zeros(3, dtype=torch.uint8)
            ),
            "uint8 codes",
        ),
        (
            lambda s: next(iter(s["packed"]["tensors"].values())).update(shape=[0]),
            "positive integers",
        ),
        (
            lambda s: next(iter(s["packed"]["tensors"].values())).update(scale=torch.ones(1, 1)),
            "does not fit",
        ),
        (lambda s: next(iter(s["packed"]["tensors"].values())).pop("scale"), "lacks its base"),
        (
            lambda s: s["model"].update({next(iter(s["packed"]["tensors"])): torch.zeros(1)}),
            "both plain and packed",
        ),
    ],
)
def test_a_malformed_packed_entry_is_one_line(spoil, needle: str) -> None:
    state = _packed_state()
    spoil(state)
    with pytest.raises(InputError) as err:
        unpack_weights(state, "m.pt")
    msg = str(err.value)
    assert needle in msg and msg.startswith("m.pt: ") and "\n" not in msg


def test_a_packed_file_with_a_broken_entry_is_refused_by_load_model(tmp_path: Path) -> None:
    model = _per_step_model()
    state = _file_state(model)
    plain, packed = pack_weights(state["model"])
    next(iter(packed["tensors"].values()))["q"][:] = 0
    path = tmp_path / "bad.pt"
    save_checkpoint({**state, "model": plain, "packed": packed}, path)
    with pytest.raises(InputError, match="codes outside"):
        load_model(path)


def test_truncation_needs_unpacked_weights() -> None:
    state = {"config": {"steps": 3, "share_weights": False}, **_packed_state()}
    with pytest.raises(InputError, match="truncate before packing"):
        truncate_unroll(state, 2)


def test_nan_in_a_packed_scale_or_base_is_refused_naming_it(tmp_path: Path) -> None:
    model = _per_step_model()
    state = _file_state(model)
    plain, packed = pack_weights(state["model"])
    name, entry = next(iter(packed["tensors"].items()))
    entry["scale"].view(-1)[0] = float("nan")
    save_checkpoint({**state, "model": plain, "packed": packed}, tmp_path / "nan.pt")
    with pytest.raises(InputError, match=rf"tensor 'packed\.tensors\.{name}\.scale'"):
        load_model(tmp_path / "nan.pt")
    entry["scale"].view(-1)[0] = 1.0
    base = entry["base"]
    packed["bases"][base].view(-1)[0] = float("inf")
    save_checkpoint({**state, "model": plain, "packed": packed}, tmp_path / "inf.pt")
    with pytest.raises(InputError, match=rf"tensor 'packed\.bases\.{re.escape(base)}'"):
        load_model(tmp_path / "inf.pt")
