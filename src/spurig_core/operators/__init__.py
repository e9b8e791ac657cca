"""Linear operators: the algebra (base), Fourier transforms, coil/subspace encoding, iGROG."""
