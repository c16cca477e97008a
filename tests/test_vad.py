"""speech_common.vad: utterance segmentation from synthetic probabilities, and Silero on real audio.

Segmenter tests feed windows whose samples are their own stream index (a ramp), so every returned
sample says exactly where in the stream it came from.
"""

from __future__ import annotations

import hashlib
import wave
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from speech_common.vad import (
    SAMPLE_RATE_HZ,
    SILERO_ONNX_PATH,
    SILERO_ONNX_SHA256,
    WINDOW_SAMPLES,
    SileroVad,
    SpeechEnded,
    SpeechStarted,
    VadEvent,
    VadOptions,
    VadSegmenter,
    VadStreamState,
)

SAMPLES_DIR = Path(__file__).resolve().parent.parent / "samples"
SPEECH = 0.9
SILENCE = 0.0


class Feeder:
    """Pushes ramp windows (sample value == stream index) and records the events."""

    def __init__(self, options: VadOptions) -> None:
        self.seg = VadSegmenter(options)
        self.position = 0
        self.events: list[VadEvent] = []

    def push(self, *probs: float) -> list[VadEvent]:
        out: list[VadEvent] = []
        for prob in probs:
            window = np.arange(self.position, self.position + WINDOW_SAMPLES, dtype=np.float32)
            self.position += WINDOW_SAMPLES
            out.extend(self.seg.push(window, prob))
        self.events.extend(out)
        return out

    def flush(self) -> list[VadEvent]:
        out = self.seg.flush()
        self.events.extend(out)
        return out

    def ended(self) -> list[SpeechEnded]:
        return [e for e in self.events if isinstance(e, SpeechEnded)]


def _samples(ms: float) -> int:
    return int(ms * SAMPLE_RATE_HZ / 1000)


def _assert_ramp(audio: np.ndarray, start: int, end: int) -> None:
    """The audio is exactly stream samples [start, end)."""
    np.testing.assert_array_equal(audio, np.arange(start, end, dtype=np.float32))


def _assert_times(event: SpeechEnded) -> None:
    assert event.start_s <= event.end_s
    assert len(event.audio) == round((event.end_s - event.start_s) * SAMPLE_RATE_HZ)
    if len(event.audio):
        assert event.audio[0] == round(event.start_s * SAMPLE_RATE_HZ)


# -- start ------------------------------------------------------------------------------------
def test_speech_starts_at_threshold_not_below() -> None:
    f = Feeder(VadOptions(threshold=0.5))
    assert f.push(0.4999) == []
    assert not f.seg.in_speech
    events = f.push(0.5)
    assert len(events) == 1 and isinstance(events[0], SpeechStarted)
    assert f.seg.in_speech


def test_preroll_is_speech_pad_and_capped() -> None:
    f = Feeder(VadOptions(speech_pad_ms=30, min_silence_duration_ms=100))
    f.push(*[SILENCE] * 10)
    (started,) = f.push(SPEECH)
    pad = _samples(30)
    first_speech = 10 * WINDOW_SAMPLES
    assert started.start_s == (first_speech - pad) / SAMPLE_RATE_HZ
    _assert_ramp(f.seg.utterance_audio(), first_speech - pad, first_speech + WINDOW_SAMPLES)


def test_preroll_spanning_several_windows() -> None:
    f = Feeder(VadOptions(speech_pad_ms=100))  # 1600 samples: more than 3 windows
    f.push(*[SILENCE] * 20, SPEECH)
    first_speech = 20 * WINDOW_SAMPLES
    _assert_ramp(f.seg.utterance_audio(), first_speech - 1600, first_speech + WINDOW_SAMPLES)


def test_preroll_at_stream_start_is_what_exists() -> None:
    f = Feeder(VadOptions(speech_pad_ms=100))
    f.push(SILENCE, SPEECH)
    _assert_ramp(f.seg.utterance_audio(), 0, 2 * WINDOW_SAMPLES)
    assert f.seg.utterance_start_s == 0.0


@pytest.mark.parametrize(
    ("onset_windows", "head_ms", "from_start"),
    [
        (8, 500, True),  # 256 ms: within the head
        (15, 500, True),  # 480 ms: still within
        (16, 500, False),  # 512 ms: after it, the pad only
        (8, 0, False),  # no head: the pad only
    ],
)
def test_a_first_onset_near_the_stream_start_begins_at_the_start(
    onset_windows, head_ms, from_start
) -> None:
    f = Feeder(VadOptions(speech_pad_ms=32, min_silence_duration_ms=320, stream_head_ms=head_ms))
    f.push(*[SILENCE] * onset_windows, *[SPEECH] * 10, *[SILENCE] * 10)
    (first,) = f.ended()
    onset = onset_windows * WINDOW_SAMPLES
    start = 0 if from_start else onset - _samples(32)
    _assert_ramp(first.audio, start, onset + 10 * WINDOW_SAMPLES + _samples(32))
    _assert_times(first)


