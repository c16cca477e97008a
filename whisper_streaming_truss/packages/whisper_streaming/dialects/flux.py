"""Deepgram Flux's turn-based protocol (``wss://api.deepgram.com/v2/listen``) on the same
WebSocket, for Flux's clients (LiveKit's ``deepgram.STTv2``, pipecat's
``DeepgramFluxSTTService``, the deepgram-sdk's ``listen.v2``): a transcript per *turn*, and the
turn's end decided by the turn model (Smart Turn), not by a fixed silence.

client -> server              this core
binary audio                  ``audio`` (linear16, linear32, mulaw, alaw)
``CloseStream``               ``end_audio``: turns that ended keep their ``EndOfTurn``; the open
                              turn's last words as an ``Update``, then close 1000
``ForceEndTurn``              ``finalize``: the open utterance's final, then ``EndOfTurn``
                              (``trigger: manual``) once it went out
``Configure``                 thresholds and key terms from now on; ``ConfigureSuccess``
``KeepAlive``                 the idle deadline starts again

server -> client: ``Connected`` at once; ``TurnInfo`` events: ``StartOfTurn`` (the VAD heard
``min_speech_duration_ms`` of speech: empty, before any words), ``Update`` (a partial or a final
changed the turn's transcript), ``EagerEndOfTurn`` (with
``eager_eot_threshold``: the turn model's score reached it, early in the pause when the
speculative final and the score are in, or with the final), ``TurnResumed`` (speech after an
eager end), ``EndOfTurn`` (the score above ``eot_threshold``, or ``eot_timeout_ms`` of silence:
``trigger`` model / timeout / manual / empty);
``Error`` before an error's close. Every message carries ``sequence_id`` (0, 1, 2, ...) and
``request_id``; a ``TurnInfo`` the turn's whole ``transcript`` so far and its ``words``
(punctuated and cased, as Flux's are, with confidence and times).

Flux scores the turn continuously; here the turn model is asked at each pause of
``MIN_ENDPOINTING_MS`` (Whisper transcribes whole utterances), so ``end_of_turn_confidence`` is
that pause's score and 0 while the speaker talks. docs/stt.md lists every parameter.
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from speech_common.driver import Close, Command, Send
from speech_common.ws import CloseCode, ProtocolError, describe_validation_error

from ..events import (
    Ended,
    EndOfTurn,
    Event,
    FinalFailed,
    Finalized,
    Output,
    SpeechConfirmed,
    SpeechStarted,
    Transcription,
    TurnEndLikely,
    TurnEndVoided,
)
from ..protocol import EventOptions
from ..schema import SessionConfig, StreamingParams, VadParams, WhisperParams
from ..turns import TurnOptions, trails_off
from .base import Codec
from .deepgram import (
    EOT_THRESHOLD,
    EOT_TIMEOUT_MS,
    ERRORS,
    IDLE_TIMEOUT_S,
    MIN_ENDPOINTING_MS,
    PARTIAL_INTERVAL_S,
    Transcoder,
    Word,
    _bool,
    _float,
    _int,
    _language,
    _words,
    control,
    invalid,
    prompt_for,
)

logger = logging.getLogger(__name__)

FLUX_PATH = "/v2/listen"  # what Flux's clients put at the end of their base URL
# EndOfTurn's trigger (an open enum) for a turn whose words came to nothing
EMPTY_TRIGGER = "empty"
MODEL_PREFIX = "flux"
ENGLISH_MODEL = "flux-general-en"
MULTILINGUAL_MODEL = "flux-general-multi"
# Flux's documented defaults and ranges (developers.deepgram.com, "Turn-based Audio (Flux)");
# eot_threshold 1.0 with eot_timeout_ms up to 30000 is its documented "own turn detection"
# mode (the model never ends a turn; ForceEndTurn or the timeout does).
DEFAULT_EOT_THRESHOLD = 0.7
DEFAULT_EOT_TIMEOUT_MS = 5000
FLUX_EOT_THRESHOLD = (EOT_THRESHOLD[0], 1.0)
FLUX_EOT_TIMEOUT_MS = (EOT_TIMEOUT_MS[0], 30_000)
EAGER_EOT_THRESHOLD = (0.3, 0.9)
ENCODINGS = ("linear16", "linear32", "mulaw", "alaw")  # Flux's raw encodings this server decodes
MAX_PROMPT_CHARS = 2000
QUERY_KEYS = frozenset(
    """model encoding sample_rate eot_threshold eager_eot_threshold eot_timeout_ms keyterm
    mip_opt_out tag language_hint numerals profanity_filter redact""".split()
)


def wants_flux(query: Iterable[tuple[str, str]]) -> bool:
    """Flux's clients name a flux model, or end their URL's path with /v2/listen (``_p``)."""
    for key, value in query:
        if key == "model" and value.strip().lower().startswith(MODEL_PREFIX):
            return True
        if key == "_p" and value.rstrip("/").endswith(FLUX_PATH):
            return True
    return False


@dataclass
class FluxOptions:
    model: str = "flux-general-en"
    language: str = "en"  # Whisper's code; "auto" for flux-general-multi
    language_hints: list[str] = field(default_factory=list)
    encoding: str = "linear16"
    sample_rate: int = 16000
    eot_threshold: float = DEFAULT_EOT_THRESHOLD
    eager_eot_threshold: float | None = None  # None: no EagerEndOfTurn / TurnResumed
    eot_timeout_ms: int = DEFAULT_EOT_TIMEOUT_MS
    keyterms: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # given, cannot change the result

    @property
    def turns(self) -> TurnOptions:
        return TurnOptions(threshold=self.eot_threshold, timeout_ms=self.eot_timeout_ms)


def parse_flux_query(query: Iterable[tuple[str, str]]) -> FluxOptions:
    """Flux's query parameters as options; raises ProtocolError (``invalid_query``) for a value
    Flux refuses or a feature this server cannot honour. Anything not Flux's is ignored."""
    o = FluxOptions()
    for key, value in query:
        if key == "model":
            o.model = value.strip().lower()
            if o.model not in (ENGLISH_MODEL, MULTILINGUAL_MODEL):
                raise invalid(f"model: {value!r} is not served here ({ENGLISH_MODEL}, "
                              f"{MULTILINGUAL_MODEL})")  # fmt: skip
            o.language = "auto" if o.model == MULTILINGUAL_MODEL else "en"
        elif key == "encoding":
            o.encoding = value.strip().lower()
        elif key == "sample_rate":
            o.sample_rate = _int(key, value, 1, 10**6)
        elif key == "eot_threshold":
            o.eot_threshold = _float(key, value, *FLUX_EOT_THRESHOLD)
        elif key == "eager_eot_threshold":
            o.eager_eot_threshold = _float(key, value, *EAGER_EOT_THRESHOLD)
        elif key == "eot_timeout_ms":
            o.eot_timeout_ms = _int(key, value, *FLUX_EOT_TIMEOUT_MS)
        elif key == "keyterm":
            o.keyterms += [value.strip()] if value.strip() else []
        elif key == "language_hint":
            o.language_hints += [_language(v)[0] for v in value.split(",") if v.strip()]
        elif key == "profanity_filter":
            if _bool(key, value):
                raise invalid("profanity_filter=true is not supported by this Whisper deployment")
        elif key == "redact":
            if value.strip().lower() != "false":
                raise invalid(f"redact={value} is not supported by this Whisper deployment")
        elif key in ("mip_opt_out", "tag", "numerals"):
            o.ignored.append(key)
        # anything else (``_p``, a token, an unknown key) is not Flux's: ignored
    if o.encoding not in ENCODINGS:
        raise ProtocolError(
            "unsupported_encoding",
            f"encoding {o.encoding!r} is not supported here; use one of {', '.join(ENCODINGS)}",
        )
    _check_eager(o.eager_eot_threshold, o.eot_threshold)
    o.keyterms = list(dict.fromkeys(o.keyterms))
    return o


