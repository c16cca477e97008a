"""whisper_streaming.utterance.UtteranceTracker: numbering, partial cadence, speculation, drops.

Windows are ramps (sample value == stream index) so request audio can be checked exactly.
"""

from __future__ import annotations

import numpy as np
import pytest

from speech_common.vad import SAMPLE_RATE_HZ, WINDOW_SAMPLES, VadOptions
from whisper_streaming.utterance import (
    MIN_PARTIAL_AUDIO_S,
    Confirmed,
    Dropped,
    FinalRequest,
    PartialRequest,
    Request,
    SpeculationVoid,
    SpeculativeFinal,
    TrackerOptions,
    UtteranceTracker,
)

SPEECH = 0.9
SILENCE = 0.0
WINDOW_S = WINDOW_SAMPLES / SAMPLE_RATE_HZ
PAD_MS = 30
PAD = int(PAD_MS * SAMPLE_RATE_HZ / 1000)


def _opts(
    partials: bool = True,
    interval_s: float = 0.5,
    speculate_after_ms: float | None = None,
    **vad: float,
) -> TrackerOptions:
    vad_kwargs = {"speech_pad_ms": PAD_MS, "min_silence_duration_ms": 300, **vad}
    return TrackerOptions(VadOptions(**vad_kwargs), partials, interval_s, speculate_after_ms)


class Driver:
    """Feeds ramp windows; remembers each request with the stream position it came at."""

    def __init__(self, options: TrackerOptions) -> None:
        self.tracker = UtteranceTracker(options)
        self.position = 0
        self.log: list[tuple[int, Request]] = []

    def push(self, *probs: float) -> list[Request]:
        out: list[Request] = []
        for prob in probs:
            window = np.arange(self.position, self.position + WINDOW_SAMPLES, dtype=np.float32)
            self.position += WINDOW_SAMPLES
            got = self.tracker.push(window, prob)
            self.log.extend((self.position, r) for r in got)
            out.extend(got)
        return out

    def flush(self) -> list[Request]:
        got = self.tracker.flush()
        self.log.extend((self.position, r) for r in got)
        return got

    def of(self, kind: type) -> list:
        return [r for _, r in self.log if isinstance(r, kind)]


def _ramp(start: int, end: int) -> np.ndarray:
    return np.arange(start, end, dtype=np.float32)


# -- numbering ----------------------------------------------------------------------------------
def test_numbers_increment_per_utterance_and_partials_share_them() -> None:
    d = Driver(_opts())
    for _ in range(3):
        d.push(*[SILENCE] * 5, *[SPEECH] * 40, *[SILENCE] * 12)
    finals = d.of(FinalRequest)
    assert [f.num for f in finals] == [0, 1, 2]
    partial_nums = [p.num for p in d.of(PartialRequest)]
    assert partial_nums and set(partial_nums) == {0, 1, 2}
    # Every partial of an utterance comes before that utterance's final.
    order = [(type(r).__name__, r.num) for _, r in d.log]
    for num in range(3):
        last_partial = max(
            i for i, (k, n) in enumerate(order) if k == "PartialRequest" and n == num
        )
        assert last_partial < order.index(("FinalRequest", num))
    assert d.tracker.current_num == -1


def test_final_audio_and_offset() -> None:
    d = Driver(_opts(partials=False))
    d.push(*[SILENCE] * 5, *[SPEECH] * 20, *[SILENCE] * 10)
    (final,) = d.of(FinalRequest)
    start = 5 * WINDOW_SAMPLES - PAD
    np.testing.assert_array_equal(final.audio, _ramp(start, 25 * WINDOW_SAMPLES + PAD))
    assert final.offset_s == start / SAMPLE_RATE_HZ
    assert not final.forced


