#!/usr/bin/env python
"""Language detection with Whisper base on espeak-ng speech in en/de/fr/es (10 sentences each,
scripts/bench/make_samples.py's), through the engine's detection job: right answers per language for
one sentence at 8 and 16 kHz and for three sentences (~8 s), with a 10 s and a 30 s encoder
window, and faster-whisper's own ``detect_language`` on the same sentences; then real human speech in six languages (samples/lang_real, three clips each). Needs
espeak-ng, sox and the Whisper base dev packages.

    python scripts/bench/language.py
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from scripts import SAMPLES_DIR
from scripts.bench.alignment import whisper_base_dir
from scripts.bench.make_samples import LANG_SENTENCES, LANG_VOICES, SPEECH_RATE_WPM
from scripts.clients.stt import read_wav


def _render(text: str, voice: str, rate: int, out: Path) -> np.ndarray:
    raw = out.with_suffix(".raw.wav")
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(SPEECH_RATE_WPM), "-w", str(raw), text],
                   check=True, capture_output=True)  # fmt: skip
    subprocess.run(["sox", str(raw), "-r", str(rate), "-c", "1", "-b", "16", str(out),
                    "pad", "0.2", "0.3"], check=True, capture_output=True)  # fmt: skip
    return read_wav(out, 16000).astype(np.float32) / 32768


def main(argv: list[str] | None = None) -> int:
    from faster_whisper import WhisperModel

    from whisper_streaming.engine import DecodeOptions, JobKind, TranscribeJob, WhisperEngine

    detect = DecodeOptions(language=None, language_detection_only=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = WhisperModel(str(whisper_base_dir(work)), device="cpu", compute_type="int8")
        engines = {ctx: WhisperEngine(model, encoder_context_s=ctx) for ctx in (10.0, 30.0)}
        clips: dict[tuple[str, int], list[np.ndarray]] = {}
        for lang, sentences in LANG_SENTENCES.items():
            for rate in (8000, 16000):
                clips[lang, rate] = [
                    _render(s, LANG_VOICES[lang], rate, work / f"{lang}{i}_{rate}.wav")
                    for i, s in enumerate(sentences)
                ]
        cases = [("one sentence, 8 kHz", 8000, 1, 10.0), ("one sentence, 16 kHz", 16000, 1, 10.0),
                 ("one sentence, 16 kHz", 16000, 1, 30.0),
                 ("three sentences (~8 s), 16 kHz", 16000, 3, 10.0),
                 ("three sentences (~8 s), 16 kHz", 16000, 3, 30.0)]  # fmt: skip
        print("| audio | encoder window | " + " | ".join(LANG_SENTENCES) + " |")
        print("|---|---:|" + "---:|" * len(LANG_SENTENCES))
        for label, rate, n, ctx in cases:
            right = []
            for lang in LANG_SENTENCES:
                audio = clips[lang, rate]
                joined = [
                    np.concatenate([audio[(i + k) % 10] for k in range(n)]) for i in range(10)
                ]
                jobs = [TranscribeJob(JobKind.FINAL, a, detect) for a in joined]
                right.append(sum(t.language == lang for t in engines[ctx].run(jobs)))
            print(f"| {label} | {ctx:.0f} s | " + " | ".join(map(str, right)) + " |")
        # The model's own answer, outside this project's code: faster-whisper's detect_language
        # (30 s window) on the same one-sentence clips. Where it fails, no detection path can
        # do better with this model.
        own = [
            sum(model.detect_language(audio)[0] == lang for audio in clips[lang, 16000])
            for lang in LANG_SENTENCES
        ]
        print("| one sentence, 16 kHz, faster-whisper's `detect_language` | 30 s | "
              + " | ".join(map(str, own)) + " |")  # fmt: skip
        _real_speech(engines, detect)
    return 0


def _real_speech(engines, detect) -> None:
    """Right answers on samples/lang_real (real speech, three clips per language)."""
    from whisper_streaming.engine import JobKind, TranscribeJob

    real = SAMPLES_DIR / "lang_real"
    clips = json.loads((real / "clips.json").read_text())
    languages = sorted({info["language"] for info in clips.values()})
    print("\n| real speech | encoder window | " + " | ".join(languages) + " |")
    print("|---|---:|" + "---:|" * len(languages))
    for ctx, engine in engines.items():
        jobs = {
            name: TranscribeJob(
                JobKind.FINAL,
                read_wav(real / info["file"], 16000).astype(np.float32) / 32768,
                detect,
            )
            for name, info in clips.items()
        }
        got = dict(zip(jobs, (t.language for t in engine.run(list(jobs.values()))), strict=True))
        right = [
            sum(got[n] == lang for n, info in clips.items() if info["language"] == lang)
            for lang in languages
        ]
        row = " | ".join(f"{r}/{sum(i['language'] == lang for i in clips.values())}"
                         for r, lang in zip(right, languages, strict=True))  # fmt: skip
        print(f"| samples/lang_real | {ctx:.0f} s | {row} |")


if __name__ == "__main__":
    raise SystemExit(main())
