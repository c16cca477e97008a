"""speech_common.batching.BatchWorker: ordering, batching rules, superseding, failure isolation.

Timing is made deterministic by a run_batch that blocks on a threading.Event: while the worker is
busy with a "blocker" job, the test queues jobs, then releases it and checks what ran together.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from speech_common.batching import BatchWorker, Superseded, WorkerStopped

WAIT_S = 5.0  # generous upper bound for anything that should happen "at once"


class Runner:
    """run_batch that records every batch and holds the ones containing "block" until released."""

    def __init__(self) -> None:
        self.batches: list[list[Any]] = []
        self.gate = threading.Event()
        self.entered = threading.Event()

    def __call__(self, payloads: list[Any]) -> Sequence[Any]:
        self.batches.append(list(payloads))
        if "block" in payloads:
            self.entered.set()
            assert self.gate.wait(WAIT_S), "test never released the worker"
        results: list[Any] = []
        for p in payloads:
            if p == "boom":
                raise RuntimeError("boom in batch")
            results.append(ValueError(f"bad {p}") if p == "bad" else f"done:{p}")
        return results

    async def wait_entered(self) -> None:
        assert await asyncio.to_thread(self.entered.wait, WAIT_S)

    def ran(self) -> list[list[Any]]:
        return [b for b in self.batches if "block" not in b]


@pytest.fixture
def runner() -> Runner:
    return Runner()


@pytest.fixture
def make_worker(runner: Runner) -> Iterator[Any]:
    workers: list[BatchWorker] = []

    def make(**kwargs: Any) -> BatchWorker:
        worker = BatchWorker("test", runner, **kwargs).start()
        workers.append(worker)
        return worker

    yield make
    runner.gate.set()
    for worker in workers:
        worker.stop()


async def _blocked(worker: BatchWorker, runner: Runner, stream: str = "blocker") -> asyncio.Future:
    fut = worker.submit("block", stream_id=stream)
    await runner.wait_entered()
    return fut


async def _gather(*futs: asyncio.Future) -> list[Any]:
    return await asyncio.wait_for(asyncio.gather(*futs, return_exceptions=True), WAIT_S)


async def test_results_resolve_on_the_loop(make_worker: Any, runner: Runner) -> None:
    worker = make_worker()
    assert await asyncio.wait_for(worker.submit("a", stream_id=1), WAIT_S) == "done:a"
    assert worker.jobs_run == 1 and worker.batches_run == 1


async def test_lower_priority_first_and_one_priority_per_batch(
    make_worker: Any, runner: Runner
) -> None:
    worker = make_worker(max_batch=8)
    blocker = await _blocked(worker, runner)
    futs = [
        worker.submit("p1-a", stream_id=1, priority=1),
        worker.submit("p0-a", stream_id=2, priority=0),
        worker.submit("p2-a", stream_id=3, priority=2),
        worker.submit("p1-b", stream_id=4, priority=1),
        worker.submit("p0-b", stream_id=5, priority=0),
    ]
    assert worker.queue_depth == 5
    runner.gate.set()
    await _gather(blocker, *futs)
    assert runner.ran() == [["p0-a", "p0-b"], ["p1-a", "p1-b"], ["p2-a"]]


async def test_batches_hold_one_batch_key(make_worker: Any, runner: Runner) -> None:
    worker = make_worker(max_batch=8, batch_key=lambda p: p.split("-")[0])
    blocker = await _blocked(worker, runner)
    futs = [
        worker.submit(p, stream_id=i) for i, p in enumerate(["x-1", "y-1", "x-2", "y-2", "x-3"])
    ]
    runner.gate.set()
    results = await _gather(blocker, *futs)
    assert runner.ran() == [["x-1", "x-2", "x-3"], ["y-1", "y-2"]]
    assert results[1:] == ["done:x-1", "done:y-1", "done:x-2", "done:y-2", "done:x-3"]


async def test_max_batch_and_fifo_per_stream(make_worker: Any, runner: Runner) -> None:
    worker = make_worker(max_batch=3)
    blocker = await _blocked(worker, runner)
    payloads = [f"s{i % 2}-{i}" for i in range(8)]
    futs = [worker.submit(p, stream_id=p[:2]) for p in payloads]
    runner.gate.set()
    results = await _gather(blocker, *futs)
    assert [len(b) for b in runner.ran()] == [3, 3, 2]
    flat = [p for b in runner.ran() for p in b]
    assert flat == payloads  # submission order overall, so FIFO within each stream
    assert results[1:] == [f"done:{p}" for p in payloads]


async def test_replace_key_supersedes_queued_job_only(make_worker: Any, runner: Runner) -> None:
    worker = make_worker()
    running = worker.submit("block", stream_id="s", replace_key="partial")
    await runner.wait_entered()
    old = worker.submit("old", stream_id="s", replace_key="partial")
    other_stream = worker.submit("other", stream_id="t", replace_key="partial")
    keep = worker.submit("final", stream_id="s")  # no replace key: never superseded
    new = worker.submit("new", stream_id="s", replace_key="partial")
    with pytest.raises(Superseded):
        await asyncio.wait_for(old, WAIT_S)
    assert worker.queue_depth == 3
    runner.gate.set()
    results = await _gather(running, other_stream, keep, new)
    assert results == ["done:block", "done:other", "done:final", "done:new"]
    assert "old" not in [p for b in runner.batches for p in b]


async def test_exception_result_fails_only_its_job(make_worker: Any, runner: Runner) -> None:
    worker = make_worker()
    blocker = await _blocked(worker, runner)
    futs = [worker.submit(p, stream_id=i) for i, p in enumerate(["a", "bad", "c"])]
    runner.gate.set()
    results = await _gather(blocker, *futs)
    assert runner.ran() == [["a", "bad", "c"]]  # one batch, not retried
    assert results[1] == "done:a" and results[3] == "done:c"
    assert isinstance(results[2], ValueError) and str(results[2]) == "bad bad"


async def test_raising_batch_is_retried_job_by_job(make_worker: Any, runner: Runner) -> None:
    worker = make_worker()
    blocker = await _blocked(worker, runner)
    futs = [worker.submit(p, stream_id=i) for i, p in enumerate(["a", "boom", "c"])]
    runner.gate.set()
    results = await _gather(blocker, *futs)
    assert runner.ran() == [["a", "boom", "c"], ["a"], ["boom"], ["c"]]
    assert results[1] == "done:a" and results[3] == "done:c"
    assert isinstance(results[2], RuntimeError)
    # The worker keeps going after a failure.
    assert await asyncio.wait_for(worker.submit("after", stream_id=9), WAIT_S) == "done:after"


async def test_wrong_result_count_is_isolated() -> None:
    calls: list[list[str]] = []

    def run(payloads: list[str]) -> list[str]:
        calls.append(payloads)
        return [p.upper() for p in payloads if p != "lost"]

    worker = BatchWorker("count", run, max_batch=4, max_wait_s=0.05).start()
    try:
        futs = [worker.submit(p, stream_id=i) for i, p in enumerate(["a", "lost", "b"])]
        results = await _gather(*futs)
    finally:
        worker.stop()
    assert results[0] == "A" and results[2] == "B"
    assert isinstance(results[1], RuntimeError)
    assert calls[0] == ["a", "lost", "b"]


async def test_cancel_stream_drops_queued_jobs(make_worker: Any, runner: Runner) -> None:
    worker = make_worker()
    blocker = await _blocked(worker, runner, stream="gone")
    gone = [worker.submit(f"g{i}", stream_id="gone") for i in range(3)]
    stays = worker.submit("t", stream_id="stays")
    assert worker.cancel_stream("gone") == 3
    assert worker.cancel_stream("nobody") == 0
    await asyncio.sleep(0)  # cancellation is delivered through the loop
    assert all(f.cancelled() for f in gone)
    runner.gate.set()
    results = await _gather(blocker, stays)
    assert results == ["done:block", "done:t"]  # the running job is not cancelled
    assert runner.ran() == [["t"]]


async def test_caller_cancelled_future_is_not_run(make_worker: Any, runner: Runner) -> None:
    worker = make_worker()
    blocker = await _blocked(worker, runner)
    dropped = worker.submit("dropped", stream_id=1)
    kept = worker.submit("kept", stream_id=2)
    dropped.cancel()
    runner.gate.set()
    assert await _gather(blocker, kept) == ["done:block", "done:kept"]
    assert runner.ran() == [["kept"]]


async def test_max_wait_collects_a_fuller_batch(make_worker: Any, runner: Runner) -> None:
    max_wait_s = 3.0
    worker = make_worker(max_batch=4, max_wait_s=max_wait_s)
    t0 = time.monotonic()
    futs = [worker.submit("a", stream_id=1)]
    await asyncio.sleep(0.05)
    futs += [worker.submit(p, stream_id=i) for i, p in enumerate(["b", "c", "d"], start=2)]
    await _gather(*futs)
    elapsed = time.monotonic() - t0
    assert runner.ran() == [["a", "b", "c", "d"]]
    assert elapsed < max_wait_s / 2  # a full batch runs at once, without waiting out max_wait


async def test_max_wait_runs_a_partial_batch_after_the_deadline(
    make_worker: Any, runner: Runner
) -> None:
    max_wait_s = 0.2
    worker = make_worker(max_batch=4, max_wait_s=max_wait_s)
    t0 = time.monotonic()
    assert await asyncio.wait_for(worker.submit("a", stream_id=1), WAIT_S) == "done:a"
    assert time.monotonic() - t0 >= max_wait_s * 0.9
    assert runner.ran() == [["a"]]


async def test_zero_wait_runs_what_is_queued_at_once(make_worker: Any, runner: Runner) -> None:
    worker = make_worker(max_batch=4, max_wait_s=0.0)
    t0 = time.monotonic()
    assert await asyncio.wait_for(worker.submit("a", stream_id=1), WAIT_S) == "done:a"
    assert time.monotonic() - t0 < 1.0


async def test_cancel_stream_while_waiting_for_a_batch_keeps_worker_alive(
    make_worker: Any, runner: Runner
) -> None:
    max_wait_s = 0.2
    worker = make_worker(max_batch=4, max_wait_s=max_wait_s)
    worker.submit("x", stream_id="gone")
    await asyncio.sleep(0.05)  # the worker is now waiting for the batch to fill
    assert worker.cancel_stream("gone") == 1
    await asyncio.sleep(max_wait_s * 2)  # its deadline passes with an empty queue
    assert worker._thread is not None and worker._thread.is_alive()  # noqa: SLF001
    assert await asyncio.wait_for(worker.submit("y", stream_id="next"), WAIT_S) == "done:y"
    assert runner.ran() == [["y"]]


async def test_stop_fails_queued_jobs_and_refuses_new_ones(
    make_worker: Any, runner: Runner
) -> None:
    worker = make_worker()
    blocker = await _blocked(worker, runner)
    queued = [worker.submit(f"q{i}", stream_id=i) for i in range(3)]
    stopping = asyncio.create_task(asyncio.to_thread(worker.stop))
    await asyncio.sleep(0.05)
    runner.gate.set()  # let the running job finish so stop() can join the thread
    await asyncio.wait_for(stopping, WAIT_S)
    results = await _gather(blocker, *queued)
    assert results[0] == "done:block"
    assert all(isinstance(r, WorkerStopped) for r in results[1:])
    assert runner.ran() == []
    with pytest.raises(WorkerStopped):
        worker.submit("late", stream_id=1)


async def test_stop_while_waiting_for_a_batch_runs_nothing(
    make_worker: Any, runner: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    crashes: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: crashes.append(args.exc_value))
    worker = make_worker(max_batch=4, max_wait_s=0.5)
    fut = worker.submit("x", stream_id=1)
    await asyncio.sleep(0.05)
    await asyncio.to_thread(worker.stop)
    with pytest.raises(WorkerStopped):
        await asyncio.wait_for(fut, WAIT_S)
    assert runner.batches == []
    assert worker._thread is not None and not worker._thread.is_alive()  # noqa: SLF001
    assert crashes == []  # the worker thread ended cleanly


# -- health: a worker thread that dies is seen, logged, and fails its queued jobs -----------------
class Fatal(BaseException):
    """Not an Exception: escapes run_batch's per-job isolation and kills the thread."""


async def test_healthy_only_while_the_thread_runs(runner: Runner) -> None:
    worker = BatchWorker("test", runner)
    assert not worker.healthy  # not started
    worker.start()
    assert worker.healthy
    worker.stop()
    assert not worker.healthy


async def test_killed_worker_is_unhealthy_logged_and_fails_queued_jobs(caplog) -> None:
    gate = threading.Event()

    def run_batch(payloads: list[Any]) -> list[Any]:
        assert gate.wait(WAIT_S)
        raise Fatal("segfault-like")

    worker = BatchWorker("doomed", run_batch).start()
    first = worker.submit("a", stream_id=1)
    await asyncio.sleep(0.05)  # the worker holds "a"
    queued = worker.submit("b", stream_id=2)
    with caplog.at_level("CRITICAL"):
        gate.set()
        with pytest.raises(WorkerStopped):
            await asyncio.wait_for(queued, WAIT_S)
    assert not worker.healthy
    assert isinstance(worker.died, Fatal)
    assert "doomed: worker thread died" in caplog.text
    with pytest.raises(WorkerStopped, match="doomed died"):
        await asyncio.wait_for(first, WAIT_S)  # the batch in flight fails too
    with pytest.raises(WorkerStopped):
        worker.submit("c", stream_id=3)
