"""Word timestamps by forced alignment (orpheus_tts.alignment) on speech whose word boundaries
are known by construction: espeak-ng renders every word on its own, the words are joined with
silences of known, random length (30-120 ms). A boundary that falls inside such a silence is
right (the pause belongs to neither word); elsewhere its error is the distance to the silence.
The first word's start and the last word's end are measured against the speech's own edges."""

from __future__ import annotations

import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest
import soxr

from orpheus_tts.alignment import WordAligner, quiet_runs, refine
from tests.whisper_helpers import whisper_base_dir

SENTENCES = [
    "Good morning, how are you today?",
    "The train leaves at seven o'clock.",
    "I would like a cup of coffee, please.",
    "My sister lives in a small village.",
    "Please call Stella and ask her to bring these things with her from the store.",
    "Six spoons of fresh snow peas and five thick slabs of blue cheese.",
    "We will meet at the station at seven o'clock tomorrow morning.",
    "The quick brown fox jumps over the lazy dog near the river bank.",
]
GAP_S = (0.03, 0.12)
LEAD_S = 0.3
SPEECH_THRESHOLD = 0.02  # espeak's silence is digital zero; its speech is far above this


def _word(word: str, workdir: Path) -> np.ndarray:
    path = workdir / "word.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "160", "-w", str(path), word], check=True)
    with wave.open(str(path)) as w:
        rate = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768
    audio = soxr.resample(pcm, rate, 16000).astype(np.float32)
    loud = np.nonzero(np.abs(audio) > SPEECH_THRESHOLD)[0]
    return audio[loud[0] : loud[-1] + 1]


def build(sentence: str, rng: np.random.Generator, workdir: Path):
    parts = [np.zeros(int(LEAD_S * 16000), np.float32)]
    truth = []
    t = LEAD_S
    for word in sentence.split():
        audio = _word(word, workdir)
        truth.append((t, t + len(audio) / 16000))
        gap = np.zeros(int(rng.uniform(*GAP_S) * 16000), np.float32)
        parts += [audio, gap]
        t += (len(audio) + len(gap)) / 16000
    return np.concatenate(parts), truth


def boundary_errors(words, truth) -> list[float]:
    errors = []
    for i, (w, (start, end)) in enumerate(zip(words, truth, strict=True)):
        before = truth[i - 1][1] if i else start  # the silence before the word (none: its edge)
        after = truth[i + 1][0] if i + 1 < len(truth) else end
        for t, lo, hi in ((w.start_s, before, start), (w.end_s, end, after)):
            errors.append(0.0 if lo <= t <= hi else min(abs(t - lo), abs(t - hi)))
    return errors


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory):
    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is required (apt-get install espeak-ng)")
    workdir = tmp_path_factory.mktemp("words")
    rng = np.random.default_rng(20261130)
    return [(s, *build(s, rng, workdir)) for s in SENTENCES]


@pytest.mark.slow
def test_word_boundaries_within_40_ms_median_and_100_ms_p95(corpus, tmp_path_factory) -> None:
    from faster_whisper import WhisperModel

    model_dir = whisper_base_dir(tmp_path_factory.mktemp("base"))
    aligner = WordAligner(WhisperModel(str(model_dir), device="cpu", compute_type="int8"))
    errors = []
    for sentence, audio, truth in corpus:
        words = aligner.align(audio, sentence)
        assert [w.word for w in words] == sentence.split()
        assert all(a.end_s <= b.start_s for a, b in zip(words, words[1:], strict=False))
        errors += boundary_errors(words, truth)
    errors_ms = np.array(errors) * 1000
    median, p95 = np.median(errors_ms), np.percentile(errors_ms, 95)
    assert median <= 40 and p95 <= 100, (median, p95)


def test_refinement_moves_boundaries_onto_the_pauses() -> None:
    """Without a model: three tone "words" with pauses, and estimates that are all late by
    the same 120 ms (Whisper's kind of error) land in the pauses."""
    sr = 16000
    tone = (0.3 * np.sin(np.arange(int(0.4 * sr)) / sr * 2 * np.pi * 200)).astype(np.float32)
    gap = np.zeros(int(0.08 * sr), np.float32)
    audio = np.concatenate([gap, tone, gap, tone, gap, tone, gap])
    assert len(quiet_runs(audio)) == 4
    late = [(0.2, 0.68), (0.68, 1.16), (1.16, 1.56)]
    words = refine(audio, ["one", "two", "three"], late)
    assert [(w.start_s, w.end_s) for w in words] == [(0.08, 0.48), (0.56, 0.96), (1.04, 1.44)]


def test_tags_are_not_words() -> None:
    class Model:  # only what WordAligner.align touches before the model runs
        class model:  # noqa: N801
            is_multilingual = False

        hf_tokenizer = None

    from faster_whisper.tokenizer import Tokenizer  # noqa: F401 (constructed lazily)

    aligner = WordAligner.__new__(WordAligner)
    aligner._whisper = lambda audio, text: [(0.0, 0.1), (0.1, 0.2)]  # type: ignore[method-assign]
    words = aligner.align(np.zeros(3200, np.float32), "Hello <laugh> there")
    assert [w.word for w in words] == ["Hello", "there"]
