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
from orpheus_tts.schema import END_OF_INPUT, SessionConfig, parse_session_config
from speech_common.driver import (
    Cancel,
    Close,
    Command,
    JobIds,
    Send,
    StartStream,
    StreamChunk,
    StreamDone,
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


@dataclass
class _Generation:
    job_id: int
    request_id: str
    ready_at: float  # when its text's last word arrived
    running: bool = True  # still producing audio in the engine
    pending: deque[bytes] = field(default_factory=deque)  # audio waiting for its turn
    unacked: int = 0  # chunks sent, not yet written to the socket


class TtsCore:
    def __init__(
        self,
        limits: Any,  # orpheus_tts.session.SessionLimits
        voices: Collection[str],
        default_voice: str,
        default_params: Any,
        max_tokens_for_text: Callable[[str, int], int],
        session_id: str,
    ) -> None:
        self.limits = limits
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
        self._chunks: deque[tuple[str, float]] = deque()  # text not yet given to a generation
        self._alive: deque[_Generation] = deque()  # in text order; the head is being sent
        self._by_job: dict[int, _Generation] = {}
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
        self._config_deadline = now + self.limits.config_timeout_s
        return []

    def on_timer(self, now: float) -> list[Command]:
        deadline = self.next_deadline
        if deadline is None or now < deadline:
            return []
        timeout = (
            self.limits.config_timeout_s
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
                self._on_config(text)
                return []
            if self.phase is Phase.FLUSHING:
                raise ProtocolError(
                    "frame_after_end", f"no frames are accepted after {END_OF_INPUT}"
                )
            return self._on_words(text, now)
        except ProtocolError as exc:
            return self._fail(exc)

    def on_result(self, job_id: int, result: Any, now: float) -> list[Command]:
        generation = self._by_job.get(job_id)
        if self.done or generation is None:
            return []
        if isinstance(result, StreamChunk):
            if result.item:
                generation.pending.append(result.item)
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
    def _on_config(self, text: str) -> None:
        self.config = parse_session_config(text, self.voices, self.default_voice)
        self._buffer = TextBuffer(
            buffer_size=self.config.buffer_size, max_chars=self.limits.max_chunk_chars
        )
        self.phase = Phase.TEXT
        logger.info(
            "session %s: voice=%s max_tokens=%d buffer_size=%d",
            self.session_id,
            self.config.voice,
            self.config.max_tokens,
            self.config.buffer_size,
        )

    def _on_words(self, text: str, now: float) -> list[Command]:
        if len(text) > self.limits.max_frame_chars:
            raise ProtocolError(
                "frame_too_large", f"text frame exceeds {self.limits.max_frame_chars} characters"
            )
        if text.strip() == END_OF_INPUT:
            self._chunks.extend((chunk, now) for chunk in self._buffer.flush())
            self.phase = Phase.FLUSHING
            return self._advance(now)
        self._total_chars += len(text)
        if self._total_chars > self.limits.max_session_chars:
            raise ProtocolError(
                "session_too_large",
                f"session text exceeds {self.limits.max_session_chars} characters",
            )
        self._chunks.extend((chunk, now) for chunk in self._buffer.push(text))
        return self._start_generations()

    # -- generations -----------------------------------------------------------------------------
    def _start_generations(self) -> list[Command]:
        commands: list[Command] = []
        running = sum(g.running for g in self._alive)
        while (
            self._chunks
            and len(self._alive) < 1 + self.limits.lookahead_generations
            and running < self.limits.engine_generations
        ):
            text, ready_at = self._chunks.popleft()
            self._generation_count += 1
            request_id = f"{self.session_id}-{self._generation_count}"
            params = dataclasses.replace(
                self.default_params,
                max_tokens=self.max_tokens_for_text(text, self.config.max_tokens),
                **self.config.sampling_overrides(),
            )
            generation = _Generation(self._ids.new(), request_id, ready_at)
            self._alive.append(generation)
            self._by_job[generation.job_id] = generation
            running += 1
            request = GenerationRequest(text, self.config.voice, params, request_id)
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
            head.unacked += 1
            metrics.AUDIO_BYTES_SENT.inc(len(pcm))
            if not self._first_audio_sent:
                self._first_audio_sent = True
                metrics.TIME_TO_FIRST_AUDIO.observe(max(now - head.ready_at, 0.0))
            commands.append(Send(pcm, ack=head.job_id))
        return commands

    def _advance(self, now: float) -> list[Command]:
        """Retire generations that are done and written; start the next; end when all is out."""
        commands = self._send_ready(now)
        while self._alive and not self._alive[0].running and not self._alive[0].pending:
            head = self._alive[0]
            if head.unacked:
                break  # its audio is still on its way to the client
            self._alive.popleft()
            del self._by_job[head.job_id]
            commands.extend(self._send_ready(now))
        commands.extend(self._start_generations())
        if self.phase is Phase.FLUSHING and not self._chunks and not self._alive:
            self.outcome = "ok"
            commands.extend(self._end(None, Close(CloseCode.NORMAL)))
        return commands

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
        self._alive.clear()
        self._by_job.clear()
        self._chunks.clear()
        self.phase = Phase.DONE
        return commands + ([close] if close is not None else [])
