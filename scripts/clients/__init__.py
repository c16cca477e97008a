"""Protocol clients: one implementation per protocol (STT, TTS and its event mode, the TTS
dialects), with the handshake and API-key rule they share."""
