"""Step-conditioned UNets of SPUR-iG (paper 2.3.2 and appendix A.1), 3D and slice-wise 2D.

Architecture (appendix A.1)
---------------------------
* Four encoder–decoder levels (three down-samplings).  Each level is a residual block of two
  ``3×3(×3)`` convolutions, each followed by GroupNorm (8 groups) and SiLU, then a
  squeeze-and-excitation block with reduction 16.
* The unroll index ``i`` is mapped to a 48-dimensional sinusoidal embedding and an MLP that
  produces ``(γ, β)`` for every block, applied as ``h' = (1 + γ) ⊙ h + β`` after the block's second
  GroupNorm (FiLM, Perez et al. 2018).  The last layer of each ``(γ, β)`` head starts at zero, so a
  fresh network is unconditioned until training moves it; ``conditioned=False`` removes FiLM for
  the "uncond." ablation of section 3.3.
* Input: ``k = 5`` complex coefficient maps as 10 real channels ``(re₀, im₀, re₁, im₁, …)``,
  whitened jointly per volume (zero mean, identity covariance, :func:`whitening_stats`); the output
  is un-whitened with the same statistics.
* Residual: ``output = input + net(input)`` in the whitened space.  An unrolled denoiser must stay
  close to the identity on inputs that are already clean (later steps, the index-4–6 pretraining
  inputs).  The last (1×1) convolution starts at zero (``zero_head``), so an untrained network is
  exactly the identity and every optimiser step is measured against it: with the default random
  head, the residual branch adds noise of the input's own scale (a 48³ validation state of 23.8 dB
  came out at 20.6 dB) and several hundred steps went into undoing it.

The 2D version (``dim=2``) uses the same blocks with 2D convolutions and is applied slice by slice
along the axial (last) axis, the whitening being estimated on the whole volume (hybrid 2D/3D
baseline of section 2.5).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError

__all__ = [
    "AXIS_FLIPS",
    "Denoiser",
    "UNet",
    "UNetConfig",
    "channels_to_complex",
    "complex_to_channels",
    "sinusoidal_embedding",
    "unwhiten",
    "whiten",
    "whitening_stats",
]


@dataclass(frozen=True)
class UNetConfig:
    """Tunables of :class:`UNet` (appendix A.1 defaults).

    Attributes
    ----------
    dim : {2, 3}
        3 for SPUR-iG, 2 for the slice-wise hybrid baseline.
    basis : int
        Number of complex coefficient maps ``k`` (channels = ``2k``).
    base_width : int
        Channels of the first level; level ``l`` has ``base_width · 2**l``.
    levels : int
        Encoder–decoder levels (4 in the paper).
    norm_groups : int
        GroupNorm groups (8; fewer when a level has fewer channels).
    se_reduction : int
        Squeeze-and-excitation reduction factor (16).
    embed_dim : int
        Sinusoidal embedding size of the unroll index (48).
    conditioned : bool
        FiLM conditioning on the unroll index (``False``: the "uncond." ablation).
    residual : bool
        ``output = input + net(input)`` in the whitened space (see the module notes).
    zero_head : bool
        Initialise the output convolution to zero (with ``residual``: the identity map).
    slice_chunk : int
        2D only: axial slices passed through the network at once (bounds memory).
    flips : {1, 2, 4, 8}
        The denoiser's output is the mean over the first ``flips`` of :data:`AXIS_FLIPS` (flip the
        input, denoise, flip back): a self-ensemble at ``flips`` times the UNet's cost, exactly
        equivariant to every axis flip at 8 (3D only; 1: the plain network).  Measured at 48³
        (session 24, four test subjects): 2 flips +0.37 dB at every duration, T1/T2 unchanged
        within 0.1 point.
    """

    dim: Literal[2, 3] = 3
    basis: int = 5
    base_width: int = 16
    levels: int = 4
    norm_groups: int = 8
    se_reduction: int = 16
    embed_dim: int = 48
    conditioned: bool = True
    residual: bool = True
    zero_head: bool = True
    slice_chunk: int = 64
    flips: int = 1

    def __post_init__(self) -> None:
        """Raise InputError for a bad ``dim``, width, ``embed_dim`` or ``flips``.

        ``dim`` is 2 or 3, the widths are ≥ 1, ``embed_dim`` is even and ``flips`` one of 1, 2, 4,
        8 (1 for 2D).
        """
        if self.dim not in (2, 3):
            raise InputError(f"UNetConfig.dim: must be 2 or 3, got {self.dim}")
        for name in ("basis", "base_width", "levels", "norm_groups", "se_reduction", "slice_chunk"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"UNetConfig.{name}: must be at least 1")
        if self.embed_dim < 2 or self.embed_dim % 2:
            raise InputError(f"UNetConfig.embed_dim: must be even and ≥ 2, got {self.embed_dim}")
        if self.flips not in ((1, 2, 4, 8) if self.dim == 3 else (1,)):
            allowed = "1, 2, 4 or 8" if self.dim == 3 else "1 (2D)"
            raise InputError(f"UNetConfig.flips: must be {allowed}, got {self.flips}")


#: Axis flips of a ``(batch, channels, x, y, z)`` volume, in the order :attr:`UNetConfig.flips`
#: takes them: the identity, then the flip of all three axes (the pair that gains most per UNet
#: pass), then pairs and single axes.
AXIS_FLIPS: tuple[tuple[int, ...], ...] = (
    (),
    (-3, -2, -1),
    (-3,),
    (-2, -1),
    (-2,),
    (-3, -1),
    (-1,),
    (-3, -2),
)


# ----------------------------------------------------------------------------------------------
# complex ↔ channels and joint whitening
# ----------------------------------------------------------------------------------------------
def complex_to_channels(alpha: torch.Tensor) -> torch.Tensor:
    """Complex maps to real channels.

    Parameters
    ----------
    alpha : Tensor, shape (batch, basis, x, y, z) or (batch, basis, x, y), complex

    Returns
    -------
    Tensor, shape (batch, 2·basis, ...), real
        Channels ordered ``re₀, im₀, re₁, im₁, …``.
    """
    r = torch.view_as_real(alpha)  # (b, k, *sp, 2)
    r = r.movedim(-1, 2)  # (b, k, 2, *sp)
    return r.reshape(r.shape[0], -1, *r.shape[3:])


def channels_to_complex(x: torch.Tensor) -> torch.Tensor:
    """Real channels ``(batch, 2·basis, ...)`` back to complex ``(batch, basis, ...)``."""
    b, c = x.shape[:2]
    r = x.reshape(b, c // 2, 2, *x.shape[2:]).movedim(2, -1).contiguous()
    return torch.view_as_complex(r.float() if r.dtype != torch.float64 else r)


def whitening_stats(
    x: torch.Tensor, *, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Joint mean and covariance whitening of real channels, per batch item.

    Parameters
    ----------
    x : Tensor, shape (batch, channels, ...), real
    eps : float
        Eigenvalues below ``eps · λ_max`` (or below ``1e-20``) are raised to it.

    Returns
    -------
    mean : Tensor, shape (batch, channels)
    w : Tensor, shape (batch, channels, channels)
        The symmetric inverse square root ``C^{-1/2}`` of the covariance ``C``.
    w_inv : Tensor, shape (batch, channels, channels)
        ``C^{1/2}`` (so that ``w_inv @ w = I``).

    Notes
    -----
    Computed in float64 and detached: the statistics are normalisation constants of the input
    (back-propagating through ``eigh`` is unstable for near-degenerate covariances).
    """
    with torch.no_grad():
        xd = x.detach().double().flatten(2)  # (b, c, n)
        mean = xd.mean(-1)
        xc = xd - mean[..., None]
        cov = xc @ xc.transpose(1, 2) / max(xc.shape[-1], 1)
        evals, evecs = torch.linalg.eigh(cov)
        floor = torch.clamp(evals.amax(-1, keepdim=True) * eps, min=1e-20)
        evals = torch.maximum(evals, floor)
        w = evecs @ torch.diag_embed(evals.rsqrt()) @ evecs.transpose(1, 2)
        w_inv = evecs @ torch.diag_embed(evals.sqrt()) @ evecs.transpose(1, 2)
    dt = x.dtype
    return mean.to(dt), w.to(dt), w_inv.to(dt)


