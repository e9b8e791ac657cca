"""Prepared training examples: on-disk format, preparation from scans, and the cohort splits.

On-disk format (one directory per subject, written atomically with ``io.save_checkpoint``)
------------------------------------------------------------------------------------------
``<root>/<split>/<subject>/example.pt`` (kind ``"spurig-example"``): what pretraining needs

* ``target`` complex64 ``(basis, x, y, z)`` — reference coefficients
  ``Φ̃^H (pd · signal(t1, t2, b1))``
  in the balanced basis (SPEC §5);
* ``tissue`` uint8 ``(x, y, z)`` — labels of SPEC §3;
* ``basis`` complex64 ``(tr, basis)`` and ``sequence`` (dict) — what the coefficients refer to;
* ``inputs`` — dict of complex64 ``(basis, x, y, z)``: ``"adjoint-<duration>"`` (the norm-matched
  ``s·A^H b``) and ``"llr-<duration>"`` (FISTA-LLR) for each prepared duration.

``<root>/<split>/<subject>/dc-<duration>.pt`` (kind ``"spurig-dc"``): what the unrolled stages need
to rebuild the data-consistency operator cheaply — ``ahb`` ``(basis, x, y, z)``, ``b_norm``, the
norm-matching ``scale``, ``lipschitz`` (``‖A^H A‖₂``) and ``operator``, a payload dict whose
``"type"`` names a builder (:func:`register_operator`; ``"gridded-subspace"`` rebuilds
:class:`~spurig_core.operators.encoding.GriddedSubspaceEncoding` from the grid index of every
sample ``(groups, tr, samples)`` (int32), the grid and matrix, coil maps and basis; the k-space
values themselves are not stored, since the unrolled network sees them only through ``A^H b``).

Splits are the sub-directories ``train/``, ``val/`` and ``test/`` of a cohort directory.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..data import FispSequence
from ..durations import DURATIONS, MODEL_DURATIONS, groups_for
from ..errors import InputError, NotAvailableError
from ..operators.base import LinearOperator
from ..operators.grid import GriddedData
from ..progress import Callback, emit

__all__ = [
    "DC_KIND",
    "EXAMPLE_KIND",
    "DCData",
    "Example",
    "list_subjects",
    "load_dc",
    "load_example",
    "load_prepared",
    "prepare_subject",
    "register_operator",
    "save_example",
]

EXAMPLE_KIND = "spurig-example"
DC_KIND = "spurig-dc"

OperatorBuilder = Callable[[dict[str, Any], torch.device], LinearOperator]
_BUILDERS: dict[str, OperatorBuilder] = {}


def register_operator(kind: str, builder: OperatorBuilder) -> None:
    """Register how an operator payload of ``type == kind`` is rebuilt.

    Parameters
    ----------
    kind : str
        Value of the payload's ``"type"`` entry.
    builder : callable ``(payload, device) -> LinearOperator``
    """
    _BUILDERS[kind] = builder


def _gridded_builder(payload: dict[str, Any], device: torch.device) -> LinearOperator:
    try:
        from ..config import from_dict
        from ..operators.encoding import EncodingConfig, GriddedSubspaceEncoding
    except ImportError as exc:
        raise NotAvailableError(
            f"the gridded encoding (spurig_core.operators.encoding) is not available: {exc}"
        ) from None
    maps = payload["coil_maps"].to(device)
    index = payload["index"].to(device)
    # The data enter training only through the stored A^H b: the operator needs the sample layout
    # (for its gram kernels), so the values are a zero-stride placeholder of the right shape.
    values = torch.zeros((), dtype=torch.complex64, device=device).expand(
        int(maps.shape[0]), *index.shape
    )
    gridded = GriddedData(values, index, tuple(payload["grid"]), tuple(payload["matrix"]))
    # Payloads written before density compensation existed carry no "encoding": plain data term.
    ecfg = from_dict(
        EncodingConfig,
        payload.get("encoding", {"density_compensation": 0.0}),
        where="dc operator",
    )
    return GriddedSubspaceEncoding(gridded, maps, payload["basis"].to(device), config=ecfg)


register_operator("gridded-subspace", _gridded_builder)


@dataclass(frozen=True, eq=False)
class DCData:
    """What the unrolled stages need for one subject and duration.

    Attributes
    ----------
    ahb : Tensor, shape (basis, x, y, z), complex64
        ``A^H b``.
    b_norm : float
        ``‖b‖₂`` of the (gridded) data.
    scale : float
        ``s = ‖b‖₂ / ‖A A^H b‖₂``; the initialisation is ``s · ahb``.
    lipschitz : float
        ``‖A^H A‖₂`` (20 power iterations; for reference: training re-computes ``L`` exactly as
        inference does, :meth:`step_size`).
    operator : dict
        Payload for :meth:`build_operator` (``"type"`` plus the builder's entries).
    """

    ahb: torch.Tensor
    b_norm: float
    scale: float
    lipschitz: float
    operator: dict[str, Any] = field(default_factory=dict)

    @property
    def x0(self) -> torch.Tensor:
        """The initialisation ``s · A^H b``, shape (basis, x, y, z)."""
        return self.ahb * self.scale

    def build_operator(self, device: torch.device | str = "cpu") -> LinearOperator:
        """Rebuild the data-consistency operator from the payload."""
        kind = self.operator.get("type")
        if kind not in _BUILDERS:
            raise InputError(
                f"training data: unknown operator type {kind!r} (known: {', '.join(_BUILDERS)})"
            )
        return _BUILDERS[kind](self.operator, torch.device(device))

    def step_size(
        self, op: LinearOperator, power_iters: int, device: torch.device | str = "cpu"
    ) -> float:
        """Return ``L ≈ ‖A^H A‖₂`` of ``op`` (built by :meth:`build_operator`) as inference has it.

        A gridded encoding gets the value that inference reads from its gridding
        (:func:`spurig_core.operators.step_size.step_size_of` with the payload's coil maps); any
        other operator the unroll's own ``power_iters`` power iterations from ``A^H b``, as
        inference does without a stored value.  So the learned steps ``μ_i = exp(ρ_i)/L`` are the
        same in training and in use (until 2026-12-06 training took the power iterations for
        every operator: 0.94 of the stored value at 30 s, 0.81 at 15 s at 48³).
        """
        from ..operators.encoding import GriddedSubspaceEncoding
        from ..operators.step_size import step_size_of
        from ..recon.unrolled import estimate_lipschitz

        if isinstance(op, GriddedSubspaceEncoding):  # its payload's builder read "coil_maps"
            return float(step_size_of(op, self.operator["coil_maps"].to(device)))
        return estimate_lipschitz(op, self.ahb.to(device), iters=power_iters)

    def to_state(self) -> dict[str, Any]:
        """Return the dictionary stored in ``dc-<duration>.pt``."""
        return {
            "kind": DC_KIND,
            "version": 1,
            "ahb": self.ahb,
            "b_norm": float(self.b_norm),
            "scale": float(self.scale),
            "lipschitz": float(self.lipschitz),
            "operator": self.operator,
        }


@dataclass(frozen=True, eq=False)
class Example:
    """One prepared subject.

    Attributes
    ----------
    name : str
    target : Tensor, shape (basis, x, y, z), complex64
    tissue : Tensor, shape (x, y, z), uint8
    basis : Tensor, shape (tr, basis), complex64
    sequence : FispSequence
    inputs : dict of str to Tensor, shape (basis, x, y, z), complex64
        ``"adjoint-<duration>"`` and ``"llr-<duration>"``.
    dc : dict of str to DCData
        Per duration (loaded on request).
    path : Path, optional
        The subject directory.
    """

    name: str
    target: torch.Tensor
    tissue: torch.Tensor
    basis: torch.Tensor
    sequence: FispSequence
    inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    dc: dict[str, DCData] = field(default_factory=dict)
    path: Path | None = None

    def input(self, name: str) -> torch.Tensor:
        """Return a pretraining input by name (``"target"`` is the target itself)."""
        if name == "target":
            return self.target
        if name not in self.inputs:
            raise InputError(
                f"training example {self.path or self.name}: no input {name!r} "
                f"(has {', '.join(sorted(self.inputs)) or 'none'})"
            )
        return self.inputs[name]


def save_example(example: Example, subject_dir: str | Path) -> Path:
    """Write ``example.pt`` and one ``dc-<duration>.pt`` per entry of ``example.dc`` atomically."""
    from ..io import save_checkpoint

    d = Path(subject_dir)
    d.mkdir(parents=True, exist_ok=True)
    for dur, dc in example.dc.items():
        save_checkpoint(dc.to_state(), d / f"dc-{dur}.pt")
    save_checkpoint(
        {
            "kind": EXAMPLE_KIND,
            "version": 1,
            "name": example.name,
            "target": example.target,
            "tissue": example.tissue.to(torch.uint8),
            "basis": example.basis,
            "sequence": example.sequence.to_dict(),
            "inputs": dict(example.inputs),
        },
        d / "example.pt",
    )
    return d


def load_prepared(path: Path, kind: str, *, missing: str) -> dict[str, Any]:
    """Return the checkpoint at ``path``, which must exist and be of ``kind``.

    Raises
    ------
    InputError
        ``"<path>: missing (<missing>)"`` (``missing`` says how to make the file) or
        ``"<path>: a 'x' file, not '<kind>'"``.
    """
    from ..io import load_checkpoint

    if not path.exists():
        raise InputError(f"{path}: missing ({missing})")
    s = load_checkpoint(path)
    if s.get("kind") != kind:
        raise InputError(f"{path}: a {s.get('kind')!r} file, not {kind!r}")
    return s


def load_dc(subject_dir: str | Path, duration: str) -> DCData:
    """Read ``dc-<duration>.pt`` of a subject."""
    p = Path(subject_dir) / f"dc-{duration}.pt"
    s = load_prepared(p, DC_KIND, missing=f"prepare the subject for duration {duration!r}")
    return DCData(
        s["ahb"], float(s["b_norm"]), float(s["scale"]), float(s["lipschitz"]), dict(s["operator"])
    )


def load_example(subject_dir: str | Path, *, durations: Iterable[str] = ()) -> Example:
    """Read a prepared subject (and the DC data of ``durations``).

    Raises
    ------
    InputError
        Missing or foreign files, inconsistent shapes.
    """
    from ..io import load_checkpoint

    d = Path(subject_dir)
    s = load_checkpoint(d / "example.pt")
    if s.get("kind") != EXAMPLE_KIND:
        raise InputError(f"{d / 'example.pt'}: a {s.get('kind')!r} file, not {EXAMPLE_KIND!r}")
    target, tissue = s["target"], s["tissue"]
    if target.ndim != 4 or tuple(tissue.shape) != tuple(target.shape[1:]):
        raise InputError(
            f"{d}: target {tuple(target.shape)} and tissue {tuple(tissue.shape)} do not match"
        )
    for k, v in s["inputs"].items():
        if v.shape != target.shape:
            raise InputError(
                f"{d}: input {k!r} has shape {tuple(v.shape)}, target {tuple(target.shape)}"
            )
    dc = {dur: load_dc(d, dur) for dur in durations}
    return Example(
        str(s.get("name", d.name)),
        target,
        tissue,
        s["basis"],
        FispSequence.from_dict(s["sequence"]),
        dict(s["inputs"]),
        dc,
        d,
    )


def list_subjects(root: str | Path, split: str) -> list[Path]:
    """Return prepared subject directories of ``root/split`` (sorted by name)."""
    if split not in ("train", "val", "test"):
        raise InputError(f"split {split!r}: choose train, val or test")
    d = Path(root) / split
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if (p / "example.pt").is_file())


def prepare_subject(
    scan_path: str | Path,
    out_dir: str | Path,
    durations: Iterable[str] = MODEL_DURATIONS[::-1],
    *,
    gridding: Any = None,
    llr: Any = None,
    encoding: Any = None,
    name: str | None = None,
    llr_inputs: dict[str, torch.Tensor] | None = None,
    callback: Callback | None = None,
) -> Path:
    """Make the training example of one simulated subject (``example.pt`` and ``dc-*.pt``).

    Grids the whole scan once with iGROG, then for each duration takes its first groups, builds
    the gridded encoding, and stores ``s·A^H b``, the FISTA-LLR reconstruction and the DC data.

    Parameters
    ----------
    scan_path : path-like
        A raw scan with ``reference/`` (a simulated subject), coil maps and calibration data.
    out_dir : path-like
        The subject directory to write (e.g. ``cohort/train/subject-000``).
    durations : iterable of str
        Named durations (``"30s"``, ``"1min"``, ``"2min"``, ``"6min"``).
    gridding : GriddingConfig, optional
    llr : LLRConfig, optional
    encoding : EncodingConfig, optional
        The data-consistency operator's settings (density compensation); stored with the DC data
        so that training rebuilds the same operator.
    name : str, optional
        Subject name (the scan file's stem by default).
    llr_inputs : dict of str to Tensor, optional
        ``"llr-<duration>"`` reconstructions to reuse instead of running FISTA-LLR again (e.g.
        when re-preparing a subject for a model with another data term: the pretraining inputs
        are the LLR baseline's reconstructions, which do not depend on the model's operator).
    callback : Callback, optional
        ``emit(callback, "prepare", i, n)`` per duration.

    Returns
    -------
    Path
        ``out_dir``.

    Raises
    ------
    InputError
        A scan without reference or coil maps, an unknown duration.
    NotAvailableError
        When a module this needs is missing from this build.
    """
    from ..io import load_scan

    durs = [str(d) for d in durations]
    for d in durs:
        groups_for(d)
    scan = load_scan(scan_path)
    if scan.reference is None:
        raise InputError(f"{scan_path}: no 'reference/' group; training needs a simulated subject")
    if scan.coil_maps is None:
        raise InputError(f"{scan_path}: no 'coil_maps' dataset; training data need coil maps")
    for d in durs:
        if DURATIONS[d] > scan.n_groups:
            raise InputError(
                f"{scan_path}: duration {d} needs {DURATIONS[d]} groups, the scan "
                f"has {scan.n_groups}"
            )
    try:
        from .. import physics
        from ..config import to_dict
        from ..metrics import reference_coefficients
        from ..operators.coil_maps import virtual_coils
        from ..operators.encoding import GriddedSubspaceEncoding
        from ..operators.igrog import GriddingConfig, grid_scan
        from ..recon.classical import llr_recon
        from ..recon.unrolled import estimate_lipschitz, scaled_init

        default_basis = physics.default_basis  # type: ignore[attr-defined]
    except (ImportError, AttributeError) as exc:
        raise NotAvailableError(f"prepare_subject needs a module this build lacks: {exc}") from None

    basis = default_basis(scan.sequence).to(torch.complex64)
    ref = scan.reference
    target = reference_coefficients(ref, basis, b1=scan.b1, sequence=scan.sequence)
    scan = virtual_coils(scan, (gridding or GriddingConfig()).max_coils)  # as at inference
    gridded_all, _ = grid_scan(scan, config=gridding)
    maps = scan.coil_maps
    n_grid = math.prod(gridded_all.grid)
    inputs: dict[str, torch.Tensor] = {}
    dcs: dict[str, DCData] = {}
    for n, d in enumerate(durs):
        gridded = gridded_all.first_groups(groups_for(d))
        op = GriddedSubspaceEncoding(gridded, maps, basis, config=encoding)
        ahb = op.adjoint_data().to(torch.complex64)
        b_norm = op.data_norm()
        x0, s = scaled_init(op, ahb, b_norm)
        lip = estimate_lipschitz(op, ahb, iters=20)
        inputs[f"adjoint-{d}"] = x0
        reuse = (llr_inputs or {}).get(f"llr-{d}")
        if reuse is not None:
            if tuple(reuse.shape) != tuple(x0.shape):
                raise InputError(
                    f"{scan_path}: reused input llr-{d} has shape {tuple(reuse.shape)}, "
                    f"expected {tuple(x0.shape)}"
                )
            inputs[f"llr-{d}"] = reuse.to(torch.complex64)
        else:
            inputs[f"llr-{d}"] = llr_recon(
                op, ahb=ahb, b_norm=b_norm, config=llr, duration=d
            ).coefficients.to(torch.complex64)
        index = gridded.index.to(torch.int32 if n_grid < 2**31 else torch.int64)
        payload = {
            "type": "gridded-subspace",
            "coil_maps": maps,
            "basis": basis,
            "index": index,
            "grid": [int(v) for v in gridded.grid],  # plain ints: checkpoints load weights-only
            "matrix": [int(v) for v in gridded.matrix],
            "encoding": to_dict(op.config),
        }
        dcs[d] = DCData(ahb, b_norm, s, lip, payload)
        emit(callback, "prepare", n + 1, len(durs), f"prepared {d}")
    ex = Example(
        name or Path(scan_path).stem,
        target.to(torch.complex64),
        ref.tissue.to(torch.uint8),
        basis,
        scan.sequence,
        inputs,
        dcs,
    )
    return save_example(ex, out_dir)
