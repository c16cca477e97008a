"""Streaming Whisper over WebSocket: protocol, VAD utterances, batched transcription."""