def test_only_the_streams_first_utterance_reaches_back_to_its_start() -> None:
    f = Feeder(VadOptions(speech_pad_ms=32, min_silence_duration_ms=64, stream_head_ms=2000))
    f.push(SILENCE, SPEECH, SILENCE, SILENCE, SILENCE, SPEECH, SILENCE, SILENCE)
    first, second = f.ended()
    _assert_ramp(first.audio, 0, 2 * WINDOW_SAMPLES + _samples(32))
    _assert_ramp(second.audio, 5 * WINDOW_SAMPLES - _samples(32), 6 * WINDOW_SAMPLES + _samples(32))


def test_a_speech_onset_at_the_stream_start_with_silero_keeps_the_first_word() -> None:
    """LJ001-0009 opens with "Printing": Silero first reaches 0.5 at window 8 (see below), so
    with the client's pad the utterance began 226 ms into the word; with the stream head it
    begins at the stream's start."""
    from scripts.clients.stt import read_wav

    audio = read_wav(SAMPLES_DIR / "real" / "LJ001-0009.wav")[: 80 * WINDOW_SAMPLES]
    windows = (audio.astype(np.float32) / 32768).reshape(-1, WINDOW_SAMPLES)
    (probs,) = SileroVad().probabilities([(VadStreamState.fresh(), windows)])
    starts = {}
    for head_ms in (0, 500):
        seg = VadSegmenter(VadOptions(speech_pad_ms=30, stream_head_ms=head_ms))
        started = [e for w, p in zip(windows, probs, strict=True) for e in seg.push(w, float(p))]
        starts[head_ms] = next(e.start_s for e in started if isinstance(e, SpeechStarted))
    assert starts == {0: pytest.approx(8 * WINDOW_SAMPLES / SAMPLE_RATE_HZ - 0.030), 500: 0.0}


def test_zero_pad_has_no_preroll() -> None:
    f = Feeder(VadOptions(speech_pad_ms=0, min_silence_duration_ms=64))
    f.push(SILENCE, SILENCE, SPEECH, SPEECH, SILENCE, SILENCE)
    (ended,) = f.ended()
    _assert_ramp(ended.audio, 2 * WINDOW_SAMPLES, 4 * WINDOW_SAMPLES)


