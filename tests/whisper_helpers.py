"""Helpers for the streaming-Whisper tests: samples, WER, raw protocol sessions."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import jiwer
import numpy as np

from scripts.clients.stt import read_wav

SAMPLES = Path(__file__).resolve().parent.parent / "samples"


@cache
def _normaliser():
    # Whisper's English normaliser (as shipped in transformers; no spelling map download).
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    return EnglishTextNormalizer({})


def normalise(text: str) -> str:
    return _normaliser()(text)


def wer(reference: str | list[str], hypothesis: str | list[str]) -> float:
    """Normalised WER; lists are scored as one corpus (total errors / total words)."""
    refs = [reference] if isinstance(reference, str) else reference
    hyps = [hypothesis] if isinstance(hypothesis, str) else hypothesis
    return jiwer.wer([normalise(r) for r in refs], [normalise(h) or "<empty>" for h in hyps])


def sample(name: str, rate: int = 16000) -> tuple[np.ndarray, dict]:
    """int16 samples of a bundled WAV at ``rate`` and its reference JSON."""
    return read_wav(SAMPLES / f"{name}.wav", rate), json.loads(
        (SAMPLES / f"{name}.json").read_text()
    )


from scripts.bench.alignment import whisper_base_dir  # noqa: E402,F401 (one helper)
