"""One TTS session: admission, then the typed core (``orpheus_tts.protocol.TtsCore``) behind its
codec (``orpheus_tts.dialects``) on the shared driver (``speech_common.driver``), over a
WebSocket or an HTTP request (``orpheus_tts.dialects.http``).

* Text keeps being read while audio streams; the next chunk's generation starts while the
  current one is still being sent (``lookahead_generations``). By default a session has one
  request in the engine at a time: the next starts as soon as the current one has finished
  *generating* (its audio is usually still being sent, as generation outpaces real time), so a
  session never takes a second engine slot from another session's first sentence.
* However the session ends, the driver cancels its generations (closing a generation's
  ``Synthesizer.stream`` aborts the engine request and its queued decode work), waits until
  they are released, and frees the session's slot and gauge.
* Client errors end with a typed error frame and 1008, engine errors with 1011, success with 1000.
  Nothing here is shared between sessions except the synthesizer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Collection, Hashable
from typing import Any, Protocol

from orpheus_tts import metrics
from orpheus_tts.audio_format import ENCODE_WORKER
from orpheus_tts.codec_session import CodecSession
from orpheus_tts.dialects import Codec, choose_codec
from orpheus_tts.protocol import GenerationRequest, TtsCore
from orpheus_tts.settings import SessionLimits
from speech_common.driver import StartStream, Transport, WebSocketTransport, run_transport
from speech_common.ws import ProtocolError, SessionGate

logger = logging.getLogger(__name__)


class Synthesizer(Protocol):
    """What the session needs from ``orpheus_tts.synth.Synthesizer``."""

    def stream(self, text: str, voice: str, params: Any, request_id: str) -> AsyncIterator[bytes]:
        """PCM s16le 24 kHz mono chunks of one generation; closing it aborts the generation."""
        ...

    def max_tokens_for_text(self, text: str, client_max_tokens: int) -> int:
        """The token budget for one chunk of text, at most the client's."""
        ...


class SynthJobs:
    """The driver's JobRunner: each generation is a streaming job over ``Synthesizer.stream``
    (closing it, on a cancel, aborts the engine request and its queued decode work)."""

    def __init__(self, synthesizer: Synthesizer, aligner: Any = None, encoder: Any = None) -> None:
        self.synthesizer = synthesizer
        self.aligner = aligner  # orpheus_tts.alignment.AlignService, or None
        self.encoder = encoder  # orpheus_tts.audio_format.EncodeService, or None

    def submit(self, command: Any, stream_id: Hashable) -> asyncio.Future:
        """A one-result job: a generation's word alignment (the aligner's worker thread), or
        audio to encode with an FFmpeg codec (an encode worker)."""
        if command.worker == ENCODE_WORKER:
            if self.encoder is None:
                raise RuntimeError("no audio encode workers on this deployment")
            return self.encoder.submit(command.payload, stream_id)
        if self.aligner is None:
            raise RuntimeError("no aligner on this deployment")
        return self.aligner.submit(command.payload, stream_id)

    async def stream(self, command: StartStream, stream_id: Hashable) -> AsyncIterator[bytes]:
        request: GenerationRequest = command.payload
        started = time.monotonic()
        first = True
        metrics.ACTIVE_GENERATIONS.inc()
        metrics.GENERATIONS.inc()
        try:
            stream = self.synthesizer.stream(
                request.text, request.voice, request.params, request.request_id
            )
            async with contextlib.aclosing(stream):
                async for pcm in stream:
                    if first and pcm:
                        metrics.GENERATION_FIRST_AUDIO.observe(time.monotonic() - started)
                        first = False
                    yield pcm
        finally:
            metrics.ACTIVE_GENERATIONS.dec()

    def forget(self, stream_id: Hashable) -> None:
        # Generations are cancelled by the driver; queued alignments and encodes are dropped here.
        if self.aligner is not None:
            self.aligner.cancel_stream(stream_id)
        if self.encoder is not None:
            self.encoder.cancel_stream(stream_id)


class TTSSession:
    """Serves one connection: admission, then the core behind its codec on the shared driver."""

    def __init__(
        self,
        synthesizer: Synthesizer,
        default_params: Any,
        voices: Collection[str],
        default_voice: str,
        limits: SessionLimits | None = None,
        gate: SessionGate | None = None,
        admit: Callable[[int], ProtocolError | None] | None = None,
        aligner: Any = None,
        encoder: Any = None,  # orpheus_tts.audio_format.EncodeService: mp3, opus, G.711
    ) -> None:
        self._aligner = aligner
        self._encoder = encoder
        self._synth = synthesizer
        self._default_params = default_params
        self._voices = frozenset(voices)
        self._default_voice = default_voice
        self._limits = limits or SessionLimits()
        self._gate = gate
        self._admit = admit  # open sessions -> None to admit one more, else the 1013 to send
        self.session_id = uuid.uuid4().hex[:16]

    async def websocket(self, websocket: Any) -> None:
        """A WebSocket session: its dialect from the handshake's query string or first frame."""
        query = dict(getattr(websocket, "query_params", None) or {})
        dialect = self._limits.dialect
        await self.run(
            WebSocketTransport(websocket), lambda core: choose_codec(core, query, dialect)
        )

    async def run(self, transport: Transport, codec: Callable[[TtsCore], Codec]) -> None:
        """Run the whole session, always ending with a close (or a gone client)."""
        active = self._gate.active if self._gate is not None else 0
        refusal = self._admit(active) if self._admit is not None else None
        if refusal is None and self._gate is not None and not self._gate.try_enter():
            refusal = self._gate.full_error()
        if refusal is not None:
            metrics.SESSIONS.labels(outcome="overloaded").inc()
            logger.warning("session %s refused: %s", self.session_id, refusal.message)
            await transport.close(refusal.close_code, refusal.message, refusal)
            return
        metrics.ACTIVE_SESSIONS.inc()
        core = TtsCore(
            self._limits,
            self._voices,
            self._default_voice,
            self._default_params,
            self._synth.max_tokens_for_text,
            self.session_id,
            word_timestamps_available=self._aligner is not None,
        )

        def release() -> None:
            if self._gate is not None:
                self._gate.leave()
            metrics.ACTIVE_SESSIONS.dec()

        session = CodecSession(core, codec(core))
        outcome = "cancelled"  # server shutdown, unless the session ends below
        try:
            clean = await run_transport(
                transport,
                session,
                SynthJobs(self._synth, self._aligner, self._encoder),
                self.session_id,
                release,
            )
            outcome = core.outcome if clean else "internal_error"
            if core.aborted_generations and core.gone_at is not None:
                # From the disconnect to every engine request released (run_transport waited).
                metrics.ABORT_SECONDS.observe(asyncio.get_running_loop().time() - core.gone_at)
            if outcome == "client_gone":
                logger.info(
                    "session %s: client gone, %d generation(s) aborted",
                    self.session_id,
                    core.aborted_generations,
                )
        finally:
            metrics.SESSIONS.labels(outcome=outcome).inc()
