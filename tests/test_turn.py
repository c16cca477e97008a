"""Smart Turn v3 end-of-turn model (speech_common.turn): the bundled file is pipecat's, the
features are pipecat's front end (last 8 s, zero-padded at the start), a batch scores each turn
as it scores alone, and on real speech a finished sentence scores as complete where the same
speech cut mid-word does not. Parity with pipecat itself: tests/test_clients_turn.py."""

from __future__ import annotations

import hashlib
import json
import wave
from pathlib import Path

import numpy as np
import pytest

from speech_common.audio import int16_to_float
from speech_common.turn import (
    COMPLETE_THRESHOLD,
    N_FRAMES,
    N_MELS,
    SAMPLE_RATE_HZ,
    SMART_TURN_ONNX_PATH,
    SMART_TURN_ONNX_SHA256,
    TURN_CONTEXT_SAMPLES,
    SmartTurn,
    log_mel_features,
)

REAL = Path(__file__).resolve().parents[1] / "samples" / "real"
CUT_WINDOW = 512  # 32 ms: the loudness windows a mid-speech cut is chosen among


def load(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (SAMPLE_RATE_HZ, 1, 2)
        return int16_to_float(np.frombuffer(w.readframes(w.getnframes()), "<i2"))


def clips_ending_with(mark: str) -> list[Path]:
    """The real clips whose reference text ends with ``mark`` ("." a finished sentence)."""
    return [
        wav
        for wav in sorted(REAL.glob("*.wav"))
        if json.loads(wav.with_suffix(".json").read_text())["text"].endswith(mark)
    ]


def cut_mid_speech(audio: np.ndarray) -> np.ndarray:
    """The clip up to the end of its loudest 32 ms in its middle third: inside a voiced sound,
    mid-sentence, with no pause after it."""
    n = len(audio) // CUT_WINDOW
    windows = audio[: n * CUT_WINDOW].reshape(n, CUT_WINDOW).astype(np.float64)
    rms = np.sqrt((windows**2).mean(axis=1))
    loudest = n // 3 + int(np.argmax(rms[n // 3 : 2 * n // 3]))
    return audio[: (loudest + 1) * CUT_WINDOW]


@pytest.fixture(scope="module")
def smart_turn() -> SmartTurn:
    return SmartTurn()


@pytest.fixture(scope="module")
def finished(smart_turn: SmartTurn) -> tuple[np.ndarray, np.ndarray]:
    """P(complete) of each clip that ends a sentence, whole and cut mid-speech."""
    audios = [load(wav) for wav in clips_ending_with(".")]
    assert len(audios) >= 8
    scores = smart_turn.probabilities(audios + [cut_mid_speech(a) for a in audios])
    return scores[: len(audios)], scores[len(audios) :]


def test_bundled_model_is_pipecats_smart_turn_v3_2() -> None:
    assert hashlib.sha256(SMART_TURN_ONNX_PATH.read_bytes()).hexdigest() == SMART_TURN_ONNX_SHA256
    notice = (SMART_TURN_ONNX_PATH.parent / "SMART_TURN_LICENSE").read_text()
    assert SMART_TURN_ONNX_SHA256 in notice and "BSD 2-Clause License" in notice


def test_the_model_takes_a_batch_of_our_features() -> None:
    import onnxruntime

    session = onnxruntime.InferenceSession(
        str(SMART_TURN_ONNX_PATH), providers=["CPUExecutionProvider"]
    )
    (features,) = session.get_inputs()
    (probability,) = session.get_outputs()
    assert not isinstance(features.shape[0], int), "a fixed batch axis: SmartTurn must loop"
    assert features.shape[1:] == [N_MELS, N_FRAMES]
    assert probability.shape[1:] == [1]


def test_features_shape_and_start_padding() -> None:
    rng = np.random.default_rng(0)
    second = (0.1 * rng.standard_normal(SAMPLE_RATE_HZ)).astype(np.float32)
    features = log_mel_features(second)
    assert features.shape == (N_MELS, N_FRAMES) and features.dtype == np.float32
    # Padded at the start: the audio lies in the last 100 frames; before them every frame is
    # the same (the zeros, normalised with the audio, are one constant).
    padding = features[:, :1]
    assert np.all(features[:, :-101] == padding)
    assert not np.any(np.all(features[:, -99:] == padding, axis=0))
    # Which is what zeros before it give.
    silence = np.zeros(3 * SAMPLE_RATE_HZ, np.float32)
    np.testing.assert_array_equal(log_mel_features(np.concatenate([silence, second])), features)


def test_features_hear_only_the_last_8_s() -> None:
    rng = np.random.default_rng(1)
    last = (0.1 * rng.standard_normal(TURN_CONTEXT_SAMPLES)).astype(np.float32)
    before = np.ones(SAMPLE_RATE_HZ, np.float32)
    np.testing.assert_array_equal(
        log_mel_features(np.concatenate([before, last])), log_mel_features(last)
    )
    assert not np.array_equal(log_mel_features(last[1:]), log_mel_features(last))


def test_features_of_no_audio_are_finite() -> None:
    assert np.all(np.isfinite(log_mel_features(np.zeros(0, np.float32))))
    with pytest.raises(ValueError):
        log_mel_features(np.zeros((2, SAMPLE_RATE_HZ), np.float32))


def test_a_batch_scores_each_turn_as_alone(smart_turn: SmartTurn) -> None:
    jfk, platforms = load(REAL / "jfk-inaugural.wav"), load(REAL / "platforms.wav")
    audios = [jfk, platforms, cut_mid_speech(jfk), platforms[:4000], np.zeros(0, np.float32)]
    together = smart_turn.probabilities(audios)
    alone = np.concatenate([smart_turn.probabilities([a]) for a in audios])
    assert together.shape == (len(audios),) and together.dtype == np.float32
    np.testing.assert_allclose(together, alone, atol=1e-5)
    assert np.all((together >= 0) & (together <= 1))
    assert smart_turn.probabilities([]).shape == (0,)


def test_a_finished_sentence_is_complete_and_a_cut_one_is_not(
    finished: tuple[np.ndarray, np.ndarray],
) -> None:
    complete, cut = finished
    assert complete.mean() > COMPLETE_THRESHOLD > cut.mean()
    assert np.median(complete) > COMPLETE_THRESHOLD > np.median(cut)


def test_a_reading_that_stops_at_a_comma_is_less_complete(
    smart_turn: SmartTurn, finished: tuple[np.ndarray, np.ndarray]
) -> None:
    """LJ Speech clips that end at a comma: the reader goes on in the next clip."""
    at_comma = smart_turn.probabilities([load(wav) for wav in clips_ending_with(",")])
    assert len(at_comma) >= 3
    assert at_comma.mean() < finished[0].mean()
