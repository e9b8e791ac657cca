"""Widen a trained UNet without changing what it computes (Net2WiderNet, Chen et al. 2016).

A network trained at ``base_width`` ``w`` becomes one of width ``f · w`` whose output is the same
function of its input: every channel of a widened layer is copied ``f`` times, and every weight
that reads a widened layer is split between the copies of its input channel so that the copies'
contributions add up to the original one.  Training then starts from the trained network's
accuracy with ``f``² times its convolution parameters (issue 13: the 30-s networks are
capacity-bound, and a fresh wide network would need the whole recipe again).

GroupNorm keeps its statistics because each group of the wide layer holds exactly the copies of
one group of the narrow layer (the group count must stay the same: ``norm_groups`` divides both
widths).  The split ratios are random per weight (``spread``), which breaks the copies' symmetry
without changing the function: copies receive the same input, so any split with unit sum adds up
to the original weight, but their outgoing weights, and so their gradients, differ (Net2Net
adds noise instead, which changes the function).
"""

from __future__ import annotations

from dataclasses import replace
from typing import cast

import torch
from torch import nn

from ..errors import InputError
from .networks import UNet, UNetConfig, _groups, _ResBlock

__all__ = ["copy_map", "widen_unet"]

_Layer = nn.Conv3d | nn.Conv2d | nn.ConvTranspose3d | nn.ConvTranspose2d | nn.Linear


