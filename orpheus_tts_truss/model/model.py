"""Truss entry point: load Orpheus + SNAC once in load(), serve each WebSocket as a TTS session."""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)


class _Orpheus:
    """What both flavours share: the runtime loaded once, health, admission, sessions."""

    def __init__(self, **kwargs: Any) -> None:
        # Nothing heavy here: Truss builds the object before the weights are needed.
        self._config = kwargs.get("config") or {}
        self._secrets = kwargs.get("secrets") or {}
        self._runtime: Any = None
        self._limits: Any = None
        self._gate: Any = None
        self._default_params: Any = None
        self._admission: Any = None

    def load(self) -> None:
        from orpheus_tts.engine import SamplingParams
        from orpheus_tts.runtime import load_runtime
        from orpheus_tts.settings import OrpheusSettings
        from speech_common.admission import Admission, AdmissionPolicy
        from speech_common.ws import SessionGate

        settings = OrpheusSettings.from_metadata(self._config.get("model_metadata"))
        self._limits = settings  # the session limits are part of the one settings model
        self._gate = SessionGate(settings.max_sessions)
        self._admission = Admission(
            AdmissionPolicy(
                capacity_sessions=settings.admission_capacity_sessions,
                max_queue_wait_s=settings.admission_max_queue_wait_s,
                target_utilisation=settings.admission_target_utilisation,
            )
        )
        self._default_params = SamplingParams()
        logger.info("loading Orpheus runtime (%s)", settings)
        self._runtime = load_runtime(settings)
        logger.info("Orpheus ready")

    def is_healthy(self) -> bool:
        """False once the engine (vLLM's engine core, its loop thread) or the SNAC decode worker
        has died: every session would fail, so the replica must be restarted."""
        return self._runtime is not None and self._runtime.is_healthy()

    async def _session(self, websocket: Any) -> None:
        """One session of the protocol core on a WebSocket (or the HTTP flavour's in-memory
        socket)."""
        from orpheus_tts.prompt import DEFAULT_VOICE, VOICES
        from orpheus_tts.session import TTSSession

        session = TTSSession(
            websocket,
            self._runtime.synthesizer,
            self._default_params,
            VOICES,
            DEFAULT_VOICE,
            self._limits,
            self._gate,
            self._admit,
            self._runtime.aligner,
        )
        await session.run()

    def _admit(self, active: int) -> Any:
        """None to admit one more session, else the 1013 error (SNAC is the shared bottleneck)."""
        decoder = self._runtime.decoder
        utilisation = decoder.utilisation(self._admission.policy.window_s)
        return self._admission.check(active, utilisation, decoder.oldest_wait_s())


class Model(_Orpheus):
    """The WebSocket flavour (``config.yaml``): Baseten's protocol, and the dialects."""

    async def websocket(self, websocket: Any) -> None:
        await self._session(websocket)


class OrpheusSpeech(_Orpheus):
    """The HTTP flavour (``config_http.yaml``): Together's ``/v1/audio/speech`` body in, audio
    (or server-sent events with ``stream``) out; each request is one session of the same core."""

    async def predict(self, model_input: Any) -> Any:
        from starlette.responses import JSONResponse, Response, StreamingResponse

        from orpheus_tts.http_speech import (
            CONTENT_TYPES,
            HttpError,
            finish_wav,
            parse_request,
            speech_chunks,
            sse_events,
        )

        try:
            request = parse_request(model_input)
            chunks = speech_chunks(request, self._session)
            if request.stream:
                first = await anext(chunks, b"")  # errors before any audio: a status code

                async def rest():
                    if first:
                        yield first
                    async for chunk in chunks:
                        yield chunk

                return StreamingResponse(sse_events(rest()), media_type="text/event-stream")
            audio = b"".join([c async for c in chunks if isinstance(c, bytes)])
        except HttpError as exc:
            return JSONResponse(exc.body, status_code=exc.status)
        if request.response_format == "wav":
            audio = finish_wav(audio)
        return Response(audio, media_type=CONTENT_TYPES[request.response_format])
