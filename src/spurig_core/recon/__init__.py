"""Reconstructions: adjoint, FISTA with LLR, and the unrolled SPUR-iG / hybrid networks."""
