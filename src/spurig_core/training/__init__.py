"""Training of the unrolled networks: datasets, the three stages, losses."""
