"""Truss entry point: load the model once, hand each WebSocket to a streaming session."""

from __future__ import annotations

import logging
from typing import Any

from starlette.requests import Request

logger = logging.getLogger(__name__)


class Model:
    def __init__(self, **kwargs: Any) -> None:
        self._config = kwargs.get("config", {})
        self._scheduler = None
        self._settings = None
        self._gate = None

    def load(self) -> None:
        from whisper_streaming.settings import WhisperSettings

        settings = WhisperSettings.from_metadata(self._config.get("model_metadata"))
        if settings.whisper_device == "cuda":
            from whisper_streaming.cuda_libs import preload_cuda_libraries

            preload_cuda_libraries()

        from faster_whisper import WhisperModel

        from speech_common.admission import AdmissionPolicy
        from speech_common.turn import SmartTurn
        from speech_common.vad import SileroVad
        from speech_common.ws import SessionGate
        from whisper_streaming.engine import WhisperEngine
        from whisper_streaming.scheduler import Scheduler

        logger.info(
            "loading Whisper %s on %s (%s)",
            settings.whisper_model,
            settings.whisper_device,
            settings.whisper_compute_type,
        )
        model = WhisperModel(
            settings.model_path(),
            device=settings.whisper_device,
            compute_type=settings.whisper_compute_type,
            cpu_threads=settings.whisper_cpu_threads,
        )
        engine = WhisperEngine(model, encoder_context_s=settings.whisper_encoder_context_s)
        self._scheduler = Scheduler(
            engine,
            SileroVad(),
            max_batch=settings.whisper_max_batch,
            vad_max_batch=settings.vad_max_batch,
            turn=SmartTurn(),
            turn_max_batch=settings.turn_max_batch,
            admission=AdmissionPolicy(
                capacity_sessions=settings.admission_capacity_sessions,
                max_queue_wait_s=settings.admission_max_queue_wait_s,
            ),
        ).start()
        self._settings = settings
        self._gate = SessionGate(settings.max_sessions)
        _warm_up(engine)
        logger.info("Whisper ready")

    def is_healthy(self) -> bool:
        """False once a model worker thread has died: the replica cannot serve and is restarted."""
        return self._scheduler is not None and self._scheduler.healthy

    async def websocket(self, websocket: Any) -> None:
        from whisper_streaming.session import StreamingSession

        await StreamingSession(websocket, self._scheduler, self._settings, self._gate).run()


def _warm_up(engine: Any) -> None:
    """One partial and one final on silence so the first real request is not the slow one."""
    import numpy as np

    from whisper_streaming.engine import DecodeOptions, JobKind, TranscribeJob

    audio = np.zeros(16000, np.float32)
    language = None if engine.multilingual else "en"
    for kind in (JobKind.PARTIAL, JobKind.FINAL):
        engine.run([TranscribeJob(kind, audio, DecodeOptions(language=language))])


class WhisperTranscriptions:
    """The HTTP flavour (``config_http.yaml``): OpenAI's transcription request (a multipart file
    upload, ``whisper_streaming.openai_api``) on the same engine and scheduler as the streams,
    loaded as ``Model`` loads them. Truss takes either ``predict`` or ``websocket``, so this
    class holds a ``Model`` instead of being one."""

    def __init__(self, **kwargs: Any) -> None:
        self._model = Model(**kwargs)

    def load(self) -> None:
        self._model.load()

    def is_healthy(self) -> bool:
        return self._model.is_healthy()

    async def predict(self, request: Request) -> Any:
        from whisper_streaming.openai_api import respond

        return await respond(request, self._model._scheduler, self._model._settings)


# The raw request, not a parsed JSON body: Truss passes it only to a predict whose one parameter
# is annotated with the Request class, and `from __future__ import annotations` made it a string.
WhisperTranscriptions.predict.__annotations__["request"] = Request
