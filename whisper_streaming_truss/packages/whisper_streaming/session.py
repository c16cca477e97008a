"""One WebSocket session of streaming transcription: admission, then the typed core behind its
codec (Baseten's protocol, or Deepgram's or Deepgram Flux's when the handshake's query string
says so) on the shared
driver (``speech_common.driver.run_session``), which always releases the session's slot, gauge
and scheduler state however the session ends."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Hashable
from typing import Any

from speech_common.driver import Close, Command, Send, Submit, WebSocketTransport, run_session
from speech_common.ws import SessionGate

from . import metrics
from .codec_session import CodecSession
from .dialects import choose_codec, query_items
from .protocol import TURN_WORKER, VAD_WORKER, CoreLimits, SttCore
from .scheduler import Scheduler
from .settings import WhisperSettings

logger = logging.getLogger(__name__)


class SchedulerJobs:
    """The driver's JobRunner over the Whisper and VAD workers."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler

    def submit(self, command: Submit, stream_id: Hashable) -> asyncio.Future:
        if command.worker == VAD_WORKER:
            return self.scheduler.vad.submit(command.payload, stream_id=stream_id)
        if command.worker == TURN_WORKER:
            if self.scheduler.turn is None:
                raise RuntimeError("this deployment loaded no turn model")
            return self.scheduler.turn.submit(command.payload, stream_id=stream_id)
        return self.scheduler.submit_transcription(
            command.payload,
            stream_id=stream_id,
            priority=command.priority,
            replace_key=command.replace_key,
        )

    def stream(self, command: Any, stream_id: Hashable) -> Any:
        raise NotImplementedError("the STT core starts no streaming jobs")

    def forget(self, stream_id: Hashable) -> None:
        self.scheduler.forget(str(stream_id))


class StreamingSession:
    def __init__(
        self, websocket: Any, scheduler: Scheduler, settings: WhisperSettings, gate: SessionGate
    ) -> None:
        self.ws = websocket
        self.scheduler = scheduler
        self.settings = settings
        self.gate = gate
        self.id = uuid.uuid4().hex[:12]

    def core(self) -> SttCore:
        return SttCore(core_limits(self.settings), self.scheduler.engine.supported_languages)

    async def run(self) -> None:
        core = self.core()
        codec = choose_codec(
            core, query_items(self.ws), model_name=_model_name(self.settings.whisper_model)
        )
        refusal = self.scheduler.admission_error(self.gate.active) or (
            None if self.gate.try_enter() else self.gate.full_error()
        )
        if refusal is not None:
            # Refused after the socket was accepted (Truss accepts before the model sees it): a
            # client may have sent its metadata already and reads this error frame and 1013.
            logger.info("session %s refused: %s", self.id, refusal.message)
            metrics.SESSION_ERRORS.labels(refusal.error_type).inc()
            metrics.SESSIONS_REFUSED.inc()
            await _refuse(WebSocketTransport(self.ws), codec.refusal(refusal))
            return
        metrics.ACTIVE_SESSIONS.inc()

        def release() -> None:
            self.gate.leave()
            metrics.ACTIVE_SESSIONS.dec()

        session = CodecSession(core, codec)
        await run_session(self.ws, session, SchedulerJobs(self.scheduler), self.id, release)


def core_limits(s: WhisperSettings) -> CoreLimits:
    """A session core's limits from the deployment's settings."""
    return CoreLimits(
        first_frame_timeout_s=s.first_frame_timeout_s,
        max_buffered_audio_s=s.max_buffered_audio_s,
        speculative_finals=s.speculative_finals,
        speculation_lead_ms=s.speculation_lead_ms,
        preroll_ms=s.preroll_ms,
        postroll_ms=s.postroll_ms,
        stream_head_ms=s.stream_head_ms,
        pause_preroll_ms=s.pause_preroll_ms,
        pause_preroll_after_ms=s.pause_preroll_after_ms,
        whisper_beam_width=s.whisper_beam_width,
    )


def _model_name(whisper_model: str) -> str:
    """The deployment's Whisper as a vendor dialect names it ("whisper-large-v3-turbo")."""
    return whisper_model.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1] or "whisper"


async def _refuse(transport: WebSocketTransport, commands: list[Command]) -> None:
    """A refusal's frames and close, best effort (the client may be gone)."""
    for command in commands:
        if isinstance(command, Send):
            try:
                await transport.send(command.message)
            except Exception:  # client already gone
                logger.debug("could not send the refusal")
        elif isinstance(command, Close):
            await transport.close(command.code, command.reason, command.error)