# -- end --------------------------------------------------------------------------------------
def test_end_after_min_silence_with_trailing_pad() -> None:
    opts = VadOptions(threshold=0.5, min_silence_duration_ms=300, speech_pad_ms=30)
    f = Feeder(opts)
    f.push(*[SILENCE] * 5, *[SPEECH] * 20)
    speech_end = 25 * WINDOW_SAMPLES
    silent_windows_needed = -(-_samples(300) // WINDOW_SAMPLES)  # ceil: 10 windows
    for _ in range(silent_windows_needed - 1):
        assert f.push(SILENCE) == []
    assert f.seg.in_speech
    (ended,) = f.push(SILENCE)
    assert not f.seg.in_speech
    assert not ended.forced and not ended.too_short
    _assert_ramp(ended.audio, 5 * WINDOW_SAMPLES - _samples(30), speech_end + _samples(30))
    _assert_times(ended)


def test_hysteresis_between_neg_threshold_and_threshold_keeps_speech() -> None:
    opts = VadOptions(threshold=0.5, min_silence_duration_ms=100, speech_pad_ms=0)
    assert opts.neg_threshold == pytest.approx(0.35)
    f = Feeder(opts)
    f.push(SPEECH, *[0.36] * 20)  # above neg_threshold: still speech
    assert f.seg.in_speech and f.ended() == []
    assert f.seg.silence_ms == 0.0
    f.push(*[0.34] * 4)  # below neg_threshold: 4 windows = 128 ms >= 100 ms
    (ended,) = f.ended()
    _assert_ramp(ended.audio, 0, 21 * WINDOW_SAMPLES)


def test_hysteresis_a_pause_goes_on_until_prob_reaches_threshold() -> None:
    """Silero's rule: once a pause started (< neg_threshold), 0.35..0.5 does not end it."""
    opts = VadOptions(threshold=0.5, min_silence_duration_ms=100, speech_pad_ms=0)
    f = Feeder(opts)
    f.push(SPEECH, 0.1, 0.4, 0.4)  # pause starts, then in-between values: still pausing
    assert f.ended() == [] and f.seg.silence_ms == pytest.approx(96.0)
    f.push(0.4)  # 4 windows = 128 ms >= 100 ms
    (ended,) = f.ended()
    _assert_ramp(ended.audio, 0, WINDOW_SAMPLES)
    g = Feeder(opts)
    g.push(SPEECH, 0.1, 0.6, 0.1, 0.1, 0.1)  # speech at threshold resets the pause
    assert g.ended() == [] and g.seg.in_speech


def test_speech_in_the_middle_of_silence_resets_the_count() -> None:
    f = Feeder(VadOptions(min_silence_duration_ms=300, speech_pad_ms=0))
    f.push(SPEECH, *[SILENCE] * 9, SPEECH, *[SILENCE] * 9)
    assert f.ended() == []
    f.push(SILENCE)
    (ended,) = f.ended()
    _assert_ramp(ended.audio, 0, 11 * WINDOW_SAMPLES)


def test_too_short_burst_flagged() -> None:
    opts = VadOptions(min_speech_duration_ms=250, speech_pad_ms=30, min_silence_duration_ms=100)
    need = -(-_samples(250) // WINDOW_SAMPLES)  # 8 windows = 256 ms
    f = Feeder(opts)
    f.push(*[SILENCE] * 5, *[SPEECH] * (need - 1), *[SILENCE] * 5)
    f.push(*[SILENCE] * 5, *[SPEECH] * need, *[SILENCE] * 5)
    short, long_enough = f.ended()
    assert short.too_short
    assert not long_enough.too_short


def test_stream_start_burst_not_too_short_for_missing_preroll() -> None:
    # Speech from the first sample has no preroll; the pad must not be subtracted from its length.
    opts = VadOptions(min_speech_duration_ms=250, speech_pad_ms=200, min_silence_duration_ms=300)
    f = Feeder(opts)
    f.push(*[SPEECH] * 10, *[SILENCE] * 10)  # 320 ms of speech at the very start
    (ended,) = f.ended()
    assert not ended.too_short
    _assert_ramp(ended.audio, 0, 10 * WINDOW_SAMPLES + _samples(200))


def test_pad_longer_than_min_silence_keeps_what_exists_and_no_overlap() -> None:
    opts = VadOptions(speech_pad_ms=500, min_silence_duration_ms=100, min_speech_duration_ms=0)
    f = Feeder(opts)
    f.push(*[SILENCE] * 30, *[SPEECH] * 10, *[SILENCE] * 4, *[SPEECH] * 10, *[SILENCE] * 4)
    first, second = f.ended()
    # First: 500 ms preroll, trailing silence only as long as it lasted (4 windows).
    _assert_ramp(first.audio, 30 * WINDOW_SAMPLES - _samples(500), 44 * WINDOW_SAMPLES)
    # Second: its preroll cannot reach back into the first utterance's audio.
    _assert_ramp(second.audio, 44 * WINDOW_SAMPLES, 58 * WINDOW_SAMPLES)
    for e in (first, second):
        _assert_times(e)


def test_consecutive_utterances_do_not_share_samples() -> None:
    f = Feeder(VadOptions(speech_pad_ms=30, min_silence_duration_ms=100, min_speech_duration_ms=0))
    for _ in range(5):
        f.push(*[SPEECH] * 7, *[SILENCE] * 6)
    ended = f.ended()
    assert len(ended) == 5
    for a, b in zip(ended, ended[1:], strict=False):
        assert a.audio[-1] < b.audio[0]
        assert a.end_s <= b.start_s
    for e in ended:
        _assert_times(e)


# -- flush, silence_ms, ending_audio ----------------------------------------------------------
def test_flush_closes_open_utterance() -> None:
    f = Feeder(VadOptions(speech_pad_ms=30, min_speech_duration_ms=0))
    f.push(SILENCE, *[SPEECH] * 10, SILENCE)
    (ended,) = f.flush()
    assert not f.seg.in_speech
    _assert_ramp(ended.audio, WINDOW_SAMPLES - _samples(30), 11 * WINDOW_SAMPLES + _samples(30))
    assert f.flush() == []


def test_flush_idle_returns_nothing() -> None:
    f = Feeder(VadOptions())
    f.push(SILENCE, SILENCE)
    assert f.flush() == []


def test_silence_ms_and_ending_audio() -> None:
    opts = VadOptions(speech_pad_ms=100, min_silence_duration_ms=500, min_speech_duration_ms=0)
    f = Feeder(opts)
    assert f.seg.silence_ms == 0.0 and f.seg.ending_audio() is None
    f.push(*[SILENCE] * 10, *[SPEECH] * 20)
    assert f.seg.silence_ms == 0.0
    assert f.seg.ending_audio() is None
    f.push(SILENCE, SILENCE, SILENCE)  # 1536 samples < 1600 pad
    assert f.seg.silence_ms == pytest.approx(3 * WINDOW_SAMPLES * 1000 / SAMPLE_RATE_HZ)
    assert f.seg.ending_audio() is None
    f.push(SILENCE)  # 2048 samples >= pad
    ending = f.seg.ending_audio()
    assert ending is not None
    _assert_ramp(ending, 10 * WINDOW_SAMPLES - 1600, 30 * WINDOW_SAMPLES + 1600)
    while not f.ended():
        f.push(SILENCE)
    np.testing.assert_array_equal(f.ended()[0].audio, ending)
    assert f.seg.silence_ms == 0.0 and f.seg.ending_audio() is None


# -- forced cut -------------------------------------------------------------------------------
def _concat(events: list[SpeechEnded]) -> np.ndarray:
    return np.concatenate([e.audio for e in events])


def test_forced_cut_at_quietest_window_of_last_5s() -> None:
    max_s = 8.0
    opts = VadOptions(max_utterance_s=max_s, speech_pad_ms=30, min_silence_duration_ms=300)
    f = Feeder(opts)
    f.push(*[SILENCE] * 3)
    first_speech = 3 * WINDOW_SAMPLES
    utt_start = first_speech - _samples(30)
    probs = [SPEECH] * 400
    probs[20] = 0.36  # quietest overall but older than 5 s at the cut: ignored
    quiet = 150  # in the last 5 s at the cut, low but still speech (>= neg_threshold)
    probs[quiet] = 0.37
    probs[quiet + 30] = 0.38
    cut_event_index = None
    for i, p in enumerate(probs):
        if f.push(p) and any(isinstance(e, SpeechEnded) for e in f.events):
            cut_event_index = i
            break
    (forced,) = f.ended()
    assert forced.forced and not forced.too_short
    # It fired when the utterance reached max_utterance_s.
    assert cut_event_index is not None
    assert (cut_event_index + 1) * WINDOW_SAMPLES + _samples(30) >= int(max_s * SAMPLE_RATE_HZ)
    assert cut_event_index * WINDOW_SAMPLES + _samples(30) < int(max_s * SAMPLE_RATE_HZ)
    cut = first_speech + quiet * WINDOW_SAMPLES
    _assert_ramp(forced.audio, utt_start, cut)
    _assert_times(forced)
    # The remainder goes on as a new utterance that starts exactly at the cut.
    assert isinstance(f.events[-1], SpeechStarted)
    assert f.events[-1].start_s == cut / SAMPLE_RATE_HZ
    assert f.seg.in_speech
    f.push(*[SPEECH] * 50, *[SILENCE] * 10)
    first, second = f.ended()
    assert not second.forced
    _assert_ramp(_concat([first, second]), utt_start, f.position - 10 * WINDOW_SAMPLES + 480)


def test_long_speech_is_cut_repeatedly_without_losing_samples() -> None:
    opts = VadOptions(max_utterance_s=6.0, speech_pad_ms=30, min_silence_duration_ms=300)
    f = Feeder(opts)
    rng = np.random.default_rng(3)
    f.push(SILENCE)
    f.push(*(0.5 + 0.5 * rng.random(1500)).tolist())  # 48 s of speech
    f.push(*[SILENCE] * 10)
    ended = f.ended()
    assert len(ended) >= 8
    assert all(e.forced for e in ended[:-1]) and not ended[-1].forced
    for e in ended:
        assert len(e.audio) <= 6 * SAMPLE_RATE_HZ
        _assert_times(e)
    _assert_ramp(_concat(ended), WINDOW_SAMPLES - 480, 1501 * WINDOW_SAMPLES + 480)


def test_short_max_cuts_in_the_later_half() -> None:
    # max_utterance_s below the 5 s search: flat probabilities must not cut near the start.
    opts = VadOptions(max_utterance_s=2.0, speech_pad_ms=0, min_silence_duration_ms=300)
    f = Feeder(opts)
    f.push(*[SPEECH] * 300, *[SILENCE] * 10)
    ended = f.ended()
    for e in ended[:-1]:
        assert e.forced
        assert 1.0 - WINDOW_SAMPLES / SAMPLE_RATE_HZ <= len(e.audio) / SAMPLE_RATE_HZ <= 2.0
    assert len(ended) <= 300 * WINDOW_SAMPLES / SAMPLE_RATE_HZ / 1.0 + 1
    _assert_ramp(_concat(ended), 0, 300 * WINDOW_SAMPLES)


def test_speech_ms_counts_speech_windows_only() -> None:
    f = Feeder(VadOptions(speech_pad_ms=100, min_silence_duration_ms=500))
    assert f.seg.speech_ms == 0.0
    f.push(*[SILENCE] * 10, *[SPEECH] * 5, *[SILENCE] * 3)
    assert f.seg.speech_ms == pytest.approx(5 * WINDOW_SAMPLES * 1000 / SAMPLE_RATE_HZ)
    f.push(SPEECH)
    assert f.seg.speech_ms == pytest.approx(9 * WINDOW_SAMPLES * 1000 / SAMPLE_RATE_HZ)


def test_forced_cut_inside_a_short_pause_stays_consistent() -> None:
    # The quietest window lies after the last speech window (a pause shorter than
    # min_silence): the remainder then holds no speech and must still be sane when it ends.
    opts = VadOptions(max_utterance_s=4.0, speech_pad_ms=30, min_silence_duration_ms=300)
    f = Feeder(opts)
    f.push(*[SPEECH] * 117, 0.3, 0.2, 0.1, 0.05)  # 121 windows = 61952 samples < 64000
    assert f.ended() == []
    f.push(0.01)  # 122 windows = 62464 samples: below the cap
    f.push(*[0.02] * 3)  # reaches 64000 samples: cut at the 0.01 window
    (forced,) = f.ended()
    assert forced.forced
    _assert_ramp(forced.audio, 0, 121 * WINDOW_SAMPLES)
    f.push(*[SILENCE] * 10)
    ended = f.ended()
    assert len(ended) == 2
    rest = ended[1]
    _assert_times(rest)
    assert rest.too_short  # no speech in it
    assert rest.start_s >= forced.end_s
    assert f.seg.ending_audio() is None
    # The stream carries on normally afterwards.
    f.push(*[SPEECH] * 20, *[SILENCE] * 10)
    last = f.ended()[-1]
    assert not last.too_short
    _assert_times(last)
    assert last.audio[0] >= forced.audio[-1]


def test_ending_audio_after_a_cut_in_a_pause_is_never_wrong() -> None:
    opts = VadOptions(max_utterance_s=4.0, speech_pad_ms=30, min_silence_duration_ms=300)
    f = Feeder(opts)
    f.push(*[SPEECH] * 117, 0.3, 0.2, 0.1, 0.05, 0.01, 0.02, 0.02, 0.02)
    assert f.ended()[0].forced
    audio = f.seg.ending_audio()
    # Speech ended before the cut: nothing of this utterance is speech audio.
    assert audio is None or len(audio) == 0


# -- SileroVad --------------------------------------------------------------------------------
def _load(name: str) -> np.ndarray:
    with wave.open(str(SAMPLES_DIR / name)) as w:
        assert w.getframerate() == SAMPLE_RATE_HZ and w.getnchannels() == 1
        pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2")
    return pcm.astype(np.float32) / 32768.0


def _windows(audio: np.ndarray) -> np.ndarray:
    n = len(audio) // WINDOW_SAMPLES
    return audio[: n * WINDOW_SAMPLES].reshape(n, WINDOW_SAMPLES)


@pytest.fixture(scope="module")
def silero() -> SileroVad:
    return SileroVad()


def test_silero_speech_high_silence_low(silero: SileroVad) -> None:
    windows = _windows(_load("speech_en.wav"))
    (probs,) = silero.probabilities([(VadStreamState.fresh(), windows)])
    assert probs.shape == (len(windows),)
    rms = np.sqrt((windows.astype(np.float64) ** 2).mean(axis=1))
    loud = rms > 0.05
    # Measured: median prob of loud windows 1.0; digital-silence gaps in the file <= 0.02.
    assert loud.sum() > 50
    assert np.median(probs[loud]) > 0.9
    quiet = rms < 1e-4
    # Silence well away from speech (Silero lags a few windows after speech ends).
    far = np.array([quiet[max(i - 8, 0) : i + 1].all() for i in range(len(quiet))])
    assert far.sum() > 20
    assert probs[far].max() < 0.1


def test_silero_digital_silence_and_low_noise(silero: SileroVad) -> None:
    zeros = np.zeros((40, WINDOW_SAMPLES), np.float32)
    noise = np.random.default_rng(0).normal(0, 0.003, (40, WINDOW_SAMPLES)).astype(np.float32)
    p_zero, p_noise = silero.probabilities(
        [(VadStreamState.fresh(), zeros), (VadStreamState.fresh(), noise)]
    )
    # Measured: 0.009 on zeros, 0.10 on this noise.
    assert p_zero.max() < 0.05
    assert p_noise.max() < 0.3


def test_silero_batched_lockstep_equals_each_stream_alone(silero: SileroVad) -> None:
    speech = _windows(_load("speech_en.wav"))
    order = _windows(_load("order_en.wav"))
    noise = np.random.default_rng(1).normal(0, 0.01, (60, WINDOW_SAMPLES)).astype(np.float32)
    inputs = [speech[:200], order[:150], noise, speech[100:130]]  # unequal lengths
    alone = [silero.probabilities([(VadStreamState.fresh(), w)])[0] for w in inputs]
    states = [VadStreamState.fresh() for _ in inputs]
    together = silero.probabilities(list(zip(states, inputs, strict=True)))
    for a, t in zip(alone, together, strict=True):
        assert a.shape == t.shape
        np.testing.assert_allclose(t, a, atol=1e-5)


def test_silero_state_carries_across_calls(silero: SileroVad) -> None:
    windows = _windows(_load("weather_en.wav"))[:120]
    (whole,) = silero.probabilities([(VadStreamState.fresh(), windows)])
    state = VadStreamState.fresh()
    parts = [
        silero.probabilities([(state, windows[a:b])])[0] for a, b in ((0, 37), (37, 38), (38, 120))
    ]
    np.testing.assert_allclose(np.concatenate(parts), whole, atol=1e-5)


def test_silero_empty_inputs(silero: SileroVad) -> None:
    assert silero.probabilities([]) == []
    (out,) = silero.probabilities(
        [(VadStreamState.fresh(), np.zeros((0, WINDOW_SAMPLES), np.float32))]
    )
    assert out.shape == (0,)


# --- the bundled model is silero-vad's, and our wrapper computes what silero-vad's own does ------


def test_bundled_model_is_silero_vad_623() -> None:
    digest = hashlib.sha256(SILERO_ONNX_PATH.read_bytes()).hexdigest()
    assert digest == SILERO_ONNX_SHA256
    # The test oracle (dev venv only): the very file the silero-vad package ships.
    shipped = resources.files("silero_vad.data").joinpath("silero_vad.onnx").read_bytes()
    assert hashlib.sha256(shipped).hexdigest() == SILERO_ONNX_SHA256


@pytest.mark.parametrize("sample", ["speech_en.wav", "order_en.wav", "weather_en.wav"])
def test_probabilities_equal_silero_vad_packages_own_wrapper(silero: SileroVad, sample: str):
    """What the STT image computed with silero-vad installed, it computes without it."""
    import torch
    from silero_vad.utils_vad import OnnxWrapper

    windows = _windows(_load(sample))
    (ours,) = silero.probabilities([(VadStreamState.fresh(), windows)])
    reference = OnnxWrapper(str(resources.files("silero_vad.data").joinpath("silero_vad.onnx")))

    theirs = np.array(
        [float(reference(torch.from_numpy(w.copy()), SAMPLE_RATE_HZ)) for w in windows]
    )
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_preroll_gives_whisper_audio_from_before_the_onset() -> None:
    """preroll_ms keeps more of the audio before the VAD fired than the client's pad."""
    silence = np.zeros((20, WINDOW_SAMPLES), np.float32)
    speech = np.ones((20, WINDOW_SAMPLES), np.float32) * 0.1
    ended = {}
    for preroll_ms in (0, 320):
        seg = VadSegmenter(VadOptions(speech_pad_ms=32, preroll_ms=preroll_ms))
        events = []
        for w in silence:
            events += seg.push(w, 0.0)
        for w in speech:
            events += seg.push(w, SPEECH)
        events += seg.flush()
        (end,) = [e for e in events if isinstance(e, SpeechEnded)]
        ended[preroll_ms] = end
    pad = int(0.032 * SAMPLE_RATE_HZ)
    assert ended[0].start_s == pytest.approx(20 * WINDOW_SAMPLES / SAMPLE_RATE_HZ - 0.032)
    assert ended[320].start_s == pytest.approx(20 * WINDOW_SAMPLES / SAMPLE_RATE_HZ - 0.320)
    assert len(ended[320].audio) - len(ended[0].audio) == int(0.320 * SAMPLE_RATE_HZ) - pad


# -- a new stream's state -----------------------------------------------------------------------
def test_a_new_stream_starts_as_after_silence() -> None:
    from speech_common.vad import PRIME_SILENCE_WINDOWS

    vad = SileroVad()
    rng = np.random.default_rng(1)
    windows = (rng.standard_normal((6, WINDOW_SAMPLES)) * 0.05).astype(np.float32)
    (primed,) = vad.probabilities([(VadStreamState.after_silence(), windows)])
    silence = np.zeros((PRIME_SILENCE_WINDOWS, WINDOW_SAMPLES), np.float32)
    (reference,) = vad.probabilities([(VadStreamState.fresh(), np.concatenate([silence, windows]))])
    np.testing.assert_allclose(primed, reference[PRIME_SILENCE_WINDOWS:], atol=1e-6)


def test_speech_at_a_streams_first_sample_is_heard_at_once() -> None:
    """LJ001-0001 says "Printing" from 0.02 s: a cold Silero state scored it below 0.5 for 8
    windows (256 ms, the word lost); a state as after silence fires within 3."""
    from scripts.clients.stt import read_wav

    audio = read_wav(SAMPLES_DIR / "real" / "LJ001-0001.wav")[: 12 * WINDOW_SAMPLES]
    windows = (audio.astype(np.float32) / 32768).reshape(-1, WINDOW_SAMPLES)
    vad = SileroVad()
    (cold,) = vad.probabilities([(VadStreamState.fresh(), windows)])
    (primed,) = vad.probabilities([(VadStreamState.after_silence(), windows)])
    first = {name: int(np.argmax(p >= 0.5)) for name, p in (("cold", cold), ("primed", primed))}
    assert first["cold"] >= 8 and first["primed"] <= 3, first


def test_a_soft_onset_is_still_heard_late_even_primed() -> None:
    """What docs/benchmarks.md says of LJ001-0009 ("Printing" lost): primed or not, Silero first
    reaches 0.5 at window 8, 256 ms into the word; priming does not fix that clip."""
    from scripts.clients.stt import read_wav

    audio = read_wav(SAMPLES_DIR / "real" / "LJ001-0009.wav")[: 12 * WINDOW_SAMPLES]
    windows = (audio.astype(np.float32) / 32768).reshape(-1, WINDOW_SAMPLES)
    vad = SileroVad()
    for state in (VadStreamState.fresh(), VadStreamState.after_silence()):
        (probs,) = vad.probabilities([(state, windows)])
        assert int(np.argmax(probs >= 0.5)) == 8


def test_postroll_keeps_audio_after_the_speech_ends() -> None:
    """postroll_ms: a final holds that much audio after its last speech window (at least the
    pad; at most what the silence timeout let in), and says where its speech ended."""
    for postroll_ms, kept_ms in ((0, 32), (160, 160), (600, 320)):
        f = Feeder(
            VadOptions(speech_pad_ms=32, min_silence_duration_ms=320, postroll_ms=postroll_ms)
        )
        f.push(*[SILENCE] * 5, *[SPEECH] * 20, *[SILENCE] * 10)  # the 10th silent window ends it
        (end,) = f.ended()
        speech_end = 25 * WINDOW_SAMPLES
        _assert_ramp(end.audio, 5 * WINDOW_SAMPLES - _samples(32), speech_end + _samples(kept_ms))
        _assert_times(end)
        assert end.speech_end_s == pytest.approx(speech_end / SAMPLE_RATE_HZ)


def test_postroll_is_not_taken_again_as_the_next_preroll() -> None:
    f = Feeder(VadOptions(speech_pad_ms=32, min_silence_duration_ms=320, postroll_ms=160))
    f.push(*[SPEECH] * 10, *[SILENCE] * 10, *[SILENCE] * 2, *[SPEECH] * 10)
    f.flush()
    first, second = f.ended()
    assert second.audio[0] >= first.audio[-1] + 1
    _assert_ramp(second.audio, 22 * WINDOW_SAMPLES - _samples(32), 32 * WINDOW_SAMPLES)


def test_postroll_at_the_end_of_the_stream_is_what_there_is() -> None:
    f = Feeder(VadOptions(speech_pad_ms=32, postroll_ms=300))
    f.push(*[SILENCE] * 3, *[SPEECH] * 10, SILENCE)
    (end,) = f.flush()
    _assert_ramp(end.audio, 3 * WINDOW_SAMPLES - _samples(32), 14 * WINDOW_SAMPLES)
    assert end.speech_end_s == pytest.approx(13 * WINDOW_SAMPLES / SAMPLE_RATE_HZ)


# -- pre-roll after a long pause ----------------------------------------------------------------
def _pause_feeder(pause_windows: int, **options) -> Feeder:
    """Speech, ``pause_windows`` of silence, speech again (windows of 512 samples, 32 ms)."""
    opts = {"speech_pad_ms": 32, "min_silence_duration_ms": 320, "postroll_ms": 96}
    f = Feeder(VadOptions(**{**opts, **options}))
    f.push(*[SPEECH] * 10, *[SILENCE] * pause_windows, *[SPEECH] * 10)
    f.flush()
    return f


def test_an_onset_after_a_long_pause_gets_the_pause_preroll() -> None:
    """An onset 800 ms after the previous speech gets 256 ms of the pause before it."""
    f = _pause_feeder(25, pause_preroll_ms=256, pause_preroll_after_ms=500)
    first, second = f.ended()
    onset = 35 * WINDOW_SAMPLES
    _assert_ramp(second.audio, onset - _samples(256), 45 * WINDOW_SAMPLES)
    _assert_times(second)
    assert second.audio[0] > first.audio[-1]


def test_an_onset_after_a_short_pause_gets_only_the_pad() -> None:
    """A comma pause (here 480 ms, under pause_preroll_after_ms): its audio may still hold the
    previous word's ending, so only the pad."""
    f = _pause_feeder(15, pause_preroll_ms=256, pause_preroll_after_ms=500)
    _, second = f.ended()
    _assert_ramp(second.audio, 25 * WINDOW_SAMPLES - _samples(32), 35 * WINDOW_SAMPLES)


def test_the_pause_preroll_never_takes_audio_the_previous_utterance_kept() -> None:
    """A pause just long enough: the pre-roll stops where the previous final's audio ended."""
    f = _pause_feeder(16, pause_preroll_ms=1000, pause_preroll_after_ms=500, postroll_ms=320)
    first, second = f.ended()
    assert second.audio[0] == first.audio[-1] + 1
    _assert_ramp(second.audio, 10 * WINDOW_SAMPLES + _samples(320), 36 * WINDOW_SAMPLES)


def test_pause_preroll_off_keeps_the_pad() -> None:
    f = _pause_feeder(25, pause_preroll_ms=0)
    _, second = f.ended()
    _assert_ramp(second.audio, 35 * WINDOW_SAMPLES - _samples(32), 45 * WINDOW_SAMPLES)


def test_a_first_onset_after_a_long_silence_gets_the_pause_preroll() -> None:
    """The stream's start counts as the end of speech: past stream_head_ms, the pause rule."""
    f = Feeder(VadOptions(speech_pad_ms=32, stream_head_ms=320, pause_preroll_ms=256))
    f.push(*[SILENCE] * 40, *[SPEECH] * 10)
    (end,) = f.flush()
    _assert_ramp(end.audio, 40 * WINDOW_SAMPLES - _samples(256), 50 * WINDOW_SAMPLES)


def test_step_hands_each_jobs_advanced_state_back(silero: SileroVad) -> None:
    """The worker's call: a job's state comes back in its result, advanced as probabilities()
    advances it (the session gave it up while the job ran)."""
    rng = np.random.default_rng(7)
    windows = (rng.standard_normal((6, WINDOW_SAMPLES)) * 0.1).astype(np.float32)
    given = VadStreamState.fresh()
    (result,) = silero.step([(given, windows[:3])])
    assert result.state is given
    reference = VadStreamState.fresh()
    (expected,) = silero.probabilities([(reference, windows[:3])])
    np.testing.assert_array_equal(result.probabilities, expected)
    np.testing.assert_array_equal(result.state.state, reference.state)
    (after,) = silero.step([(result.state, windows[3:])])
    np.testing.assert_array_equal(
        after.probabilities, silero.probabilities([(reference, windows[3:])])[0]
    )