def copy_map(channels: int, groups: int, factor: int) -> torch.Tensor:
    """Source channel of every channel of a layer widened ``factor`` times, group by group.

    Parameters
    ----------
    channels : int
        Channels of the narrow layer (a multiple of ``groups``).
    groups : int
        Its GroupNorm groups; the wide layer has as many.
    factor : int

    Returns
    -------
    Tensor, shape (factor · channels,), int64
        Wide group ``g`` holds ``factor`` copies of narrow group ``g``'s channels, in order.
    """
    p = channels // groups
    j = torch.arange(factor * channels)
    return (j // (factor * p)) * p + (j % (factor * p)) % p


class _Widener:
    """Fills a wide UNet's weights from a narrow one's, tensor by tensor."""

    def __init__(self, factor: int, spread: float, gen: torch.Generator) -> None:
        self.f = factor
        self.spread = spread
        self.gen = gen

    def take(self, w: torch.Tensor, dim: int, src: torch.Tensor | None) -> torch.Tensor:
        """Copy an output axis: ``w`` indexed by ``src`` along ``dim`` (no-op for ``None``)."""
        return w if src is None else w.index_select(dim, src)

    def split(self, w: torch.Tensor, dim: int, src: torch.Tensor | None) -> torch.Tensor:
        """Split an input axis between the copies of each channel (weights sum to ``w``)."""
        if src is None:
            return w
        wide = w.index_select(dim, src)
        u = torch.rand(wide.shape, generator=self.gen, dtype=wide.dtype)
        raw = 1.0 + self.spread * (2.0 * u - 1.0)
        total = torch.zeros_like(w).index_add_(dim, src, raw)
        return wide * raw / total.index_select(dim, src)

    def conv(
        self,
        new: nn.Module,
        old: nn.Module,
        src_in: torch.Tensor | None,
        src_out: torch.Tensor | None,
        *,
        transposed: bool = False,
    ) -> None:
        """Convolution (or linear layer) ``old`` into ``new``; ``transposed`` swaps the axes."""
        n, o = cast(_Layer, new), cast(_Layer, old)
        dim_out, dim_in = (1, 0) if transposed else (0, 1)
        w = self.split(self.take(o.weight.detach(), dim_out, src_out), dim_in, src_in)
        n.weight.data.copy_(w)
        if o.bias is not None and n.bias is not None:
            n.bias.data.copy_(self.take(o.bias.detach(), 0, src_out))

    def norm(self, new: nn.Module, old: nn.Module, src: torch.Tensor) -> None:
        """GroupNorm affine parameters follow their channels."""
        n, o = cast(nn.GroupNorm, new), cast(nn.GroupNorm, old)
        n.weight.data.copy_(o.weight.detach()[src])
        n.bias.data.copy_(o.bias.detach()[src])


def _block(
    wd: _Widener, wide: nn.Module, narrow: nn.Module, src_in: torch.Tensor | None, cout: int, g: int
) -> torch.Tensor:
    """Widen a ``_ResBlock``; returns the source map of its output channels."""
    new, old = cast(_ResBlock, wide), cast(_ResBlock, narrow)
    src = copy_map(cout, g, wd.f)
    wd.conv(new.conv1, old.conv1, src_in, src)
    wd.norm(new.norm1, old.norm1, src)
    wd.conv(new.conv2, old.conv2, src, src)
    wd.norm(new.norm2, old.norm2, src)
    if isinstance(old.skip, nn.Identity) != isinstance(new.skip, nn.Identity):
        raise InputError("widen: a residual projection appears or disappears with the width")
    if not isinstance(old.skip, nn.Identity):
        wd.conv(new.skip, old.skip, src_in, src)
    hidden, more = old.se.fc1.out_features, new.se.fc1.out_features
    if more % hidden:
        raise InputError(
            f"widen: the squeeze-excitation of {old.se.fc2.out_features} channels has {hidden} "
            f"hidden units and {more} when widened (not a multiple); choose widths whose "
            f"quotient by se_reduction scales with them"
        )
    src_h = torch.arange(more) % hidden  # its hidden units: kept, or copied like channels
    wd.conv(new.se.fc1, old.se.fc1, src, src_h)
    wd.conv(new.se.fc2, old.se.fc2, src_h, src)
    if old.film is not None and new.film is not None:
        both = torch.cat([src, cout + src])  # rows of γ, then of β
        wd.conv(new.film, old.film, None, both)
    return src


def widen_unet(
    old: UNet,
    factor: int = 2,
    *,
    spread: float = 0.5,
    seed: int = 0,
) -> UNet:
    """Return a UNet of ``factor`` times ``old``'s width computing the same function.

    Parameters
    ----------
    old : UNet
        The trained network (unchanged).
    factor : int
        Width multiplier (≥ 2).
    spread : float
        Split ratios of the copies' outgoing weights are drawn in ``1 ± spread`` before
        normalising to unit sum (``0``: equal splits, copies stay symmetric under training).
    seed : int
        Seed of the split ratios.

    Returns
    -------
    UNet
        ``UNetConfig`` equal to ``old.cfg`` but ``base_width · factor``; same dtype, on the CPU.

    Raises
    ------
    InputError
        ``factor < 2``, or a level whose GroupNorm group count would change with the width.
    """
    if factor < 2:
        raise InputError(f"widen: factor must be at least 2, got {factor}")
    cfg: UNetConfig = old.cfg
    wide_cfg = replace(cfg, base_width=cfg.base_width * factor)
    widths = [cfg.base_width * 2**lvl for lvl in range(cfg.levels)]
    groups = [_groups(w, cfg.norm_groups) for w in widths]
    for w, g in zip(widths, groups, strict=True):
        if _groups(w * factor, cfg.norm_groups) != g:
            raise InputError(
                f"widen: a level of {w} channels has {g} GroupNorm groups, and "
                f"{_groups(w * factor, cfg.norm_groups)} at {w * factor}; choose widths that "
                f"are multiples of norm_groups = {cfg.norm_groups}"
            )
    new = UNet(wide_cfg).to(next(old.parameters()).dtype)
    wd = _Widener(factor, spread, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        if old.embed is not None and new.embed is not None:
            new.embed.load_state_dict(old.embed.state_dict())
        src_in: torch.Tensor | None = None
        skips = []
        for lvl, (nb, ob) in enumerate(zip(new.enc, old.enc, strict=True)):
            src_in = _block(wd, nb, ob, src_in, widths[lvl], groups[lvl])
            if lvl < cfg.levels - 1:
                skips.append(src_in)
                wd.conv(new.down[lvl], old.down[lvl], src_in, src_in)
        for i, (nu, ou, nb, ob) in enumerate(zip(new.up, old.up, new.dec, old.dec, strict=True)):
            lvl = cfg.levels - 2 - i
            src_up = copy_map(widths[lvl], groups[lvl], factor)
            wd.conv(nu, ou, src_in, src_up, transposed=True)
            skip = skips.pop()
            cat = torch.cat([src_up, widths[lvl] + skip])  # torch.cat([h, skip]) in forward
            src_in = _block(wd, nb, ob, cat, widths[lvl], groups[lvl])
        wd.conv(new.out, old.out, src_in, None)
    return new