def _check_eager(eager: float | None, eot: float) -> None:
    if eager is not None and eager > eot:
        raise invalid(f"eager_eot_threshold {eager} is above eot_threshold {eot}")


def _threshold(name: str, value: Any, low: float, high: float) -> float:
    """A Configure message's number (JSON: a bool is no number)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise invalid(f"{name}: expected a number, got {value!r}")
    return _float(name, str(value), low, high)


@dataclass
class _Turn:
    """The open turn, as the client has been told of it."""

    index: int = 0
    # The first utterance that can be in it: those before had their finals out when the turn
    # before ended, so an end the core decided for them is stale here.
    first_num: int = 0
    words: list[Word] = field(default_factory=list)  # its finals' words so far
    started: bool = False  # StartOfTurn went out
    # The utterance in whose pause an EagerEndOfTurn went out (None: none since the last
    # TurnResumed).
    eager_num: int | None = None
    start_s: float | None = None  # where its audio starts (the first utterance's offset)
    sent_words: list[Word] = field(default_factory=list)  # the words of the last TurnInfo
    sent_end_s: float = 0.0  # ... and its audio window's end
    languages: Counter[str] = field(default_factory=Counter)  # its finals' words per language

    @property
    def eager(self) -> bool:
        return self.eager_num is not None

    @property
    def sent(self) -> str:
        """The transcript of the last TurnInfo."""
        return _text(self.sent_words)


class FluxCodec(Codec):
    name = "flux"

    def __init__(
        self,
        core: Any,
        query: Iterable[tuple[str, str]],
        *,
        request_id: str | None = None,
    ) -> None:
        super().__init__(core)
        self.query = list(query)
        self.request_id = request_id or str(uuid.uuid4())
        self.options = FluxOptions()
        self._transcoder: Transcoder | None = None
        self._sequence = 0
        self._turn = _Turn()
        # Each ForceEndTurn whose finals have not all gone out: the newest utterance heard when
        # it came (it ends the turn that holds that utterance).
        self._forced: deque[int] = deque()
        self._last_final = -1  # the newest utterance whose final (or its failure) went out
        self._heard: SpeechConfirmed | None = None  # the newest utterance heard as speech
        self._partial_language: tuple[str, int] | None = None  # (language, words) being sent

    # -- decoding ------------------------------------------------------------------------------
    def start(self, now: float) -> list[Output]:
        self.options = o = parse_flux_query(self.query)
        if o.ignored:
            logger.info("flux parameters accepted without effect: %s", sorted(set(o.ignored)))
        self._transcoder = Transcoder(o.encoding, 1)
        try:
            config = SessionConfig(
                vad=VadParams(min_silence_duration_ms=MIN_ENDPOINTING_MS),
                streaming=StreamingParams(
                    encoding=self._transcoder.core_encoding,
                    sample_rate=o.sample_rate,
                    enable_partial_transcripts=True,
                    partial_transcript_interval_s=PARTIAL_INTERVAL_S,
                ),
                whisper=WhisperParams(
                    audio_language=o.language,
                    language_options=o.language_hints if o.language == "auto" else [],
                    prompt=prompt_for(o.keyterms)[:MAX_PROMPT_CHARS],
                    show_word_timestamps=True,
                ),
                shape="deepgram",
            )
        except ValidationError as exc:
            raise invalid(describe_validation_error(exc, "query", limit=3)) from None
        events = EventOptions(
            speech_started=True,  # TurnResumed as soon as the speaker goes on
            speech_confirmed=True,  # StartOfTurn as soon as there is speech to transcribe
            idle_timeout_s=IDLE_TIMEOUT_S,
            turns=o.turns,
            likely_turn_ends=True,  # EagerEndOfTurn early in the pause
        )
        configured = self.core.configure(config, events)  # may refuse: then no Connected
        return [Send(self._message("Connected")), *configured]

    def binary(self, data: bytes, now: float) -> list[Output]:
        if not data:
            return self.core.end_audio(now)
        return self.core.audio(self._transcoder.feed(data), now)

    def text(self, text: str, now: float) -> list[Output]:
        kind, message = control(text)
        if kind == "CloseStream":
            return self.core.end_audio(now)
        if kind == "ForceEndTurn":
            self._forced.append(self._heard_num)
            return self.core.finalize(now)
        if kind == "KeepAlive":
            return self.core.keep_alive(now)
        if kind == "Configure":
            return self._configure(message)
        raise ProtocolError(
            "invalid_message", f"unknown or malformed control message: {text[:200]}"
        )

    def _configure(self, message: dict[str, Any]) -> list[Output]:
        """Flux's mid-stream Configure: thresholds and key terms from now on; what cannot change
        here (language hints, profanity filtering) is a ConfigureFailure, nothing applied."""
        o = self.options
        try:
            thresholds, keyterms = self._configure_values(message)
        except ProtocolError as exc:
            return [Send(self._message("ConfigureFailure", code="INVALID_CONFIGURATION",
                                       description=exc.message))]  # fmt: skip
        o.eot_threshold, o.eager_eot_threshold, o.eot_timeout_ms = thresholds
        outputs = list(self.core.set_turn_options(o.turns))
        if keyterms is not None:
            o.keyterms = keyterms
            outputs += self.core.set_prompt(prompt_for(o.keyterms)[:MAX_PROMPT_CHARS])
        answer = self._message(
            "ConfigureSuccess",
            thresholds={"eot_threshold": o.eot_threshold,
                        "eager_eot_threshold": o.eager_eot_threshold,
                        "eot_timeout_ms": o.eot_timeout_ms},
            keyterms=o.keyterms,
        )  # fmt: skip
        return [*outputs, Send(answer)]

    def _configure_values(
        self, message: dict[str, Any]
    ) -> tuple[tuple[float, float | None, int], list[str] | None]:
        """(eot, eager, timeout) and key terms (None: unchanged) of a Configure message, checked
        as the query's are; raises ProtocolError for anything that cannot be applied."""
        o = self.options
        thresholds = message.get("thresholds") or {}
        if not isinstance(thresholds, dict):
            raise invalid("thresholds: expected an object")
        if message.get("language_hints") is not None:
            raise invalid("language_hints cannot be changed mid-stream here")
        if message.get("profanity_filter") is True:
            raise invalid("profanity_filter is not supported by this Whisper deployment")
        eot = thresholds.get("eot_threshold", o.eot_threshold)
        eot = _threshold("eot_threshold", eot, *FLUX_EOT_THRESHOLD)
        eager = thresholds.get("eager_eot_threshold", o.eager_eot_threshold)
        if eager is not None:
            eager = _threshold("eager_eot_threshold", eager, *EAGER_EOT_THRESHOLD)
        _check_eager(eager, eot)
        timeout = _threshold("eot_timeout_ms", thresholds.get("eot_timeout_ms", o.eot_timeout_ms),
                             *FLUX_EOT_TIMEOUT_MS)  # fmt: skip
        if timeout != int(timeout):
            raise invalid(f"eot_timeout_ms: expected whole milliseconds, got {timeout}")
        keyterms = message.get("keyterms")
        if isinstance(keyterms, str):  # the SDK types it str | list[str]
            keyterms = [keyterms]
        if keyterms is not None:
            if not (isinstance(keyterms, list) and all(isinstance(k, str) for k in keyterms)):
                raise invalid("keyterms: expected a string or a list of strings")
            keyterms = list(dict.fromkeys(k.strip() for k in keyterms if k.strip()))
        return (eot, eager, int(timeout)), keyterms

    # -- encoding ------------------------------------------------------------------------------
    def encode(self, event: Event, now: float) -> list[Command]:
        if isinstance(event, Transcription):
            return self._transcription(event)
        if isinstance(event, SpeechStarted):
            return self._resumed(event.timestamp_s)  # the speaker went on (after an eager end?)
        if isinstance(event, SpeechConfirmed):
            self._heard = event
            return self._start([], event.start_s, event.at_s)  # [] once the turn has started
        if isinstance(event, TurnEndLikely):
            return self._likely_end(event)
        if isinstance(event, TurnEndVoided):
            if self._turn.eager_num == event.num:  # went on within the pause it was sent in
                return self._resumed(self._turn.sent_end_s)
            return []
        if isinstance(event, EndOfTurn):
            if event.num < self._turn.first_num:
                return []  # the turn it ends already ended (ForceEndTurn got there first)
            return self._end_of_turn(event.reason, event.probability, event.speech_end_s)
        if isinstance(event, Finalized) and self._forced:
            # Every final this ForceEndTurn asked for went out: its turn is over, unless another
            # end (the model's, the timeout's, an earlier ForceEndTurn) got there first.
            if self._forced.popleft() < self._turn.first_num:
                return []
            return self._end_of_turn("manual", None, event.position_s)
        if isinstance(event, FinalFailed):
            self._last_final = max(self._last_final, event.num)
            return self._unheard_turn_end(event.num)
        if isinstance(event, Ended):
            return self._ended(event.error)
        return []  # UtteranceEnd, EndAudio, Health: no Flux frame

    def _transcription(self, event: Transcription) -> list[Command]:
        turn = self._turn
        if not event.is_final and event.num > self._last_final + 1:
            return []  # an earlier utterance's final is still out: its words come first
        if not event.is_final and turn.eager_num == event.num:
            return []  # a partial from before the pause its eager end was sent in
        heard = _words(event)
        words = turn.words + heard
        self._partial_language = None
        if event.is_final:
            self._last_final = max(self._last_final, event.num)
            turn.words = words
            if heard:
                turn.languages[event.result.language] += len(heard)
        elif heard:
            self._partial_language = (event.result.language, len(heard))
        if not words:
            return self._unheard_turn_end(event.num) if event.is_final else []
        end_s = event.offset_s + event.audio_s
        out = self._start(words, event.offset_s, end_s)  # the turn's first words
        changed = not out and _text(words) != turn.sent
        if changed and turn.eager:  # not what the eager end said
            turn.eager_num = None
            out.append(self._turn_info("TurnResumed", words, end_s))
        elif changed:
            out.append(self._turn_info("Update", words, end_s))
        if not event.is_final:
            return out
        p = event.turn_probability
        if event.end_of_turn is False and self._eager_due(p, event.result.text):
            turn.eager_num = event.num
            out.append(self._turn_info("EagerEndOfTurn", words, end_s, p))
        return out

    def _eager_due(self, probability: float | None, text: str) -> bool:
        """An eager end is asked for, not yet sent, and this score and text call for one."""
        eager = self.options.eager_eot_threshold
        return (
            eager is not None
            and not self._turn.eager  # said once per pause (early, or with the final)
            and probability is not None
            and probability >= eager
            and not trails_off(text)
        )

    def _likely_end(self, event: TurnEndLikely) -> list[Command]:
        """Early in a pause the speculative final and the turn score are in: an eager end now,
        if the score reaches ``eager_eot_threshold`` (above ``eot_threshold`` too: EndOfTurn
        follows with the same transcript when the pause lasts)."""
        turn = self._turn
        if not self._eager_due(event.probability, event.result.text):
            return []
        if event.num > self._last_final + 1:  # an earlier final is still out
            return []
        heard = _words(Transcription(event.num, True, event.result, event.audio_s, event.offset_s))
        words = turn.words + heard
        if not heard:
            return []
        end_s = event.offset_s + event.audio_s
        out = self._start(words, event.offset_s, end_s)
        turn.eager_num = event.num
        out.append(self._turn_info("EagerEndOfTurn", words, end_s, event.probability))
        return out

    def _start(self, words: list[Word], offset_s: float, end_s: float) -> list[Command]:
        """``StartOfTurn`` once per turn ([] after that), with ``words`` (the turn's: none yet when
        the VAD's confirmation starts it, which it always does before a transcript can)."""
        turn = self._turn
        if turn.start_s is None:
            turn.start_s = offset_s
        if turn.started:
            return []
        turn.started = True
        return [self._turn_info("StartOfTurn", words, end_s)]

    def _resumed(self, at_s: float) -> list[Command]:
        turn = self._turn
        if not turn.eager:
            return []
        turn.eager_num = None
        return [self._turn_info("TurnResumed", turn.sent_words, max(at_s, turn.sent_end_s))]

    def _unheard_turn_end(self, num: int) -> list[Command]:
        """A turn that started (StartOfTurn) and whose finals up to utterance ``num`` all came to
        nothing (no words, or failed), while no later utterance is being heard: the core never
        ends a turn without words, so it ends here, empty (LiveKit's END_OF_SPEECH with no
        final; pipecat's user aggregator drops an empty transcript). With a later utterance
        under way the turn stays open for its words."""
        if self._turn.started and not self._turn.words and self._heard_num <= num:
            return self._end_of_turn(EMPTY_TRIGGER, None, self._turn.sent_end_s)
        return []

    def _end_of_turn(self, trigger: str, probability: float | None, end_s: float) -> list[Command]:
        turn = self._turn
        self._partial_language = None  # the turn's languages are its finals'
        if not turn.started:
            return []  # the turn the core ended had no words the client saw (or was forced)
        out: list[Command] = []
        if turn.eager and _text(turn.words) != turn.sent:  # Flux: EndOfTurn repeats the eager
            out.append(self._turn_info("TurnResumed", turn.words, end_s))  # end, or resumes
        out.append(
            self._turn_info("EndOfTurn", turn.words, end_s, probability or 0.0, trigger=trigger)
        )
        self._turn = _Turn(index=turn.index + 1, first_num=self._last_final + 1)
        heard = self._heard
        if heard is not None and heard.num > self._last_final:  # the next turn is under way
            out.extend(self._start([], heard.start_s, max(heard.at_s, end_s)))
        return out

    @property
    def _heard_num(self) -> int:
        return -1 if self._heard is None else self._heard.num

    def _turn_info(
        self, event: str, words: list[Word], end_s: float, confidence: float = 0.0, **extra: Any
    ) -> Send:
        turn = self._turn
        turn.sent_words = list(words)
        turn.sent_end_s = max(end_s, turn.start_s or 0.0)
        return Send(
            self._message(
                "TurnInfo",
                event=event,
                turn_index=turn.index,
                audio_window_start=round(turn.start_s or 0.0, 3),
                audio_window_end=round(turn.sent_end_s, 3),
                transcript=turn.sent,
                words=[
                    {
                        "word": w.punctuated,
                        "confidence": round(w.confidence, 4),
                        "start": round(w.start, 3),
                        "end": round(w.end, 3),
                    }
                    for w in words
                ],  # fmt: skip
                end_of_turn_confidence=round(confidence, 4),
                **self._languages(),
                **extra,
            )
        )

    def _languages(self) -> dict[str, list[str]]:
        """flux-general-multi's ``languages``: the turn's (its finals' and the partial's being
        sent), most words first."""
        if self.options.model != MULTILINGUAL_MODEL:
            return {}
        counts = Counter(self._turn.languages)
        if self._partial_language is not None:
            counts[self._partial_language[0]] += self._partial_language[1]
        return {"languages": [lang for lang, _ in counts.most_common()]}

    def _message(self, kind: str, **fields: Any) -> dict[str, Any]:
        """A server message with Flux's envelope: ``sequence_id`` counts every message sent."""
        message = {"type": kind, "request_id": self.request_id, "sequence_id": self._sequence}
        self._sequence += 1
        return {**message, **fields}

    def _ended(self, error: ProtocolError | None) -> list[Command]:
        if error is None:
            return [Close(CloseCode.NORMAL)]
        code, close = ERRORS.get(error.error_type, (error.error_type.upper(), error.close_code))
        if error.error_type == "invalid_message":
            code = "UNPARSABLE_CLIENT_MESSAGE"
        message = self._message("Error", code=code, description=error.message)
        return [Send(message), Close(close, code)]

    def refusal(self, error: ProtocolError) -> list[Command]:
        return self._ended(error)


def _text(words: list[Word]) -> str:
    return " ".join(w.punctuated for w in words)