# -- partials -----------------------------------------------------------------------------------
@pytest.mark.parametrize("interval_s", [0.5, 0.25, 1.0])
def test_partial_cadence_while_speaking(interval_s: float) -> None:
    d = Driver(_opts(interval_s=interval_s))
    d.push(*[SILENCE] * 5)
    speech_windows = 125  # 4 s
    d.push(*[SPEECH] * speech_windows)
    partials = [(pos, r) for pos, r in d.log if isinstance(r, PartialRequest)]
    speech_s = speech_windows * WINDOW_S
    # One partial per interval, rounded up to whole windows.
    per_partial_s = np.ceil(round(interval_s / WINDOW_S, 6)) * WINDOW_S
    assert len(partials) == int((speech_s - WINDOW_S) // per_partial_s)
    start = 5 * WINDOW_SAMPLES - PAD
    previous = 6 * WINDOW_SAMPLES  # speech start is the reference for the first partial
    for pos, p in partials:
        assert p.num == 0
        assert p.offset_s == start / SAMPLE_RATE_HZ
        np.testing.assert_array_equal(p.audio, _ramp(start, pos))  # the whole utterance so far
        gap_s = (pos - previous) / SAMPLE_RATE_HZ
        assert interval_s - 1e-9 <= gap_s < interval_s + WINDOW_S
        previous = pos


def test_partial_audio_is_a_copy() -> None:
    d = Driver(_opts(interval_s=0.1))
    d.push(*[SPEECH] * 20)
    first = d.of(PartialRequest)[0]
    snapshot = first.audio.copy()
    d.push(*[SPEECH] * 200)  # grows (and reallocates) the segmenter's buffer, then forces cuts
    np.testing.assert_array_equal(first.audio, snapshot)


def test_no_partials_during_silence() -> None:
    d = Driver(_opts(interval_s=0.1, min_silence_duration_ms=600))
    d.push(*[SPEECH] * 20)
    before = len(d.of(PartialRequest))
    assert before > 0
    d.push(*[SILENCE] * 15)  # 480 ms: still inside the utterance, no partials
    assert len(d.of(PartialRequest)) == before
    d.push(SPEECH)  # speech resumes: the interval has long passed, a partial at once
    assert len(d.of(PartialRequest)) == before + 1
    assert d.log[-1][1].audio[-1] == d.position - 1


def test_no_partials_when_disabled() -> None:
    d = Driver(_opts(partials=False, interval_s=0.1))
    d.push(*[SPEECH] * 100, *[SILENCE] * 10)
    assert d.of(PartialRequest) == []
    assert len(d.of(FinalRequest)) == 1


def test_no_partial_before_min_partial_audio() -> None:
    d = Driver(_opts(interval_s=0.1, speech_pad_ms=0))
    d.push(*[SPEECH] * 30)
    first_pos, first = next((pos, r) for pos, r in d.log if isinstance(r, PartialRequest))
    min_samples = MIN_PARTIAL_AUDIO_S * SAMPLE_RATE_HZ
    assert len(first.audio) >= min_samples
    assert len(first.audio) - WINDOW_SAMPLES < min_samples  # the first window that had enough
    assert first_pos == len(first.audio)


# -- speculative finals -------------------------------------------------------------------------
def test_speculative_final_matches_the_final_when_the_pause_lasts() -> None:
    d = Driver(_opts(partials=True, speculate_after_ms=100))
    d.push(*[SILENCE] * 5, *[SPEECH] * 40)
    assert d.of(SpeculativeFinal) == []
    d.push(SILENCE, SILENCE, SILENCE)  # 96 ms
    assert d.of(SpeculativeFinal) == []
    (spec,) = d.push(SILENCE)  # 128 ms >= 100 ms
    assert isinstance(spec, SpeculativeFinal)
    d.push(*[SILENCE] * 6)  # until the 300 ms timeout
    (final,) = d.of(FinalRequest)
    assert d.of(SpeculativeFinal) == [spec]  # once only
    assert spec.num == final.num == 0
    assert spec.offset_s == final.offset_s
    np.testing.assert_array_equal(spec.audio, final.audio)
    assert d.of(SpeculationVoid) == []


def test_speculation_waits_for_the_trailing_pad() -> None:
    d = Driver(_opts(speculate_after_ms=0, speech_pad_ms=100))
    d.push(*[SILENCE] * 5, *[SPEECH] * 20, SILENCE, SILENCE, SILENCE)  # 1536 < 1600 samples
    assert d.of(SpeculativeFinal) == []
    d.push(SILENCE)
    (spec,) = d.of(SpeculativeFinal)
    assert spec.audio[-1] == 25 * WINDOW_SAMPLES + 1600 - 1


def test_speculation_waits_for_the_postroll_and_holds_what_the_final_holds() -> None:
    """With post-roll the speculative final starts once that much audio followed the speech,
    and its audio is the final's audio."""
    d = Driver(_opts(speculate_after_ms=0, postroll_ms=160))
    d.push(*[SILENCE] * 5, *[SPEECH] * 20, *[SILENCE] * 4)  # 2048 < 2560 samples
    assert d.of(SpeculativeFinal) == []
    d.push(SILENCE)
    (spec,) = d.of(SpeculativeFinal)
    assert spec.audio[-1] == 25 * WINDOW_SAMPLES + 2560 - 1
    d.push(*[SILENCE] * 5)  # the 300 ms timeout
    (final,) = d.of(FinalRequest)
    np.testing.assert_array_equal(spec.audio, final.audio)
    assert final.speech_end_s == pytest.approx(25 * WINDOW_S)


def test_speculation_void_when_speech_resumes() -> None:
    d = Driver(_opts(speculate_after_ms=100))
    d.push(*[SPEECH] * 40, *[SILENCE] * 5)
    (first_spec,) = d.of(SpeculativeFinal)
    assert d.push(SPEECH) == [SpeculationVoid(0)]
    d.push(*[SPEECH] * 10, *[SILENCE] * 10)
    specs = d.of(SpeculativeFinal)
    assert len(specs) == 2
    (final,) = d.of(FinalRequest)
    assert final.num == specs[1].num == 0
    np.testing.assert_array_equal(specs[1].audio, final.audio)
    assert len(first_spec.audio) < len(final.audio)
    assert d.of(SpeculationVoid) == [SpeculationVoid(0)]


def test_no_speculation_without_option() -> None:
    d = Driver(_opts(speculate_after_ms=None))
    d.push(*[SPEECH] * 40, *[SILENCE] * 20)
    assert d.of(SpeculativeFinal) == [] and d.of(SpeculationVoid) == []


def test_no_speculation_for_a_burst_that_will_be_dropped() -> None:
    # A click (shorter than min_speech_duration_ms) would be dropped: running Whisper on it
    # ahead of time is wasted final-priority work.
    d = Driver(_opts(speculate_after_ms=100, min_speech_duration_ms=250))
    d.push(*[SILENCE] * 5, *[SPEECH] * 4, *[SILENCE] * 10)
    assert d.of(Dropped) == [Dropped(0)]
    assert d.of(SpeculativeFinal) == []


# -- confirmation ---------------------------------------------------------------------------------
def test_an_utterance_is_confirmed_once_in_the_window_that_completes_min_speech() -> None:
    d = Driver(_opts(min_speech_duration_ms=250))
    d.push(*[SILENCE] * 5, *[SPEECH] * 30, *[SILENCE] * 12)
    ((position, confirmed),) = [(p, r) for p, r in d.log if isinstance(r, Confirmed)]
    # Speech from window 5: 250 ms is 7.8 windows of 32 ms, so the 8th speech window (the 13th
    # window) completes it; the utterance starts a pad before its first speech window.
    assert position == 13 * WINDOW_SAMPLES
    assert confirmed == Confirmed(0, (5 * WINDOW_SAMPLES - PAD) / SAMPLE_RATE_HZ,
                                  13 * WINDOW_SAMPLES / SAMPLE_RATE_HZ)  # fmt: skip
    kinds = [type(r).__name__ for _, r in d.log]
    assert kinds.index("Confirmed") < kinds.index("PartialRequest") < kinds.index("FinalRequest")


def test_a_click_is_never_confirmed_and_every_transcribed_utterance_is() -> None:
    d = Driver(_opts(min_speech_duration_ms=250, max_utterance_s=3.0))
    d.push(*[SILENCE] * 5, *[SPEECH] * 4, *[SILENCE] * 12)  # a click: Dropped
    assert d.of(Confirmed) == [] and d.of(Dropped) == [Dropped(0)]
    d.push(*[SPEECH] * 200, *[SILENCE] * 12)  # 6.4 s: forced cuts, their rests continue it
    d.push(*[SPEECH] * 20, *[SILENCE] * 12)
    order = [(type(r).__name__, r.num) for _, r in d.log]
    finals = d.of(FinalRequest)
    assert len(finals) >= 4 and [c.num for c in d.of(Confirmed)] == [f.num for f in finals]
    for f in finals:  # each confirmed before its final: a forced cut's rest too
        assert order.index(("Confirmed", f.num)) < order.index(("FinalRequest", f.num))


def test_a_forced_cut_in_a_pause_leaves_a_rest_that_is_never_confirmed() -> None:
    d = Driver(_opts(max_utterance_s=3.0))
    d.push(SILENCE, *[SPEECH] * 90, *[SILENCE] * 20)  # the cap falls in the pause
    assert d.of(Dropped) == [Dropped(1, continuation=True)]
    assert [c.num for c in d.of(Confirmed)] == [0]


# -- drops, forced cuts, flush --------------------------------------------------------------------
def test_too_short_burst_dropped_and_number_reused() -> None:
    d = Driver(_opts(min_speech_duration_ms=250))
    d.push(*[SILENCE] * 5, *[SPEECH] * 3, *[SILENCE] * 10)
    assert d.of(Dropped) == [Dropped(0)]
    assert d.of(FinalRequest) == []
    d.push(*[SPEECH] * 30, *[SILENCE] * 10)
    (final,) = d.of(FinalRequest)
    assert final.num == 0
    d.push(*[SPEECH] * 30, *[SILENCE] * 10)
    assert [f.num for f in d.of(FinalRequest)] == [0, 1]


def test_forced_cut_final_then_next_number() -> None:
    # A max shorter than the 5 s cut search: equal probabilities everywhere must not make the
    # cut land at the start (which would turn the rest into a stream of one-window finals).
    max_s = 3.0
    d = Driver(_opts(interval_s=0.5, max_utterance_s=max_s))
    d.push(SILENCE, *[SPEECH] * 300, *[SILENCE] * 10)  # 9.6 s of speech
    finals = d.of(FinalRequest)
    assert all(f.forced for f in finals[:-1]) and not finals[-1].forced
    assert [f.num for f in finals] == list(range(len(finals)))
    assert 3 <= len(finals) <= 9.6 / (max_s / 2) + 1
    for f in finals[:-1]:
        assert max_s / 2 - WINDOW_S <= len(f.audio) / SAMPLE_RATE_HZ <= max_s
    audio = np.concatenate([f.audio for f in finals])
    np.testing.assert_array_equal(audio, _ramp(WINDOW_SAMPLES - PAD, 301 * WINDOW_SAMPLES + PAD))
    for a, b in zip(finals, finals[1:], strict=False):
        assert b.offset_s == pytest.approx(a.offset_s + len(a.audio) / SAMPLE_RATE_HZ)
    assert {0, 1} <= {p.num for p in d.of(PartialRequest)} <= set(range(len(finals)))


def test_flush_finalises_open_utterance() -> None:
    d = Driver(_opts())
    d.push(*[SPEECH] * 20)
    (final,) = d.flush()
    assert isinstance(final, FinalRequest) and final.num == 0
    np.testing.assert_array_equal(final.audio, _ramp(0, 20 * WINDOW_SAMPLES))
    assert d.flush() == []


def test_flush_drops_a_click() -> None:
    d = Driver(_opts(min_speech_duration_ms=250))
    d.push(*[SILENCE] * 3, SPEECH)
    assert d.flush() == [Dropped(0)]


def test_a_forced_cut_inside_a_pause_drops_its_rest_as_a_continuation() -> None:
    """The cap cuts an utterance in its pause: the rest holds no speech, so it is Dropped, marked
    as the rest of a forced cut (its speech ended at the cut, not as a click that began)."""
    d = Driver(_opts(max_utterance_s=3.0))
    d.push(SILENCE, *[SPEECH] * 90, *[SILENCE] * 20)  # 2.88 s of speech; the cap in the pause
    assert [f.forced for f in d.of(FinalRequest)] == [True]
    assert d.of(Dropped) == [Dropped(1, continuation=True)]
    d.push(*[SPEECH] * 3, *[SILENCE] * 12)  # a click that begins an utterance of its own
    assert d.of(Dropped)[-1] == Dropped(1, continuation=False)
