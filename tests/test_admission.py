"""speech_common.admission and BatchWorker.utilisation: the policy that answers 1013 (with a
retry hint) and the load it reads."""

from __future__ import annotations

import threading
import time

from speech_common.admission import Admission, AdmissionPolicy
from speech_common.batching import BatchWorker


def test_capacity_bounds_a_burst_before_any_load_shows() -> None:
    a = Admission(AdmissionPolicy(capacity_sessions=2))
    assert a.check(active=0, utilisation=0.0, queue_wait_s=0.0) is None
    assert a.check(active=1, utilisation=0.0, queue_wait_s=0.0) is None
    refusal = a.check(active=2, utilisation=0.0, queue_wait_s=0.0)
    assert refusal is not None and refusal.close_code == 1013
    assert refusal.frame()["body"]["retry_after_s"] == 2.0
    assert "2 sessions use this replica's capacity" in refusal.message and a.refused == 1


def test_a_busy_worker_refuses() -> None:
    a = Admission(AdmissionPolicy(capacity_sessions=100, target_utilisation=0.9))
    assert a.check(active=3, utilisation=0.85, queue_wait_s=0.0) is None
    refusal = a.check(active=3, utilisation=0.95, queue_wait_s=0.0)
    assert refusal is not None and "95% busy" in refusal.message
    # No session open: the load was made by sessions that have ended.
    assert a.check(active=0, utilisation=0.95, queue_wait_s=0.0) is None


def test_a_lagging_queue_refuses() -> None:
    a = Admission(AdmissionPolicy(capacity_sessions=100, max_queue_wait_s=0.5))
    assert a.check(active=0, utilisation=0.0, queue_wait_s=0.4) is None
    refusal = a.check(active=0, utilisation=0.0, queue_wait_s=0.8)
    assert refusal is not None and "0.8 s behind" in refusal.message


def test_worker_utilisation_counts_recent_and_running_batches() -> None:
    release = threading.Event()
    started = threading.Event()

    def run_batch(payloads: list[str]) -> list[str]:
        started.set()
        if payloads[0] == "hold":
            release.wait(5)
        else:
            time.sleep(0.2)
        return payloads

    worker = BatchWorker("load", run_batch).start()
    try:
        assert worker.utilisation(1.0) == 0.0
        import asyncio

        async def go() -> None:
            await worker.submit("busy", stream_id=1)  # ~0.2 s of work
            util = worker.utilisation(1.0)
            assert 0.15 <= util <= 0.35, util
            future = worker.submit("hold", stream_id=1)
            await asyncio.to_thread(started.wait, 5)
            await asyncio.sleep(0.5)
            assert worker.utilisation(0.5) > 0.9  # the batch in flight counts
            release.set()
            await future

        asyncio.run(go())
    finally:
        worker.stop()
