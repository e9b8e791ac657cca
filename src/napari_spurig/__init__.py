"""napari_spurig: the napari plugin of spurig."""
