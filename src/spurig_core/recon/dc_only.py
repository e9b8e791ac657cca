"""``--method dc-only``: the SPUR-iG unroll with the denoiser replaced by the identity (SPEC §2).

The honest baseline of every learned method: the same data term and the same number of DC steps
as the SPUR-iG model of the scan's duration (its checkpoint's ``encoding`` and
``UnrollConfig.steps``; ``--model`` picks another SPUR-iG checkpoint), from the same
initialisation ``α_0 = s·A^H b``, so any gain of a trained model over this is the denoiser's::

    α_i = α_{i−1} − (1/L) · (A^H A α_{i−1} − A^H b),     i = 1 … steps

The step size is ``1/L`` (``mu_init = 1``), not the model's learned ``μ_i``: those were trained
together with the denoiser and belong to it.  ``L ≈ ‖A^H A‖₂`` is the one kept with the gridded
data (:mod:`spurig_core.operators.step_size`, issue #14), as for SPUR-iG; without one, the unroll's
own estimate (:func:`~spurig_core.recon.unrolled.estimate_lipschitz`: the checkpoint's
``power_iters`` power iterations from ``A^H b``).  These are "the six gradient steps of 1/L with
an identity denoiser" of ``benchmarks/RESULTS-models.md`` (``benchmarks/bench_dataterm.py``,
which estimates ``L`` with 20 power iterations instead).

It runs the unroll's own code (:class:`~spurig_core.recon.unrolled.UnrolledRecon`: its step,
progress events and saved iterations) with the identity as every step's denoiser.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import nn

from .data_term import DataTerm, MethodOutput, RunContext
from .trained import run_network
from .unrolled import UnrolledRecon

__all__ = ["IdentityDenoiser", "dc_only_network", "run"]


class IdentityDenoiser(nn.Module):
    """``f(α, i) = α``: the denoiser of the DC-only baseline."""

    def forward(self, alpha: torch.Tensor, index: Any) -> torch.Tensor:
        """Return ``alpha`` unchanged (any shape; ``index`` is ignored)."""
        return alpha


class _DCOnlyUnroll(UnrolledRecon):
    """:class:`UnrolledRecon` whose every denoiser is the identity."""

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.identity = IdentityDenoiser()

    def denoiser(self, i: int) -> Any:
        """Return the identity, whatever the step."""
        return self.identity


def dc_only_network(cfg: Any) -> UnrolledRecon:
    """Return the DC-only unroll of a model's config: its steps, ``μ_i = 1/L``, identity denoisers.

    Parameters
    ----------
    cfg : UnrollConfig
        The SPUR-iG model's config (``steps``, ``power_iters`` are kept).

    Returns
    -------
    UnrolledRecon
        In eval mode on the CPU.
    """
    net = _DCOnlyUnroll(replace(cfg, mu_init=1.0, share_weights=True))
    return net.eval()


def run(term: DataTerm, ctx: RunContext) -> MethodOutput:
    """Run ``--method dc-only`` on a data term (see the module notes).

    Parameters
    ----------
    term : DataTerm
        The SPUR-iG model's data term (gridded, its ``encoding``).
    ctx : RunContext
        ``ctx.model`` is the SPUR-iG :class:`~spurig_core.recon.trained.LoadedModel` of the
        duration (or ``--model``): only its config and data term are used.

    Returns
    -------
    MethodOutput
        ``record["unroll"]`` is the DC-only config (``mu_init = 1``), ``record["denoiser"]`` is
        ``"identity"``; ``model_info`` names the model whose data term and step count were used.
    """
    net = dc_only_network(ctx.model.meta["config"])
    out = run_network(net, term, ctx, ctx.model)
    out.record["denoiser"] = "identity"
    return out
