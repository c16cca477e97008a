"""Cross-stream batching: one worker thread runs queued jobs from many streams in batches.

Used for every model call (Whisper, Silero VAD, SNAC) so that the event loop never blocks and
one model serves all sessions. Jobs are submitted from the event loop and resolved there.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

logger = logging.getLogger(__name__)

SLOW_BATCH_S = (
    0.5  # batches slower than this (run or queue wait) are logged: the replica is overloaded
)

P = TypeVar("P")  # job payload
R = TypeVar("R")  # job result


class Superseded(Exception):
    """A queued job was replaced by a newer one with the same replace key (e.g. a stale partial)."""


class WorkerStopped(Exception):
    """The worker stopped before the job ran."""


@dataclass(eq=False)
class _Job(Generic[P]):
    payload: P
    stream_id: Hashable
    priority: int
    replace_key: Hashable | None
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    enqueued_at: float = field(default_factory=time.monotonic)


class BatchWorker(Generic[P, R]):
    """Runs ``run_batch(payloads) -> results`` on one thread over jobs from all streams.

    - Lower ``priority`` runs first; a batch only holds jobs of one priority and one
      ``batch_key(payload)``, in submission order (so each stream gets its results in order).
    - ``run_batch`` returns one result per payload; an ``Exception`` instance in that list fails
      only its own job. If ``run_batch`` raises, each job of the batch is retried alone, so one
      bad job never fails the others.
    - ``max_wait_s`` > 0 waits that long for a batch to fill up to ``max_batch`` (throughput);
      0 runs whatever is queued at once (latency).
    """

    def __init__(
        self,
        name: str,
        run_batch: Callable[[list[P]], Sequence[R | BaseException]],
        *,
        max_batch: int = 8,
        max_wait_s: float = 0.0,
        batch_key: Callable[[P], Hashable] | None = None,
    ) -> None:
        self.name = name
        self._run_batch = run_batch
        self._max_batch = max_batch
        self._max_wait_s = max_wait_s
        self._batch_key = batch_key or (lambda _payload: None)
        self._queue: list[_Job[P]] = []
        self._cond = threading.Condition()
        self._stopped = False
        self._thread: threading.Thread | None = None
        self.died: BaseException | None = None  # what killed the worker thread, if anything
        self._running: list[_Job[P]] = []  # the batch in flight (worker thread only)
        self.batches_run = 0
        self.jobs_run = 0

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> BatchWorker[P, R]:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
            self._thread.start()
        return self

    @property
    def healthy(self) -> bool:
        """Started, not stopped, and its thread is alive (a dead worker fails every session)."""
        return (
            self._thread is not None
            and self._thread.is_alive()
            and not self._stopped
            and self.died is None
        )

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            pending, self._queue = self._queue, []
            self._cond.notify_all()
        for job in pending:
            self._resolve(job, exc=WorkerStopped(self.name))
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    # -- submission (event loop side) ----------------------------------------------------------
    def submit(
        self,
        payload: P,
        *,
        stream_id: Hashable,
        priority: int = 0,
        replace_key: Hashable | None = None,
    ) -> asyncio.Future:
        """Queue a job; the returned future resolves on the caller's loop with its result."""
        loop = asyncio.get_running_loop()
        job = _Job(payload, stream_id, priority, replace_key, loop, loop.create_future())
        replaced: list[_Job[P]] = []
        with self._cond:
            if self._stopped:
                raise WorkerStopped(self.name)
            if replace_key is not None:
                replaced = [
                    j
                    for j in self._queue
                    if j.stream_id == stream_id and j.replace_key == replace_key
                ]
                self._queue = [j for j in self._queue if j not in replaced]
            self._queue.append(job)
            self._cond.notify()
        for old in replaced:
            self._resolve(old, exc=Superseded())
        return job.future

    def cancel_stream(self, stream_id: Hashable) -> int:
        """Drop every queued job of a stream (disconnect); returns how many were dropped."""
        with self._cond:
            dropped = [j for j in self._queue if j.stream_id == stream_id]
            self._queue = [j for j in self._queue if j.stream_id != stream_id]
        for job in dropped:
            try:
                job.loop.call_soon_threadsafe(job.future.cancel)
            except RuntimeError:  # that session's loop is closed
                pass
        return len(dropped)

    @property
    def queue_depth(self) -> int:
        with self._cond:
            return len(self._queue)

    def oldest_wait_s(self, priority: int | None = None) -> float:
        """How long the oldest queued job (of ``priority``, if given) has waited; 0 if none."""
        now = time.monotonic()
        with self._cond:
            waits = [
                now - j.enqueued_at
                for j in self._queue
                if priority is None or j.priority == priority
            ]
        return max(waits, default=0.0)

    # -- worker thread -------------------------------------------------------------------------
    def _take_batch(self) -> list[_Job[P]]:
        """Pick the most urgent jobs (same priority and batch key), in FIFO order."""
        with self._cond:
            while not self._queue and not self._stopped:
                self._cond.wait()
            if self._stopped:
                return []
            deadline = time.monotonic() + self._max_wait_s
            while True:
                # Waiting releases the lock: stop() or cancel_stream() may have emptied the queue.
                if self._stopped or not self._queue:
                    return []
                head = min(self._queue, key=lambda j: (j.priority, j.enqueued_at))
                key = self._batch_key(head.payload)
                batch = [
                    j
                    for j in self._queue
                    if j.priority == head.priority and self._batch_key(j.payload) == key
                ][: self._max_batch]
                remaining = deadline - time.monotonic()
                if len(batch) >= self._max_batch or remaining <= 0:
                    break
                self._cond.wait(timeout=remaining)
            taken = set(map(id, batch))
            self._queue = [j for j in self._queue if id(j) not in taken]
            return batch

    def _loop(self) -> None:
        try:
            self._serve()
        except BaseException as exc:  # a bug or a fatal signal in the worker: never silent
            self.died = exc
            logger.critical(
                "%s: worker thread died; the replica is unhealthy", self.name, exc_info=exc
            )
            # No session may wait for a thread that is gone: fail the batch in flight and the
            # queued jobs.
            for job in self._running:
                self._resolve(job, exc=WorkerStopped(f"{self.name} died: {exc!r}"))
            self.stop()

    def _serve(self) -> None:
        while True:
            batch = self._take_batch()
            if not batch:
                if self._stopped:
                    return
                continue
            live = [j for j in batch if not j.future.cancelled()]
            if live:
                self._running = live
                self._execute(live)
                self._running = []

    def _execute(self, batch: list[_Job[P]]) -> None:
        started = time.monotonic()
        try:
            try:
                results = list(self._run_batch([j.payload for j in batch]))
            finally:
                ran = time.monotonic() - started
            waited = started - min(j.enqueued_at for j in batch)
            if ran > SLOW_BATCH_S or waited > SLOW_BATCH_S:
                logger.warning(
                    "%s: batch of %d ran %.3f s after waiting %.3f s (queue %d)",
                    self.name,
                    len(batch),
                    ran,
                    waited,
                    self.queue_depth,
                )
            if len(results) != len(batch):
                raise RuntimeError(f"{self.name}: {len(results)} results for {len(batch)} jobs")
        except Exception as exc:  # isolate the failing job(s)
            if len(batch) == 1:
                logger.exception("%s: job failed", self.name)
                self._resolve(batch[0], exc=exc)
                return
            logger.warning(
                "%s: batch of %d failed (%s); retrying jobs alone", self.name, len(batch), exc
            )
            for job in batch:
                self._execute([job])
            return
        self.batches_run += 1
        self.jobs_run += len(batch)
        for job, result in zip(batch, results, strict=True):
            if isinstance(result, BaseException):
                self._resolve(job, exc=result)
            else:
                self._resolve(job, result=result)

    @staticmethod
    def _resolve(job: _Job[Any], *, result: Any = None, exc: BaseException | None = None) -> None:
        def settle() -> None:
            if job.future.done():
                return
            if exc is not None:
                job.future.set_exception(exc)
            else:
                job.future.set_result(result)

        try:
            job.loop.call_soon_threadsafe(settle)
        except RuntimeError:  # the session's loop is closed: nobody is waiting any more
            pass
