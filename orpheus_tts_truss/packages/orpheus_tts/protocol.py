"""Baseten's Orpheus TTS protocol as a sans-I/O state machine (no sockets, no clocks, no engine).

Config frame -> text frames (words) -> ``__END__``; PCM back in text order; close 1000. Frames,
generation chunks, send acknowledgements, timers and the client's disconnect go in; ``Send``,
``StartStream`` (one generation per text chunk), ``Cancel`` and ``Close`` come out
(``speech_common.driver`` runs it on a socket).

Generations (each a streaming job) are started in text order while the client is still typing:
at most ``1 + lookahead_generations`` are *alive* (started, not yet fully written to the client)
and at most ``engine_generations`` are *running* in the engine. Audio of a generation that is
not the oldest alive one waits here until its turn, so the client hears the text in order.

Phases: CONFIG -> TEXT -> FLUSHING (``__END__`` received) -> DONE. Client errors end with a typed
error frame and 1008, a failed generation with ``engine_error`` and 1011, success with 1000, a
disconnect with nothing; every ending cancels the generations still alive.

Audio leaves through the session's ``AudioEncoder`` (a pass-through for the published format).
With ``events: true`` in the first frame the socket lives for a whole conversation
(``orpheus_tts.schema`` lists the messages): text frames are appended verbatim; ``flush`` cuts a
turn (``flush_done`` follows the turn's last audio byte, and each turn of a codec format is a
whole stream); ``clear`` aborts everything not yet heard (the engine requests, and the audio
still queued for the socket: ``Discard``) and answers ``cleared``; ``update`` changes voice or
sampling for the text after it; ``end`` finishes with ``session_done``. A bad control message is
a recoverable error: the session goes on.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from orpheus_tts import metrics
from orpheus_tts.alignment import ALIGN_WORKER, AlignRequest
from orpheus_tts.audio_format import AudioEncoder
from orpheus_tts.schema import (
    END_OF_INPUT,
    AudioDone,
    AudioStart,
    Cleared,
    ClearMessage,
    EndMessage,
    FlushDone,
    FlushMessage,
    SessionConfig,
    SessionCreated,
    SessionDone,
    TextMessage,
    UpdateMessage,
    WordOut,
    WordTimestamps,
    check_voice,
    is_control_frame,
    parse_control,
    parse_session_config,
)
from speech_common.driver import (
    Cancel,
    Close,
    Command,
    Discard,
    JobIds,
    Send,
    StartStream,
    StreamChunk,
    StreamDone,
    Submit,
)
from speech_common.text_buffer import TextBuffer
from speech_common.ws import CloseCode, ProtocolError

logger = logging.getLogger(__name__)

GENERATION_WORKER = "orpheus"


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
    after: list[dict] = field(default_factory=list)  # events due once its audio is all sent


@dataclass
class _Generation:
    job_id: int
    request_id: str
    number: int  # 1, 2, ... in the session
    chunk: _Chunk
    running: bool = True  # still producing audio in the engine
    pending: deque[bytes] = field(default_factory=deque)  # audio waiting for its turn
    unacked: int = 0  # chunks sent, not yet written to the socket
    start_s: float | None = None  # on the session's audio timeline, once its audio began
    pcm: bytearray | None = None  # its audio, kept for the aligner (word timestamps only)
    align_job: int | None = None  # the aligner's job, once generated
    words: list[WordOut] | None = None  # the aligner's answer


class TtsCore:
    def __init__(
        self,
        limits: Any,  # orpheus_tts.session.SessionLimits
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
        self._ids = JobIds()
        self._buffer: TextBuffer | None = None
        self._encoder: AudioEncoder | None = None
        self._voice: _Voice | None = None  # for the text arriving now
        self._chunks: deque[_Chunk] = deque()  # text not yet given to a generation
        self._alive: deque[_Generation] = deque()  # in text order; the head is being sent
        self._by_job: dict[int, _Generation] = {}
        self._aligning: dict[int, _Generation] = {}  # aligner job -> its generation
        self._total_chars = 0
        self._generation_count = 0
        self._first_audio_sent = False
        self._last_activity = 0.0
        self._config_deadline = 0.0

    # -- the SessionCore interface -------------------------------------------------------------
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

    def start(self, now: float) -> list[Command]:
        self._last_activity = now
        self._config_deadline = now + self.limits.first_frame_timeout_s
        return []

    def on_timer(self, now: float) -> list[Command]:
        deadline = self.next_deadline
        if deadline is None or now < deadline:
            return []
        timeout = (
            self.limits.first_frame_timeout_s
            if self.phase is Phase.CONFIG
            else self.limits.idle_timeout_s
        )
        return self._fail(ProtocolError("timeout", f"no frame for {timeout:g} s"))

    def on_disconnect(self, now: float) -> list[Command]:
        if self.done:
            return []
        self.gone_at = now
        self.outcome = "client_gone"
        return self._end("client_gone")

    def on_bytes(self, data: bytes, now: float) -> list[Command]:
        if self.done:
            return []
        if self.phase is Phase.CONFIG:
            return self._fail(
                ProtocolError(
                    "invalid_config", "the first frame must be a JSON text frame, not binary"
                )
            )
        return self._fail(
            ProtocolError("unsupported_frame", "expected a text frame, got a binary frame")
        )

    def on_text(self, text: str, now: float) -> list[Command]:
        if self.done:
            return []
        self._last_activity = now
        try:
            if self.phase is Phase.CONFIG:
                return self._on_config(text)
            if self.phase is Phase.FLUSHING:
                raise ProtocolError(
                    "frame_after_end", f"no frames are accepted after {END_OF_INPUT}"
                )
            if self.events and is_control_frame(text):
                return self._on_control(text, now)
            return self._on_words(text, now)
        except ProtocolError as exc:
            if exc.recoverable:
                logger.info("session %s: %s: %s", self.session_id, exc.error_type, exc.message)
                return [Send(exc.frame())]
            return self._fail(exc)

    @property
    def events(self) -> bool:
        return self.config is not None and self.config.events

    def on_result(self, job_id: int, result: Any, now: float) -> list[Command]:
        if job_id in self._aligning:
            return self._on_alignment(self._aligning.pop(job_id), result, now)
        generation = self._by_job.get(job_id)
        if self.done or generation is None:
            return []
        if isinstance(result, StreamChunk):
            if result.item:
                generation.pending.append(result.item)
                if generation.pcm is not None:
                    generation.pcm += result.item
            return self._send_ready(now)
        if isinstance(result, StreamDone):
            generation.running = False
            if result.error is not None:
                metrics.FAILED_GENERATIONS.inc()
                logger.error("generation %s failed", generation.request_id, exc_info=result.error)
                self.outcome = "engine_error"
                # The client learns which generation failed and how; details stay in the log.
                message = (
                    f"generation {generation.request_id} failed ({type(result.error).__name__})"
                )
                error = ProtocolError("engine_error", message, CloseCode.INTERNAL_ERROR)
                return self._end("engine_error", Close(error.close_code, error.message, error))
            if generation.pcm is not None:  # all its audio is known: align it now
                generation.align_job = self._ids.new()
                self._aligning[generation.align_job] = generation
                request = AlignRequest(bytes(generation.pcm), generation.chunk.text)
                generation.pcm = None
                return [Submit(generation.align_job, ALIGN_WORKER, request), *self._advance(now)]
            return self._advance(now)
        return []

    def on_sent(self, ack: Any, now: float) -> list[Command]:
        generation = self._by_job.get(ack)
        if self.done or generation is None:
            return []
        self._last_activity = now  # a client that is listening is not idle
        generation.unacked -= 1
        return self._advance(now)

    # -- text ------------------------------------------------------------------------------------
    def _on_alignment(self, generation: _Generation, result: Any, now: float) -> list[Command]:
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

    def _on_config(self, text: str) -> list[Command]:
        config = parse_session_config(text, self.voices, self.default_voice)
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
        self._encoder = AudioEncoder(
            config.audio_format,
            config.output_rate,
            gain_db=float(config.volume_db),
            normalize_loudness=config.normalize_loudness,
            bitrate_bps=config.bitrate_bps,
        )
        self._voice = _Voice(
            config.voice, config.max_tokens, tuple(config.sampling_overrides().items())
        )
        self.phase = Phase.TEXT
        logger.info(
            "session %s: voice=%s max_tokens=%d buffer_size=%d",
            self.session_id,
            self.config.voice,
            self.config.max_tokens,
            self.config.buffer_size,
        )
        if not config.events:
            return []
        created = SessionCreated(
            session_id=self.session_id,
            voice=config.voice,
            response_format=config.response_format,
            sample_rate=config.output_rate,
        )
        return [Send(created.model_dump())]

    def _on_words(self, text: str, now: float) -> list[Command]:
        if len(text) > self.limits.max_frame_chars:
            raise ProtocolError(
                "frame_too_large", f"text frame exceeds {self.limits.max_frame_chars} characters"
            )
        if text.strip() == END_OF_INPUT:
            return self._on_end(now)
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

    def _on_end(self, now: float) -> list[Command]:
        self._queue(self._buffer.flush(), now)
        self.phase = Phase.FLUSHING
        return self._advance(now)

    # -- the event protocol ----------------------------------------------------------------------
    def _on_control(self, text: str, now: float) -> list[Command]:
        message = parse_control(text)
        if isinstance(message, TextMessage):
            return self._on_words(message.text, now) if message.text else []
        if isinstance(message, EndMessage):
            return self._on_end(now)
        if isinstance(message, FlushMessage):
            return self._on_flush(message, now)
        if isinstance(message, ClearMessage):
            return self._on_clear(message)
        return self._on_update(message, now)

    def _on_flush(self, message: FlushMessage, now: float) -> list[Command]:
        self._queue(self._buffer.flush(), now)
        done = FlushDone(id=message.id).model_dump()
        if self._chunks:
            self._chunks[-1].after.append(done)
        elif self._alive:
            self._alive[-1].chunk.after.append(done)
        else:  # nothing left to say: the turn is over now
            return self._end_turn([done])
        return self._advance(now)

    def _on_clear(self, message: ClearMessage) -> list[Command]:
        """Barge-in: nothing of the text so far is heard after ``cleared``."""
        self._buffer.clear()
        self._chunks.clear()
        aborted = [g for g in self._alive if g.running]
        commands: list[Command] = [Cancel(g.job_id) for g in self._alive]
        commands += [Cancel(job) for job in self._aligning]
        self._aligning.clear()
        # Audio of these generations still queued for the socket is dropped unsent.
        commands.append(Discard(frozenset(g.job_id for g in self._alive)))
        for generation in aborted:
            self.aborted_generations += 1
            metrics.ABORTED_GENERATIONS.labels(reason="clear").inc()
            logger.info("generation %s aborted (clear)", generation.request_id)
        self._alive.clear()
        self._by_job.clear()
        self._encoder.reset()
        cleared = Cleared(id=message.id, generations_aborted=len(aborted))
        return commands + [Send(cleared.model_dump())]

    def _on_update(self, message: UpdateMessage, now: float) -> list[Command]:
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

    def _end_turn(self, events: list[dict]) -> list[Command]:
        """A turn's audio is all out: the encoder's tail (a codec stream ends here), then the
        turn's events."""
        tail = self._encoder.finish()
        return ([Send(tail)] if tail else []) + [Send(event) for event in events]

    # -- generations -----------------------------------------------------------------------------
    def _start_generations(self) -> list[Command]:
        commands: list[Command] = []
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
            generation = _Generation(self._ids.new(), request_id, self._generation_count, chunk)
            if self.config.word_timestamps:
                generation.pcm = bytearray()
            self._alive.append(generation)
            self._by_job[generation.job_id] = generation
            running += 1
            request = GenerationRequest(chunk.text, chunk.voice.voice, params, request_id)
            commands.append(StartStream(generation.job_id, GENERATION_WORKER, request))
        return commands

    def _send_ready(self, now: float) -> list[Command]:
        """The head generation's audio goes out as it comes; later ones wait their turn."""
        if not self._alive:
            return []
        head = self._alive[0]
        commands: list[Command] = []
        while head.pending:
            pcm = head.pending.popleft()
            if head.start_s is None:
                commands.extend(self._audio_start(head))
            data = self._encoder.encode(pcm)
            if not data:
                continue  # the codec holds it back (less than a frame so far)
            head.unacked += 1
            metrics.AUDIO_BYTES_SENT.inc(len(data))
            if not self._first_audio_sent:
                self._first_audio_sent = True
                metrics.TIME_TO_FIRST_AUDIO.observe(max(now - head.chunk.ready_at, 0.0))
            commands.append(Send(data, ack=head.job_id))
        return commands

    def _timeline_s(self) -> float:
        return round(self._encoder.timeline_s, 4)

    def _audio_start(self, generation: _Generation) -> list[Command]:
        generation.start_s = self._timeline_s()
        if not self.events:
            return []
        start = AudioStart(
            generation=generation.number, text=generation.chunk.text, start_s=generation.start_s
        )
        return [Send(start.model_dump())]

    def _retire(self, generation: _Generation) -> list[Command]:
        """A generation's audio is all written: its events, and a turn's end."""
        commands: list[Command] = []
        if generation.start_s is None:  # it made no audio at all
            commands.extend(self._audio_start(generation))
        if generation.words is not None:
            words = WordTimestamps(generation=generation.number, words=generation.words)
            commands.append(Send(words.model_dump()))
        if self.events:
            done = AudioDone(
                generation=generation.number,
                text=generation.chunk.text,
                start_s=generation.start_s,
                end_s=self._timeline_s(),
            )
            commands.append(Send(done.model_dump()))
        if generation.chunk.after:
            commands.extend(self._end_turn(generation.chunk.after))
        return commands

    def _advance(self, now: float) -> list[Command]:
        """Retire generations that are done and written; start the next; end when all is out."""
        commands = self._send_ready(now)
        while self._alive and not self._alive[0].running and not self._alive[0].pending:
            head = self._alive[0]
            if head.unacked:
                break  # its audio is still on its way to the client
            if head.align_job is not None and head.words is None:
                break  # its word timestamps go out before its audio_done
            self._alive.popleft()
            del self._by_job[head.job_id]
            commands.extend(self._retire(head))
            commands.extend(self._send_ready(now))
        commands.extend(self._start_generations())
        if self.phase is Phase.FLUSHING and not self._chunks and not self._alive:
            self.outcome = "ok"
            commands.extend(self._end_turn(self._session_done()))
            commands.extend(self._end(None, Close(CloseCode.NORMAL)))
        return commands

    def _session_done(self) -> list[dict]:
        if not self.events:
            return []
        done = SessionDone(generations=self._generation_count, audio_s=self._timeline_s())
        return [done.model_dump()]

    # -- endings ---------------------------------------------------------------------------------
    def _fail(self, error: ProtocolError) -> list[Command]:
        self.outcome = "protocol_error"
        logger.info(
            "session %s: protocol error %s: %s", self.session_id, error.error_type, error.message
        )
        return self._end("protocol_error", Close(error.close_code, error.message, error))

    def _end(self, reason: str | None, close: Close | None = None) -> list[Command]:
        """Cancel every generation still running; the session is over."""
        commands: list[Command] = []
        for generation in self._alive:
            commands.append(Cancel(generation.job_id))
            if generation.running and reason is not None:
                self.aborted_generations += 1
                metrics.ABORTED_GENERATIONS.labels(reason=reason).inc()
                logger.info("generation %s aborted (%s)", generation.request_id, reason)
        commands += [Cancel(job) for job in self._aligning]
        self._aligning.clear()
        self._alive.clear()
        self._by_job.clear()
        self._chunks.clear()
        if self._encoder is not None:
            self._encoder.reset()  # nothing more goes out: release what the codec holds
        self.phase = Phase.DONE
        return commands + ([close] if close is not None else [])
