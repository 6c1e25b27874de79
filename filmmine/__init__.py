"""filmmine: mine monocular-depth training data (relative disparity) from stereo films."""

__version__ = "0.1.0"
