"""Truss entry point: load Orpheus + SNAC once in load(), serve each WebSocket as a TTS session."""

import logging
from typing import Any

from starlette.requests import Request

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
                max_first_audio_s=settings.admission_max_first_audio_s,
                min_speed_x=settings.admission_min_speed_x,
            )
        )
        self._default_params = SamplingParams()
        logger.info("loading Orpheus runtime (%s)", settings)
        self._runtime = load_runtime(settings)
        logger.info("Orpheus ready")

    def is_healthy(self) -> bool:
        """False once the engine (vLLM's engine core, its loop thread), the SNAC decode worker or
        an audio encode worker has died: every session would fail, so the replica must be
        restarted."""
        return self._runtime is not None and self._runtime.is_healthy()

    def _session(self) -> Any:
        """One session (a WebSocket's, or an HTTP request's) of the protocol core."""
        from orpheus_tts.prompt import DEFAULT_VOICE, VOICES
        from orpheus_tts.session import TTSSession

        return TTSSession(
            self._runtime.synthesizer,
            self._default_params,
            VOICES,
            DEFAULT_VOICE,
            self._limits,
            self._gate,
            self._admit,
            self._runtime.aligner,
            self._runtime.encoder,
        )

    def _admit(self, active: int) -> Any:
        """None to admit one more session, else the 1013 error: the SNAC queue, the engine's
        first audio and generation speed (orpheus_tts.pace), the capacity."""
        import time

        pace, now = self._runtime.synthesizer.pace, time.monotonic()
        return self._admission.check(
            active,
            self._runtime.decoder.oldest_wait_s(),
            pace.first_audio_wait_s(now),
            pace.speed_x(now),
        )


class Model(_Orpheus):
    """The WebSocket flavour (``config.yaml``): Baseten's protocol, and the dialects."""

    async def websocket(self, websocket: Any) -> None:
        await self._session().websocket(websocket)


class OrpheusSpeech(_Orpheus):
    """The HTTP flavour (``config_http.yaml``): Together's, Baseten's Orpheus and Fish Audio's
    speech bodies in (``orpheus_tts.http_speech``), audio or server-sent events out; each
    request is one session of the same core."""

    # The raw request: Truss would parse a JSON body itself and answer a MessagePack one (Fish's
    # clients send it) with a 500; a method taking only the request gets the bytes.
    async def predict(self, request: Request) -> Any:
        from starlette.responses import JSONResponse, Response, StreamingResponse

        from orpheus_tts.dialects.http import speech_chunks
        from orpheus_tts.http_speech import HttpError, Vendor, finish_wav, parse_request, sse_events

        speech: Vendor | None = None
        try:
            speech = parse_request(await request.body(), request.headers.get("content-type", ""))
            chunks = speech_chunks(speech, self._session())
            if speech.whole_wav:
                audio = b"".join([c async for c in chunks if isinstance(c, bytes)])
                return Response(finish_wav(audio), media_type=speech.media_type)
            first = await anext(chunks, b"")  # errors before any audio: a status code
        except HttpError as exc:
            body = speech.error_body(exc) if speech is not None else exc.body
            return JSONResponse(body, status_code=exc.status)

        async def rest():
            if first:
                yield first
            async for chunk in chunks:
                yield chunk

        if speech.sse:
            return StreamingResponse(sse_events(rest()), media_type="text/event-stream")
        return StreamingResponse(_audio_only(rest()), media_type=speech.media_type)


async def _audio_only(chunks: Any) -> Any:
    """The audio of a response that is only audio (word timestamps are events of the SSE
    stream), cut short if the session fails mid-way (the status line went out already)."""
    from orpheus_tts.http_speech import HttpError

    try:
        async for chunk in chunks:
            if isinstance(chunk, bytes):
                yield chunk
    except HttpError as exc:
        logger.warning("speech request failed mid-stream: %s", exc.message)
