"""Qt dock widgets of the plugin (thin magicgui forms over :mod:`napari_spurig._jobs`)."""

from ._compare import CompareWidget
from ._maps import MapsWidget
from ._reconstruct import ReconstructWidget
from ._train import TrainWidget

__all__ = ["CompareWidget", "MapsWidget", "ReconstructWidget", "TrainWidget"]
