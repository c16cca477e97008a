"""orpheus_tts.loudness: a slow gain that brings speech to the target level, leaves pauses alone
and never clips."""

from __future__ import annotations

import numpy as np

from orpheus_tts.loudness import MAX_BOOST_DB, TARGET_DBFS, LoudnessNormalizer

RATE = 24000


def tone(db: float, seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (10 ** (db / 20) * np.sqrt(2) * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def rms_db(x: np.ndarray) -> float:
    return 10 * np.log10(np.mean(np.square(x, dtype=np.float64)))


def stream(norm: LoudnessNormalizer, x: np.ndarray, chunk: int = 1234) -> np.ndarray:
    return np.concatenate([norm.process(x[i : i + chunk]) for i in range(0, len(x), chunk)])


def test_quiet_and_loud_speech_end_near_the_target() -> None:
    for level in (-32.0, -10.0):
        out = stream(LoudnessNormalizer(RATE), tone(level, 4.0))
        assert abs(rms_db(out[-RATE:]) - TARGET_DBFS) < 0.5, level


def test_silence_stays_silent_and_pauses_do_not_raise_the_gain() -> None:
    norm = LoudnessNormalizer(RATE)
    assert not stream(norm, np.zeros(RATE, np.float32)).any()
    speech = stream(norm, tone(-20.0, 1.0))
    gain_after_speech = norm.gain_db
    stream(norm, tone(-70.0, 2.0))  # a pause with room noise far below speech
    assert norm.gain_db == gain_after_speech and abs(rms_db(speech) - TARGET_DBFS) < 0.5


def test_the_gain_is_bounded_and_never_clips() -> None:
    norm = LoudnessNormalizer(RATE)
    out = stream(norm, tone(-60.0 + 15.0, 3.0))  # 25 dB below the target: boost capped
    assert norm.gain_db <= MAX_BOOST_DB + 1e-9
    peaky = np.zeros(RATE, np.float32)
    peaky[::2400] = 0.9  # clicks: loud peaks at a low average level
    assert np.max(np.abs(stream(norm, peaky))) <= 0.98 + 1e-6
    assert np.max(np.abs(out)) < 1.0


def test_changes_are_gradual_after_the_first_speech() -> None:
    norm = LoudnessNormalizer(RATE)
    stream(norm, tone(-20.0, 1.0))
    before = norm.gain_db
    stream(norm, tone(-8.0, 0.1))  # the voice gets 12 dB louder for 100 ms
    assert before - norm.gain_db <= 0.6 + 1e-9  # 6 dB/s at most
