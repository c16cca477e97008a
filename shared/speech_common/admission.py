"""Admission control: refuse a new session (1013 + a retry hint) when the replica cannot serve it
in time, instead of letting every session's latency collapse.

Two signals:
- **lag**: the oldest urgent job (a final, an audio window, a SNAC window) has waited longer
  than ``max_queue_wait_s``: the replica is behind its clients right now;
- **capacity**: ``capacity_sessions`` are open already. A burst of sessions arrives before any
  load shows, so this bound comes from a benchmark of the hardware (config.yaml says which).
A worker's busy share is no signal: Whisper's partials are elastic work that fills any idle
time and is shed first, so a worker 100 % busy says nothing about whether finals are late
(4 real-time streams on a 2-core CPU were refused for it while their finals came 0.45 s (p90)
after the speech).
Pure (time passed in), so the policy is unit-tested without a model.
"""

from __future__ import annotations

from dataclasses import dataclass

from .ws import CloseCode, ProtocolError


@dataclass(frozen=True)
class AdmissionPolicy:
    capacity_sessions: int  # open sessions one replica serves in time (benchmarked)
    max_queue_wait_s: float = 0.5  # urgent work older than this: refuse new sessions
    retry_after_s: float = 2.0


class Admission:
    def __init__(self, policy: AdmissionPolicy) -> None:
        self.policy = policy
        self.refused = 0

    def check(self, active: int, queue_wait_s: float) -> ProtocolError | None:
        """None to admit one more session, else the 1013 error to send. ``queue_wait_s``: how
        long the oldest urgent job has waited."""
        if queue_wait_s > self.policy.max_queue_wait_s:
            reason = f"the model queue is {queue_wait_s:.1f} s behind"
        elif active + 1 > self.policy.capacity_sessions:
            reason = f"{active} sessions use this replica's capacity"
        else:
            return None
        self.refused += 1
        return ProtocolError(
            "overloaded",
            f"replica busy: {reason}; retry later",
            CloseCode.TRY_AGAIN_LATER,
            retry_after_s=self.policy.retry_after_s,
        )
