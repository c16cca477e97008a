"""whisper_streaming.turns: a stream's turns from its utterances and the turn model's scores."""

from __future__ import annotations

import math

import numpy as np

from speech_common.vad import SAMPLE_RATE_HZ, WINDOW_SAMPLES
from whisper_streaming.turns import ScoreTurn, TurnEnded, TurnOptions, TurnTracker, trails_off

WINDOW_S = WINDOW_SAMPLES / SAMPLE_RATE_HZ


class Stream:
    """Pushes ramp windows (sample value == stream index) into a tracker."""

    def __init__(self, **options) -> None:
        self.turns = TurnTracker(TurnOptions(**options))
        self.position = 0
        self.ended: list[TurnEnded] = []

    def windows(self, n: int) -> None:
        for _ in range(n):
            window = np.arange(self.position, self.position + WINDOW_SAMPLES, dtype=np.float32)
            self.position += WINDOW_SAMPLES
            self.ended += self.turns.push(window)

    @property
    def now_s(self) -> float:
        return self.position / SAMPLE_RATE_HZ


def test_a_high_score_ends_the_turn() -> None:
    s = Stream()
    s.windows(10)
    s.turns.speech_started(s.now_s)
    s.windows(50)
    request = s.turns.utterance_ended(s.now_s)
    assert isinstance(request, ScoreTurn)
    ended = s.turns.scored(request.ticket, 0.9)
    assert ended == TurnEnded("model", s.now_s, 0.9)
    assert not s.turns.turn_open


def test_the_turns_audio_starts_half_a_second_before_its_first_onset() -> None:
    s = Stream()
    s.windows(100)
    onset = s.position
    s.turns.speech_started(s.now_s)
    s.windows(20)
    s.turns.utterance_ended(s.now_s)
    s.turns.speech_started(s.now_s)  # a second utterance of the same turn
    s.windows(20)
    request = s.turns.utterance_ended(s.now_s)
    pre = SAMPLE_RATE_HZ // 2
    np.testing.assert_array_equal(request.audio, np.arange(onset - pre, s.position))


def test_the_turns_audio_is_its_last_8_s() -> None:
    s = Stream()
    s.turns.speech_started(0.0)
    s.windows(400)  # 12.8 s of speech
    request = s.turns.utterance_ended(s.now_s)
    assert len(request.audio) == 8 * SAMPLE_RATE_HZ
    assert request.audio[-1] == s.position - 1


def test_a_low_score_keeps_the_turn_open_until_the_timeout() -> None:
    s = Stream(timeout_ms=1000)
    s.turns.speech_started(0.0)
    s.windows(30)
    end_s = s.now_s
    request = s.turns.utterance_ended(end_s)
    assert s.turns.scored(request.ticket, 0.2) is None
    s.windows(math.ceil(1.0 / WINDOW_S) - 1)
    assert s.ended == [] and s.turns.turn_open
    s.windows(1)
    assert s.ended == [TurnEnded("timeout", end_s, 0.2)]


def test_a_final_that_trails_off_keeps_the_turn_open_whatever_the_score() -> None:
    s = Stream(timeout_ms=1000)
    s.turns.speech_started(0.0)
    s.windows(30)
    end_s = s.now_s
    request = s.turns.utterance_ended(end_s)
    assert s.turns.scored(request.ticket, 0.99, trailing_off=True) is None
    assert s.turns.turn_open
    s.windows(math.ceil(1.0 / WINDOW_S))
    assert s.ended == [TurnEnded("timeout", end_s, 0.99)]


def test_what_trails_off() -> None:
    for text in (
        "depending on...",
        "principally of t-",
        "and then,",
        "as follows:",
        "so \u2026",
        "well; ",
        "the \u2013",
    ):
        assert trails_off(text), text
    for text in ("It is over.", "Is it?", "Stop!", "the chemical is", "", "well-known"):
        assert not trails_off(text), text


