#!/usr/bin/env python3
"""Regenerate the bundled speech samples (espeak-ng + sox) with their reference transcripts.

The WAVs are committed so tests and CI need neither tool; run this only to change them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

SAMPLES_DIR = Path(__file__).resolve().parent.parent / "samples"
SAMPLE_RATE_HZ = 16000
LEAD_SILENCE_S = 0.5
GAP_SILENCE_S = 1.2  # > min_silence_duration_ms defaults, so each sentence is its own utterance
TAIL_SILENCE_S = 1.0
SPEECH_RATE_WPM = 150

SAMPLES: dict[str, list[str]] = {
    "speech_en": [
        "The quick brown fox jumps over the lazy dog.",
        "Streaming speech recognition should be fast and accurate.",
        "Please call me back tomorrow morning at nine.",
    ],
    "weather_en": [
        "The weather today is sunny with a light breeze.",
        "Tomorrow it will rain in the afternoon.",
    ],
    "order_en": [
        "I would like to order two large pizzas.",
        "Can you deliver them to my office before noon?",
    ],
}


def _run(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


def build(name: str, sentences: list[str], workdir: Path) -> None:
    parts = []
    for i, sentence in enumerate(sentences):
        raw = workdir / f"{name}_{i}_raw.wav"
        part = workdir / f"{name}_{i}.wav"
        _run("espeak-ng", "-v", "en-us", "-s", str(SPEECH_RATE_WPM), "-w", str(raw), sentence)
        pad_before = LEAD_SILENCE_S if i == 0 else 0.0
        pad_after = TAIL_SILENCE_S if i == len(sentences) - 1 else GAP_SILENCE_S
        _run(
            "sox",
            str(raw),
            "-r",
            str(SAMPLE_RATE_HZ),
            "-c",
            "1",
            "-b",
            "16",
            str(part),
            "pad",
            str(pad_before),
            str(pad_after),
        )
        parts.append(str(part))
    _run("sox", *parts, str(SAMPLES_DIR / f"{name}.wav"))
    (SAMPLES_DIR / f"{name}.json").write_text(
        json.dumps({"text": " ".join(sentences), "utterances": sentences}, indent=2) + "\n"
    )


def main() -> None:
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is required: apt-get install espeak-ng sox")
    SAMPLES_DIR.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name, sentences in SAMPLES.items():
            build(name, sentences, Path(tmp))
            print(f"wrote {SAMPLES_DIR / name}.wav")


if __name__ == "__main__":
    main()
