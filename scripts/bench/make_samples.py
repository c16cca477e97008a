#!/usr/bin/env python3
"""Regenerate the bundled speech samples (espeak-ng + sox) with their reference transcripts.

The WAVs are committed so tests and CI need neither tool; run this only to change them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np

from scripts import SAMPLES_DIR
from scripts.clients.stt import (
    CLIENT_RATE_HZ as SAMPLE_RATE_HZ,  # the samples are what clients send
)
from scripts.clients.stt import read_wav

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


# Language-identification clips (samples/lang/<lang>_<n>.wav): one short sentence each, spoken
# by espeak-ng's voice for that language; the multilingual tests check detection on them.
LANG_DIR = SAMPLES_DIR / "lang"
LANG_VOICES = {"en": "en-us", "de": "de", "fr": "fr-fr", "es": "es"}
LANG_RATE_HZ = 8000  # telephone band: half the bytes, and enough to tell the language apart
LANG_SENTENCES: dict[str, list[str]] = {
    "en": [
        "Good morning, how are you today?",
        "The train leaves at seven o'clock.",
        "I would like a cup of coffee, please.",
        "My sister lives in a small village.",
        "We are going to the beach this weekend.",
        "Can you help me find the station?",
        "The children are playing in the garden.",
        "It is very cold outside this morning.",
        "Please close the window before you leave.",
        "This book is about the history of music.",
    ],
    "de": [
        "Guten Morgen, wie geht es Ihnen heute?",
        "Der Zug fährt um sieben Uhr ab.",
        "Ich hätte gern eine Tasse Kaffee, bitte.",
        "Meine Schwester wohnt in einem kleinen Dorf.",
        "Wir fahren am Wochenende an den Strand.",
        "Können Sie mir helfen, den Bahnhof zu finden?",
        "Die Kinder spielen im Garten.",
        "Heute Morgen ist es draußen sehr kalt.",
        "Bitte schließen Sie das Fenster, bevor Sie gehen.",
        "Dieses Buch handelt von der Geschichte der Musik.",
    ],
    "fr": [
        "Bonjour, comment allez-vous aujourd'hui ?",
        "Le train part à sept heures.",
        "Je voudrais une tasse de café, s'il vous plaît.",
        "Ma sœur habite dans un petit village.",
        "Nous allons à la plage ce week-end.",
        "Pouvez-vous m'aider à trouver la gare ?",
        "Les enfants jouent dans le jardin.",
        "Il fait très froid dehors ce matin.",
        "Fermez la fenêtre avant de partir, s'il vous plaît.",
        "Ce livre parle de l'histoire de la musique.",
    ],
    "es": [
        "Buenos días, ¿cómo está usted hoy?",
        "El tren sale a las siete.",
        "Quisiera una taza de café, por favor.",
        "Mi hermana vive en un pueblo pequeño.",
        "Vamos a la playa este fin de semana.",
        "¿Puede ayudarme a encontrar la estación?",
        "Los niños juegan en el jardín.",
        "Hace mucho frío afuera esta mañana.",
        "Por favor, cierre la ventana antes de salir.",
        "Este libro trata de la historia de la música.",
    ],
}


# Word-boundary clips (samples/words): espeak-ng renders every word on its own and the words are
# joined with silences of known, random length, so each word's start and end are known to the
# sample; the word aligner's accuracy test and scripts/bench/alignment.py measure against them.
WORDS_DIR = SAMPLES_DIR / "words"
WORDS_RATE_HZ = 16000
WORDS_SEED = 20261130
WORDS_GAP_S = (0.03, 0.12)
WORDS_LEAD_S = 0.3
WORDS_SPEECH_THRESHOLD = 0.02  # espeak's silence is digital zero; its speech is far above this
WORDS_SENTENCES = [
    "Good morning, how are you today?",
    "The train leaves at seven o'clock.",
    "I would like a cup of coffee, please.",
    "My sister lives in a small village.",
    "Please call Stella and ask her to bring these things with her from the store.",
    "Six spoons of fresh snow peas and five thick slabs of blue cheese.",
    "We will meet at the station at seven o'clock tomorrow morning.",
    "The quick brown fox jumps over the lazy dog near the river bank.",
]


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


def build_language_clips(workdir: Path) -> None:
    LANG_DIR.mkdir(exist_ok=True)
    texts = {}
    for lang, sentences in LANG_SENTENCES.items():
        for i, sentence in enumerate(sentences):
            raw = workdir / f"{lang}_{i}_raw.wav"
            name = f"{lang}_{i}"
            _run(
                "espeak-ng",
                "-v",
                LANG_VOICES[lang],
                "-s",
                str(SPEECH_RATE_WPM),
                "-w",
                str(raw),
                sentence,
            )
            _run(
                "sox", str(raw), "-r", str(LANG_RATE_HZ), "-c", "1", "-b", "16",
                str(LANG_DIR / f"{name}.wav"), "pad", "0.2", "0.3",
            )  # fmt: skip
            texts[name] = {"language": lang, "text": sentence}
    (LANG_DIR / "clips.json").write_text(json.dumps(texts, indent=2, ensure_ascii=False) + "\n")


def _word(word: str, workdir: Path) -> np.ndarray:
    path = workdir / "word.wav"
    _run("espeak-ng", "-v", "en-us", "-s", "160", "-w", str(path), word)
    audio = read_wav(path, WORDS_RATE_HZ)
    loud = np.nonzero(np.abs(audio.astype(np.float32) / 32768) > WORDS_SPEECH_THRESHOLD)[0]
    return audio[loud[0] : loud[-1] + 1]


def build_word_clips(workdir: Path) -> None:
    WORDS_DIR.mkdir(exist_ok=True)
    rng = np.random.default_rng(WORDS_SEED)
    clips = []
    for i, sentence in enumerate(WORDS_SENTENCES):
        parts = [np.zeros(int(WORDS_LEAD_S * WORDS_RATE_HZ), np.int16)]
        bounds, t = [], len(parts[0])
        for word in sentence.split():
            audio = _word(word, workdir)
            gap = np.zeros(int(rng.uniform(*WORDS_GAP_S) * WORDS_RATE_HZ), np.int16)
            bounds.append([t, t + len(audio)])
            parts += [audio, gap]
            t += len(audio) + len(gap)
        name = f"words_{i}.wav"
        with wave.open(str(WORDS_DIR / name), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(WORDS_RATE_HZ)
            out.writeframes(np.concatenate(parts).astype("<i2").tobytes())
        clips.append({"file": name, "text": sentence, "word_samples": bounds})
    meta = {"rate_hz": WORDS_RATE_HZ, "seed": WORDS_SEED, "clips": clips}
    (WORDS_DIR / "words.json").write_text(json.dumps(meta, indent=1) + "\n")


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Regenerate the espeak-ng samples in samples/.")
    parser.add_argument(
        "--languages-only", action="store_true", help="only samples/lang (keep the tuned ones)"
    )
    parser.add_argument(
        "--words-only", action="store_true", help="only samples/words (the aligner's clips)"
    )
    args = parser.parse_args(argv)
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is required: apt-get install espeak-ng sox")
    SAMPLES_DIR.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        if args.words_only:
            build_word_clips(Path(tmp))
            print(f"wrote {WORDS_DIR}")
            return
        if not args.languages_only:  # espeak-ng versions differ: keep the tuned ones
            for name, sentences in SAMPLES.items():
                build(name, sentences, Path(tmp))
                print(f"wrote {SAMPLES_DIR / name}.wav")
        build_language_clips(Path(tmp))
        print(f"wrote {LANG_DIR}")
        build_word_clips(Path(tmp))
        print(f"wrote {WORDS_DIR}")


if __name__ == "__main__":
    main()
