"""The wire: the frame codec shared with the client, the block codecs, and zstd frames.

Layer rule: wire imports only remote_helper.errors; everything else may import wire."""
