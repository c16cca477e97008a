"""The real-speech development set (samples/real): every clip is 16 kHz mono s16le with its
reference text, and its source, revision and licence are written down."""

from __future__ import annotations

import json
import wave
from pathlib import Path

REAL = Path(__file__).resolve().parents[1] / "samples" / "real"


def seconds_of(clips: list[Path], min_words: int = 3) -> float:
    """Every clip 16 kHz mono s16le with a reference of at least ``min_words`` words beside it;
    their total length."""
    total_s = 0.0
    for clip in clips:
        with wave.open(str(clip)) as w:
            assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
            total_s += w.getnframes() / 16000
        text = json.loads(clip.with_suffix(".json").read_text())["text"]
        assert len(text.split()) >= min_words, clip.name
    return total_s


def test_real_speech_clips_are_usable_and_documented() -> None:
    clips = sorted(REAL.glob("*.wav"))
    assert 15 <= len(clips) <= 30
    total_s = seconds_of(clips)
    assert sum(p.stat().st_size for p in clips) < 5 * 2**20  # a few MB at most
    readme = (REAL / "README.md").read_text()
    for needed in ("public domain", "revision", "dbf1a08a0d4e", "185cd24e046c", "sox",
                   "c0d2f624c09d", "Apache-2.0", "f0d80c61f03f", "83c2b51ae864"):  # fmt: skip
        assert needed in readme
    assert 60 < total_s < 300


SPEAKERS = REAL.parent / "real_speakers"


def test_more_real_speakers_are_usable_and_documented() -> None:
    """samples/real_speakers (FLEURS and a LibriVox reader): same format as samples/real, each
    clip's source, revision and licence written down, every clip with a speaker in the
    conversational set's spec (samples/conversation.json)."""
    clips = sorted(SPEAKERS.glob("*.wav"))
    assert len(clips) == 15
    total_s = seconds_of(clips)
    assert sum(p.stat().st_size for p in clips) < 4 * 2**20
    assert 90 < total_s < 150
    readme = (SPEAKERS / "README.md").read_text()
    for needed in ("CC BY 4.0", "public domain", "revision", "e0c587883f1f", "8927469cf6f8",
                   "511126b492dc", "af4b79655e8b", "gain", "en_us"):  # fmt: skip
        assert needed in readme
    speakers = json.loads((REAL.parent / "conversation.json").read_text())["speakers"]
    for clip in [*clips, *REAL.glob("*.wav")]:
        assert any(clip.stem.startswith(prefix) for prefix in speakers), clip.name


LANG_REAL = REAL.parent / "lang_real"


def test_real_multilingual_clips_are_usable_and_documented() -> None:
    clips = json.loads((LANG_REAL / "clips.json").read_text())
    per_language: dict[str, int] = {}
    for info in clips.values():
        with wave.open(str(LANG_REAL / info["file"])) as w:
            assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
        assert info["text"].strip()
        per_language[info["language"]] = per_language.get(info["language"], 0) + 1
    assert per_language == dict.fromkeys(("de", "en", "es", "fr", "it", "pt"), 3)
    listed = {(LANG_REAL / info["file"]).resolve() for info in clips.values()}
    assert set(LANG_REAL.glob("*.wav")) <= listed  # no clip without its entry
    readme = (LANG_REAL / "README.md").read_text()
    for needed in ("Apache-2.0", "f0d80c61f03f", "83c2b51ae864", "test_data.json"):
        assert needed in readme
    assert sum(p.stat().st_size for p in LANG_REAL.glob("*.wav")) < 3 * 2**20


def test_word_boundary_clips_match_their_generator() -> None:
    """samples/words (the aligner's corpus; tests need no espeak-ng): the sentences are the
    generator's, every word lies on speech and every gap between words is digital silence."""
    import numpy as np

    from scripts.bench.make_samples import WORDS_DIR, WORDS_SENTENCES
    from scripts.clients.stt import read_wav

    meta = json.loads((WORDS_DIR / "words.json").read_text())
    assert [clip["text"] for clip in meta["clips"]] == WORDS_SENTENCES
    for clip in meta["clips"]:
        audio = read_wav(WORDS_DIR / clip["file"], meta["rate_hz"])
        bounds = clip["word_samples"]
        assert len(bounds) == len(clip["text"].split())
        for (start, end), (next_start, _) in zip(bounds, bounds[1:], strict=False):
            assert start < end <= next_start
            assert np.abs(audio[start:end]).max() > 0 and not audio[end:next_start].any()


HELD_OUT = REAL.parent / "real_heldout"


def test_held_out_clips_are_usable_documented_and_new() -> None:
    """samples/real_heldout: the same format, each source's revision and licence written down,
    every clip with a speaker in the conversational set's spec, and none of them a clip (or a
    recording) of the development sets."""
    clips = sorted(HELD_OUT.glob("*.wav"))
    assert len(clips) == 27
    total_s = seconds_of(clips)
    assert sum(p.stat().st_size for p in clips) < 7 * 2**20
    assert 150 < total_s < 220
    readme = (HELD_OUT / "README.md").read_text()
    for needed in ("CC BY 4.0", "public domain", "a79cc864e427", "d7dfbc83d68e", "bf5854c59952",
                   "dbf1a08a0d4e", "185cd24e046c", "511126b492dc"):  # fmt: skip
        assert needed in readme
    speakers = json.loads((REAL.parent / "conversation.json").read_text())["speakers"]
    development = {p.stem for p in [*REAL.glob("*.wav"), *SPEAKERS.glob("*.wav")]}
    recordings = {p.read_bytes()[44:] for p in [*REAL.glob("*.wav"), *SPEAKERS.glob("*.wav")]}
    for clip in clips:
        assert any(clip.stem.startswith(prefix) for prefix in speakers), clip.name
        assert clip.stem not in development and clip.read_bytes()[44:] not in recordings
