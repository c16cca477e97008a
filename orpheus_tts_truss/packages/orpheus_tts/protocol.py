"""The TTS session's core as a typed, sans-I/O state machine (no sockets, no clocks, no engine,
no wire format).

Inputs are method calls, made by a codec at the edge (``orpheus_tts.dialects``) that decodes a
vendor's frames: ``configure`` (a validated ``SessionConfig``), ``append`` (text), ``flush``,
``clear`` (barge-in), ``update`` (voice or sampling for the text after it), ``end``. Outputs
are ``orpheus_tts.events``: typed events, which the codec encodes as the vendor's frames, and
the driver's job commands (``StartStream`` per chunk of text, ``Submit`` per alignment,
``Cancel``, ``Discard``). The driver (``speech_common.driver``, through
``orpheus_tts.codec_session``) feeds back generation chunks, send acknowledgements, timers and
the client's disconnect.

Generations (each a streaming job) are started in text order while the client is still typing:
at most ``1 + lookahead_generations`` are *alive* (started, not yet fully written to the client)
and at most ``engine_generations`` are *running* in the engine. Audio of a generation that is
not the oldest alive one waits here until its turn, so the client hears the text in order. A
generation is its own handle: its job id and its audio's ack are the ``_Generation`` itself, so
its chunks and acknowledgements come back to it (an alignment likewise: ``_Alignment``).

Phases: CONFIG -> TEXT -> FLUSHING (``end``) -> DONE. An input refused with a recoverable error
is ``Rejected`` and the session goes on; any other refusal ends it with ``Ended(error)`` (1008
for bad input), a failed generation with ``engine_error`` (1011), the last audio after ``end``
with ``Ended()``, a disconnect with nothing; every ending cancels the generations still alive.

Audio leaves through the session's ``AudioEncoder`` (a pass-through for the published format).
Everything that must reach the client in order after audio (the audio itself, a turn's codec
tail, ``AudioStart``/``AudioDone``/``FlushDone``/``SessionDone``, the end) goes through one
*line*, ``orpheus_tts.playout.Playout``, which owns the encoder and the audio timeline: with PCM
or WAV it is encoded and emitted at once, as it comes; an FFmpeg codec
(``AudioEncoder.offloaded``) never runs here: the line's items are handed, with the encoder
itself, to one encode job (the core submits it to ``ENCODE_WORKER``) and come out when its
result hands the encoder back.
``flush`` cuts a turn (``FlushDone`` follows the turn's last audio, and each turn of a codec
format is a whole stream); ``clear`` aborts everything not yet heard (the engine requests, and
the audio still queued for the client: ``Discard``) and answers ``Cleared``; ``end`` finishes
with ``SessionDone``. Every event is emitted; which ones reach the client is the codec's choice.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import deque
from collections.abc import Callable, Collection, Hashable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from orpheus_tts import metrics
from orpheus_tts.alignment import ALIGN_WORKER, AlignRequest
from orpheus_tts.audio_format import ENCODE_WORKER, AudioEncoder, EncoderOp
from orpheus_tts.events import Audio, Ended, Event, Output, Rejected
from orpheus_tts.playout import (
    END,
    Chunk,
    EncodeBatch,
    EndOfLine,
    LineItem,
    Playout,
    Ready,
)
from orpheus_tts.schema import (
    END_OF_INPUT,
    AudioDone,
    AudioStart,
    Cleared,
    FlushDone,
    SessionConfig,
    SessionCreated,
    SessionDone,
    UpdateMessage,
    WordOut,
    WordTimestamps,
    check_voice,
)
from speech_common.driver import Cancel, Discard, StartStream, StreamChunk, StreamDone, Submit
from speech_common.text_buffer import TextBuffer
from speech_common.ws import CloseCode, ProtocolError

logger = logging.getLogger(__name__)

GENERATION_WORKER = "orpheus"
MessageId = str | int | None  # a flush's or a clear's id, echoed in its answer


class Phase(Enum):
    CONFIG = "config"
    TEXT = "text"
    FLUSHING = "flushing"
    DONE = "done"


@dataclass(frozen=True)
class GenerationRequest:
    """The payload of one generation's streaming job."""

    text: str
    voice: str
    params: Any
    request_id: str


