"""One TTS WebSocket session: config frame → words → ``__END__``, PCM streamed back.

The session is a small pipeline of tasks so that nothing waits on anything it does not need:

    receiver ──chunks──▶ starter ──generations (in order)──▶ sender ──PCM──▶ client
    (frames → TextBuffer)   (≤ 1 + lookahead alive,          (writes each generation's
                             ≤ engine_generations running)    audio in order)

* Text keeps being read while audio streams; the next chunk's generation starts while the
  current one is still being sent (``lookahead_generations``). By default a session has one
  request in the engine at a time: the next starts as soon as the current one has finished
  *generating* (its audio is usually still being sent, as generation outpaces real time), so a
  session never takes a second engine slot from another session's first sentence.
* Any failure or a disconnect cancels every task; a cancelled generation closes its
  ``Synthesizer.stream`` iterator, which aborts the engine request and its queued decode work.
* Client errors end with a typed error frame and 1008, engine errors with 1011, success with 1000.
  Nothing here is shared between sessions except the synthesizer.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid
from collections.abc import AsyncIterator, Collection, Mapping
from typing import Any, Protocol

from orpheus_tts import metrics
from orpheus_tts.schema import END_OF_INPUT, SessionConfig, parse_session_config
from speech_common.text_buffer import DEFAULT_MAX_CHARS, TextBuffer
from speech_common.ws import CloseCode, ProtocolError, SessionGate, safe_close, send_error_and_close

logger = logging.getLogger(__name__)


class Synthesizer(Protocol):
    """What the session needs from ``orpheus_tts.synth.Synthesizer``."""

    def stream(self, text: str, voice: str, params: Any, request_id: str) -> AsyncIterator[bytes]:
        """PCM s16le 24 kHz mono chunks of one generation; closing it aborts the generation."""
        ...

    def max_tokens_for_text(self, text: str, client_max_tokens: int) -> int:
        """The token budget for one chunk of text, at most the client's."""
        ...


@dataclasses.dataclass(frozen=True)
class SessionLimits:
    """Per-session limits and pipeline shape; keys of the same name in ``model_metadata``."""

    # One text frame: a word or a few; 4096 characters is far beyond any real word stream.
    max_frame_chars: int = 4096
    # All text of one session: ~100k characters is well over an hour of speech.
    max_session_chars: int = 100_000
    # Characters per generation: Orpheus drifts on longer prompts.
    max_chunk_chars: int = DEFAULT_MAX_CHARS
    # Seconds to wait for the config frame after the connection opens.
    config_timeout_s: float = 10.0
    # Seconds without a client frame or audio sent before the session is closed.
    idle_timeout_s: float = 300.0
    # Generations started before the previous one has been fully sent.
    lookahead_generations: int = 1
    # Generations of one session running in the engine at once (2 = the next one is generated
    # in parallel with the current one instead of after it).
    engine_generations: int = 1
    # Open sessions per replica before new ones are refused with 1013 (try again later); one
    # H100 sustains ~24 real-time streams, and most open sessions are idle between sentences.
    max_sessions: int = 64

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> SessionLimits:
        """Take the ``tts_<field>`` keys that are present (e.g. ``tts_max_frame_chars``)."""
        values = {}
        for field in dataclasses.fields(cls):
            key = f"tts_{field.name}"
            if key in metadata:
                values[field.name] = type(field.default)(metadata[key])
        limits = cls(**values)
        if (
            limits.lookahead_generations < 0
            or limits.engine_generations < 1
            or limits.max_chunk_chars < 1
            or limits.max_sessions < 1
        ):
            raise ValueError(f"invalid session limits: {limits}")
        return limits


class ClientGone(Exception):
    """The client disconnected (or its socket broke); nothing more can be sent."""


class EngineFailure(Exception):
    """A generation failed inside the engine or the decoder."""


@dataclasses.dataclass
class _Chunk:
    text: str
    ready_at: float  # monotonic time its last word arrived


_END = object()


