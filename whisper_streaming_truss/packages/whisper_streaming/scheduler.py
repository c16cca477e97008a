"""One scheduler per model: the Whisper worker (finals before partials, newest partial wins,
batched across sessions), the Silero VAD worker and the Smart Turn worker (each batched across
sessions), admission control and load shedding (partials go first when finals queue up)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Hashable

import numpy as np

from speech_common.admission import Admission, AdmissionPolicy
from speech_common.batching import BatchWorker
from speech_common.turn import SmartTurn
from speech_common.vad import SileroVad, VadJob, VadResult
from speech_common.ws import ProtocolError

from .engine import JobKind, TranscribeJob, Transcript, WhisperEngine
from .metrics import PARTIALS_SHED, QUEUE_DEPTH

logger = logging.getLogger(__name__)

# Under pressure partials are shed (dropped at submission) while a final has waited this long:
# a partial is a preview, a final is the answer.
SHED_PARTIALS_WAIT_S = 0.25
UNLIMITED = 1_000_000  # no session bound: only the load and the queue wait refuse


class Shed(Exception):
    """A partial was not queued: the replica is busy with finals."""


class Scheduler:
    def __init__(
        self,
        engine: WhisperEngine,
        vad: SileroVad,
        *,
        max_batch: int,
        vad_max_batch: int,
        turn: SmartTurn | None = None,
        turn_max_batch: int = 8,
        admission: AdmissionPolicy | None = None,
        shed_partials_wait_s: float = SHED_PARTIALS_WAIT_S,
    ):
        self.engine = engine
        self.whisper: BatchWorker[TranscribeJob, Transcript] = BatchWorker(
            "whisper", engine.run, max_batch=max_batch, batch_key=engine.batch_key
        )
        self.vad: BatchWorker[VadJob, VadResult] = BatchWorker(
            "silero-vad", vad.step, max_batch=vad_max_batch
        )
        # None: no session may ask for end-of-turn detection (the model was not loaded).
        self.turn: BatchWorker[np.ndarray, float] | None = (
            BatchWorker("smart-turn", turn.probabilities, max_batch=turn_max_batch)
            if turn is not None
            else None
        )
        self.admission = Admission(admission or AdmissionPolicy(capacity_sessions=UNLIMITED))
        self.shed_partials_wait_s = shed_partials_wait_s
        QUEUE_DEPTH.set_function(lambda: self.whisper.queue_depth)

    @property
    def _workers(self) -> list[BatchWorker]:
        return [w for w in (self.whisper, self.vad, self.turn) if w is not None]

    def start(self) -> Scheduler:
        for worker in self._workers:
            worker.start()
        return self

    @property
    def healthy(self) -> bool:
        return all(w.healthy for w in self._workers)

    def stop(self) -> None:
        for worker in self._workers:
            worker.stop()

    def final_wait_s(self) -> float:
        """How long the oldest queued final has waited (the replica's lag behind its clients)."""
        return self.whisper.oldest_wait_s(priority=int(JobKind.FINAL))

    def lag_s(self) -> float:
        """How far the sessions are behind real time: the oldest final or audio window waiting
        (partials are elastic: shed first, never a reason to refuse)."""
        return max(self.final_wait_s(), self.vad.oldest_wait_s())

    def admission_error(self, active: int) -> ProtocolError | None:
        """None to admit a new session; else the 1013 error (with a retry hint) to answer."""
        return self.admission.check(active, self.lag_s())

    def submit_transcription(
        self,
        job: TranscribeJob,
        *,
        stream_id: Hashable,
        priority: int,
        replace_key: Hashable | None,
    ) -> asyncio.Future:
        if job.kind is JobKind.PARTIAL and self.final_wait_s() > self.shed_partials_wait_s:
            PARTIALS_SHED.inc()
            future = asyncio.get_running_loop().create_future()
            future.set_exception(Shed())
            return future
        return self.whisper.submit(
            job, stream_id=stream_id, priority=priority, replace_key=replace_key
        )

    def forget(self, session_id: str) -> None:
        """A session ended: drop its queued work."""
        dropped = sum(w.cancel_stream(session_id) for w in self._workers)
        if dropped:
            logger.info("session %s: dropped %d queued jobs", session_id, dropped)
