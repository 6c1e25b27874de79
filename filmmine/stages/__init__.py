"""The per-frame stages, pure functions on numpy arrays: shots, sampling, crop, filters,
vertical alignment, disparity and its checks, spherical projection."""