class _Generation:
    """One chunk's synthesis as a task; its audio is buffered until the sender takes it."""

    def __init__(
        self,
        synthesizer: Synthesizer,
        chunk: _Chunk,
        voice: str,
        params: Any,
        request_id: str,
        engine_slot: asyncio.Semaphore,
    ) -> None:
        """Start at once; ``engine_slot`` (already acquired) is released when generation ends."""
        self.chunk = chunk
        self.request_id = request_id
        self.abort_reason = "client_gone"
        self._engine_slot = engine_slot
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._task = asyncio.create_task(
            self._run(synthesizer, voice, params), name=f"tts-generation-{request_id}"
        )

    async def _run(self, synthesizer: Synthesizer, voice: str, params: Any) -> None:
        started = time.monotonic()
        first = True
        finished = False
        metrics.ACTIVE_GENERATIONS.inc()
        metrics.GENERATIONS.inc()
        try:
            stream = synthesizer.stream(self.chunk.text, voice, params, self.request_id)
            async with contextlib.aclosing(stream):
                async for pcm in stream:
                    if not pcm:
                        continue
                    if first:
                        metrics.GENERATION_FIRST_AUDIO.observe(time.monotonic() - started)
                        first = False
                    self._queue.put_nowait(pcm)
            finished = True
            self._queue.put_nowait(_END)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            finished = True  # failed, not aborted
            metrics.FAILED_GENERATIONS.inc()
            logger.exception("generation %s failed", self.request_id)
            # The client learns which generation failed and how; the details stay in the log.
            self._queue.put_nowait(
                EngineFailure(f"generation {self.request_id} failed ({type(exc).__name__})")
            )
        finally:
            self._engine_slot.release()
            metrics.ACTIVE_GENERATIONS.dec()
            if not finished:
                metrics.ABORTED_GENERATIONS.labels(reason=self.abort_reason).inc()
                logger.info("generation %s aborted (%s)", self.request_id, self.abort_reason)

    async def audio(self) -> AsyncIterator[bytes]:
        """Its PCM chunks in order; raises ``EngineFailure`` if the generation failed."""
        while True:
            item = await self._queue.get()
            if item is _END:
                return
            if isinstance(item, EngineFailure):
                raise item
            yield item

    async def cancel(self, reason: str) -> bool:
        """Abort if still running and wait until the engine request is released."""
        if self._task.done():
            return False
        self.abort_reason = reason
        await _cancel(self._task)
        return True


