"""Sans-I/O utterance tracking: VAD events -> partial and final transcription requests."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from speech_common.vad import (
    SAMPLE_RATE_HZ,
    SpeechEnded,
    SpeechStarted,
    VadOptions,
    VadSegmenter,
)

MIN_PARTIAL_AUDIO_S = 0.3  # shorter audio gives Whisper nothing to work with


@dataclass(frozen=True)
class Started:
    """An utterance began (the VAD's onset; not the continuation after a forced cut)."""

    num: int
    start_s: float


@dataclass(frozen=True)
class Confirmed:
    """The open utterance has ``min_speech_duration_ms`` of speech: it will be transcribed, never
    Dropped (a click does not get this far). Once per utterance, a forced cut's rest included
    (its speech goes on; a rest that is only pause is Dropped and never gets this far)."""

    num: int
    start_s: float  # where the utterance (with its pre-roll) starts in the stream
    at_s: float  # the stream position where the VAD had heard that much


@dataclass(frozen=True)
class PartialRequest:
    num: int
    audio: np.ndarray
    offset_s: float


@dataclass(frozen=True)
class FinalRequest:
    num: int
    audio: np.ndarray
    offset_s: float
    forced: bool
    speech_end_s: float  # where the utterance's speech ends in the stream (before trailing audio)


@dataclass(frozen=True)
class SpeculativeFinal:
    """The speaker paused: the final's audio, computed early; valid if the pause lasts."""

    num: int
    audio: np.ndarray
    offset_s: float
    speech_end_s: float  # as its FinalRequest's, should the pause last


@dataclass(frozen=True)
class SpeculationVoid:
    """Speech resumed after a speculative final: that result will not be used."""

    num: int


@dataclass(frozen=True)
class Dropped:
    """An utterance too short to transcribe (a click): its number is not used."""

    num: int
    continuation: bool = False  # the rest of a forced cut (its speech ended at the cut)


Request = (
    Started
    | Confirmed
    | PartialRequest
    | FinalRequest
    | SpeculativeFinal
    | SpeculationVoid
    | Dropped
)


@dataclass(frozen=True)
class TrackerOptions:
    vad: VadOptions
    partials: bool
    partial_interval_s: float
    speculate_after_ms: float | None  # None: never start a final before the silence timeout


class UtteranceTracker:
    """Feeds a VadSegmenter and decides what to transcribe when (pure, no clocks, no I/O)."""

    def __init__(self, options: TrackerOptions) -> None:
        self.options = options
        self.segmenter = VadSegmenter(options.vad)
        self._num = -1  # transcription_num of the open utterance
        self._next_num = 0
        self._last_partial_at = 0.0  # stream seconds of the last partial request
        self._speculated_len = 0  # audio length of the last speculative final of this utterance
        self._continues = False  # the last utterance was cut by force: its speech goes on
        self._continuing = False  # the open utterance is such a continuation (no Started)
        self._confirmed = False  # the open utterance got its Confirmed

    @property
    def current_num(self) -> int:
        return self._num

    def push(self, window: np.ndarray, prob: float) -> list[Request]:
        requests: list[Request] = []
        for event in self.segmenter.push(window, prob):
            requests.extend(self._on_event(event))
        if self.segmenter.in_speech:
            requests.extend(self._confirm())
            requests.extend(self._in_speech_requests())
        return requests

    def _confirm(self) -> list[Request]:
        """``Confirmed`` once the open utterance has enough speech to be transcribed: in the
        window that completes it, which comes before any window that could end the utterance
        (it ends after silence), so every FinalRequest follows one."""
        seg = self.segmenter
        if self._confirmed or seg.speech_ms < self.options.vad.min_speech_duration_ms:
            return []
        self._confirmed = True
        return [Confirmed(self._num, seg.utterance_start_s, seg.position_s)]

    def flush(self) -> list[Request]:
        requests: list[Request] = []
        for event in self.segmenter.flush():
            requests.extend(self._on_event(event))
        return requests

    def _on_event(self, event: SpeechStarted | SpeechEnded) -> list[Request]:
        if isinstance(event, SpeechStarted):
            self._num = self._next_num
            self._next_num += 1
            self._last_partial_at = self.segmenter.position_s
            self._speculated_len = 0
            self._continuing, self._continues = self._continues, False
            self._confirmed = False
            return [] if self._continuing else [Started(self._num, event.start_s)]
        num = self._num
        self._num = -1
        self._continues = event.forced
        if event.too_short:
            self._next_num = num  # reuse the number: the client never saw it
            return [Dropped(num, self._continuing)]
        speech_end = event.end_s if event.speech_end_s is None else event.speech_end_s
        return [FinalRequest(num, event.audio, event.start_s, event.forced, speech_end)]

    def _in_speech_requests(self) -> list[Request]:
        seg = self.segmenter
        speculate = self.options.speculate_after_ms
        if speculate is not None and seg.silence_ms >= speculate:
            audio = seg.ending_audio()
            # A burst under min_speech_duration_ms will be Dropped: do not spend a final on it.
            long_enough = seg.speech_ms >= self.options.vad.min_speech_duration_ms
            if audio is not None and long_enough and len(audio) != self._speculated_len:
                self._speculated_len = len(audio)
                return [
                    SpeculativeFinal(self._num, audio, seg.utterance_start_s, seg.last_speech_end_s)
                ]
            return []
        requests: list[Request] = []
        if self._speculated_len and seg.silence_ms == 0:
            self._speculated_len = 0
            requests.append(SpeculationVoid(self._num))
        if not self.options.partials or seg.silence_ms > 0:
            return requests
        now = seg.position_s
        audio = seg.utterance_audio()
        if (
            now - self._last_partial_at >= self.options.partial_interval_s
            and len(audio) >= MIN_PARTIAL_AUDIO_S * SAMPLE_RATE_HZ
        ):
            self._last_partial_at = now
            requests.append(PartialRequest(self._num, audio.copy(), seg.utterance_start_s))
        return requests
