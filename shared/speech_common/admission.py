"""Admission control: refuse a new session (1013 + a retry hint) when the replica cannot serve it
in time, instead of letting every session's latency collapse.

Three signals, each from the model worker that bounds the replica (Whisper, SNAC):
- **queue wait**: the oldest urgent job (a final, an audio window) has waited longer than
  ``max_queue_wait_s``: the replica is behind right now;
- **utilisation**: the worker was busy more than ``target_utilisation`` of the last
  ``window_s`` while sessions are open (its measured real-time headroom is gone: one more
  stream would queue);
- **capacity**: ``capacity_sessions`` are open already. A burst of sessions arrives before any
  load shows, so this bound comes from a benchmark of the hardware (config.yaml says which).
Pure (time passed in), so the policy is unit-tested without a model.
"""

from __future__ import annotations

from dataclasses import dataclass

from .ws import CloseCode, ProtocolError


@dataclass(frozen=True)
class AdmissionPolicy:
    capacity_sessions: int  # open sessions one replica serves in time (benchmarked)
    target_utilisation: float = 0.9  # the worker busy at most this share of the window
    max_queue_wait_s: float = 0.5  # urgent work older than this: refuse new sessions
    window_s: float = 3.0  # utilisation measured over this window
    retry_after_s: float = 2.0


class Admission:
    def __init__(self, policy: AdmissionPolicy) -> None:
        self.policy = policy
        self.refused = 0

    def check(self, active: int, utilisation: float, queue_wait_s: float) -> ProtocolError | None:
        """None to admit one more session, else the 1013 error to send. ``utilisation``: the
        worker's busy share over the last ``window_s`` (``BatchWorker.utilisation``)."""
        if queue_wait_s > self.policy.max_queue_wait_s:
            reason = f"the model queue is {queue_wait_s:.1f} s behind"
        elif active and utilisation > self.policy.target_utilisation:
            # (with no session open the load measured was made by sessions that have ended)
            reason = f"the model is {utilisation:.0%} busy"
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
