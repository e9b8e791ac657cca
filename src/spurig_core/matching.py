"""B1-corrected dictionary matching of subspace coefficient maps (paper 2.1, 2.4).

Each voxel's coefficient vector ``x`` (``basis`` entries) is compared with every dictionary atom
compressed into the same subspace, ``c = Φᴴ s``, by the magnitude of the cosine similarity
``|cᴴ x| / (‖c‖ ‖x‖)``; the best atom gives T1 and T2 and the proton density is the least-squares
magnitude ``PD = |cᴴ x| / ‖c‖²`` (so that the voxel signal is ``PD ·`` the simulated atom, whose
``M0 = 1``).  With a B1 map each voxel searches only the atoms at the grid B1 value nearest its own
(Sled & Pike, MRM 43:589, 2000); without one, only the atoms at B1 = 1.

The search is brute force but cheap: ``|cᴴ x|² = ψ(x) · φ(c)`` with the ``k²`` real features of
the Hermitian outer products (``_hermitian_features``), so each block of voxels × atoms is one real
matrix product followed by a maximum (2–4 ns per pair on one CPU core, against 12 ns for the
complex product and its magnitude); the chosen atom's similarity and PD are then computed exactly.
Memory stays bounded by the ``voxel_chunk × atom_chunk`` score block.

The caller chooses the basis by passing the one its coefficients refer to: balanced ``Φ̃`` (what
every reconstruction stores, SPEC §5) or unbalanced ``Φ``.  Both span the same subspace, so the
matching is the same; the coefficients are mapped into the dictionary's basis with the ``k × k``
matrix ``Φ_dictᴴ · basis``.  A basis outside the dictionary's subspace (another sequence's or
dictionary's) gets its own dictionary compressed with it.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch

from .config import to_dict
from .data import FispSequence
from .errors import InputError
from .physics import Dictionary, DictionaryGrid, intraop_threads, load_dictionary
from .progress import Callback, ProgressEvent, emit

__all__ = [
    "MatchResult",
    "MatchingConfig",
    "coefficient_mask",
    "match_maps",
    "match_vectors",
    "otsu_threshold",
]


@dataclass(frozen=True)
class MatchingConfig:
    """Tunables of dictionary matching.

    Attributes
    ----------
    grid : DictionaryGrid
        The (T1, T2, B1) dictionary grid (default 5 % T1/T2 steps, B1 0.6–1.4 by 0.05).
    mask_threshold : float
        Without a mask, voxels whose coefficient norm ``‖x‖₂`` is below this fraction of the 99th
        percentile of the norms, or below half the Otsu threshold of the norms, are background
        (maps 0 there; see :func:`coefficient_mask`).
    voxel_chunk : int
        Voxels matched at once (CPU; ×16 on CUDA).
    atom_chunk : int
        Atoms compared at once (CPU; ×4 on CUDA); the score block is ``voxel_chunk × atom_chunk``
        float32 (4 MiB by default, so that it stays in cache).
    voxel_block : int
        Voxels prepared at once: their coefficients in the dictionary's basis, B1 indices and
        similarity features take about 2 kB a voxel, so a block bounds the working memory
        (≈ 1 GB by default) whatever the matrix; a 220³ volume matched whole needed 21 GB.
    """

    grid: DictionaryGrid = field(default_factory=DictionaryGrid)
    mask_threshold: float = 0.05
    voxel_chunk: int = 512
    atom_chunk: int = 2048
    voxel_block: int = 1 << 19

    def __post_init__(self) -> None:
        """Raise InputError unless ``mask_threshold`` is in [0, 1) and the chunk sizes are ≥ 1."""
        if not 0.0 <= self.mask_threshold < 1.0:
            raise InputError("matching.mask_threshold: must be in [0, 1)")
        if self.voxel_chunk < 1 or self.atom_chunk < 1 or self.voxel_block < 1:
            raise InputError("matching: voxel_chunk, atom_chunk and voxel_block must be positive")


@dataclass(frozen=True, eq=False)
class MatchResult:
    """Quantitative maps from :func:`match_maps`.

    Attributes
    ----------
    t1_ms, t2_ms : Tensor, shape (x, y, z), float32
        Relaxation times of the best atom in ms, 0 outside the mask.
    pd : Tensor, shape (x, y, z), float32
        Proton density magnitude (signal = PD · atom), 0 outside the mask.
    b1 : Tensor, shape (x, y, z), float32
        The grid B1 value searched in each voxel (0 outside the mask).
    similarity : Tensor, shape (x, y, z), float32
        ``|cos|`` of the best atom (0 outside the mask).
    mask : Tensor, shape (x, y, z), bool
        Voxels that were matched.
    config : dict
        ``to_dict`` of the :class:`MatchingConfig` used.
    """

    t1_ms: torch.Tensor
    t2_ms: torch.Tensor
    pd: torch.Tensor
    b1: torch.Tensor
    similarity: torch.Tensor
    mask: torch.Tensor
    config: dict[str, Any]


def otsu_threshold(values: torch.Tensor, *, bins: int = 256) -> float:
    """Otsu's threshold of ``values``: the histogram split maximising the between-class variance.

    Parameters
    ----------
    values : Tensor, any shape, real, non-negative
    bins : int
        Histogram bins over ``[0, max]``.

    Returns
    -------
    float
        The threshold (0 when all values are equal).
    """
    x = values.reshape(-1).double().cpu()
    top = float(x.max()) if x.numel() else 0.0
    if top <= 0:
        return 0.0
    hist = torch.histc(x, bins=bins, min=0.0, max=top)
    centres = (torch.arange(bins, dtype=torch.float64) + 0.5) * (top / bins)
    w0 = torch.cumsum(hist, 0)
    w1 = w0[-1] - w0
    s0 = torch.cumsum(hist * centres, 0)
    m0 = s0 / w0.clamp_min(1)
    m1 = (s0[-1] - s0) / w1.clamp_min(1)
    return float(centres[int(torch.argmax(w0 * w1 * (m0 - m1) ** 2))])


def coefficient_mask(
    coefficients: torch.Tensor, *, threshold: float = 0.05, adaptive: bool = True
) -> torch.Tensor:
    """Object mask from coefficient energy (SPEC §5: maps are 0 outside the object).

    A voxel is object when its coefficient norm ``‖x‖₂`` (the proton density times the signal
    norm, so the mask follows the reconstructed PD) exceeds ``threshold`` times the 99th
    percentile of the norms and, with ``adaptive``, half of Otsu's threshold of the norms.  The
    Otsu term removes the noise floor that reconstructions leave around the head (about 8 % of
    the 99th percentile for SPUR-iG at 30 s, 32³), which a fixed fraction keeps.

    Parameters
    ----------
    coefficients : Tensor, shape (basis, x, y, z), complex
    threshold : float
        Fraction of the 99th percentile of ``‖x‖₂`` (over voxels) below which a voxel is background.
    adaptive : bool
        Also require ``‖x‖₂ > otsu_threshold(‖x‖₂) / 2``.

    Returns
    -------
    Tensor, shape (x, y, z), bool
    """
    norm = torch.linalg.vector_norm(coefficients, dim=0)
    flat = norm.reshape(-1).float()
    kth = max(1, min(flat.numel(), round(0.99 * flat.numel())))
    ref = torch.kthvalue(flat.cpu(), kth).values.item()
    level = threshold * ref
    if adaptive:
        level = max(level, 0.5 * otsu_threshold(flat))
    return (norm > level) & (norm > 0)


def _hermitian_features(z: torch.Tensor, off_weight: float) -> torch.Tensor:
    """Real features of ``z zᴴ``: ``[|z_i|², w·Re(z_i z̄_j), w·Im(z_i z̄_j)]`` for ``i < j``.

    For ``ψ = features(x, 1)`` and ``φ = features(c, 2)``, ``ψ · φ = |cᴴ x|²``: the squared
    similarity of every voxel–atom pair is then one real matrix product, without complex numbers
    or square roots.  ``(n, k)`` complex to ``(n, k²)`` real.
    """
    k = z.shape[1]
    iu = torch.triu_indices(k, k, 1, device=z.device)
    outer = z[:, :, None] * z[:, None, :].conj()
    off = outer[:, iu[0], iu[1]]
    diag = outer.diagonal(dim1=1, dim2=2).real
    return torch.cat([diag, off_weight * off.real, off_weight * off.imag], dim=1).contiguous()


def _best_atoms(
    psi: torch.Tensor, phi_t: torch.Tensor, atom_chunk: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Largest ``ψ · φ`` per row of ``psi`` ``(v, F)`` over the columns of ``phi_t`` ``(F, a)``."""
    v = psi.shape[0]
    best = torch.full((v,), -float("inf"), dtype=psi.dtype, device=psi.device)
    arg = torch.zeros(v, dtype=torch.int64, device=psi.device)
    block = torch.empty(v, min(atom_chunk, phi_t.shape[1]), dtype=psi.dtype, device=psi.device)
    for a0 in range(0, phi_t.shape[1], atom_chunk):
        cols = phi_t[:, a0 : a0 + atom_chunk]
        out = block[:, : cols.shape[1]]
        torch.mm(psi, cols, out=out)
        score, idx = out.max(dim=1)
        better = score > best
        best = torch.where(better, score, best)
        arg = torch.where(better, idx + a0, arg)
    return best, arg