def test_speech_before_the_score_comes_back_voids_it() -> None:
    s = Stream(timeout_ms=1000)
    s.turns.speech_started(0.0)
    s.windows(30)
    request = s.turns.utterance_ended(s.now_s)
    s.windows(5)
    s.turns.speech_started(s.now_s)  # the speaker went on after a short pause
    assert s.turns.scored(request.ticket, 0.99) is None
    s.windows(100)  # speaking: no timeout while in speech
    assert s.ended == [] and s.turns.turn_open


def test_a_stale_score_after_a_newer_request_is_ignored() -> None:
    s = Stream()
    s.turns.speech_started(0.0)
    s.windows(10)
    first = s.turns.utterance_ended(s.now_s)
    s.turns.speech_started(s.now_s)
    s.windows(10)
    second = s.turns.utterance_ended(s.now_s)
    assert s.turns.scored(first.ticket, 0.99) is None
    assert s.turns.scored(second.ticket, 0.99).reason == "model"


def test_no_turn_no_request_and_the_next_onset_opens_a_new_one() -> None:
    s = Stream()
    assert s.turns.utterance_ended(0.0) is None
    s.turns.speech_started(0.0)
    s.windows(10)
    request = s.turns.utterance_ended(s.now_s)
    s.turns.scored(request.ticket, 0.9)
    s.windows(200)
    assert s.ended == []  # an ended turn has no timeout
    s.turns.speech_started(s.now_s)
    assert s.turns.turn_open


def test_the_model_hears_the_turn_up_to_the_end_of_its_speech() -> None:
    """Not the silence the VAD waited for before it ended the utterance (it raises the score)."""
    s = Stream()
    s.turns.speech_started(0.0)
    s.windows(30)
    speech_end = s.position
    s.windows(15)  # 480 ms of silence before the VAD ended the utterance
    request = s.turns.utterance_ended(speech_end / SAMPLE_RATE_HZ)
    np.testing.assert_array_equal(request.audio, np.arange(0, speech_end))


def test_a_click_after_a_pause_does_not_hold_the_turn_open() -> None:
    """An utterance too short to be speech (Dropped) is as if it had not begun: the turn still
    times out from its last real utterance's end (before, it stayed open for good)."""
    s = Stream(timeout_ms=1000)
    s.turns.speech_started(0.0)
    s.windows(30)
    end_s = s.now_s
    request = s.turns.utterance_ended(end_s)
    assert s.turns.scored(request.ticket, 0.2) is None
    s.windows(10)
    s.turns.speech_started(s.now_s)  # the click
    s.windows(3)
    s.turns.speech_dropped()
    s.windows(math.ceil(1.0 / WINDOW_S) - 13)
    assert s.ended == [TurnEnded("timeout", end_s, 0.2)]


def test_a_click_that_opened_a_turn_closes_it_unheard() -> None:
    s = Stream(timeout_ms=1000)
    s.turns.speech_started(0.0)
    s.windows(3)
    s.turns.speech_dropped()
    assert not s.turns.turn_open
    s.windows(100)
    assert s.ended == []
    s.turns.speech_dropped()  # nothing in speech: nothing to undo
    assert not s.turns.turn_open


def test_a_forced_cut_whose_rest_comes_to_nothing_times_out_from_the_cut() -> None:
    """An utterance cut at its maximum length goes on in a continuation; when that is only the
    pause (too short: Dropped), the turn's speech ended at the cut and the timeout runs from
    there (before, the turn stayed in speech for good)."""
    s = Stream(timeout_ms=1000)
    s.turns.speech_started(0.0)
    s.windows(30)
    cut_s = s.now_s
    s.turns.speech_forced(cut_s)
    s.windows(5)
    s.turns.speech_dropped(continuation=True)
    assert s.turns.turn_open
    s.windows(math.ceil(1.0 / WINDOW_S) - 6)
    assert s.ended == []
    s.windows(1)  # 1 s after the cut
    assert s.ended == [TurnEnded("timeout", cut_s, None)]