def _apply(m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``m @ x`` over the channel axis: ``(b, c, c)`` times ``(b, c, ...)``."""
    return torch.einsum("bij,bj...->bi...", m, x)


def whiten(x: torch.Tensor, mean: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``W (x − m)`` for real channels ``(batch, channels, ...)``."""
    extra = (1,) * (x.ndim - 2)
    return _apply(w, x - mean.reshape(*mean.shape, *extra))


def unwhiten(z: torch.Tensor, mean: torch.Tensor, w_inv: torch.Tensor) -> torch.Tensor:
    """``W⁻¹ z + m``: the inverse of :func:`whiten`."""
    extra = (1,) * (z.ndim - 2)
    return _apply(w_inv, z) + mean.reshape(*mean.shape, *extra)


# ----------------------------------------------------------------------------------------------
# building blocks
# ----------------------------------------------------------------------------------------------
def sinusoidal_embedding(index: torch.Tensor, dim: int) -> torch.Tensor:
    """Transformer-style sinusoidal embedding of the unroll index.

    Parameters
    ----------
    index : Tensor, shape (batch,)
        Unroll index ``i`` (1-based, may be fractional).
    dim : int
        Embedding size (even).

    Returns
    -------
    Tensor, shape (batch, dim), float32
        ``[sin(i ω_j), cos(i ω_j)]`` with ``ω_j = 10000^{−j/(dim/2)}``.
    """
    half = dim // 2
    freqs = torch.exp(
        -math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=index.device) / half
    )
    arg = index.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(arg), torch.cos(arg)], dim=-1)


