"""The iGROG kernel family: an implicit neural representation of GRAPPA-like kernels (paper 2.3.1).

:class:`IGROGKernel` maps the displacements ``d_1 … d_n`` (cycles/FOV) of ``n`` source samples
from a target grid point to a coil-mixing kernel ``G_ψ(d) ∈ C^{coils × coils·n}``: an MLP on
random Fourier features of the displacements (Abraham et al., arXiv:2310.10823), plus a fixed
smooth nearest-source prior.  It is trained by :func:`~spurig_core.operators.igrog_train.
train_kernel` and applied by :func:`~spurig_core.operators.igrog.grid`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..errors import InputError

__all__ = ["IGROGKernel"]


class IGROGKernel(nn.Module):
    """The implicit kernel family ``G_ψ(d_1 … d_n)`` (an MLP on random Fourier features).

    Parameters
    ----------
    n_coils : int
        Number of coils (the kernel mixes all of them).
    n_sources : int
        Number of source samples ``n``.
    hidden, layers, fourier_features : int
        MLP width, number of hidden ReLU layers, number of Fourier frequencies.
    fourier_scale : float
        Standard deviation of the Fourier frequencies (cycles per cycle/FOV).
    seed : int
        Seed of the Fourier frequencies and initial weights.

    Attributes
    ----------
    history : list of float
        Training loss per step (normalised units).
    metrics : dict of str to float
        ``val_rel_error`` (held-out calibration pairs), ``nearest_rel_error`` (the same targets
        predicted by the nearest source, no kernel), ``reach`` (largest displacement, cycles/FOV).
    config : dict
        The :class:`GriddingConfig` it was trained with (plain dict).
    """

    freqs: torch.Tensor

    def __init__(
        self,
        n_coils: int,
        n_sources: int,
        *,
        hidden: int = 256,
        layers: int = 3,
        fourier_features: int = 128,
        fourier_scale: float = 0.1,
        prior_width: float = 0.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.n_coils = int(n_coils)
        self.n_sources = int(n_sources)
        self.prior_width = float(prior_width)
        gen = torch.Generator().manual_seed(seed)
        d_in = 3 * self.n_sources
        self.register_buffer(
            "freqs", torch.randn(fourier_features, d_in, generator=gen) * fourier_scale
        )
        widths = [d_in + 2 * fourier_features] + [hidden] * layers
        mods: list[nn.Module] = []
        for a, b in itertools.pairwise(widths):
            mods += [nn.Linear(a, b), nn.ReLU()]
        out = nn.Linear(hidden, 2 * self.n_coils * self.n_coils * self.n_sources)
        mods.append(out)
        self.mlp = nn.Sequential(*mods)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for m in self.mlp:
                if isinstance(m, nn.Linear):
                    m.reset_parameters()
            nn.init.normal_(out.weight, std=1e-3)
            nn.init.zeros_(out.bias)
        self.history: list[float] = []
        self.metrics: dict[str, float] = {}
        self.config: dict[str, Any] = {}

    def forward(self, d: torch.Tensor) -> torch.Tensor:
        """Kernels for a batch of displacement sets.

        Parameters
        ----------
        d : Tensor, shape (batch, n, 3), float32
            Source minus target position, cycles/FOV.

        Returns
        -------
        Tensor, shape (batch, coils, coils·n), complex64
            ``G`` with source index ``c·n + i`` (coil ``c``, source ``i``).
        """
        x = d.reshape(d.shape[0], 3 * self.n_sources)
        proj = (2 * math.pi) * x @ self.freqs.T
        h = self.mlp(torch.cat([x, torch.sin(proj), torch.cos(proj)], dim=1))
        h = h.view(d.shape[0], 2, self.n_coils, self.n_coils * self.n_sources)
        g = torch.complex(h[:, 0], h[:, 1])
        if self.prior_width > 0:
            # smooth nearest-source prior: each coil from its own sources, Gaussian weights
            w = torch.softmax(-d.square().sum(-1) / self.prior_width**2, dim=-1)  # (batch, n)
            eye = torch.eye(self.n_coils, device=d.device, dtype=w.dtype)
            g = g + torch.kron(eye, torch.ones(1, self.n_sources, device=d.device)).mul(
                w.repeat(1, self.n_coils)[:, None, :]
            ).to(g.dtype)
        return g

    def predict(self, d: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
        """Predict target values from source values.

        Parameters
        ----------
        d : Tensor, shape (batch, n, 3), float32
            Displacements (cycles/FOV).
        sources : Tensor, shape (batch, coils, n), complex64
            Source values.

        Returns
        -------
        Tensor, shape (batch, coils), complex64
        """
        g = self.forward(d)
        return torch.bmm(g, sources.reshape(sources.shape[0], -1, 1)).squeeze(-1)

    def checkpoint(self) -> dict[str, Any]:
        """Everything needed to rebuild the kernel (for results and checkpoints)."""
        return {
            "kind": "igrog-kernel/1",
            "n_coils": self.n_coils,
            "n_sources": self.n_sources,
            "config": dict(self.config),
            "metrics": dict(self.metrics),
            "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()},
        }

    @classmethod
    def from_config(
        cls, n_coils: int, n_sources: int, config: Mapping[str, Any], *, seed: int = 0
    ) -> IGROGKernel:
        """Return a new kernel of the architecture in ``config``.

        Parameters
        ----------
        n_coils, n_sources : int
        config : mapping
            :class:`~spurig_core.operators.igrog.GriddingConfig` fields as a plain dict
            (``hidden``, ``layers``, ``fourier_features``, ``fourier_scale``, ``prior_width``);
            a missing field takes the default of :class:`IGROGKernel` (``prior_width`` 0, as
            kernels stored before the prior existed).
        seed : int
            Seed of the Fourier frequencies and initial weights.
        """
        return cls(
            n_coils,
            n_sources,
            hidden=config.get("hidden", 256),
            layers=config.get("layers", 3),
            fourier_features=config.get("fourier_features", 128),
            fourier_scale=config.get("fourier_scale", 0.1),
            prior_width=config.get("prior_width", 0.0),
            seed=seed,
        )

    @classmethod
    def from_checkpoint(cls, state: dict[str, Any]) -> IGROGKernel:
        """Inverse of :meth:`checkpoint`.

        Raises
        ------
        InputError
            If ``state`` is not an iGROG kernel checkpoint or does not fit its configuration.
        """
        if not isinstance(state, dict) or state.get("kind") != "igrog-kernel/1":
            raise InputError("kernel checkpoint: not an iGROG kernel (kind 'igrog-kernel/1')")
        cfg = state.get("config", {})
        kernel = cls.from_config(state["n_coils"], state["n_sources"], cfg)
        try:
            kernel.load_state_dict(state["state_dict"])
        except RuntimeError as exc:
            first = str(exc).splitlines()[0]
            raise InputError(f"kernel checkpoint: weights do not fit: {first}") from None
        kernel.config = dict(cfg)
        kernel.metrics = dict(state.get("metrics", {}))
        return kernel.eval()
