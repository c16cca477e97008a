"""Helpers for the streaming-Whisper tests: samples, WER (scripts.bench.wer), raw protocol sessions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from scripts.bench.wer import wer  # noqa: F401 (the tests' WER is the benchmarks')
from scripts.clients.stt import read_wav

SAMPLES = Path(__file__).resolve().parent.parent / "samples"


def sample(name: str, rate: int = 16000) -> tuple[np.ndarray, dict]:
    """int16 samples of a bundled WAV at ``rate`` and its reference JSON."""
    return read_wav(SAMPLES / f"{name}.wav", rate), json.loads(
        (SAMPLES / f"{name}.json").read_text()
    )


from scripts.bench.alignment import whisper_base_dir  # noqa: E402,F401 (one helper)

# Every key of the published protocol's transcription message (partials and finals alike).
PUBLISHED_TRANSCRIPTION_KEYS = (
    "type",
    "is_final",
    "transcript",
    "transcription_num",
    "language_code",
    "language_prob",
    "audio_length_sec",
    "segments",
)