def _groups(channels: int, wanted: int) -> int:
    g = min(wanted, channels)
    while channels % g:
        g -= 1
    return g


class _SE(nn.Module):
    """Squeeze-and-excitation (Hu et al. 2018): channel gates from global average pooling."""

    def __init__(self, channels: int, reduction: int, dim: int) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=tuple(range(2, x.ndim)))
        s = torch.sigmoid(self.fc2(F.silu(self.fc1(s))))
        return x * s.reshape(*s.shape, *((1,) * self.dim))


class _ResBlock(nn.Module):
    """Residual block: two ``3^d`` convolutions with GroupNorm and SiLU, then squeeze-excitation.

    FiLM comes before the second SiLU; the residual connection is 1×1-projected when needed.
    """

    def __init__(self, cin: int, cout: int, cfg: UNetConfig, cond_dim: int | None) -> None:
        super().__init__()
        conv = nn.Conv3d if cfg.dim == 3 else nn.Conv2d
        self.conv1 = conv(cin, cout, 3, padding=1)
        self.norm1 = nn.GroupNorm(_groups(cout, cfg.norm_groups), cout)
        self.conv2 = conv(cout, cout, 3, padding=1)
        self.norm2 = nn.GroupNorm(_groups(cout, cfg.norm_groups), cout)
        self.skip = conv(cin, cout, 1) if cin != cout else nn.Identity()
        self.se = _SE(cout, cfg.se_reduction, cfg.dim)
        self.dim = cfg.dim
        self.film: nn.Linear | None = None
        if cond_dim is not None:
            self.film = nn.Linear(cond_dim, 2 * cout)
            nn.init.zeros_(self.film.weight)
            nn.init.zeros_(self.film.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        h = F.silu(self.norm1(self.conv1(x)))
        h = self.norm2(self.conv2(h))
        if self.film is not None and cond is not None:
            gamma, beta = self.film(cond).to(h.dtype).chunk(2, dim=-1)
            shape = (*gamma.shape, *((1,) * self.dim))
            h = (1 + gamma.reshape(shape)) * h + beta.reshape(shape)
        h = F.silu(h)
        return self.se(h + self.skip(x))


class UNet(nn.Module):
    """The step-conditioned UNet ``f_θ(·, i)`` on real, whitened channels (appendix A.1).

    Parameters
    ----------
    cfg : UNetConfig

    Notes
    -----
    ``forward(x, index)`` maps ``(batch, 2·basis, x, y, z)`` (``(batch, 2·basis, x, y)`` for
    ``dim=2``) to the same shape; spatial sizes that are not multiples of ``2**(levels−1)`` are
    zero-padded at the end and cropped back.
    """

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        conv = nn.Conv3d if d == 3 else nn.Conv2d
        convt = nn.ConvTranspose3d if d == 3 else nn.ConvTranspose2d
        ch = 2 * cfg.basis
        widths = [cfg.base_width * 2**lvl for lvl in range(cfg.levels)]
        cond_dim: int | None = None
        if cfg.conditioned:
            cond_dim = 4 * cfg.embed_dim
            self.embed: nn.Sequential | None = nn.Sequential(
                nn.Linear(cfg.embed_dim, cond_dim),
                nn.SiLU(),
                nn.Linear(cond_dim, cond_dim),
                nn.SiLU(),
            )
        else:
            self.embed = None
        self.enc = nn.ModuleList()
        self.down = nn.ModuleList()
        cin = ch
        for lvl, w in enumerate(widths):
            self.enc.append(_ResBlock(cin, w, cfg, cond_dim))
            if lvl < cfg.levels - 1:
                self.down.append(conv(w, w, 2, stride=2))
            cin = w
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for lvl in range(cfg.levels - 2, -1, -1):
            self.up.append(convt(widths[lvl + 1], widths[lvl], 2, stride=2))
            self.dec.append(_ResBlock(2 * widths[lvl], widths[lvl], cfg, cond_dim))
        self.out = conv(widths[0], ch, 1)
        if cfg.zero_head:
            nn.init.zeros_(self.out.weight)
            if self.out.bias is not None:
                nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Apply the network.

        Parameters
        ----------
        x : Tensor, shape (batch, 2·basis, *spatial), real
            Whitened channels.
        index : Tensor, shape (batch,)
            Unroll index per batch item (ignored when unconditioned).

        Returns
        -------
        Tensor, same shape as ``x``
            ``x + net(x)`` when ``residual`` else ``net(x)``.
        """
        cfg = self.cfg
        if x.ndim != cfg.dim + 2 or x.shape[1] != 2 * cfg.basis:
            raise InputError(
                f"UNet: input has shape {tuple(x.shape)}, expected (batch, {2 * cfg.basis}, "
                f"{'x, y, z' if cfg.dim == 3 else 'x, y'})"
            )
        cond = None
        if self.embed is not None:
            cond = self.embed(sinusoidal_embedding(index.to(x.device), cfg.embed_dim))
        spatial = x.shape[2:]
        m = 2 ** (cfg.levels - 1)
        pad: list[int] = []
        for s in reversed(spatial):
            pad += [0, (-s) % m]
        h = F.pad(x, pad) if any(pad) else x
        skips = []
        for lvl, block in enumerate(self.enc):
            h = block(h, cond)
            if lvl < cfg.levels - 1:
                skips.append(h)
                h = self.down[lvl](h)
        for up, block in zip(self.up, self.dec, strict=True):
            h = up(h)
            h = block(torch.cat([h, skips.pop()], dim=1), cond)
        h = self.out(h)
        if any(pad):
            h = h[(slice(None), slice(None), *(slice(0, s) for s in spatial))]
        return x + h if cfg.residual else h


class Denoiser(nn.Module):
    """``f_θ(α, i)`` on complex coefficients: channels, joint whitening, UNet, un-whitening.

    Parameters
    ----------
    cfg : UNetConfig
    """

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.unet = UNet(cfg)

    def forward(self, alpha: torch.Tensor, index: int | float | torch.Tensor) -> torch.Tensor:
        """Denoise coefficient maps.

        Parameters
        ----------
        alpha : Tensor, shape (basis, x, y, z) or (batch, basis, x, y, z), complex64
        index : int, float or Tensor of shape (batch,)
            The unroll index ``i`` (1-based).

        Returns
        -------
        Tensor, same shape and dtype as ``alpha``
        """
        if not alpha.is_complex():
            raise InputError("Denoiser: coefficients must be complex")
        single = alpha.ndim == 4
        a = alpha[None] if single else alpha
        if a.ndim != 5 or a.shape[1] != self.cfg.basis:
            raise InputError(
                f"Denoiser: coefficients have shape {tuple(alpha.shape)}, expected "
                f"({self.cfg.basis}, x, y, z) or (batch, {self.cfg.basis}, x, y, z)"
            )
        b = a.shape[0]
        idx = torch.as_tensor(index, dtype=torch.float32, device=a.device).reshape(-1)
        if idx.numel() == 1:
            idx = idx.expand(b)
        # whitening stays in float32 even under an outer bf16 autocast (only the UNet is cast)
        with torch.autocast(a.device.type, enabled=False):
            x = complex_to_channels(a)
            mean, w, w_inv = whitening_stats(x)
            z = whiten(x, mean, w)
        y = self._flip_mean(z, idx) if self.cfg.dim == 3 else self._slices(z, idx)
        with torch.autocast(a.device.type, enabled=False):
            out = channels_to_complex(unwhiten(y.float(), mean, w_inv))
        return out[0] if single else out

    def _flip_mean(self, z: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Apply the UNet to ``z``, averaged over the first ``cfg.flips`` axis flips."""
        y = self.unet(z, idx)
        for axes in AXIS_FLIPS[1 : self.cfg.flips]:
            y = y + self.unet(z.flip(axes), idx).flip(axes)
        return y / self.cfg.flips if self.cfg.flips > 1 else y

    def _slices(self, z: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Apply the 2D network to each axial slice (last axis) of ``(b, c, x, y, z)``."""
        b, c, nx, ny, nz = z.shape
        s = z.permute(0, 4, 1, 2, 3).reshape(b * nz, c, nx, ny)
        sidx = idx.repeat_interleave(nz)
        step = self.cfg.slice_chunk
        outs = [self.unet(s[i : i + step], sidx[i : i + step]) for i in range(0, b * nz, step)]
        y = torch.cat(outs, 0)
        return y.reshape(b, nz, c, nx, ny).permute(0, 2, 3, 4, 1)