def match_vectors(
    x: torch.Tensor,
    dictionary: Dictionary,
    b1_index: torch.Tensor,
    *,
    config: MatchingConfig | None = None,
    callback: Callback | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Match coefficient vectors already in the dictionary's basis.

    Parameters
    ----------
    x : Tensor, shape (n, basis), complex64
        Coefficients in ``dictionary.basis``.
    dictionary : Dictionary
    b1_index : Tensor, shape (n,), int64
        Index into ``dictionary.b1_values`` of the B1 slice each vector searches.
    config : MatchingConfig, optional
    callback : Callback, optional
        ``emit(callback, "match", done, n)`` after each voxel chunk.

    Returns
    -------
    atom : Tensor, shape (n,), int64
        Best atom of each vector.
    similarity : Tensor, shape (n,), float32
        Its ``|cos|``.
    pd : Tensor, shape (n,), float32
        ``|cᴴ x| / ‖c‖²``.
    """
    cfg = MatchingConfig() if config is None else config
    dev = x.device
    vchunk = cfg.voxel_chunk * (16 if dev.type == "cuda" else 1)
    achunk = cfg.atom_chunk * (4 if dev.type == "cuda" else 1)
    comp = dictionary.compressed.to(dev)
    cnorm = torch.linalg.vector_norm(comp, dim=1).clamp_min(1e-30)
    unit = comp / cnorm[:, None]
    phi = _hermitian_features(unit, 2.0)
    psi = _hermitian_features(x, 1.0)
    k = x.shape[1]
    if float(phi[:, k + (k * k - k) // 2 :].abs().max()) <= 1e-6 * float(phi.abs().max()):
        # atoms real up to one common phase (the dictionary's own basis): 15 features, not 25
        phi, psi = phi[:, : k + (k * k - k) // 2], psi[:, : k + (k * k - k) // 2]
    n = x.shape[0]
    atom = torch.zeros(n, dtype=torch.int64, device=dev)
    tasks: list[tuple[int, torch.Tensor]] = []
    phi_t: dict[int, torch.Tensor] = {}
    for ib in torch.unique(b1_index).tolist():
        sel = torch.nonzero(b1_index == ib).reshape(-1)
        phi_t[ib] = phi[dictionary.b1_slice(ib)].T.contiguous()
        tasks += [(ib, sel[v0 : v0 + vchunk]) for v0 in range(0, sel.numel(), vchunk)]

    def run(task: tuple[int, torch.Tensor]) -> torch.Tensor:
        ib, rows = task
        return _best_atoms(psi[rows], phi_t[ib], achunk)[1] + dictionary.b1_slice(ib).start

    def store(task: tuple[int, torch.Tensor], arg: torch.Tensor, done: int) -> int:
        atom[task[1]] = arg
        done += task[1].numel()
        emit(callback, "match", done, n, f"{done}/{n} voxels")
        return done

    done = 0
    workers = min(torch.get_num_threads(), len(tasks)) if dev.type == "cpu" else 1
    if workers <= 1:
        for task in tasks:
            done = store(task, run(task), done)
    else:
        # CPU: parallel chunks with one intra-op thread each (threaded BLAS stalls when other
        # processes share the cores; the chunks are independent anyway)
        with intraop_threads(1), ThreadPoolExecutor(workers) as pool:
            futures = [pool.submit(run, task) for task in tasks]
            try:
                for task, fut in zip(tasks, futures, strict=True):
                    done = store(task, fut.result(), done)
            except BaseException:
                for fut in futures:
                    fut.cancel()
                raise
    # exact similarity and PD of the chosen atoms
    score = (unit[atom].conj() * x).sum(dim=1).abs()
    xnorm = torch.linalg.vector_norm(x, dim=1)
    similarity = torch.where(xnorm > 0, score / xnorm.clamp_min(1e-30), 0.0)
    pd = torch.where(xnorm > 0, score / cnorm[atom], 0.0)
    return atom, similarity.float(), pd.float()


def _match_blocks(
    flat: torch.Tensor,
    idx: torch.Tensor,
    t_t: torch.Tensor,
    b1: torch.Tensor | None,
    d: Dictionary,
    cfg: MatchingConfig,
    callback: Callback | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run :func:`match_vectors` on the voxels ``idx`` of ``flat`` ``(k, voxels)`` in blocks.

    ``cfg.voxel_block`` voxels at a time.  Returns the atom, the grid B1 searched, similarity
    and PD of each voxel of ``idx`` (shape ``(n,)``).
    """
    n, dev = idx.numel(), flat.device
    atom = torch.empty(n, dtype=torch.int64, device=dev)
    b1_index = torch.empty(n, dtype=torch.int64, device=dev)
    sim = torch.empty(n, dtype=torch.float32, device=dev)
    pd = torch.empty(n, dtype=torch.float32, device=dev)
    b1_grid = d.b1_values.to(dev)
    b1_flat = None if b1 is None else b1.to(dev, torch.float32).reshape(-1)
    for s in range(0, n, cfg.voxel_block):
        e = min(n, s + cfg.voxel_block)
        sel = idx[s:e]
        x = flat[:, sel].T @ t_t  # (block, basis) in Φ_dict
        if b1_flat is None:
            b1_vox = torch.ones(e - s, device=dev)
        else:
            b1_vox = b1_flat[sel]
        b1_index[s:e] = (b1_vox[:, None] - b1_grid[None, :]).abs().argmin(dim=1)
        atom[s:e], sim[s:e], pd[s:e] = match_vectors(
            x, d, b1_index[s:e], config=cfg, callback=_offset(callback, s, n)
        )
    return atom, b1_grid[b1_index], sim, pd


def _offset(callback: Callback | None, start: int, total: int) -> Callback | None:
    """Wrap ``callback`` for the block from voxel ``start``: its events count all ``total``."""
    if callback is None:
        return None

    def _inner(event: ProgressEvent) -> None:
        done = start + event.step
        callback(ProgressEvent(event.stage, done, total, f"{done}/{total} voxels"))

    return _inner


def _dictionary_for(
    basis: torch.Tensor,
    seq: FispSequence,
    grid: DictionaryGrid,
    dictionary: Dictionary | None,
    device: torch.device,
    callback: Callback | None,
) -> tuple[Dictionary, torch.Tensor]:
    """Return a dictionary whose basis spans ``basis``, and ``T = Φ_dictᴴ basis`` (k × k)."""
    if dictionary is None:
        d = load_dictionary(seq, grid, device=device, callback=callback)
    else:
        d = dictionary
    if d.basis.shape == basis.shape:
        t = d.basis.conj().T.to(torch.complex128) @ basis.to(torch.complex128)
        eye = torch.eye(t.shape[0], dtype=t.dtype)
        if float((t.conj().T @ t - eye).abs().max()) < 1e-3:
            return d, t.to(torch.complex64)
    # the coefficients live in another subspace: compress the dictionary with their basis
    d = load_dictionary(seq, d.grid, basis=basis, device=device, callback=callback)
    return d, torch.eye(basis.shape[1], dtype=torch.complex64)


def match_maps(
    coefficients: torch.Tensor,
    basis: torch.Tensor,
    *,
    b1: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    sequence: FispSequence | None = None,
    config: MatchingConfig | None = None,
    dictionary: Dictionary | None = None,
    device: str | torch.device = "cpu",
    callback: Callback | None = None,
) -> MatchResult:
    """T1, T2 and PD maps from subspace coefficient maps by (B1-corrected) dictionary matching.

    Parameters
    ----------
    coefficients : Tensor, shape (basis, x, y, z), complex64
        Coefficients in ``basis`` (balanced ``α̃`` with ``Φ̃``, or unbalanced ``α`` with ``Φ``).
    basis : Tensor, shape (tr, basis), complex64
        The orthonormal basis the coefficients refer to; this is how the caller chooses.
    b1 : Tensor, shape (x, y, z), float, optional
        Relative B1+, finite and in ``(0, 3]`` (:data:`spurig_core.io_fields.FIELDS`); each voxel
        searches the atoms at the nearest grid B1 (values outside the grid are clamped to its
        ends).  ``None``: B1 = 1 everywhere.
    mask : Tensor, shape (x, y, z), bool, optional
        Voxels to match; ``None``: :func:`coefficient_mask` with ``config.mask_threshold``.
    sequence : FispSequence, optional
        The acquisition (``None``: the default sequence).
    config : MatchingConfig, optional
    dictionary : Dictionary, optional
        A prebuilt dictionary; ``None``: :func:`~spurig_core.physics.load_dictionary` of the
        sequence over ``config.grid`` (cached on disk; built once, with progress).
    device : str or torch.device
        Where to compute.
    callback : Callback, optional
        Stages ``"dictionary"`` (when built) and ``"match"``.

    Returns
    -------
    MatchResult
        Maps of shape ``(x, y, z)`` on ``device``.

    Raises
    ------
    InputError
        On shapes that do not fit, NaN/Inf coefficients, or B1 outside ``(0, 3]``.
    """
    cfg = MatchingConfig() if config is None else config
    seq = FispSequence.default() if sequence is None else sequence
    dev = torch.device(device)
    if coefficients.ndim != 4:
        raise InputError(
            f"coefficients: expected shape (basis, x, y, z), got {tuple(coefficients.shape)}"
        )
    k, shape = coefficients.shape[0], tuple(coefficients.shape[1:])
    if basis.ndim != 2 or basis.shape[1] != k or basis.shape[0] != seq.n_tr:
        raise InputError(
            f"basis: expected shape ({seq.n_tr}, {k}) for {k} coefficients and a sequence of "
            f"{seq.n_tr} repetitions, got {tuple(basis.shape)}"
        )
    for name, t in (("b1", b1), ("mask", mask)):
        if t is not None and tuple(t.shape) != shape:
            raise InputError(f"{name}: expected shape {shape}, got {tuple(t.shape)}")
    if b1 is not None:  # B1 <= 0 or NaN would silently pick the grid's lowest atoms
        from .io_fields import check_magnitude, check_range

        b1_np = b1.detach().to("cpu", torch.float32).numpy()
        check_magnitude(b1_np, "b1", "match", kind="map")
        check_range(b1_np, "b1", "match")
    coefficients = coefficients.to(dev, torch.complex64)
    if not bool(torch.isfinite(torch.view_as_real(coefficients)).all()):
        raise InputError("coefficients: contain NaN or Inf")
    if dictionary is not None and dictionary.sequence_key != seq.key():
        raise InputError("dictionary: simulated for another sequence than the one given")

    with torch.no_grad():
        d, t = _dictionary_for(
            basis.detach().cpu().to(torch.complex64), seq, cfg.grid, dictionary, dev, callback
        )
        if mask is None:
            mask = coefficient_mask(coefficients, threshold=cfg.mask_threshold)
        mask = mask.to(dev, torch.bool)
        idx = torch.nonzero(mask.reshape(-1)).reshape(-1)
        atom, b1_searched, sim, pd = _match_blocks(
            coefficients.reshape(k, -1), idx, t.to(dev).T, b1, d, cfg, callback
        )

        def scatter(values: torch.Tensor) -> torch.Tensor:
            out = torch.zeros(mask.numel(), dtype=torch.float32, device=dev)
            out[idx] = values.to(torch.float32)
            return out.reshape(shape)

        found = pd > 0
        return MatchResult(
            t1_ms=scatter(torch.where(found, d.t1_ms.to(dev)[atom], 0.0)),
            t2_ms=scatter(torch.where(found, d.t2_ms.to(dev)[atom], 0.0)),
            pd=scatter(pd),
            b1=scatter(b1_searched),
            similarity=scatter(sim),
            mask=mask,
            config=to_dict(cfg),
        )
