"""End of turn (sans-I/O): has the speaker finished, or only paused inside a sentence?

``TurnTracker`` follows one stream's utterances. When an utterance ends on a pause it asks for a
score of the turn so far (``ScoreTurn``: its audio from 0.5 s before its first onset to the end
of its speech, at most ``speech_common.turn``'s 8 s, for the Smart Turn worker); a score above
the threshold ends the turn, unless the utterance's final trails off (``trails_off``). A low
score keeps the turn open: the next utterance continues it, and after ``timeout_ms`` of silence
the turn ends anyway. Speech before a score comes back voids it.
Positions are stream samples at 16 kHz, as the VAD counts them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from speech_common.audio import SampleBuffer
from speech_common.turn import COMPLETE_THRESHOLD, PRE_SPEECH_MS, TURN_CONTEXT_S, TURN_STOP_S
from speech_common.vad import SAMPLE_RATE_HZ

DEFAULT_TIMEOUT_MS = int(TURN_STOP_S * 1000)  # pipecat's STOP_SECS


# Whisper writes these at the end of a final when the speaker trails off or breaks off a word
# ("depending on...", "principally of t-"): the two hesitations of the hesitation set that
# Smart Turn ended the turn at, and none of 41 finished sentences (docs/benchmarks.md).
CONTINUATION_MARKS = ("...", "\u2026", "-", "\u2013", "\u2014", ",", ";", ":")


def trails_off(text: str) -> bool:
    """A final's text that ends as unfinished speech does."""
    return text.rstrip().endswith(CONTINUATION_MARKS)


@dataclass(frozen=True)
class TurnOptions:
    threshold: float = COMPLETE_THRESHOLD  # P(complete) above this ends the turn
    timeout_ms: int = DEFAULT_TIMEOUT_MS  # silence after which the turn ends whatever the score


@dataclass(frozen=True)
class ScoreTurn:
    """Ask the turn model about the turn so far; its answer goes to ``scored(ticket, p)``."""

    ticket: int
    audio: np.ndarray


@dataclass(frozen=True)
class TurnEnded:
    reason: Literal["model", "timeout"]
    speech_end_s: float  # where the turn's last speech ended
    probability: float | None  # the model's P(complete) (None: no score yet at the timeout)


