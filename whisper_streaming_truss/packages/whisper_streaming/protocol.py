"""The streaming-Whisper session as a typed sans-I/O state machine (no sockets, no clocks, no
wire format).

A codec (``whisper_streaming.dialects``: Baseten's protocol, Deepgram's) decodes a client's frames
into the input methods (``configure``, ``audio``, ``end_audio``, ``finalize``, ``keep_alive``,
``health_check``, ``fail``); job results, timers and the client's disconnect come from the driver
(``speech_common.driver``, through ``whisper_streaming.codec_session``). What comes out is
``Output``s: the driver's ``Submit`` (VAD and Whisper jobs) and ``Cancel``, and the typed events of
``whisper_streaming.events``, which the codec encodes. Every protocol fact lives here: the
metadata deadline, an idle deadline where the dialect has one, partial/final ordering (finals in
utterance order, never a partial after its final), speculative finals, finalize and the end of
audio flush, speech-started / utterance-end events, the bound on audio waiting for the VAD.

Phases: METADATA -> STREAMING -> DRAINING (``end_audio`` received) -> DONE. A protocol error,
the end of the flush, or a disconnect ends it; ending cancels every job still outstanding.
"""

from __future__ import annotations

import functools
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any, Literal

import numpy as np

from speech_common.audio import Encoding
from speech_common.driver import Cancel, JobIds, Submit
from speech_common.vad import SAMPLE_RATE_HZ, WINDOW_SAMPLES, VadOptions
from speech_common.ws import CloseCode, ProtocolError

from . import metrics
from .engine import DecodeOptions, JobKind, TranscribeJob, Transcript
from .events import (
    EndAudio,
    Ended,
    EndOfTurn,
    FinalCause,
    FinalFailed,
    Finalized,
    Health,
    Output,
    SpeechConfirmed,
    SpeechStarted,
    Transcription,
    TurnEndLikely,
    TurnEndVoided,
    UtteranceEnd,
)
from .intake import AudioIntake
from .schema import SessionConfig
from .stability import LocalAgreement
from .turns import ScoreTurn, TurnEnded, TurnOptions, TurnTracker, trails_off
from .utterance import (
    Confirmed,
    Dropped,
    FinalRequest,
    PartialRequest,
    Request,
    SpeculationVoid,
    SpeculativeFinal,
    Started,
    TrackerOptions,
    UtteranceTracker,
)

logger = logging.getLogger(__name__)

VAD_WORKER = "vad"
WHISPER_WORKER = "whisper"
TURN_WORKER = "turn"
# Conditioning finals on the session's previous finals (``condition_on_previous_text``): the
# text kept is bounded (the engine then takes at most its last 64 tokens), and it is reset after
# a final that needed a hot fallback decode, as Whisper's ``prompt_reset_on_temperature``, so
# one bad final cannot start a loop that feeds itself.
CONTEXT_MAX_CHARS = 600
CONTEXT_RESET_TEMPERATURE = 0.5
# One audio frame: clients send 512 samples (1 KiB); 1 MiB is ~33 s of 16 kHz s16le.
MAX_AUDIO_FRAME_BYTES = 1 << 20
# A job's result goes to the part of the core that asked: handler(job_id, result, now).
Handler = Callable[[int, Any, float], list["Output"]]


class Phase(Enum):
    METADATA = "metadata"
    STREAMING = "streaming"
    DRAINING = "draining"
    DONE = "done"


@dataclass(frozen=True)
class CoreLimits:
    """A session core's limits. Its own defaults switch every extra off (pre-roll, post-roll,
    stream head, beam: what the unit tests build on); a deployment's values come from
    ``WhisperSettings``, their one home, through ``session.core_limits``."""

    first_frame_timeout_s: float = 30.0
    max_buffered_audio_s: float = 20.0  # audio received but not yet through the VAD
    speculative_finals: bool = True
    speculation_lead_ms: int = 150
    preroll_ms: int = 0  # audio given to Whisper before the VAD onset (at least the client's pad)
    postroll_ms: int = 0  # audio given to Whisper after the speech ends (at least the pad)
    stream_head_ms: int = 0  # a first onset this near the stream's start begins at the start
    pause_preroll_ms: int = 0  # audio before an onset that follows a long pause (VadOptions)
    pause_preroll_after_ms: int = 500  # ... at least this long
    whisper_beam_width: int = 1  # finals' beam when the session's metadata names none


