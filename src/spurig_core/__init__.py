"""spurig_core: the headless engine of spurig (SPUR-iG 3D MRF reconstruction)."""
__version__ = "0.1.0"