class TurnTracker:
    def __init__(self, options: TurnOptions) -> None:
        self.options = options
        self._pre = int(PRE_SPEECH_MS * SAMPLE_RATE_HZ / 1000)
        self._keep = TURN_CONTEXT_S * SAMPLE_RATE_HZ
        self._timeout = int(options.timeout_ms * SAMPLE_RATE_HZ / 1000)
        # The stream's last samples: a turn's last 8 s end at its speech end, which the
        # utterance end hears up to min_silence_duration_ms later (at most _pre, 0.5 s, is kept).
        self._recent = SampleBuffer(self._keep + self._pre)
        self._position = 0  # stream samples pushed
        self._open = False  # a turn has started and not ended
        self._turn_start = 0  # its first onset
        self._in_speech = False
        self._opened_by_onset = False  # the utterance in speech opened the turn
        self._forced_end = 0  # where the last forced cut's speech ended
        self._speech_end = 0  # the open turn's last utterance end (while not in speech)
        self._ticket = 0
        self._waiting: int | None = None  # the ticket whose score would end the turn
        self._last_probability: float | None = None

    def reconfigure(self, options: TurnOptions) -> None:
        """A new threshold and timeout (a client's mid-stream Configure)."""
        self.options = options
        self._timeout = int(options.timeout_ms * SAMPLE_RATE_HZ / 1000)

    @property
    def turn_open(self) -> bool:
        return self._open

    def push(self, window: np.ndarray) -> list[TurnEnded]:
        """Audio through the VAD (in order, before that window's utterance events)."""
        self._recent.append(window)
        self._position += len(window)
        if len(self._recent) > self._keep + self._pre:
            self._recent.consume(len(self._recent) - self._keep - self._pre)
        if (
            self._open
            and not self._in_speech
            and self._position - self._speech_end >= self._timeout
        ):
            return [self._end("timeout", self._last_probability)]
        return []

    def speech_started(self, start_s: float) -> None:
        """An utterance's onset: it opens a turn or continues the open one."""
        self._opened_by_onset = not self._open
        if not self._open:
            self._open = True
            self._turn_start = round(start_s * SAMPLE_RATE_HZ)
            self._last_probability = None
        self._in_speech = True
        self._waiting = None  # the speaker went on: a score still out is void

    def speech_forced(self, speech_end_s: float) -> None:
        """An utterance was cut by force (its maximum length): its speech goes on in a
        continuation, so no verdict; remembered in case the continuation comes to nothing."""
        if self._open:
            self._forced_end = round(speech_end_s * SAMPLE_RATE_HZ)

    def speech_dropped(self, continuation: bool = False) -> None:
        """The utterance that began was too short to be speech (a click): as if it had not
        begun. The turn it opened closes unheard; a turn it continued times out from its last
        utterance's end (the score that the click voided is not asked again). ``continuation``:
        it was the rest of a forced cut, so the turn's speech ended at that cut and times out
        from there."""
        if not self._in_speech:
            return
        self._in_speech = False
        if continuation:
            self._speech_end = self._forced_end
        elif self._opened_by_onset:
            self._open = False

    def utterance_ended(self, speech_end_s: float) -> ScoreTurn | None:
        """An utterance ended on a pause (not a forced cut): score the turn so far."""
        if not self._open:
            return None
        self._in_speech = False
        self._speech_end = round(speech_end_s * SAMPLE_RATE_HZ)
        self._ticket += 1
        self._waiting = self._ticket
        return ScoreTurn(self._ticket, self._turn_audio(self._speech_end))

    def peek(self, speech_end_s: float) -> np.ndarray | None:
        """The audio ``utterance_ended(speech_end_s)`` would ask about now, asking nothing: a
        score computed early in the pause (with the speculative final) serves the utterance's
        end if its audio is the same."""
        if not self._open:
            return None
        return self._turn_audio(round(speech_end_s * SAMPLE_RATE_HZ))

    def _turn_audio(self, speech_end: int) -> np.ndarray:
        first = self._position - len(self._recent)  # the oldest sample kept
        # Anchored at the speech end, not at the present: asked 150 ms apart (the speculative
        # final, then the utterance end), a long turn's audio is the same.
        start = max(self._turn_start - self._pre, speech_end - self._keep, first)
        # Up to the end of its speech, no silence after it: the score rises with the silence the
        # model hears (pipecat gives it its VAD's 0.2 s stop; on the hesitation set that ended
        # the turn at 6 of 14 pauses inside a sentence, with none at 2: docs/benchmarks.md).
        end = min(speech_end, self._position)
        return self._recent.view()[start - first : max(end - first, start - first)].copy()

    def utterance_cut(self, speech_end_s: float) -> None:
        """An utterance ended without a pause the model should judge (the client's
        ``finalize``): no score, but the timeout runs from its speech end."""
        if self._open:
            self._in_speech = False
            self._speech_end = round(speech_end_s * SAMPLE_RATE_HZ)
            self._waiting = None

    def heard(self, ticket: int, probability: float) -> None:
        """The model's answer is in, its verdict waits (for the final's text): a timeout in
        between reports it."""
        if ticket == self._waiting and self._open:
            self._last_probability = probability

    def scored(
        self, ticket: int, probability: float, trailing_off: bool = False
    ) -> TurnEnded | None:
        """The model's answer; it ends the turn if it is still the one asked about and the
        utterance's final did not trail off."""
        if ticket != self._waiting or not self._open:
            return None
        self._waiting = None
        self._last_probability = probability
        if probability > self.options.threshold and not trailing_off:
            return self._end("model", probability)
        return None

    def _end(self, reason: Literal["model", "timeout"], probability: float | None) -> TurnEnded:
        self._open = False
        self._waiting = None
        return TurnEnded(reason, self._speech_end / SAMPLE_RATE_HZ, probability)