@dataclass(frozen=True)
class EventOptions:
    """What a session asked for beyond transcripts (a codec sets it from its handshake)."""

    speech_started: bool = False  # a SpeechStarted event at each utterance's onset
    speech_confirmed: bool = False  # a SpeechConfirmed event when it has enough speech
    utterance_end_ms: int | None = None  # an UtteranceEnd after this much silence after words
    idle_timeout_s: float | None = None  # no frame at all for this long ends the session
    turns: TurnOptions | None = None  # end-of-turn detection (the Smart Turn worker)
    # With turns: TurnEndLikely early in each pause whose speculative final and turn score are
    # both in (Flux's EagerEndOfTurn), TurnEndVoided if the speaker goes on before its final.
    likely_turn_ends: bool = False


@dataclass
class _Pending:
    """One entry of the ordered output queue: a final (sent once its result is in) or a marker
    that goes out once every final before it did."""

    kind: Literal["final", "finished", "finalized", "utterance_end", "end_of_turn"]
    num: int = -1
    job_id: int | None = None
    audio_s: float = 0.0
    offset_s: float = 0.0
    speech_end_at: float = 0.0  # when the last speech audio of the utterance arrived
    cause: FinalCause = FinalCause.PAUSE
    flush: bool = False
    result: Any = None
    ready: bool = False
    position_s: float = 0.0  # a finalize marker: the audio it covered
    turn_ticket: int | None = None  # a final waiting for this turn score before it goes out
    turn_scored: bool = False  # the score is in (the verdict waits for the final's text)
    turn_probability: float | None = None  # its P(complete) (None: the score failed)
    end_of_turn: bool | None = None  # the turn score's verdict on this final
    turn: TurnEnded | None = None  # an end_of_turn marker: how the turn ended


@dataclass
class _SpeculativeFinal:
    """A final asked for ``speculation_lead_ms`` before the pause is long enough: if the pause
    lasts and the utterance's final asks for the same audio and promise, this job is that final."""

    num: int
    samples: int  # the audio it decodes
    offset_s: float
    job_id: int
    promised: str  # the stable words it was asked to keep
    result: Any = None  # its transcript, when it came back before the final was asked for
    done: bool = False
    announced: bool = False  # a TurnEndLikely went out for it


@dataclass
class _EarlyTurnScore:
    """A turn score asked for with the speculative final, 150 ms into the pause: the model hears
    the turn up to the end of its speech, so if the pause lasts the utterance's end asks about
    the same audio and takes this score instead of waiting for a new one."""

    audio: np.ndarray
    job_id: int = -1
    ticket: int | None = None  # the utterance end's ticket, once it took this score
    result: Any = None
    done: bool = False


