"""Live sessions on a loaded engine: camera frames in, animated frames out, one at a time.

`codec` decodes driving JPEGs (bounded) and encodes the answers; `session` is the per-frame path on
the primitives (a prepared source, the driving face tracked and cropped, motion relative to a
reference frame, One-Euro smoothing, stitching, W+G, compose); `batcher` is the inference thread
that renders the frames of concurrent sessions in one W+G call.
"""
