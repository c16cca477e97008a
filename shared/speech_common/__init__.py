"""Common library bundled into both trusses: audio codecs, VAD, text buffering, batching."""