@dataclass(frozen=True)
class _Voice:
    """What a chunk of text is spoken with (``update`` changes it for the text after it)."""

    voice: str
    max_tokens: int
    sampling: tuple[tuple[str, float], ...]  # the client's sampling overrides


@dataclass
class _Chunk:
    text: str
    ready_at: float  # when its text's last word arrived
    voice: _Voice
    after: list[Event] = field(default_factory=list)  # events due once its audio is all sent


# eq=False: a handle is hashed and compared by identity (the driver keys its jobs by it).
@dataclass(eq=False, repr=False)
class _Generation:
    request_id: str
    number: int  # 1, 2, ... in the session
    chunk: _Chunk
    running: bool = True  # still producing audio in the engine
    pending: deque[bytes] = field(default_factory=deque)  # audio waiting for its turn
    encoding: int = 0  # chunks in the playout line (to the encoder), not yet out of it
    unacked: int = 0  # chunks sent, not yet written to the socket
    start_s: float | None = None  # on the session's audio timeline, once its audio began
    pcm: bytearray | None = None  # its audio, kept for the aligner (word timestamps only)
    alignment: _Alignment | None = None  # the aligner's job, once generated
    words: list[WordOut] | None = None  # the aligner's answer

    def __repr__(self) -> str:  # names the driver's task; the fields are too big to print
        return f"<generation {self.request_id}>"


@dataclass(frozen=True, eq=False)
class _Alignment:
    generation: _Generation


def _cleared(item: LineItem, generations: set[int]) -> bool:
    """One of the cleared generations' chunks, or its audio_start."""
    if isinstance(item, Chunk):
        return item.owner.number in generations
    return isinstance(item, AudioStart) and item.generation in generations


