"""Orpheus TTS over WebSocket: protocol edge (schema, session, metrics) and the synthesis runtime.

Importing the package is cheap; the engine, tokenizer and SNAC load in ``runtime.load_runtime``.
"""
