"""One scheduler per model: the Whisper worker (finals before partials, newest partial wins,
batched across sessions) and the Silero VAD worker (batched across sessions)."""

from __future__ import annotations

import logging

import numpy as np

from speech_common.batching import BatchWorker
from speech_common.vad import SileroVad, VadStreamState

from .engine import TranscribeJob, Transcript, WhisperEngine
from .metrics import QUEUE_DEPTH

logger = logging.getLogger(__name__)

VadJob = tuple[VadStreamState, np.ndarray]


class Scheduler:
    def __init__(
        self, engine: WhisperEngine, vad: SileroVad, *, max_batch: int, vad_max_batch: int
    ):
        self.engine = engine
        self.whisper: BatchWorker[TranscribeJob, Transcript] = BatchWorker(
            "whisper", engine.run, max_batch=max_batch, batch_key=engine.batch_key
        )
        self.vad: BatchWorker[VadJob, np.ndarray] = BatchWorker(
            "silero-vad", vad.probabilities, max_batch=vad_max_batch
        )
        QUEUE_DEPTH.set_function(lambda: self.whisper.queue_depth)

    def start(self) -> Scheduler:
        self.whisper.start()
        self.vad.start()
        return self

    @property
    def healthy(self) -> bool:
        return self.whisper.healthy and self.vad.healthy

    def stop(self) -> None:
        self.whisper.stop()
        self.vad.stop()

    def forget(self, session_id: str) -> None:
        """A session ended: drop its queued work."""
        dropped = self.whisper.cancel_stream(session_id) + self.vad.cancel_stream(session_id)
        if dropped:
            logger.info("session %s: dropped %d queued jobs", session_id, dropped)
