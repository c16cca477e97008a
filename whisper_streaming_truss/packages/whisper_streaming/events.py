"""What the STT core (``whisper_streaming.protocol.SttCore``) says, typed: the codecs at the edge
(``whisper_streaming.dialects``) turn these into each vendor's frames.

The core's methods return ``Output``s: the driver's job commands (``Submit``, ``Cancel``), which go
to the driver as they are, and the ``Event``s below, which a codec encodes (or drops where its
protocol has no such frame).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Literal

from speech_common.driver import Command
from speech_common.ws import ProtocolError

from .engine import Transcript


class FinalCause(Enum):
    """Why an utterance's final was cut where it was."""

    PAUSE = "pause"  # the VAD heard min_silence_duration_ms of silence: the speaker paused
    FORCED = "forced"  # final_transcript_max_duration_s reached: speech goes on
    FINALIZE = "finalize"  # the client asked (a finalize control)
    FLUSH = "flush"  # end of audio (end_audio / CloseStream)


@dataclass(frozen=True)
class Transcription:
    """A partial (``is_final`` False: a full re-hypothesis of the open utterance) or the final of
    utterance ``num``. Times in ``result`` are seconds since the stream started."""

    num: int
    is_final: bool
    result: Transcript
    audio_s: float  # the audio transcribed (the utterance so far, for a partial)
    offset_s: float  # where that audio starts in the stream
    cause: FinalCause | None = None  # finals only
    flush: bool = False  # the last final before end_audio's "finished"
    # A partial of a session that asked for stable partials: its words that will not change
    # (``whisper_streaming.stability``; never fewer than the utterance's previous partial had).
    stable: tuple[str, ...] | None = None
    # A final of a session that asked for end-of-turn detection, cut on a pause: whether the
    # turn model said the speaker's turn is over with it (None: not asked, or not a pause).
    end_of_turn: bool | None = None
    # ... and the turn model's P(complete) at that pause (None: not asked, not scored, or the
    # speaker went on before the score came back).
    turn_probability: float | None = None


@dataclass(frozen=True)
class SpeechStarted:
    """The VAD heard an utterance begin (only when the session asked for speech events)."""

    num: int
    timestamp_s: float  # where the utterance (with its pre-roll) starts in the stream


@dataclass(frozen=True)
class SpeechConfirmed:
    """The utterance has ``min_speech_duration_ms`` of speech: it will be transcribed, it is no
    click (only when the session asked for it)."""

    num: int
    start_s: float  # where the utterance (with its pre-roll) starts in the stream
    at_s: float  # the stream position where the VAD had heard that much


@dataclass(frozen=True)
class UtteranceEnd:
    """``utterance_end_ms`` of silence followed the last final with words (when asked)."""

    num: int  # the last final's transcription_num
    last_word_end_s: float


@dataclass(frozen=True)
class EndOfTurn:
    """The speaker's turn is over (when asked): the turn model said so at a pause
    (``reason`` "model"), or the silence after the turn's last utterance reached its timeout."""

    num: int  # the turn's last final's transcription_num
    speech_end_s: float  # where the turn's last speech ended (stream seconds, as the VAD heard)
    reason: Literal["model", "timeout"]
    probability: float | None  # the model's P(complete) at that pause (None: not scored)


@dataclass(frozen=True)
class TurnEndLikely:
    """Early in a pause (``speculation_lead_ms`` before it is long enough) the utterance's
    speculative final and the turn model's score of the same audio are both in (when asked):
    what its final and the turn's verdict will be if the pause lasts. ``TurnEndVoided`` follows
    if the speaker goes on first."""

    num: int
    result: Transcript
    audio_s: float
    offset_s: float
    probability: float


@dataclass(frozen=True)
class TurnEndVoided:
    """The speaker went on before the pause that a ``TurnEndLikely`` announced was long enough."""

    num: int


@dataclass(frozen=True)
class Finalized:
    """Every final a finalize control asked for went out; ``answered``: one of them (the last
    one with ``FinalCause.FINALIZE``) did, False when nothing was pending."""

    answered: bool
    position_s: float  # the audio the finalize covered (stream seconds)


@dataclass(frozen=True)
class EndAudio:
    status: Literal["acknowledged", "finished"]


@dataclass(frozen=True)
class Health:
    healthy: bool = True


@dataclass(frozen=True)
class FinalFailed:
    """Utterance ``num``'s final could not be computed; the session goes on (recoverable)."""

    num: int


@dataclass(frozen=True)
class Ended:
    """The session is over: after end_audio's flush (``error`` None: a normal close), or failed
    with ``error`` (its close code). A client that left gets no ``Ended``: nobody to tell."""

    error: ProtocolError | None = None


Event = (
    Transcription
    | SpeechStarted
    | SpeechConfirmed
    | UtteranceEnd
    | EndOfTurn
    | TurnEndLikely
    | TurnEndVoided
    | Finalized
    | EndAudio
    | Health
    | FinalFailed
    | Ended
)
Output = Command | Event