class TTSSession:
    """Serves one accepted WebSocket until the last audio byte (or the first error)."""

    def __init__(
        self,
        websocket: Any,
        synthesizer: Synthesizer,
        default_params: Any,
        voices: Collection[str],
        default_voice: str,
        limits: SessionLimits | None = None,
        gate: SessionGate | None = None,
    ) -> None:
        self._ws = websocket
        self._synth = synthesizer
        self._default_params = default_params
        self._voices = frozenset(voices)
        self._default_voice = default_voice
        self._limits = limits or SessionLimits()
        self._gate = gate
        self.session_id = uuid.uuid4().hex[:16]
        self._generation_count = 0
        self._last_activity = time.monotonic()
        self._first_audio_sent = False
        self._abort_reason = "client_gone"
        self._gone_at: float | None = None  # when the client was seen to be gone
        self._aborted_generations = 0

    async def run(self) -> None:
        """Run the whole session, always ending with a close frame (or a gone client)."""
        if self._gate is not None and not self._gate.try_enter():
            metrics.SESSIONS.labels(outcome="overloaded").inc()
            logger.warning("session %s refused: %d open", self.session_id, self._gate.active)
            await send_error_and_close(
                self._ws,
                ProtocolError(
                    "overloaded",
                    "too many sessions on this replica; retry",
                    CloseCode.TRY_AGAIN_LATER,
                ),
            )
            return
        try:
            await self._run()
        finally:
            if self._gate is not None:
                self._gate.leave()

    async def _run(self) -> None:
        metrics.ACTIVE_SESSIONS.inc()
        outcome = "internal_error"
        try:
            config = await self._receive_config()
            logger.info(
                "session %s: voice=%s max_tokens=%d buffer_size=%d",
                self.session_id,
                config.voice,
                config.max_tokens,
                config.buffer_size,
            )
            await self._stream(config)
            outcome = "ok"
            await safe_close(self._ws, CloseCode.NORMAL)
        except ProtocolError as exc:
            outcome = "protocol_error"
            logger.info(
                "session %s: protocol error %s: %s", self.session_id, exc.error_type, exc.message
            )
            await send_error_and_close(self._ws, exc)
        except ClientGone:
            outcome = "client_gone"
            if self._aborted_generations and self._gone_at is not None:
                metrics.ABORT_SECONDS.observe(time.monotonic() - self._gone_at)
            logger.info(
                "session %s: client gone, %d generation(s) aborted",
                self.session_id,
                self._aborted_generations,
            )
        except EngineFailure as exc:
            outcome = "engine_error"
            await send_error_and_close(
                self._ws, ProtocolError("engine_error", str(exc), CloseCode.INTERNAL_ERROR)
            )
        except asyncio.CancelledError:
            outcome = "cancelled"  # server shutdown
            raise
        except Exception:
            logger.exception("session %s: internal error", self.session_id)
            await send_error_and_close(
                self._ws,
                ProtocolError("internal_error", "internal server error", CloseCode.INTERNAL_ERROR),
            )
        finally:
            metrics.ACTIVE_SESSIONS.dec()
            metrics.SESSIONS.labels(outcome=outcome).inc()

    # -- receiving -------------------------------------------------------------------------

    async def _receive(self, timeout_s: float | None) -> str:
        """The next text frame; ``ClientGone`` on disconnect, ``ProtocolError`` on bad frames."""
        while True:
            try:
                if timeout_s is None:
                    message = await self._ws.receive()
                else:
                    # asyncio.timeout, not wait_for: 3.11's wait_for swallows a cancellation that
                    # races with a frame arriving, leaving the session stuck at teardown.
                    remaining = self._last_activity + timeout_s - time.monotonic()
                    async with asyncio.timeout(max(remaining, 0.0)):
                        message = await self._ws.receive()
            except TimeoutError:
                # Audio sent meanwhile counts as activity: a client listening is not idle.
                if self._last_activity + timeout_s > time.monotonic():
                    continue
                raise ProtocolError(
                    "timeout", f"no frame for {timeout_s:g} s", CloseCode.POLICY_VIOLATION
                ) from None
            except Exception as exc:  # the transport broke under us
                raise self._client_gone(str(exc)) from exc
            kind = message.get("type")
            if kind == "websocket.disconnect":
                raise self._client_gone(f"close code {message.get('code')}")
            if kind != "websocket.receive":
                continue
            self._last_activity = time.monotonic()
            text = message.get("text")
            if text is None:
                raise ProtocolError(
                    "unsupported_frame", "expected a text frame, got a binary frame"
                )
            return text

    async def _receive_config(self) -> SessionConfig:
        self._last_activity = time.monotonic()
        try:
            raw = await self._receive(self._limits.config_timeout_s)
        except ProtocolError as exc:
            if exc.error_type == "unsupported_frame":
                raise ProtocolError(
                    "invalid_config", "the first frame must be a JSON text frame, not binary"
                ) from None
            raise
        return parse_session_config(raw, self._voices, self._default_voice)

    async def _receive_text(self, config: SessionConfig, chunks: asyncio.Queue[Any]) -> None:
        """Feed frames to the text buffer until ``__END__``, then watch for a disconnect."""
        buffer = TextBuffer(buffer_size=config.buffer_size, max_chars=self._limits.max_chunk_chars)
        total_chars = 0
        while True:
            text = await self._receive(self._limits.idle_timeout_s)
            if len(text) > self._limits.max_frame_chars:
                raise ProtocolError(
                    "frame_too_large",
                    f"text frame exceeds {self._limits.max_frame_chars} characters",
                )
            if text.strip() == END_OF_INPUT:
                break
            total_chars += len(text)
            if total_chars > self._limits.max_session_chars:
                raise ProtocolError(
                    "session_too_large",
                    f"session text exceeds {self._limits.max_session_chars} characters",
                )
            now = time.monotonic()
            for chunk in buffer.push(text):
                chunks.put_nowait(_Chunk(chunk, now))
        now = time.monotonic()
        for chunk in buffer.flush():
            chunks.put_nowait(_Chunk(chunk, now))
        chunks.put_nowait(None)
        # The client only listens now; keep reading so a disconnect is seen at once even while
        # no audio is being sent (the engine is still producing the first tokens).
        while True:
            await self._receive(None)
            raise ProtocolError("frame_after_end", f"no frames are accepted after {END_OF_INPUT}")

    # -- synthesis and sending -------------------------------------------------------------

    async def _stream(self, config: SessionConfig) -> None:
        chunks: asyncio.Queue[Any] = asyncio.Queue()
        receiver = asyncio.create_task(self._receive_text(config, chunks), name="tts-receiver")
        sender = asyncio.create_task(self._generate_and_send(config, chunks), name="tts-sender")
        try:
            done, _ = await asyncio.wait({receiver, sender}, return_when=asyncio.FIRST_COMPLETED)
            if receiver in done and receiver.exception() is not None:
                self._abort_reason = _reason_for(receiver.exception())
                await _cancel(sender)
                raise receiver.exception()
            # All audio sent (or the sender failed, which this re-raises).
            await sender
        finally:
            await _cancel(receiver)
            await _cancel(sender)

    async def _generate_and_send(self, config: SessionConfig, chunks: asyncio.Queue[Any]) -> None:
        """Start generations ahead (bounded) and write their audio to the client in order."""
        slots = asyncio.Semaphore(1 + self._limits.lookahead_generations)
        engine_slots = asyncio.Semaphore(self._limits.engine_generations)
        ordered: asyncio.Queue[_Generation | Exception | None] = asyncio.Queue()
        started: list[_Generation] = []

        async def start_generations() -> None:
            try:
                while True:
                    chunk = await chunks.get()
                    if chunk is None:
                        ordered.put_nowait(None)
                        return
                    await slots.acquire()
                    await engine_slots.acquire()
                    generation = self._start_generation(config, chunk, engine_slots)
                    started.append(generation)
                    ordered.put_nowait(generation)
            except Exception as exc:  # hand it to the sender, which would otherwise wait forever
                ordered.put_nowait(exc)

        starter = asyncio.create_task(start_generations(), name="tts-starter")
        try:
            while True:
                generation = await ordered.get()
                if generation is None:
                    break
                if isinstance(generation, Exception):
                    raise generation
                try:
                    await self._send_generation(generation)
                finally:
                    started.remove(generation)
                    slots.release()
        except BaseException as exc:
            self._abort_reason = _reason_for(exc, default=self._abort_reason)
            raise
        finally:
            await _cancel(starter)
            for generation in started:
                self._aborted_generations += await generation.cancel(self._abort_reason)

    def _start_generation(
        self, config: SessionConfig, chunk: _Chunk, engine_slot: asyncio.Semaphore
    ) -> _Generation:
        self._generation_count += 1
        request_id = f"{self.session_id}-{self._generation_count}"
        params = dataclasses.replace(
            self._default_params,
            max_tokens=self._synth.max_tokens_for_text(chunk.text, config.max_tokens),
            **config.sampling_overrides(),
        )
        logger.debug("generation %s: %d chars", request_id, len(chunk.text))
        return _Generation(self._synth, chunk, config.voice, params, request_id, engine_slot)

    async def _send_generation(self, generation: _Generation) -> None:
        try:
            async for pcm in generation.audio():
                try:
                    await self._ws.send_bytes(pcm)
                except Exception as exc:
                    raise self._client_gone(f"send failed: {exc}") from exc
                self._last_activity = time.monotonic()
                metrics.AUDIO_BYTES_SENT.inc(len(pcm))
                if not self._first_audio_sent:
                    self._first_audio_sent = True
                    metrics.TIME_TO_FIRST_AUDIO.observe(
                        time.monotonic() - generation.chunk.ready_at
                    )
        except BaseException as exc:
            reason = _reason_for(exc, default=self._abort_reason)
            self._aborted_generations += await generation.cancel(reason)
            raise

    def _client_gone(self, detail: str) -> ClientGone:
        if self._gone_at is None:
            self._gone_at = time.monotonic()
        return ClientGone(detail)


def _reason_for(exc: BaseException | None, default: str = "client_gone") -> str:
    if isinstance(exc, ProtocolError):
        return "protocol_error"
    if isinstance(exc, EngineFailure):
        return "engine_error"
    if isinstance(exc, ClientGone):
        return "client_gone"
    if isinstance(exc, asyncio.CancelledError) or exc is None:
        return default
    return "internal_error"


async def _cancel(task: asyncio.Task[Any]) -> None:
    """Cancel a task and wait for its cleanup; its own exception is not ours to raise.

    ``asyncio.wait`` (unlike ``await task``) lets a cancellation of *our* task propagate.
    """
    if not task.done():
        task.cancel()
    await asyncio.wait({task})
    if not task.cancelled():
        task.exception()  # retrieved: it was reported by whoever owned the task
