"""A loss on the T1 and T2 that dictionary matching reads: soft matching (issue 13).

The evaluation matches each voxel's coefficient vector ``x`` to the atom ``c`` with the largest
``|cᴴ x|`` among the atoms at the voxel's B1 (:mod:`spurig_core.matching`) and reports
``|T − T_ref| / T_ref`` in grey and white matter.  That argmax has no gradient.  Here it is
replaced by the posterior mean under white Gaussian noise of standard deviation ``σ`` per
coefficient: atom ``k`` (unit norm) explains ``x`` with the least-squares PD at a residual
``‖x‖² − |c_kᴴ x|²``, so its posterior weight is ``softmax_k(|c_kᴴ x|² / 2σ²)`` and

    ``log T̂1 = Σ_k w_k log T1_k``,  ``log T̂2 = Σ_k w_k log T2_k``,

over the voxel's hard match at its B1 and that atom's nearest neighbours on the (log T1, log T2)
grid, ``atoms`` in all (found without a graph, by the matching's feature product; the atoms
further away carry negligible weight, and a softmax over all 120 k would cost more than the
update).  The loss is the mean of ``|log T̂ − log T_ref|`` (≈ the relative error) over
the GM and WM voxels.  ``σ = sharpness × `` the median norm of the target's GM/WM coefficients: the
smaller, the closer ``T̂`` is to the hard match (and the fewer atoms carry gradient).

Everything a subject needs is precomputed once (:meth:`MatchedMapsLoss.targets`): the labels'
mask, the reference ``log T1``/``log T2`` and each voxel's B1 slice, as volumes, so that a cube
symmetry of the training crop applies to them as to the target.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch

from ..errors import InputError
from ..matching import _best_atoms, _dictionary_for, _hermitian_features
from ..metrics import neighbour_labels
from ..physics import Dictionary, DictionaryGrid
from .losses import QUANT_TISSUES

__all__ = ["MapsTargets", "MatchedMapsLoss", "edge_error"]


@dataclass(frozen=True)
class MapsTargets:
    """One subject's reference maps, as :meth:`MatchedMapsLoss.targets` prepares them.

    Attributes
    ----------
    mask : Tensor, shape (x, y, z), bool
        GM and WM voxels with a positive reference T1 and T2.
    log_t1, log_t2 : Tensor, shape (x, y, z), float32
        ``log`` of the reference T1 and T2 in ms (0 outside ``mask``).
    b1_index : Tensor, shape (x, y, z), int64
        Index of the dictionary B1 slice nearest the voxel's B1.
    scale : float
        ``σ`` of the soft matching, in the coefficients' units.
    weight : Tensor, shape (x, y, z), float32, optional
        Per-voxel weight of the errors (``None``: all voxels alike).
    """

    mask: torch.Tensor
    log_t1: torch.Tensor
    log_t2: torch.Tensor
    b1_index: torch.Tensor
    scale: float
    weight: torch.Tensor | None = None

    def transformed(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> MapsTargets:
        """Return the maps with ``fn`` (a cube symmetry of ``(…, x, y, z)``) applied to each."""
        return replace(
            self,
            mask=fn(self.mask),
            log_t1=fn(self.log_t1),
            log_t2=fn(self.log_t2),
            b1_index=fn(self.b1_index),
            weight=None if self.weight is None else fn(self.weight),
        )


class MatchedMapsLoss:
    """Soft-matched T1/T2 errors of coefficient maps (module notes).

    Parameters
    ----------
    basis : Tensor, shape (tr, basis), complex64
        The basis the coefficients refer to (the target's, balanced ``Φ̃``).
    sequence : FispSequence
    dictionary : Dictionary, optional
        Prebuilt (``None``: :func:`~spurig_core.physics.load_dictionary` of ``sequence`` over
        the default grid, cached on disk).
    atoms : int
        Atoms per voxel in the soft match (≥ 2).
    sharpness : float
        ``σ`` as a fraction of the median GM/WM target norm (> 0).
    boundary_weight : float
        Weight of the GM/WM voxels with a 6-neighbour of another label (the tissue boundaries,
        ≈ 76 % of GM/WM at 48³) relative to the others, in the errors' mean (≥ 1; 1: the
        evaluation's plain mean).
    edge_weight : float
        Weight of the edge term (:func:`edge_error`): the mean ``|Δ log T̂ − Δ log T_ref|`` over the
        6-neighbour pairs of GM/WM voxels, added to each map's error (0: left out).  A blur
        across an interface lowers the contrast of the pair; the per-voxel mean sees it only
        as two small errors (``benchmarks/RESULTS-models.md``, session 27).
    """

    def __init__(
        self,
        basis: torch.Tensor,
        sequence: Any,
        *,
        dictionary: Dictionary | None = None,
        atoms: int = 32,
        sharpness: float = 0.01,
        boundary_weight: float = 1.0,
        edge_weight: float = 0.0,
    ) -> None:
        if not 0.0 <= edge_weight <= 100.0:
            raise InputError(f"maps_edge_weight: {edge_weight} is not in [0, 100]")
        if not 1.0 <= boundary_weight <= 100.0:
            raise InputError(f"maps_boundary_weight: {boundary_weight} is not in [1, 100]")
        if atoms < 2:
            raise InputError(f"maps_atoms: {atoms} is below 2")
        if not 0.0 < sharpness < 1.0:
            raise InputError(f"maps_sharpness: {sharpness} is not in (0, 1)")
        d, t = _dictionary_for(
            basis.detach().cpu().to(torch.complex64),
            sequence,
            DictionaryGrid(),
            dictionary,
            torch.device("cpu"),
            None,
        )
        self.dictionary = d
        self.to_dict = t.T.contiguous()  # x (n, k) in the target basis -> x @ to_dict
        comp = d.compressed
        self.unit = comp / torch.linalg.vector_norm(comp, dim=1, keepdim=True).clamp_min(1e-30)
        phi = _hermitian_features(self.unit, 2.0)
        self._phi_t = {ib: phi[d.b1_slice(ib)].T.contiguous() for ib in range(d.b1_values.numel())}
        self._table: dict[int, torch.Tensor] = {}
        self.log_t1 = d.t1_ms.float().log()
        self.log_t2 = d.t2_ms.float().log()
        self.atoms = atoms
        self.sharpness = sharpness
        self.boundary_weight = boundary_weight
        self.edge_weight = edge_weight

    def targets(
        self,
        target: torch.Tensor,
        tissue: torch.Tensor,
        t1_ms: torch.Tensor,
        t2_ms: torch.Tensor,
        b1: torch.Tensor | None,
    ) -> MapsTargets:
        """Precompute a subject's :class:`MapsTargets`.

        Parameters
        ----------
        target : Tensor, shape (basis, x, y, z), complex64
        tissue : Tensor, shape (x, y, z), integer labels (SPEC §3)
        t1_ms, t2_ms : Tensor, shape (x, y, z)
            Ground truth (ms).
        b1 : Tensor, shape (x, y, z), or None
            Relative B1 (``None``: 1).
        """
        shape = tuple(target.shape[1:])
        for name, v in (("tissue", tissue), ("t1", t1_ms), ("t2", t2_ms), ("b1", b1)):
            if v is not None and tuple(v.shape) != shape:
                raise InputError(f"maps loss: {name} {tuple(v.shape)} does not match {shape}")
        t1, t2 = t1_ms.float(), t2_ms.float()
        labels = torch.zeros(shape, dtype=torch.bool)
        for lab in QUANT_TISSUES:
            labels |= tissue.long() == lab
        mask = labels & (t1 > 0) & (t2 > 0)
        if not bool(mask.any()):
            raise InputError("maps loss: the subject has no GM/WM voxel with a reference T1/T2")
        grid = self.dictionary.b1_values.float()
        b1v = torch.ones(shape) if b1 is None else b1.float()
        b1_index = (b1v[..., None] - grid).abs().argmin(-1)
        norm = torch.linalg.vector_norm(target, dim=0)[mask]
        weight = None
        if self.boundary_weight != 1.0:
            near = neighbour_labels(tissue)
            border = torch.stack([v & (tissue.long() != lab) for lab, v in near.items()]).any(0)
            weight = 1.0 + (self.boundary_weight - 1.0) * (mask & border).float()
        return MapsTargets(
            mask=mask,
            log_t1=torch.where(mask, t1.clamp_min(1e-6).log(), 0.0),
            log_t2=torch.where(mask, t2.clamp_min(1e-6).log(), 0.0),
            b1_index=b1_index,
            scale=self.sharpness * float(norm.median()),
            weight=weight,
        )

    def _neighbours(self, ib: int) -> torch.Tensor:
        """Return each atom of slice ``ib``'s ``atoms`` nearest atoms in (log T1, log T2)."""
        if ib not in self._table:
            sl = self.dictionary.b1_slice(ib)
            pos = torch.stack([self.log_t1[sl], self.log_t2[sl]], 1)
            k = min(self.atoms, pos.shape[0])
            near = torch.cdist(pos, pos).topk(k, dim=1, largest=False).indices + sl.start
            self._table[ib] = torch.cat([near, near[:, -1:].expand(-1, self.atoms - k)], 1)
        return self._table[ib]

    @torch.no_grad()
    def _candidates(self, x: torch.Tensor, b1_index: torch.Tensor) -> torch.Tensor:
        """Return the hard match of each row of ``x`` (at its B1) and its ``atoms − 1`` neighbours.

        The neighbours are the nearest atoms on the (log T1, log T2) grid, where the
        similarity is smooth, so they are the atoms that carry weight in the soft match.
        """
        psi = _hermitian_features(x.detach(), 1.0)
        out = torch.empty(x.shape[0], self.atoms, dtype=torch.int64)
        for ib in torch.unique(b1_index).tolist():
            rows = torch.nonzero(b1_index == ib).reshape(-1)
            for r0 in range(0, rows.numel(), 1024):
                sel = rows[r0 : r0 + 1024]
                best = _best_atoms(psi[sel], self._phi_t[ib], 2048)[1]
                out[sel] = self._neighbours(ib)[best]
        return out

    def soft_maps(
        self, out: torch.Tensor, targets: MapsTargets
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``log T̂1`` and ``log T̂2`` of the masked voxels of ``out``.

        Parameters
        ----------
        out : Tensor, shape (basis, x, y, z), complex
        targets : MapsTargets

        Returns
        -------
        log_t1, log_t2 : Tensor, shape (n,), float32
            ``n`` = voxels in ``targets.mask``, in its flattened order.
        """
        k = out.shape[0]
        x = out.to(torch.complex64).reshape(k, -1)[:, targets.mask.reshape(-1)].T
        x = x @ self.to_dict  # (n, k) in the dictionary's basis
        cand = self._candidates(x, targets.b1_index[targets.mask])
        proj = torch.einsum("nak,nk->na", self.unit[cand].conj(), x)  # c_kᴴ x
        logits = (proj.real**2 + proj.imag**2) / (2 * targets.scale**2)
        w = torch.softmax(logits, dim=1)
        return (w * self.log_t1[cand]).sum(1), (w * self.log_t2[cand]).sum(1)

    def __call__(
        self, out: torch.Tensor, targets: MapsTargets
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the mean ``|log T̂ − log T_ref|`` of T1 and of T2 over GM/WM (scalars).

        With ``edge_weight > 0`` each also holds ``edge_weight ×`` :func:`edge_error` of its map.
        """
        lt1, lt2 = self.soft_maps(out, targets)
        d1 = (lt1 - targets.log_t1[targets.mask]).abs()
        d2 = (lt2 - targets.log_t2[targets.mask]).abs()
        if targets.weight is None:
            e1, e2 = d1.mean(), d2.mean()
        else:
            w = targets.weight[targets.mask]
            e1, e2 = (w * d1).sum() / w.sum(), (w * d2).sum() / w.sum()
        if self.edge_weight > 0:
            e1 = e1 + self.edge_weight * edge_error(lt1, targets.log_t1, targets.mask)
            e2 = e2 + self.edge_weight * edge_error(lt2, targets.log_t2, targets.mask)
        return e1, e2


def edge_error(values: torch.Tensor, reference: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean ``|(v_p − v_q) − (r_p − r_q)|`` over the 6-neighbour pairs ``(p, q)`` inside ``mask``.

    Zero for ``values = reference + c`` (a uniform bias is no edge error); a blur across an
    interface lowers ``|v_p − v_q|`` and counts in full (a gradient-difference loss, Mathieu et
    al. 2016, on the maps).

    Parameters
    ----------
    values : Tensor, shape (n,)
        One value per voxel of ``mask``, in its flattened order (as
        :meth:`~MatchedMapsLoss.soft_maps` returns them).
    reference : Tensor, shape (x, y, z)
    mask : Tensor, shape (x, y, z), bool

    Returns
    -------
    Tensor, scalar (0 when no pair lies inside ``mask``)
    """
    err = torch.zeros(mask.shape, dtype=values.dtype, device=values.device)
    err = err.masked_scatter(mask, values - reference[mask].to(values.dtype))
    total = values.sum() * 0.0
    pairs = 0
    for axis in range(3):
        n = mask.shape[axis] - 1
        both = mask.narrow(axis, 0, n) & mask.narrow(axis, 1, n)
        step = err.narrow(axis, 1, n) - err.narrow(axis, 0, n)
        total = total + step[both].abs().sum()
        pairs += int(both.sum())
    return total / max(pairs, 1)