class TtsCore:
    def __init__(
        self,
        limits: Any,  # orpheus_tts.settings.SessionLimits
        voices: Collection[str],
        default_voice: str,
        default_params: Any,
        max_tokens_for_text: Callable[[str, int], int],
        session_id: str,
        word_timestamps_available: bool = False,
    ) -> None:
        self.limits = limits
        self.word_timestamps_available = word_timestamps_available
        self.voices = frozenset(voices)
        self.default_voice = default_voice
        self.default_params = default_params
        self.max_tokens_for_text = max_tokens_for_text
        self.session_id = session_id
        self.phase = Phase.CONFIG
        self.config: SessionConfig | None = None
        self.outcome = "client_gone"  # until the session ends some other way
        self.gone_at: float | None = None  # when the client was seen to be gone
        self.aborted_generations = 0
        self._buffer: TextBuffer | None = None
        self._playout: Playout | None = None  # the line to the client, once configured
        self._ending = False  # the session's last items are in the line
        self._voice: _Voice | None = None  # for the text arriving now
        self._chunks: deque[_Chunk] = deque()  # text not yet given to a generation
        self._alive: deque[_Generation] = deque()  # in text order; the head is being sent
        self._total_chars = 0
        self._generation_count = 0
        self._first_audio_sent = False
        self._last_activity = 0.0
        self._config_deadline = 0.0

    @property
    def done(self) -> bool:
        return self.phase is Phase.DONE

    @property
    def next_deadline(self) -> float | None:
        if self.phase is Phase.CONFIG:
            return self._config_deadline
        if self.phase is Phase.TEXT:
            return self._last_activity + self.limits.idle_timeout_s
        return None  # the client only listens now; no timeout while audio is produced

    # -- inputs (a codec's calls) ----------------------------------------------------------------
    def configure(self, config: SessionConfig, now: float) -> list[Output]:
        return self._input(lambda: self._configure(config), configuring=True)

    def append(self, text: str, now: float) -> list[Output]:
        """Text to speak ("" is nothing, but still too late after the end). Alone, ``__END__``
        is the end of the input, whichever codec carried it (the published protocol's end
        marker; every dialect has always taken it so)."""
        return self._input(lambda: self._append(text, now))

    def flush(self, flush_id: MessageId, now: float) -> list[Output]:
        """Speak what is buffered now; ``FlushDone(flush_id)`` follows its last audio."""
        return self._input(lambda: self._flush(flush_id, now))

    def clear(self, clear_id: MessageId, now: float) -> list[Output]:
        """Barge-in: nothing of the text so far is heard after ``Cleared(clear_id)``."""
        return self._input(lambda: self._clear(clear_id, now))

    def update(self, message: UpdateMessage, now: float) -> list[Output]:
        return self._input(lambda: self._update(message, now))

    def end(self, now: float) -> list[Output]:
        """The input is over: the rest of the audio, ``SessionDone``, ``Ended()``."""
        return self._input(lambda: self._end_input(now))

    def heard(self, now: float) -> None:
        """The client sent a frame: it is not idle."""
        self._last_activity = now

    def check_open(self) -> None:
        """Refuse any input once the input has ended (for a codec that checks a frame before
        it decodes it)."""
        if self.phase is Phase.FLUSHING:
            raise ProtocolError("frame_after_end", f"no frames are accepted after {END_OF_INPUT}")

    def reject(self, error: ProtocolError) -> list[Output]:
        """The client's input was bad: a recoverable error is reported and the session goes on;
        any other ends it."""
        if self.done:
            return []
        if error.recoverable:
            logger.info("session %s: %s: %s", self.session_id, error.error_type, error.message)
            return [Rejected(error)]
        return self.fail(error)

    def fail(self, error: ProtocolError) -> list[Output]:
        """End the session on the client's error (its close code)."""
        if self.done:
            return []
        self.outcome = "protocol_error"
        logger.info(
            "session %s: protocol error %s: %s", self.session_id, error.error_type, error.message
        )
        return self._end("protocol_error", Ended(error))

    def _input(
        self, handler: Callable[[], list[Output]], configuring: bool = False
    ) -> list[Output]:
        """One input, once the session is configured; the client's errors are refused here."""
        if self.done:
            return []
        if configuring != (self.config is None):
            raise RuntimeError("a codec must configure the core first, and once")  # a bug
        try:
            self.check_open()
            return handler()
        except ProtocolError as exc:
            return self.reject(exc)

    # -- the driver's events ---------------------------------------------------------------------
    def start(self, now: float) -> list[Output]:
        self._last_activity = now
        self._config_deadline = now + self.limits.first_frame_timeout_s
        return []

    def on_timer(self, now: float) -> list[Output]:
        deadline = self.next_deadline
        if deadline is None or now < deadline:
            return []
        timeout = (
            self.limits.first_frame_timeout_s
            if self.phase is Phase.CONFIG
            else self.limits.idle_timeout_s
        )
        return self.fail(ProtocolError("timeout", f"no frame for {timeout:g} s"))

    def on_disconnect(self, now: float) -> list[Output]:
        if self.done:
            return []
        self.gone_at = now
        self.outcome = "client_gone"
        return self._end("client_gone")

    def on_result(self, job: Hashable, result: Any, now: float) -> list[Output]:
        """A job's result, handed back with the handle that started it."""
        if self.done:
            return []
        if isinstance(job, _Alignment):
            return self._on_alignment(job.generation, result, now)
        if isinstance(job, EncodeBatch):
            return self._on_encoded(job, result, now)
        if not isinstance(job, _Generation) or job not in self._alive:
            return []  # cleared: its late chunks are not heard
        if isinstance(result, StreamChunk):
            if result.item:
                job.pending.append(result.item)
                if job.pcm is not None:
                    job.pcm += result.item
            return self._send_ready(now)
        if isinstance(result, StreamDone):
            return self._on_generated(job, result.error, now)
        return []

    def on_sent(self, ack: Hashable, now: float) -> list[Output]:
        if self.done or not isinstance(ack, _Generation) or ack not in self._alive:
            return []
        self._last_activity = now  # a client that is listening is not idle
        ack.unacked -= 1
        return self._advance(now)

    def _on_generated(
        self, generation: _Generation, error: BaseException | None, now: float
    ) -> list[Output]:
        generation.running = False
        if error is not None:
            metrics.FAILED_GENERATIONS.inc()
            logger.error("generation %s failed", generation.request_id, exc_info=error)
            self.outcome = "engine_error"
            # The client learns which generation failed and how; details stay in the log.
            message = f"generation {generation.request_id} failed ({type(error).__name__})"
            failure = ProtocolError("engine_error", message, CloseCode.INTERNAL_ERROR)
            return self._end("engine_error", Ended(failure))
        if generation.pcm is not None:  # all its audio is known: align it now
            generation.alignment = _Alignment(generation)
            request = AlignRequest(bytes(generation.pcm), generation.chunk.text)
            generation.pcm = None
            return [Submit(generation.alignment, ALIGN_WORKER, request), *self._advance(now)]
        return self._advance(now)

    def _on_encoded(self, job: EncodeBatch, result: Any, now: float) -> list[Output]:
        """The encoder is back: the job's items come out in their order, then the line goes on."""
        if job is not self._playout.job:
            return []
        if isinstance(result, BaseException):
            self._playout.job_lost()
            logger.error("session %s: audio encoding failed", self.session_id, exc_info=result)
            self.outcome = "internal_error"
            failure = ProtocolError(
                "internal_error", "audio encoding failed", CloseCode.INTERNAL_ERROR
            )
            return self._end("internal_error", Ended(failure))
        outputs = self._emit_ready(self._playout.job_done(result), now)
        return outputs if self.done else outputs + self._advance(now)  # done: its end was in it

    def _on_alignment(self, generation: _Generation, result: Any, now: float) -> list[Output]:
        if generation not in self._alive or generation.words is not None:
            return []  # cleared meanwhile
        if isinstance(result, BaseException):  # no timestamps for it; the audio is unharmed
            logger.warning("alignment of %s failed: %r", generation.request_id, result)
            result = []
        offset = generation.start_s or 0.0
        generation.words = [
            WordOut(word=w.word, start_s=round(offset + w.start_s, 3),
                    end_s=round(offset + w.end_s, 3))
            for w in result
        ]  # fmt: skip
        return self._advance(now)

    # -- text ------------------------------------------------------------------------------------
    def _configure(self, config: SessionConfig) -> list[Output]:
        if config.word_timestamps and not self.word_timestamps_available:
            raise ProtocolError(
                "unsupported",
                "word timestamps are not available on this deployment (no aligner model)",
                CloseCode.UNSUPPORTED_DATA,
            )
        self.config = config
        self._buffer = TextBuffer(
            buffer_size=config.buffer_size,
            max_chars=min(
                config.max_chunk_chars or self.limits.max_chunk_chars, self.limits.max_chunk_chars
            ),  # fmt: skip
            verbatim=config.events,
            auto_release=config.segment != "never",
        )
        encoder = AudioEncoder(
            config.audio_format,
            config.output_rate,
            gain_db=float(config.volume_db),
            normalize_loudness=config.normalize_loudness,
            bitrate_bps=config.bitrate_bps,
        )
        self._playout = Playout(encoder)
        self._voice = _Voice(
            config.voice, config.max_tokens, tuple(config.sampling_overrides().items())
        )
        self.phase = Phase.TEXT
        logger.info(
            "session %s: voice=%s max_tokens=%d buffer_size=%d",
            self.session_id,
            config.voice,
            config.max_tokens,
            config.buffer_size,
        )
        created = SessionCreated(
            session_id=self.session_id,
            voice=config.voice,
            response_format=config.response_format,
            sample_rate=config.output_rate,
        )
        return [created]

    def _append(self, text: str, now: float) -> list[Output]:
        if not text:
            return []
        if len(text) > self.limits.max_frame_chars:
            raise ProtocolError(
                "frame_too_large", f"text frame exceeds {self.limits.max_frame_chars} characters"
            )
        if text.strip() == END_OF_INPUT:
            return self._end_input(now)
        self._total_chars += len(text)
        if self._total_chars > self.limits.max_session_chars:
            raise ProtocolError(
                "session_too_large",
                f"session text exceeds {self.limits.max_session_chars} characters",
            )
        self._queue(self._buffer.push(text), now)
        if self.config.segment == "immediate":
            self._queue(self._buffer.flush(), now)
        return self._start_generations()

    def _queue(self, texts: list[str], now: float) -> None:
        self._chunks.extend(_Chunk(text, now, self._voice) for text in texts)

    def _end_input(self, now: float) -> list[Output]:
        self._queue(self._buffer.flush(), now)
        self.phase = Phase.FLUSHING
        return self._advance(now)

    # -- turns -----------------------------------------------------------------------------------
    def _flush(self, flush_id: MessageId, now: float) -> list[Output]:
        self._queue(self._buffer.flush(), now)
        done = FlushDone(id=flush_id)
        if self._chunks:
            self._chunks[-1].after.append(done)
        elif self._alive:
            self._alive[-1].chunk.after.append(done)
        else:  # nothing left to say: the turn is over now
            return self._end_turn([done], now)
        return self._advance(now)

    def _clear(self, clear_id: MessageId, now: float) -> list[Output]:
        self._buffer.clear()
        self._chunks.clear()
        aborted = [g for g in self._alive if g.running]
        # Audio of these generations still queued for the client is dropped unsent.
        commands: list[Output] = [*self._cancel_all(), Discard(frozenset(self._alive))]
        for generation in aborted:
            self.aborted_generations += 1
            metrics.ABORTED_GENERATIONS.labels(reason="clear").inc()
            logger.info("generation %s aborted (clear)", generation.request_id)
        # Their chunks not yet out of the encoder are dropped too, with their audio_start (of
        # the alive generations, the line holds only those: a generation retires once its
        # chunks are out, and what it says then belongs to a turn that was heard).
        cleared = {g.number for g in self._alive}
        self._alive.clear()
        self._playout.drop(lambda item: _cleared(item, cleared))
        # Cleared waits only for what was due before it (a heard turn's codec tail and events,
        # if they are in the encoder right now); the reset after it drops what the codec holds
        # of the cleared audio.
        answer = Cleared(id=clear_id, generations_aborted=len(aborted))
        return [*commands, *self._push([answer, EncoderOp.RESET], now)]

    def _update(self, message: UpdateMessage, now: float) -> list[Output]:
        voice = self._voice
        name = check_voice(message.voice, self.voices, True) if message.voice else voice.voice
        sampling = dict(voice.sampling)
        for key in ("temperature", "top_p", "repetition_penalty"):
            if getattr(message, key) is not None:
                sampling[key] = getattr(message, key)
        self._queue(self._buffer.flush(), now)  # the text so far keeps its voice
        self._voice = _Voice(
            name, message.max_tokens or voice.max_tokens, tuple(sorted(sampling.items()))
        )
        return self._start_generations()

    def _end_turn(self, events: list[Event], now: float) -> list[Output]:
        """A turn's audio is all out: the encoder's tail (a codec stream ends here), then the
        turn's events."""
        return self._push([EncoderOp.FINISH, *events], now)

    # -- the line: outputs in client order, through the encoder (``Playout``) -------------------
    def _push(self, items: list[LineItem], now: float) -> list[Output]:
        self._playout.add(items)
        return self._drain(now)

    def _drain(self, now: float) -> list[Output]:
        """Emit the line's items that can go now; submit the encode job it hands the rest to."""
        drained = self._playout.drain()
        outputs = self._emit_ready(drained.ready, now)
        if drained.job is not None:
            batch, payload = drained.job
            outputs.append(Submit(batch, ENCODE_WORKER, payload))
        return outputs

    def _emit_ready(self, ready: list[Ready], now: float) -> list[Output]:
        outputs: list[Output] = []
        for item, data in ready:
            outputs.extend(self._emit(item, data, now))
            if self.done:  # the session's end was in it
                break
        return outputs

    def _emit(self, item: LineItem, data: bytes, now: float) -> list[Output]:
        """What one of the line's items says, with its encoder output."""
        if isinstance(item, Chunk):
            generation: _Generation = item.owner
            generation.encoding -= 1
            if not data:
                return []  # the codec holds it back (less than a frame so far)
            generation.unacked += 1
            metrics.AUDIO_BYTES_SENT.inc(len(data))
            if not self._first_audio_sent:
                self._first_audio_sent = True
                ready_at = generation.chunk.ready_at
                metrics.TIME_TO_FIRST_AUDIO.observe(max(now - ready_at, 0.0))
            return [Audio(data, ack=generation)]
        if isinstance(item, EncoderOp):
            return [Audio(data)] if data else []  # a turn's tail: nothing waits for it
        if isinstance(item, EndOfLine):
            return self._end(None, Ended())
        return [item]

    # -- generations -----------------------------------------------------------------------------
    def _start_generations(self) -> list[Output]:
        commands: list[Output] = []
        running = sum(g.running for g in self._alive)
        while (
            self._chunks
            and len(self._alive) < 1 + self.limits.lookahead_generations
            and running < self.limits.engine_generations
        ):
            chunk = self._chunks.popleft()
            self._generation_count += 1
            request_id = f"{self.session_id}-{self._generation_count}"
            params = dataclasses.replace(
                self.default_params,
                max_tokens=self.max_tokens_for_text(chunk.text, chunk.voice.max_tokens),
                **dict(chunk.voice.sampling),
            )
            generation = _Generation(request_id, self._generation_count, chunk)
            if self.config.word_timestamps:
                generation.pcm = bytearray()
            self._alive.append(generation)
            running += 1
            request = GenerationRequest(chunk.text, chunk.voice.voice, params, request_id)
            commands.append(StartStream(generation, GENERATION_WORKER, request))
        return commands

    def _send_ready(self, now: float) -> list[Output]:
        """The head generation's audio goes out as it comes; later ones wait their turn."""
        if not self._alive:
            return self._drain(now)
        head = self._alive[0]
        while head.pending:
            pcm = head.pending.popleft()
            if head.start_s is None:
                self._playout.add([self._audio_start(head)])
            self._playout.add_audio(pcm, head)
            head.encoding += 1
        return self._drain(now)

    def _audio_start(self, generation: _Generation) -> AudioStart:
        generation.start_s = self._playout.timeline_s()
        return AudioStart(
            generation=generation.number, text=generation.chunk.text, start_s=generation.start_s
        )

    def _retire(self, generation: _Generation, now: float) -> list[Output]:
        """A generation's audio is all written: its events, and a turn's end."""
        items: list[LineItem] = []
        if generation.start_s is None:  # it made no audio at all
            items.append(self._audio_start(generation))
        if generation.words is not None:
            items.append(WordTimestamps(generation=generation.number, words=generation.words))
        done = AudioDone(
            generation=generation.number,
            text=generation.chunk.text,
            start_s=generation.start_s,
            end_s=self._playout.timeline_s(),
        )
        items.append(done)
        if generation.chunk.after:
            items.extend([EncoderOp.FINISH, *generation.chunk.after])
        return self._push(items, now)

    def _advance(self, now: float) -> list[Output]:
        """Retire generations that are done and written; start the next; end when all is out."""
        outputs = self._send_ready(now)
        while self._alive and not self._alive[0].running and not self._alive[0].pending:
            head = self._alive[0]
            if head.unacked or head.encoding:
                break  # its audio is still on its way to the client
            if head.alignment is not None and head.words is None:
                break  # its word timestamps go out before its audio_done
            self._alive.popleft()
            outputs.extend(self._retire(head, now))
            outputs.extend(self._send_ready(now))
        outputs.extend(self._start_generations())
        ending = self.phase is Phase.FLUSHING and not self._chunks and not self._alive
        if ending and not self._ending:
            self._ending = True
            self.outcome = "ok"
            done = SessionDone(
                generations=self._generation_count, audio_s=self._playout.timeline_s()
            )
            outputs.extend(self._push([EncoderOp.FINISH, done, END], now))
        return outputs

    # -- endings ---------------------------------------------------------------------------------
    def _cancel_all(self) -> list[Output]:
        """Cancel every alive generation's job, and the alignments still awaited."""
        return [Cancel(g) for g in self._alive] + [
            Cancel(g.alignment)
            for g in self._alive
            if g.alignment is not None and g.words is None
        ]  # fmt: skip

    def _end(self, reason: str | None, ending: Ended | None = None) -> list[Output]:
        """Cancel every generation still running; the session is over."""
        for generation in self._alive:
            if generation.running and reason is not None:
                self.aborted_generations += 1
                metrics.ABORTED_GENERATIONS.labels(reason=reason).inc()
                logger.info("generation %s aborted (%s)", generation.request_id, reason)
        outputs = self._cancel_all()
        if self._playout is not None:
            if self._playout.job is not None:  # its encoder goes with it: nothing else holds it
                outputs.append(Cancel(self._playout.job))
            self._playout.close()  # nothing more goes out: release what the codec holds
        self._alive.clear()
        self._chunks.clear()
        self.phase = Phase.DONE
        return outputs + ([ending] if ending is not None else [])
