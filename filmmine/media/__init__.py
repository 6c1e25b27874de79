"""Films in: the library's inputs, probing (streams, layout, projection, spatial metadata),
frame decoding and the stereo layouts, and the ffmpeg binaries they run."""