class SttCore:
    def __init__(self, limits: CoreLimits, supported_languages: list[str]) -> None:
        self.limits = limits
        self.supported_languages = supported_languages
        self.phase = Phase.METADATA
        self.config: SessionConfig | None = None
        self.events = EventOptions()
        self._deadline: float | None = None  # the metadata deadline
        self._heard_at: float | None = None  # the client's last frame (idle deadline)
        self._ids = JobIds()
        # Each job submitted and not yet resolved, and the part of the core its result goes to.
        self._handlers: dict[int, Callable[[Any, float], list[Output]]] = {}
        # audio
        self._intake: AudioIntake | None = None  # decoding, the VAD's windows and state
        self._pushed = 0  # windows through the VAD
        # transcription
        self._tracker: UtteranceTracker | None = None
        self._decode: DecodeOptions | None = None
        self._partial_seq = 0
        self._last_partial_sent: dict[int, int] = {}  # num -> seq of the newest partial sent
        self._stability: dict[int, LocalAgreement] = {}  # num -> its stable prefix (opt-in)
        self._finalised: set[int] = set()
        self._spec: _SpeculativeFinal | None = None
        self._queue: deque[_Pending] = deque()
        self._context = ""  # previous finals' text, for conditioning (bounded: CONTEXT_MAX_CHARS)
        self._flushed = False
        # finalize and utterance-end bookkeeping
        self._finalize_at: deque[int] = deque()  # windows each pending finalize covers
        self._finalize_answered = False  # a finalize's final went out since the last marker
        self._last_speech_end_s: float | None = None  # armed: the utterance end to wait for
        self._words_since_end = False  # a final with words went out since the last UtteranceEnd
        self._last_final: tuple[int, float] = (-1, 0.0)  # (num, end of its last word)
        # end of turn (opt-in)
        self._turns: TurnTracker | None = None
        self._words_in_turn = False  # a final with words went out since the last EndOfTurn
        self._early_turn: _EarlyTurnScore | None = None  # asked with the speculative final

    # -- the driver's side -------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self.phase is Phase.DONE

    @property
    def next_deadline(self) -> float | None:
        if self.phase is Phase.METADATA:
            return self._deadline
        idle = self.events.idle_timeout_s
        if self.phase is Phase.STREAMING and idle is not None and self._heard_at is not None:
            return self._heard_at + idle
        return None

    @property
    def outstanding_jobs(self) -> frozenset[int]:
        return frozenset(self._handlers)

    def start(self, now: float) -> list[Output]:
        self._deadline = now + self.limits.first_frame_timeout_s
        return []

    def heard(self, now: float) -> None:
        """A frame came from the client (any frame: the idle deadline starts again)."""
        self._heard_at = now

    def on_timer(self, now: float) -> list[Output]:
        if self.phase is Phase.METADATA and self._deadline is not None and now >= self._deadline:
            return self.fail(ProtocolError("metadata_timeout", "no metadata frame received"))
        deadline = self.next_deadline
        if self.phase is Phase.STREAMING and deadline is not None and now >= deadline:
            return self.fail(
                ProtocolError(
                    "idle_timeout",
                    f"no audio or control frame for {self.events.idle_timeout_s:g} s",
                    CloseCode.INTERNAL_ERROR,
                )
            )
        return []

    def on_disconnect(self, now: float) -> list[Output]:
        if self.done:
            return []
        return self._end()

    def on_sent(self, ack: Any, now: float) -> list[Output]:
        return []  # nothing here waits for the client to have read a message

    def on_result(self, job_id: int, result: Any, now: float) -> list[Output]:
        handler = None if self.done else self._handlers.pop(job_id, None)
        return [] if handler is None else handler(result, now)  # a cancelled job: nothing

    # -- the codec's side: a client's requests ------------------------------------------------------
    def configure(self, config: SessionConfig, events: EventOptions | None = None) -> list[Output]:
        """The session's settings (Baseten's metadata frame, Deepgram's query string). Raises
        ``ProtocolError`` for an encoding or language this deployment cannot serve."""
        if self.phase is not Phase.METADATA:
            raise ProtocolError("invalid_message", "the session is already configured")
        if config.streaming.encoding not in {e.value for e in Encoding}:
            raise ProtocolError(
                "unsupported_encoding",
                f"encoding {config.streaming.encoding!r} is not supported; use one of "
                f"{sorted(e.value for e in Encoding)}",
                CloseCode.UNSUPPORTED_DATA,
            )
        lang = config.whisper.audio_language
        for code in ([lang] if lang != "auto" else []) + list(config.whisper.language_options):
            if code not in self.supported_languages:
                raise ProtocolError(
                    "unsupported_language",
                    f"language {code!r} is not supported by this model",
                    CloseCode.UNSUPPORTED_DATA,
                )
        self.events = events or EventOptions()
        self._configure(config)
        if self.events.turns is not None:
            self._turns = TurnTracker(self.events.turns)
        return []

    def audio(self, data: bytes, now: float) -> list[Output]:
        """A frame of audio in the session's encoding (any size; a frame may split a sample)."""
        if self.phase is Phase.METADATA:
            raise ProtocolError(
                "audio_before_metadata", "the first frame must be the JSON metadata, not audio"
            )
        if self.phase is not Phase.STREAMING:
            return []  # audio after end_audio is ignored
        if len(data) > MAX_AUDIO_FRAME_BYTES:
            raise ProtocolError(
                "frame_too_large",
                f"audio frames are limited to {MAX_AUDIO_FRAME_BYTES} bytes",
                CloseCode.MESSAGE_TOO_BIG,
            )
        self._received(lambda: self._intake.feed(data, now))
        if self._intake.backlog_s > self.limits.max_buffered_audio_s:
            return self.fail(
                ProtocolError(
                    "overloaded", "server cannot keep up with the audio", CloseCode.TRY_AGAIN_LATER
                )
            )
        return self._submit_vad(now)

    def health_check(self) -> list[Output]:
        return [Health(True)]

    def keep_alive(self, now: float) -> list[Output]:
        return []  # the frame itself was the point (``heard``)

    def set_prompt(self, prompt: str) -> list[Output]:
        """Replace the session's prompt (key terms) for every job from now on."""
        if self._decode is not None:
            self._decode = replace(self._decode, prompt=prompt)
        return []

    def set_turn_options(self, options: TurnOptions) -> list[Output]:
        """New end-of-turn threshold and timeout from now on (a session that asked for end of
        turn; the turn already open keeps its start and its pending score)."""
        if self._turns is not None:
            self._turns.reconfigure(options)
            self.events = replace(self.events, turns=options)
        return []

    def end_audio(self, now: float) -> list[Output]:
        """No more audio: flush, send every final, then ``finished`` and the end."""
        if self.phase is not Phase.STREAMING:
            return []  # a second end_audio changes nothing
        self.phase = Phase.DRAINING
        self._finalize_at.clear()  # the flush covers them; their markers come from the flush
        self._received(lambda: self._intake.flush(now))
        return [EndAudio("acknowledged"), *self._submit_vad(now)]

    def finalize(self, now: float) -> list[Output]:
        """End the open utterance at the audio received so far (once the VAD has seen it): its
        final comes as a ``FinalCause.FINALIZE`` one, then ``Finalized``; the session goes on."""
        if self.phase is not Phase.STREAMING:
            return []  # after end_audio the flush finalizes everything anyway
        self._finalize_at.append(self._intake.received // WINDOW_SAMPLES)
        return self._finalize_due(now)

    def fail(self, error: ProtocolError) -> list[Output]:
        """End the session with ``error`` (its frame and close code, as the codec writes them)."""
        if self.done:
            return []
        metrics.SESSION_ERRORS.labels(error.error_type).inc()
        logger.info("session error %s (%s)", error.error_type, error.message)
        return self._end(Ended(error))

    # -- configuration ------------------------------------------------------------------------------
    def _configure(self, config: SessionConfig) -> None:
        s = config.streaming
        self.config = config
        self._intake = AudioIntake(Encoding(s.encoding), s.sample_rate)
        vad_options = VadOptions(
            threshold=config.vad.threshold,
            min_silence_duration_ms=config.vad.min_silence_duration_ms,
            speech_pad_ms=config.vad.speech_pad_ms,
            max_utterance_s=s.final_transcript_max_duration_s,
            preroll_ms=self.limits.preroll_ms,
            postroll_ms=self.limits.postroll_ms,
            stream_head_ms=self.limits.stream_head_ms,
            pause_preroll_ms=self.limits.pause_preroll_ms,
            pause_preroll_after_ms=self.limits.pause_preroll_after_ms,
        )
        speculate = None
        if self.limits.speculative_finals:
            # Not before the final's trailing audio is in: the speculation must hold what the
            # final will hold.
            speculate = max(
                config.vad.speech_pad_ms,
                self.limits.postroll_ms,
                config.vad.min_silence_duration_ms - self.limits.speculation_lead_ms,
            )
        self._tracker = UtteranceTracker(
            TrackerOptions(
                vad_options,
                s.enable_partial_transcripts,
                s.partial_transcript_interval_s,
                speculate,
            )
        )
        w = config.whisper
        self._decode = DecodeOptions(
            language=None if w.audio_language == "auto" else w.audio_language,
            prompt=w.prompt,
            word_timestamps=w.show_word_timestamps,
            beam_size=w.beam_width or self.limits.whisper_beam_width,
            length_penalty=w.length_penalty,
            repetition_penalty=w.repetition_penalty,
            no_repeat_ngram_size=w.no_repeat_ngram_size,
            language_options=tuple(w.language_options),
            language_detection_only=w.language_detection_only,
        )
        self.phase = Phase.STREAMING

    # -- audio -> VAD ----------------------------------------------------------------------------
    def _received(self, take_audio: Callable[[], None]) -> None:
        before = self._intake.received
        take_audio()
        metrics.AUDIO_SECONDS.inc((self._intake.received - before) / SAMPLE_RATE_HZ)

    def _submit(self, worker: str, payload: Any, handler: Handler, **options: Any) -> Submit:
        """A job, and the part of the core its result goes to (``handler(job_id, result,
        now)``, unless the job is cancelled first)."""
        job_id = self._ids.new()
        self._handlers[job_id] = lambda result, now: handler(job_id, result, now)
        return Submit(job_id, worker, payload, **options)

    def _submit_vad(self, now: float) -> list[Output]:
        """One VAD job in flight per session (its recurrent state travels with it)."""
        job = self._intake.next_job()
        if job is None:
            return [] if self._intake.job_in_flight else self._maybe_flush(now)
        return [self._submit(VAD_WORKER, job, self._on_vad)]

    def _on_vad(self, job_id: int, result: Any, now: float) -> list[Output]:
        if isinstance(result, BaseException):
            self._intake.job_lost()
            logger.warning("VAD job failed: %r", result)
            return self.fail(
                ProtocolError(
                    "internal_error", "voice activity detection failed", CloseCode.INTERNAL_ERROR
                )
            )
        windows = self._intake.job_done(result)  # the stream's state is back
        outputs: list[Output] = []
        for window, prob in zip(windows, result.probabilities, strict=True):
            if self._turns is not None:
                for ended in self._turns.push(window):
                    outputs.extend(self._turn_ended(ended, now))
            for request in self._tracker.push(window, float(prob)):
                outputs.extend(self._dispatch(request, now))
            self._pushed += 1
            outputs.extend(self._utterance_end_due(now))
            outputs.extend(self._finalize_due(now))
        return outputs + self._submit_vad(now)

    def _maybe_flush(self, now: float) -> list[Output]:
        """After end_audio, once every window went through the VAD: close the open utterance."""
        if self.phase is not Phase.DRAINING or self._flushed or not self._intake.drained:
            return []
        self._flushed = True
        outputs: list[Output] = []
        for request in self._tracker.flush():
            outputs.extend(self._dispatch(request, now, FinalCause.FLUSH))
        finals = [p for p in self._queue if p.kind == "final"]
        if finals:
            finals[-1].flush = True
        self._queue.append(_Pending("finished", ready=True))
        return outputs + self._emit(now)

    def _finalize_due(self, now: float) -> list[Output]:
        """Cut the open utterance for each finalize whose audio has all been through the VAD."""
        outputs: list[Output] = []
        while self._finalize_at and self._finalize_at[0] <= self._pushed:
            self._finalize_at.popleft()
            for request in self._tracker.flush():
                outputs.extend(self._dispatch(request, now, FinalCause.FINALIZE))
            position = self._tracker.segmenter.position_s
            self._queue.append(_Pending("finalized", ready=True, position_s=position))
            outputs.extend(self._emit(now))
        return outputs

    def _utterance_end_due(self, now: float) -> list[Output]:
        """Queue an UtteranceEnd once ``utterance_end_ms`` of non-speech followed the last
        utterance (measured in audio, as the VAD saw it)."""
        end_ms = self.events.utterance_end_ms
        if end_ms is None or self._last_speech_end_s is None or self._tracker.segmenter.in_speech:
            return []
        if (self._tracker.segmenter.position_s - self._last_speech_end_s) * 1000 < end_ms:
            return []
        self._last_speech_end_s = None
        self._queue.append(_Pending("utterance_end", ready=True))
        return self._emit(now)

    # -- transcription requests ------------------------------------------------------------------
    def _submit_transcribe(
        self, kind: JobKind, audio: np.ndarray, offset_s: float, handler: Handler, prefix: str = ""
    ) -> Submit:
        options = self._decode
        if kind is JobKind.FINAL and self.config.whisper.condition_on_previous_text:
            options = replace(options, context=self._context)
        if prefix:
            options = replace(options, prefix=prefix)
        job = TranscribeJob(kind, audio, options, offset_s)
        replace_key = "partial" if kind is JobKind.PARTIAL else None
        return self._submit(
            WHISPER_WORKER, job, handler, priority=int(kind), replace_key=replace_key
        )

    def _cancel(self, job_id: int) -> Cancel:
        self._handlers.pop(job_id, None)
        return Cancel(job_id)

    def _dispatch(
        self, request: Request, now: float, cause: FinalCause | None = None
    ) -> list[Output]:
        if isinstance(request, Started):
            outputs: list[Output] = []
            if self._turns is not None:
                self._turns.speech_started(request.start_s)
                outputs.extend(self._release_turn_waits(now))  # the speaker went on
            if self.events.speech_started:
                outputs.append(SpeechStarted(request.num, round(request.start_s, 3)))
            return outputs
        if isinstance(request, Confirmed):
            if not self.events.speech_confirmed:
                return []
            return [SpeechConfirmed(request.num, round(request.start_s, 3), round(request.at_s, 3))]
        if isinstance(request, PartialRequest):
            self._partial_seq += 1
            asked = (request.num, self._partial_seq, len(request.audio), request.offset_s)
            handler = functools.partial(self._on_partial, asked)
            return [
                self._submit_transcribe(JobKind.PARTIAL, request.audio, request.offset_s, handler)
            ]
        if isinstance(request, SpeculativeFinal):
            outputs: list[Output] = []
            if self._spec is not None:
                outputs.extend(self._void_likely_turn_end())
                outputs.append(self._cancel(self._spec.job_id))
            promised = self._promised(request.num)
            submit = self._submit_transcribe(
                JobKind.FINAL, request.audio, request.offset_s, self._on_transcript, promised
            )
            self._spec = _SpeculativeFinal(
                request.num, len(request.audio), request.offset_s, submit.job_id, promised
            )
            return [*outputs, submit, *self._ask_early_turn_score(request.speech_end_s)]
        if isinstance(request, FinalRequest):
            if cause is None:
                cause = FinalCause.FORCED if request.forced else FinalCause.PAUSE
            return self._on_final_request(request, now, cause)
        if isinstance(request, (Dropped, SpeculationVoid)):
            if isinstance(request, Dropped) and self._turns is not None:
                self._turns.speech_dropped(continuation=request.continuation)
            outputs = self._void_likely_turn_end()
            outputs += self._drop_early_turn_score()
            if self._spec is not None and self._spec.num == request.num:
                outputs.append(self._cancel(self._spec.job_id))
                self._spec = None
            return outputs
        return []

    def _on_final_request(
        self, request: FinalRequest, now: float, cause: FinalCause
    ) -> list[Output]:
        outputs: list[Output] = []
        final = _Pending(
            "final",
            request.num,
            None,
            len(request.audio) / SAMPLE_RATE_HZ,
            request.offset_s,
            self._intake.arrival_of(round(request.speech_end_s * SAMPLE_RATE_HZ), now),
            cause,
        )
        promised = self._promised(request.num)
        spec, self._spec = self._spec, None
        if spec is not None:
            # The pause lasted: the speculative final is the final (it was asked to keep the
            # words promised then, and partials promise nothing more while it runs).
            if (spec.num, spec.samples, spec.promised) == (
                request.num,
                len(request.audio),
                promised,
            ):
                final.job_id = spec.job_id
                final.result, final.ready = spec.result, spec.done
            else:
                if spec.announced:  # what it announced will not be this final
                    outputs.append(TurnEndVoided(spec.num))
                outputs.append(self._cancel(spec.job_id))
        if final.job_id is None:
            submit = self._submit_transcribe(
                JobKind.FINAL, request.audio, request.offset_s, self._on_transcript, promised
            )
            final.job_id = submit.job_id
            outputs.append(submit)
        early_result = None
        if self._turns is not None and cause is FinalCause.PAUSE:
            score = self._turns.utterance_ended(request.speech_end_s)
            early, self._early_turn = self._early_turn, None
            if score is not None:
                final.turn_ticket = score.ticket
                if early is not None and np.array_equal(early.audio, score.audio):
                    early.ticket = score.ticket  # the pause lasted: its score is this one's
                    early_result = (early.job_id, early.result) if early.done else None
                else:
                    if early is not None and not early.done:
                        outputs.append(self._cancel(early.job_id))
                    outputs.append(self._submit_turn_score(score))
        else:
            outputs.extend(self._drop_early_turn_score())
            if self._turns is not None and cause is FinalCause.FINALIZE:
                self._turns.utterance_cut(request.speech_end_s)  # the timeout still ends it
            if self._turns is not None and cause is FinalCause.FORCED:
                self._turns.speech_forced(request.speech_end_s)  # speech goes on: no verdict
        self._finalised.add(request.num)
        self._stability.pop(request.num, None)
        self._queue.append(final)
        if not request.forced:  # speech goes on after a forced cut: no utterance end yet
            self._last_speech_end_s = request.speech_end_s
        if early_result is not None:
            outputs.extend(self._on_turn_score(final.turn_ticket, *early_result, now))
        return outputs + self._emit(now)

    def _promised(self, num: int) -> str:
        """The words the utterance's stable partials promised (``stable_partials``): its final
        keeps them (``WhisperEngine`` decodes it again with them forced if it would not)."""
        agreement = self._stability.get(num)
        return " ".join(agreement.words) if agreement is not None else ""

    # -- end of turn ---------------------------------------------------------------------------------
    def _submit_turn_score(self, score: ScoreTurn) -> Submit:
        handler = functools.partial(self._on_turn_score, score.ticket)
        return self._submit(TURN_WORKER, score.audio, handler)

    def _ask_early_turn_score(self, speech_end_s: float) -> list[Output]:
        outputs = self._drop_early_turn_score()
        audio = self._turns.peek(speech_end_s) if self._turns is not None else None
        if audio is None:
            return outputs
        early = _EarlyTurnScore(audio)
        submit = self._submit(TURN_WORKER, audio, functools.partial(self._on_early_turn, early))
        early.job_id = submit.job_id
        self._early_turn = early
        return [*outputs, submit]

    def _drop_early_turn_score(self) -> list[Output]:
        early, self._early_turn = self._early_turn, None
        return [self._cancel(early.job_id)] if early is not None and not early.done else []

    def _on_early_turn(
        self, early: _EarlyTurnScore, job_id: int, result: Any, now: float
    ) -> list[Output]:
        if early.ticket is not None:  # its utterance ended and waits for it
            return self._on_turn_score(early.ticket, job_id, result, now)
        early.result, early.done = result, True  # kept until the utterance ends (or not)
        return self._likely_turn_end()

    def _on_turn_score(self, ticket: int, job_id: int, result: Any, now: float) -> list[Output]:
        probability = None
        if isinstance(result, BaseException):
            logger.warning("turn score failed: %r", result)  # the timeout still ends the turn
        else:
            probability = float(result)
        final = next((item for item in self._queue if item.turn_ticket == ticket), None)
        if final is None:
            return []  # the speaker went on before the score came back: void
        final.turn_scored, final.turn_probability = True, probability
        if probability is not None:
            self._turns.heard(ticket, probability)
        return self._turn_verdict(final, now) if final.ready else []

    def _turn_verdict(self, final: _Pending, now: float) -> list[Output]:
        """The turn score and the final's text are both in: did this utterance end the turn?"""
        ticket, final.turn_ticket = final.turn_ticket, None
        ended = None
        if final.turn_probability is not None:
            text = "" if isinstance(final.result, BaseException) else final.result.text
            ended = self._turns.scored(ticket, final.turn_probability, trails_off(text))
        final.end_of_turn = ended is not None
        return self._turn_ended(ended, now) if ended is not None else self._emit(now)

    def _release_turn_waits(self, now: float) -> list[Output]:
        """Speech resumed: a final still waiting for its turn score did not end the turn."""
        waiting = [item for item in self._queue if item.turn_ticket is not None]
        for item in waiting:
            item.turn_ticket, item.end_of_turn, item.turn_probability = None, False, None
        return self._emit(now) if waiting else []

    def _turn_ended(self, ended: TurnEnded, now: float) -> list[Output]:
        marker = _Pending("end_of_turn", ready=True, turn=ended)
        if self._queue and self._queue[-1].kind == "finished":  # before the end_audio flush's end
            self._queue.insert(len(self._queue) - 1, marker)
        else:
            self._queue.append(marker)
        return self._emit(now)

    # -- results -----------------------------------------------------------------------------------
    def _on_partial(
        self, asked: tuple[int, int, int, float], job_id: int, result: Any, now: float
    ) -> list[Output]:
        num, seq, samples, offset_s = asked  # utterance, partial seq, samples, stream offset
        if isinstance(result, BaseException):
            return []  # a failed, superseded or shed partial is dropped silently
        if num in self._finalised or seq <= self._last_partial_sent.get(num, 0):
            return []  # stale: the final (or a newer partial) got there first
        if not result.text:
            return []  # nothing recognised yet (or only a dropped hallucination)
        self._last_partial_sent[num] = seq
        metrics.PARTIALS_SENT.inc()
        stable = None
        if self.config.streaming.stable_partials:
            probs = [s.avg_logprob for s in result.segments if s.avg_logprob is not None]
            agreement = self._stability.setdefault(num, LocalAgreement())
            if self._spec is not None and self._spec.num == num:
                # The pause began and the final is being decoded to keep the words promised so
                # far: a partial back now promises nothing more, or that final would have to be
                # decoded again (latency) when the pause lasts.
                stable = agreement.words
            else:
                stable = agreement.update(result.text, min(probs) if probs else None)
        audio_s = samples / SAMPLE_RATE_HZ
        return [Transcription(num, False, result, audio_s, offset_s, stable=stable)]

    def _on_transcript(self, job_id: int, result: Any, now: float) -> list[Output]:
        for final in self._queue:
            if final.kind == "final" and final.job_id == job_id:
                final.result, final.ready = result, True
                if final.turn_ticket is not None and final.turn_scored:
                    return self._turn_verdict(final, now)
                return self._emit(now)
        if self._spec is not None and self._spec.job_id == job_id:
            self._spec.result, self._spec.done = result, True  # its FinalRequest may still come
            return self._likely_turn_end()
        return []

    def _likely_turn_end(self) -> list[Output]:
        """The speculative final and the early turn score of the same pause are both in: say
        what the turn's end will most likely be (once per speculative final; when asked)."""
        spec, early = self._spec, self._early_turn
        if (
            not self.events.likely_turn_ends
            or spec is None
            or early is None
            or not (spec.done and early.done)
            or spec.announced
            or isinstance(spec.result, BaseException)
            or isinstance(early.result, BaseException)
        ):
            return []
        spec.announced = True
        audio_s = spec.samples / SAMPLE_RATE_HZ
        return [TurnEndLikely(spec.num, spec.result, audio_s, spec.offset_s, float(early.result))]

    def _void_likely_turn_end(self) -> list[Output]:
        """The speculative final is given up (the speaker went on): so is what it announced."""
        if self._spec is not None and self._spec.announced:
            return [TurnEndVoided(self._spec.num)]
        return []

    def _emit(self, now: float) -> list[Output]:
        """Send finals (and the markers between them) in order, as far as results are in."""
        outputs: list[Output] = []
        while self._queue and self._queue[0].ready and self._queue[0].turn_ticket is None:
            item = self._queue.popleft()
            if item.kind == "finished":  # everything before end_audio went out
                outputs.append(EndAudio("finished"))
                outputs.extend(self._end(Ended()))
                return outputs
            if item.kind == "finalized":
                outputs.append(Finalized(self._finalize_answered, round(item.position_s, 3)))
                self._finalize_answered = False
                continue
            if item.kind == "utterance_end":
                if self._words_since_end:
                    self._words_since_end = False
                    outputs.append(UtteranceEnd(*self._last_final))
                continue
            if item.kind == "end_of_turn":
                if self._words_in_turn:  # a turn of noise or dropped finals ends silently
                    self._words_in_turn = False
                    t = item.turn
                    outputs.append(
                        EndOfTurn(self._last_final[0], round(t.speech_end_s, 3), t.reason,
                                  None if t.probability is None else round(t.probability, 3))
                    )  # fmt: skip
                continue
            if item.cause is FinalCause.FINALIZE:
                self._finalize_answered = True
            if isinstance(item.result, BaseException):
                logger.warning("final %d failed: %r", item.num, item.result)
                outputs.append(FinalFailed(item.num))
                continue
            outputs.append(
                Transcription(
                    item.num,
                    True,
                    item.result,
                    item.audio_s,
                    item.offset_s,
                    item.cause,
                    item.flush,
                    end_of_turn=item.end_of_turn,
                    turn_probability=item.turn_probability
                    if item.end_of_turn is not None
                    else None,
                )  # fmt: skip
            )
            self._remember(item.result, item.num)
            metrics.FINALS_SENT.inc()
            metrics.FINAL_LATENCY.observe(max(now - item.speech_end_at, 0.0))
        return outputs

    def _remember(self, transcript: Transcript, num: int) -> None:
        if transcript.temperature > CONTEXT_RESET_TEMPERATURE:
            self._context = ""
        elif transcript.text:
            self._context = f"{self._context} {transcript.text}".strip()[-CONTEXT_MAX_CHARS:]
        if transcript.text:
            self._words_since_end = True
            self._words_in_turn = True
            ends = [w.end for s in transcript.segments for w in s.words]
            last = ends[-1] if ends else transcript.segments[-1].end
            self._last_final = (num, round(float(last), 3))

    # -- endings -----------------------------------------------------------------------------------
    def _end(self, ended: Ended | None = None) -> list[Output]:
        """Cancel everything outstanding; the session is over."""
        outputs: list[Output] = [Cancel(job_id) for job_id in sorted(self._handlers)]
        self._handlers.clear()
        self._spec = None
        self.phase = Phase.DONE
        return outputs + ([ended] if ended is not None else [])
